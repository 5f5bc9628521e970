"""The Redis result backend's store against the real server: SET with its TTL and PUBLISH in one
round trip, an error reply or an interruption that leaves the connection in step, and the connection a store
keeps between stores (never shared with a forked child)."""
from __future__ import annotations

import os
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


def test_stores_and_reads_keep_their_connection_instead_of_borrowing_one_each_time(backend):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    pool = backend.client.connection_pool
    loans = []
    get_connection = pool.get_connection
    pool.get_connection = lambda *a, **kw: loans.append(1) or get_connection(*a, **kw)
    try:
        for value in (b'a', b'b', b'c'):
            backend._set(key, value, 100)
            assert backend._get(key) == value
        assert backend._mget([key, key + '-missing']) == [b'c', None]
        backend._delete(key)
        assert backend._get(key) is None
        assert len(loans) == 1 and len(backend._idle) == 1
    finally:
        pool.get_connection = get_connection
        backend.client.delete(key)


def test_a_store_interrupted_before_its_replies_leaves_none_for_the_next_store(backend):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    backend._set(key, b'first', 100)
    connection = backend._idle[-1]
    read_response = connection.read_response

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # (Ctrl-C while the replies are on their way)

    connection.read_response = interrupted
    with pytest.raises(KeyboardInterrupt):
        backend._set(key, b'second', 100)
    connection.read_response = read_response
    assert connection not in backend._idle
    # The next store must read its own replies, not the interrupted one's.
    backend._set(key, b'third', None)
    assert backend._get(key) == b'third' and backend.client.ttl(key) == -1
    backend.client.delete(key)


def test_a_forked_child_stores_on_a_connection_of_its_own(backend):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    backend._set(key, b'parent', 100)
    parent_connection = backend._idle[-1]
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when it stored on a connection of its own
        code = 1
        try:
            backend._set(key, b'child', 100)
            code = 0 if backend._idle and backend._idle[-1] is not parent_connection else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend._get(key) == b'child'
    backend._set(key, b'parent again', 100)  # the parent's connection was not disturbed
    assert backend._idle[-1] is parent_connection and backend._get(key) == b'parent again'
    backend.client.delete(key)
