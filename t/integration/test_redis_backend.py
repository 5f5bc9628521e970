"""The Redis result backend's store against the real server: SET with its TTL and PUBLISH in one
round trip, and an error reply that leaves the connection in step."""
from __future__ import annotations

import uuid

import pytest
import redis

from taskflow.app import Taskflow
from t.integration.conftest import REDIS_BACKEND_URL, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def backend():
    app = Taskflow('t', broker='memory://', backend=REDIS_BACKEND_URL)
    yield app.backend
    app.close()


def test_the_store_sets_the_key_with_its_ttl_and_publishes_it(backend):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    listener = redis.Redis.from_url(REDIS_BACKEND_URL).pubsub()
    listener.subscribe(key)
    try:
        wait_for(lambda: listener.get_message(timeout=0.1), timeout=5, message='the subscription')
        backend._set(key, b'{"status": "SUCCESS"}', 100)
        published = wait_for(lambda: listener.get_message(timeout=0.1), timeout=5, message='the PUBLISH')
        assert published['data'] == b'{"status": "SUCCESS"}'
        assert backend._get(key) == b'{"status": "SUCCESS"}'
        assert 0 < backend.client.ttl(key) <= 100
    finally:
        listener.close()
        backend.client.delete(key)


def test_an_error_reply_is_raised_and_the_connection_stays_in_step(backend):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    backend.client.connection_pool.disconnect()
    with pytest.raises(redis.ResponseError, match='expire'):
        backend._set(key, b'v', 0.5)  # EX 0: Redis refuses the SET, the PUBLISH still answers
    # The one pooled connection is reused: its next reply must be its own, not the PUBLISH's.
    assert backend.client.echo('next') == b'next'
    backend._set(key, b'w', None)
    assert backend._get(key) == b'w' and backend.client.ttl(key) == -1
    backend.client.delete(key)
