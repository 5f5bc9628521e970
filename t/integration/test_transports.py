"""taskflow's kombu transport registrations against the real servers."""
from __future__ import annotations

import json
from datetime import datetime, timezone
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import redis
from kombu import Connection, Consumer, Queue
from kombu.transport import redis as kombu_redis

import taskflow  # noqa: F401 - registers the transports
from taskflow import transports
from taskflow.broker import _publish
from taskflow.transports.redis import Transport as RedisTransport
from t.integration.conftest import AMQP_URL, REDIS_BROKER_URL, wait_for

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


# --- batched delivery (the worker's mode) -------------------------------------------------------

@pytest.fixture
def batched():
    """A Redis connection with a private key prefix, a fresh queue, and a batched consumer
    channel with prefetch 3; yields (connection, channel, queue, received list, raw client)."""
    prefix = f'tf-test-batch-{uuid.uuid4().hex[:8]}:'
    conn = Connection(REDIS_BROKER_URL, transport_options={'global_keyprefix': prefix})
    channel = conn.channel()
    channel.batched = True
    name = f'q{uuid.uuid4().hex[:8]}'
    queue = Queue(name, channel=channel)
    queue.declare()
    received = []
    consumer = Consumer(channel, [queue], callbacks=[lambda body, message: received.append(message)])
    consumer.qos(prefetch_count=3)
    consumer.consume()
    raw = redis.Redis.from_url(REDIS_BROKER_URL)
    try:
        yield conn, channel, queue, received, raw, prefix
    finally:
        for key in raw.scan_iter(match=prefix + '*'):
            raw.delete(key)
        raw.close()
        conn.release()


def _send(conn, queue, bodies, **kwargs):
    with conn.Producer() as producer:
        for body in bodies:
            producer.publish(body, routing_key=queue.name, **kwargs)


def _unacked(raw, prefix):
    return ({k.decode(): json.loads(v) for k, v in raw.hgetall(prefix + 'unacked').items()},
            {k.decode() for k in raw.zrange(prefix + 'unacked_index', 0, -1)})


def test_batched_fetch_records_what_it_takes_and_sends_acks_with_the_next_fetch(batched):
    conn, channel, queue, received, raw, prefix = batched
    _send(conn, queue, [{'n': i} for i in range(5)])
    conn.drain_events(timeout=1)
    assert [m.payload for m in received] == [{'n': 0}, {'n': 1}, {'n': 2}]  # FIFO, the prefetch window
    records, index = _unacked(raw, prefix)
    tags = [m.delivery_tag for m in received]
    assert set(records) == index == set(tags)
    payload, exchange, routing_key = records[tags[0]]           # kombu's own record layout
    assert routing_key == queue.name and exchange == ''
    assert channel.Message(payload, channel=channel).payload == {'n': 0}
    received[0].ack()
    received[1].ack()
    assert set(_unacked(raw, prefix)[0]) == set(tags)           # not sent yet
    conn.drain_events(timeout=1)
    assert [m.payload['n'] for m in received] == [0, 1, 2, 3, 4]
    records, index = _unacked(raw, prefix)
    assert set(records) == index == {m.delivery_tag for m in received[2:]}
    for message in received[2:]:
        message.ack()
    channel.close()                                             # close sends the pending acks
    assert _unacked(raw, prefix) == ({}, set())
    assert raw.llen(prefix + queue.name) == 0


def test_batched_messages_not_acked_go_back_on_close(batched):
    conn, channel, queue, received, raw, prefix = batched
    _send(conn, queue, [{'n': i} for i in range(4)])
    conn.drain_events(timeout=1)
    received[0].ack()
    channel.close()
    assert _unacked(raw, prefix) == ({}, set())
    back = sorted(json.loads(channel.Message(json.loads(item), channel=channel).body)['n']
                  for item in raw.lrange(prefix + queue.name, 0, -1))
    assert back == [1, 2, 3]


def test_a_message_taken_by_brpop_is_recorded_by_the_next_fetch_unless_acked_first(batched):
    conn, channel, queue, received, raw, prefix = batched

    def brpop_one(body):
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.2)                      # empty: a BRPOP is left waiting
        assert channel._in_poll
        with Connection(REDIS_BROKER_URL, transport_options={'global_keyprefix': prefix}) as other:
            _send(other, queue, [body])
        conn.drain_events(timeout=2)
        return received[-1]

    first = brpop_one({'late': 1})
    assert first.payload == {'late': 1} and _unacked(raw, prefix) == ({}, set())
    with pytest.raises(socket.timeout):
        conn.drain_events(timeout=0.2)                          # the next fetch records it
    assert set(_unacked(raw, prefix)[0]) == {first.delivery_tag}
    first.ack()
    second = brpop_one({'late': 2})
    second.ack()                                                # acked before the next fetch
    channel.flush()
    assert _unacked(raw, prefix) == ({}, set())                 # first's ack sent, second never written
    third = brpop_one({'late': 3})
    third.requeue()                                             # the record is sent before the restore
    assert _unacked(raw, prefix) == ({}, set())
    back = [json.loads(item) for item in raw.lrange(prefix + queue.name, 0, -1)]
    assert [channel.Message(m, channel=channel).payload for m in back] == [{'late': 3}]


