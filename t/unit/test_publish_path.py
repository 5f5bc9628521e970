"""The publish path's own parts: the AMQP properties encoder (byte for byte py-amqp's),
``app.producer_pool`` (kombu's interface, producers kept on their connections) and the Redis
publish's short poll for its reply."""
from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import amqp
import pytest
from hypothesis import given, settings, strategies as st
from kombu import Connection
from kombu.exceptions import LimitExceeded

from taskflow.broker import ProducerPool
from taskflow.transports import amqp as tf_amqp
from taskflow.transports import redis as tf_redis

# --- the AMQP properties encoder ---------------------------------------------------------------
_scalars = (st.none() | st.booleans() | st.floats(allow_nan=False)
            | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1) | st.text(max_size=40))
_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
                   | st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)
_properties = st.fixed_dictionaries({}, optional={
    'content_type': st.text(max_size=30) | st.none(), 'content_encoding': st.sampled_from(['utf-8', '']),
    'application_headers': st.dictionaries(st.text(max_size=20), _values, max_size=20) | st.none(),
    'delivery_mode': st.sampled_from([1, 2]), 'priority': st.integers(0, 255),
    'correlation_id': st.uuids().map(str), 'reply_to': st.sampled_from(['', 'reply.queue']),
    'expiration': st.sampled_from(['1000', None]), 'timestamp': st.integers(0, 2 ** 40),
    'app_id': st.text(max_size=10)})


@settings(max_examples=400, deadline=None)
@given(_properties)
def test_properties_encode_as_py_amqp_does(properties: dict[str, Any]) -> None:
    expected = amqp.Message(b'', **properties)._serialize_properties()
    assert tf_amqp.Message(b'', **properties)._serialize_properties() == expected


def test_a_task_message_encodes_as_py_amqp_does() -> None:
    headers = {'lang': 'py', 'task': 'proj.add', 'id': 'a-b', 'shadow': None, 'eta': None, 'expires': None,
               'group': None, 'group_index': None, 'retries': 0, 'timelimit': [None, None],
               'root_id': 'a-b', 'parent_id': None, 'argsrepr': '(2, 2)', 'kwargsrepr': '{}',
               'origin': 'gen1@host', 'ignore_result': False, 'replaced_task_nesting': 0,
               'stamped_headers': None, 'stamps': {}, 'big': 2 ** 40, 'nested': {'a': (1, 'é')}}
    properties = {'correlation_id': 'a-b', 'reply_to': '', 'delivery_mode': 2, 'priority': 0,
                  'content_type': 'application/json', 'content_encoding': 'utf-8',
                  'application_headers': headers}
    assert tf_amqp.encode_properties(properties) == amqp.Message(b'', **properties)._serialize_properties()


@pytest.mark.parametrize('headers', [{b'bytes-key': 1}, {'v': b'bytes'}, {'v': 1.5j}, {'v': 2 ** 70}])
def test_other_values_are_py_amqps_to_encode_or_refuse(headers: dict[Any, Any]) -> None:
    """Values outside a task message's kinds go to py-amqp's encoder: same bytes, same errors."""
    try:
        expected: Any = amqp.Message(b'', application_headers=headers)._serialize_properties()
    except Exception as exc:  # noqa: BLE001 - whatever py-amqp raises, ours must raise too
        with pytest.raises(type(exc)):
            tf_amqp.Message(b'', application_headers=headers)._serialize_properties()
    else:
        assert tf_amqp.Message(b'', application_headers=headers)._serialize_properties() == expected


def test_amqp_urls_use_the_faster_transport() -> None:
    for url in ('amqp://guest@localhost//', 'pyamqp://guest@localhost//'):
        assert isinstance(Connection(url).transport, tf_amqp.Transport)
    assert isinstance(Connection('amqps://guest@localhost//').transport, tf_amqp.SSLTransport)


# --- app.producer_pool -------------------------------------------------------------------------
class FakeConnection(Connection):
    """An in-memory kombu connection that remembers being closed."""
    closed = False

    def __init__(self) -> None:
        super().__init__('memory://')

    def close(self) -> None:
        self.closed = True
        super().close()


