"""taskflow's kombu transport registrations against the real servers."""
from __future__ import annotations

import uuid

import pytest
from kombu import Connection, Queue

import taskflow  # noqa: F401 - registers the transports
from taskflow.transports.redis import Transport as RedisTransport
from t.integration.conftest import REDIS_BROKER_URL

pytestmark = pytest.mark.integration


def test_redis_urls_use_the_transport_that_reuses_its_client():
    with Connection(REDIS_BROKER_URL) as conn:
        assert isinstance(conn.transport, RedisTransport)
        channel = conn.channel()
        first = channel._create_client()
        assert channel._create_client() is first                  # one client per channel and pool
        assert channel._create_client(asynchronous=True) is not first  # the BRPOP side keeps its own
        name = f'tf-test-transport-{uuid.uuid4().hex[:8]}'
        queue = Queue(name, channel=channel)
        queue.declare()
        try:
            conn.Producer().publish({'n': 1}, routing_key=name, declare=[queue])
            message = queue.get(no_ack=True)
            assert message is not None and message.payload == {'n': 1}
        finally:
            queue.delete()