def test_batched_fetch_drops_an_unreadable_item_and_delivers_the_rest(batched, caplog):
    conn, channel, queue, received, raw, prefix = batched
    _send(conn, queue, [{'n': 0}])
    raw.lpush(prefix + queue.name, b'not json at all')
    _send(conn, queue, [{'n': 1}])
    with caplog.at_level('ERROR', logger='taskflow.transports.redis'):
        conn.drain_events(timeout=1)
    assert [m.payload for m in received] == [{'n': 0}, {'n': 1}]
    assert 'Dropped an unreadable message' in caplog.text and queue.name in caplog.text
    assert set(_unacked(raw, prefix)[0]) == {m.delivery_tag for m in received}


def test_batched_fetch_revives_the_typed_values_kombus_encoder_writes(batched, monkeypatch):
    """kombu writes a datetime, a UUID or a Decimal in a header as {"__type__": ...}: a message
    that holds one decodes through kombu's hook; the others take the plain (faster) decode."""
    conn, channel, queue, received, raw, prefix = batched
    when, ident = datetime(2026, 11, 25, 12, 30, tzinfo=timezone.utc), uuid.uuid4()
    _send(conn, queue, [{'n': 0}], headers={'when': when, 'ident': ident})
    _send(conn, queue, [{'n': 1}], headers={'plain': '"__type__" in a string is only text'})
    through_kombu = []
    kombu_loads = transports.loads
    monkeypatch.setattr(transports, 'loads', lambda text: through_kombu.append(1) or kombu_loads(text))
    conn.drain_events(timeout=1)
    assert len(through_kombu) == 1  # the typed message only
    assert [m.payload for m in received] == [{'n': 0}, {'n': 1}]
    assert received[0].headers['when'] == when and received[0].headers['ident'] == ident
    assert received[1].headers['plain'] == '"__type__" in a string is only text'


def test_batched_fetch_takes_priorities_in_kombus_order(batched):
    conn, channel, queue, received, raw, prefix = batched
    channel.qos.prefetch_count = 0                              # no window: take all
    _send(conn, queue, [{'p': 9}], priority=9)
    _send(conn, queue, [{'p': 0}], priority=0)
    _send(conn, queue, [{'p': 5}], priority=5)
    plain = Connection(REDIS_BROKER_URL, transport_options={'global_keyprefix': prefix})
    try:
        conn.drain_events(timeout=1)
        batched_order = [m.payload['p'] for m in received]
        for message in received:
            message.requeue()
        requeued = Queue(queue.name, channel=plain.channel())
        plain_order = [requeued.get(no_ack=True).payload['p'] for _ in range(3)]
    finally:
        plain.release()
    assert batched_order == plain_order and sorted(batched_order) == [0, 5, 9]


def test_a_batched_consumer_that_dies_leaves_its_messages_to_be_restored(batched):
    """A process killed after a fetch (no close, no ack): kombu's visibility-timeout restore,
    run by any other consumer, puts the messages back."""
    conn, channel, queue, received, raw, prefix = batched
    _send(conn, queue, [{'n': i} for i in range(3)])
    script = textwrap.dedent(f'''
        import os, taskflow
        from kombu import Connection, Consumer, Queue
        conn = Connection({REDIS_BROKER_URL!r}, transport_options={{'global_keyprefix': {prefix!r}}})
        channel = conn.channel(); channel.batched = True
        got = []
        consumer = Consumer(channel, [Queue({queue.name!r}, channel=channel)],
                            callbacks=[lambda body, message: got.append(body)])
        consumer.qos(prefetch_count=10); consumer.consume()
        conn.drain_events(timeout=2)
        assert len(got) == 3, got
        os._exit(0)
    ''')
    subprocess.run([sys.executable, '-c', script], check=True, timeout=60)
    assert raw.llen(prefix + queue.name) == 0
    assert len(_unacked(raw, prefix)[1]) == 3
    with Connection(REDIS_BROKER_URL, transport_options={'global_keyprefix': prefix,
                                                         'visibility_timeout': 0}) as other:
        other.channel().qos.restore_visible(num=10, interval=1)
    assert raw.llen(prefix + queue.name) == 3
    assert _unacked(raw, prefix) == ({}, set())