class Made:
    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []

    def __call__(self) -> FakeConnection:
        self.connections.append(FakeConnection())
        return self.connections[-1]


def test_producers_are_reused_with_their_connection() -> None:
    made = Made()
    pool = ProducerPool(made, limit=2)  # type: ignore[arg-type]
    with pool.acquire(block=True) as first:
        assert first.connection is made.connections[0]
    with pool.acquire(block=True) as again:
        assert again is first
    assert len(made.connections) == 1 and not made.connections[0].closed


def test_the_limit_blocks_or_raises_like_kombus_pool() -> None:
    pool = ProducerPool(Made(), limit=1)  # type: ignore[arg-type]
    held = pool.acquire()
    with pytest.raises(LimitExceeded):
        pool.acquire(block=False)
    with pytest.raises(LimitExceeded):
        pool.acquire(block=True, timeout=0.05)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(block=True, timeout=10)))
    waiter.start()
    held.release()
    waiter.join(10)
    assert got == [held]


def test_release_twice_gives_one_slot_back() -> None:
    pool = ProducerPool(Made(), limit=1)  # type: ignore[arg-type]
    producer = pool.acquire()
    producer.release()
    producer.release()
    pool.release(producer)
    assert pool.acquire() is producer
    with pytest.raises(LimitExceeded):
        pool.acquire()


def test_a_discarded_producer_is_closed_and_its_slot_freed() -> None:
    made = Made()
    pool = ProducerPool(made, limit=1)  # type: ignore[arg-type]
    broken = pool.acquire()
    pool.discard(broken)
    assert made.connections[0].closed
    fresh = pool.acquire()
    assert fresh is not broken and fresh.connection is made.connections[1]


def test_no_limit_means_a_connection_per_use() -> None:
    made = Made()
    pool = ProducerPool(made, limit=0)  # type: ignore[arg-type]
    for _ in range(3):
        with pool.acquire():
            pass
    assert len(made.connections) == 3 and all(c.closed for c in made.connections)


def test_force_close_all_closes_idle_connections() -> None:
    made = Made()
    pool = ProducerPool(made, limit=3)  # type: ignore[arg-type]
    a, b = pool.acquire(), pool.acquire()
    a.release()
    pool.force_close_all()
    assert made.connections[0].closed and not made.connections[1].closed
    b.release()


# --- the Redis publish's poll for its reply --------------------------------------------------
def test_a_reply_that_comes_within_the_spin_keeps_the_polling_on() -> None:
    here, there = socket.socketpair()
    with here, there:
        channel = SimpleNamespace(publish_spin=0.05, PUBLISH_SPIN_PAUSE=3, _spin_paused=0)
        there.sendall(b'+OK\r\n')
        tf_redis.Channel._await_reply(channel, SimpleNamespace(_sock=here))  # type: ignore[arg-type]
        assert channel._spin_paused == 0
        assert here.recv(16) == b'+OK\r\n'  # polled, not read: the reply is left to redis-py


def test_a_reply_that_misses_the_spin_pauses_the_polling_for_a_while(monkeypatch: Any) -> None:
    polls: list[float] = []
    spin = tf_redis._spin_until_readable

    def counted(sock: Any, seconds: float) -> bool:
        polls.append(seconds)
        return spin(sock, seconds)
    monkeypatch.setattr(tf_redis, '_spin_until_readable', counted)
    here, there = socket.socketpair()
    with here, there:
        channel = SimpleNamespace(publish_spin=0.002, PUBLISH_SPIN_PAUSE=3, _spin_paused=0)
        connection = SimpleNamespace(_sock=here)
        start = time.perf_counter()
        tf_redis.Channel._await_reply(channel, connection)  # type: ignore[arg-type]
        assert time.perf_counter() - start >= 0.002  # it polled the whole spin
        assert channel._spin_paused == 3 and len(polls) == 1
        for left in (2, 1, 0):  # the paused publishes do not poll
            tf_redis.Channel._await_reply(channel, connection)  # type: ignore[arg-type]
            assert channel._spin_paused == left and len(polls) == 1
        tf_redis.Channel._await_reply(channel, connection)  # type: ignore[arg-type]
        assert channel._spin_paused == 3 and len(polls) == 2  # polled again, missed again