# --- the publish path ---------------------------------------------------------------------------

@pytest.mark.parametrize('url', [REDIS_BROKER_URL, AMQP_URL], ids=['redis', 'amqp'])
def test_publish_without_kombus_layers_sends_the_message_kombu_would(url):
    """``broker._publish`` hands the message to the channel itself: what arrives must be what
    ``Producer.publish`` sends for the same arguments (all but the per-message delivery tag)."""
    name = f'tf-test-publish-{uuid.uuid4().hex[:8]}'
    headers = {'task': 't.x', 'id': 'abc', 'timelimit': [None, None], 'stamps': {}}
    args = dict(exchange='', routing_key=name, serializer='json', compression=None, headers=headers,
                priority=None, delivery_mode=2, retry=True, retry_policy={}, expiration=30.5)
    properties = {'correlation_id': 'abc', 'reply_to': 'me'}
    body = [[1, 'two'], {'k': 3.5}, {'callbacks': None}]
    with Connection(url) as conn:
        queue = Queue(name, channel=conn.channel())
        queue.declare()
        try:
            with conn.Producer() as producer:
                _publish(producer, body, [], dict(args, headers=dict(headers)), dict(properties))
                producer.publish(body, declare=[], **dict(args, headers=dict(headers)), **properties)
            got, deadline = [], time.monotonic() + 10               # AMQP routes asynchronously
            while len(got) < 2 and time.monotonic() < deadline:
                message = queue.get(no_ack=True)
                got.append(message) if message is not None else time.sleep(0.01)
        finally:
            queue.delete()
    assert len(got) == 2
    fast, kombus = got
    for message in (fast, kombus):
        message.properties.pop('delivery_tag', None)
        message.delivery_info.pop('delivery_tag', None)
    assert fast.body == kombus.body and fast.decode() == body
    assert fast.headers == kombus.headers == headers
    assert fast.properties == kombus.properties
    assert fast.properties['expiration'] == '30500' and fast.properties['reply_to'] == 'me'
    assert (fast.content_type, fast.content_encoding) == (kombus.content_type, kombus.content_encoding)


def test_redis_publish_writes_the_keys_kombus_transport_writes():
    """Our LPUSH goes to the list kombu's own transport would push to: key prefix, priority step."""
    prefix = f'tf-test-put-{uuid.uuid4().hex[:8]}:'
    raw = redis.Redis.from_url(REDIS_BROKER_URL)
    written = {}
    try:
        for transport in (RedisTransport, kombu_redis.Transport):
            with Connection(REDIS_BROKER_URL, transport=transport,
                            transport_options={'global_keyprefix': prefix}) as conn:
                with conn.Producer() as producer:
                    for priority in (None, 0, 4, 9):
                        producer.publish({'p': priority}, routing_key='q', priority=priority)
            keys = sorted(raw.scan_iter(match=prefix + '*'))
            written[transport] = [(key, [json.loads(item)['body'] for item in raw.lrange(key, 0, -1)])
                                  for key in keys]
            for key in keys:
                raw.delete(key)
    finally:
        for key in raw.scan_iter(match=prefix + '*'):
            raw.delete(key)
        raw.close()
    assert written[RedisTransport] == written[kombu_redis.Transport]
    assert len(written[RedisTransport]) == 3                   # three priority steps: 0, 3, 6/9


def test_redis_publish_with_retry_survives_a_cut_connection():
    """A task publish (``retry=True``) whose connection the server dropped: the channel's write
    fails, ``_publish`` falls back to kombu's retrying publish, and both messages arrive."""
    name = f'tf-test-cut-{uuid.uuid4().hex[:8]}'
    args = dict(exchange='', routing_key=name, serializer='json', compression=None, headers={},
                priority=None, delivery_mode=2, retry=True, retry_policy={'max_retries': 3},
                expiration=None)
    raw = redis.Redis.from_url(REDIS_BROKER_URL)
    try:
        with Connection(REDIS_BROKER_URL) as conn:
            with conn.Producer() as producer:
                _publish(producer, {'n': 1}, [], dict(args), {})
                client_id = producer.channel._create_client().client_id()
                raw.client_kill_filter(_id=client_id)           # the server drops the connection
                _publish(producer, {'n': 2}, [], dict(args), {})
        bodies = sorted(json.loads(item)['body'] for item in raw.lrange(name, 0, -1))
        assert len(bodies) == 2
    finally:
        raw.delete(name)
        raw.close()


# --- batched acks on RabbitMQ (the worker's mode) -------------------------------------------------

def _batched_amqp_queue(conn):
    """A batched channel on ``conn`` and a fresh durable queue declared on it."""
    channel = conn.channel()
    channel.batched = True
    queue = Queue(f'tf-test-acks-{uuid.uuid4().hex[:8]}', channel=channel, auto_delete=False)
    queue.declare()
    return channel, queue


def _drain_until(conn, done, deadline):
    while not done() and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.2)
        except socket.timeout:
            pass


def test_amqp_acks_wait_for_the_next_read_and_go_out_as_one_multiple_ack():
    with Connection(AMQP_URL) as conn:
        channel, queue = _batched_amqp_queue(conn)
        name = queue.name
        try:
            producer = conn.Producer(channel)
            for n in range(6):
                producer.publish({'n': n}, routing_key=name)
            received = []
            consumer = Consumer(channel, [queue], callbacks=[lambda body, message: received.append(message)])
            consumer.qos(prefetch_count=10)
            consumer.consume()
            _drain_until(conn, lambda: len(received) == 6, time.monotonic() + 10)
            assert [m.payload['n'] for m in received] == list(range(6))
            amqp_connection = conn.connection
            before = amqp_connection.bytes_sent
            for n in (0, 1, 2, 4):  # 3 stays unacked: 4 cannot be part of the multiple ack
                received[n].ack()
            received[5].reject(requeue=False)
            assert amqp_connection.bytes_sent == before + 1  # only the reject went out
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.2)  # the acks go out before the wait
            assert amqp_connection.bytes_sent == before + 3  # one multiple ack for 0-2, one for 4
            consumer.cancel()
        finally:
            conn.close()  # 3 goes back to the queue; 0, 1, 2 and 4 were acked, 5 rejected
    with Connection(AMQP_URL) as conn:
        queue = Queue(name, channel=conn.channel())
        try:
            left = wait_for(lambda: queue.get(no_ack=True), timeout=5, message='3 requeued')
            assert left.payload == {'n': 3}
            assert queue.get(no_ack=True) is None
        finally:
            queue.delete()


def test_amqp_acks_held_back_go_out_when_the_connection_closes():
    with Connection(AMQP_URL) as conn:
        channel, queue = _batched_amqp_queue(conn)
        name = queue.name
        conn.Producer(channel).publish({'n': 1}, routing_key=name)
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            message = queue.get(no_ack=False)
        assert message is not None
        assert message.delivery_tag in channel._unsettled  # a later multiple ack must not cover it
        message.ack()  # (acked with the next flush)
        received = []
        conn.Producer(channel).publish({'n': 2}, routing_key=name)
        consumer = Consumer(channel, [queue], callbacks=[lambda body, m: received.append(m)])
        consumer.consume()
        _drain_until(conn, lambda: received, deadline)
        received[0].ack()  # held back ...
        assert conn.connection.channels_with_acks
    # ... and sent by the close: nothing is redelivered
    with Connection(AMQP_URL) as conn:
        try:
            assert Queue(name, channel=conn.channel()).get(no_ack=True) is None
        finally:
            Queue(name, channel=conn.channel()).delete()


def _ready_count(url: str, queue: str) -> int:
    with Connection(url) as conn:
        return conn.default_channel.queue_declare(queue=queue, passive=True).message_count


@pytest.mark.parametrize('url, rounds', [(REDIS_BROKER_URL, 1), (AMQP_URL, 3)], ids=['redis', 'amqp'])
def test_a_script_that_sends_many_tasks_and_exits_at_once_loses_none(url, rounds):
    """RabbitMQ drops the messages it has read but not routed yet when a connection just goes
    away (without this the last ~100 of 20,000 fast ``delay()`` calls were lost one run in two):
    the app closes its pooled connections with Connection.Close when the interpreter exits."""
    n, queue = 20000, f'tf-test-exit-{uuid.uuid4().hex[:8]}'
    script = textwrap.dedent(f'''
        from taskflow import Taskflow
        app = Taskflow('exit', broker={url!r}, task_default_queue={queue!r})
        with app.connection_for_write() as conn:
            app.broker.queues.default(conn.default_channel).declare()
        send = app.task(name='t.exit.noop')(lambda n: None).delay
        for number in range({n}):
            send(number)
    ''')
    try:
        for done in range(1, rounds + 1):
            subprocess.run([sys.executable, '-c', script], check=True, timeout=300)
            expected = done * n
            wait_for(lambda expected=expected: _ready_count(url, queue) == expected, timeout=5,
                     message=f'all {expected} messages in the queue')
    finally:
        with Connection(url) as conn:
            conn.default_channel.queue_delete(queue)
