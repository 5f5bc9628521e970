"""The Redis result backend's store against the real server: SET with its TTL and PUBLISH in one
round trip, an error reply or an interruption that leaves the connection in step, and the connection a store
keeps between stores (never shared with a forked child); a task's result store, whose replies are read
at the connection's next use (a refusal logged, a lost connection's store written again); and
``wait_for``: its subscription and first read in one round trip on RESP3, two on RESP2, for results
stored before, during and after it."""
from __future__ import annotations

import os
import threading
import uuid

import pytest
import redis

import taskflow.states as states
from taskflow.app import Taskflow
from taskflow.exceptions import TimeoutError as ResultTimeout
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


def test_a_result_store_leaves_its_replies_to_the_connections_next_use(backend):
    key, other = (f'tf-test-store-{uuid.uuid4().hex}' for _ in range(2))
    listener = redis.Redis.from_url(REDIS_BACKEND_URL)
    try:
        backend._set_result(key, b'stored', 100)
        connection = backend._idle[-1]
        assert connection.taskflow_unread  # not waited for
        # Sent before any later command, so a later command elsewhere sees it too.
        assert listener.get(key) == b'stored' and 0 < listener.ttl(key) <= 100
        listener.set(other, b'its own')
        # The next command on that connection reads the store's replies first, then its own.
        assert backend._get(other) == b'its own'
        assert backend._idle == [connection] and not connection.taskflow_unread
        backend._set_result(key, b'again', None)
        backend._set_result(key, b'and again', None)  # one connection, replies read in turn
        assert backend._mget([key, other]) == [b'and again', b'its own']
    finally:
        listener.delete(key, other)
        listener.close()


def test_a_refused_result_store_is_logged_and_leaves_the_connection_in_step(backend, caplog):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    backend._set_result(key, b'v', 0.5)  # EX 0: Redis refuses the SET, the PUBLISH answers
    with caplog.at_level('ERROR', logger='taskflow.backends.redis'):
        assert backend._get(key) is None
    assert f'Redis refused to store {key}' in caplog.text and 'expire' in caplog.text
    backend._set(key, b'w', None)
    assert backend._get(key) == b'w'
    backend.client.delete(key)


def test_closing_the_backend_reads_the_replies_a_result_store_left(backend, caplog):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    backend._set_result(key, b'v', 0.5)  # EX 0: refused
    connection = backend._idle[-1]
    with caplog.at_level('ERROR', logger='taskflow.backends.redis'):
        backend.close()
    assert f'Redis refused to store {key}' in caplog.text
    assert not connection.taskflow_unread and backend._idle == []


def test_a_result_store_whose_replies_were_lost_is_written_again(backend):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    backend._set_result(key, b'stored', 100)
    connection = backend._idle[-1]
    backend.client.delete(key)  # (as if the connection broke before Redis ran the store)
    read_response = connection.read_response

    def lost(*args, **kwargs):
        connection.read_response = read_response
        raise redis.ConnectionError('Connection closed by server.')

    connection.read_response = lost
    assert backend._get(key) == b'stored'
    assert backend._idle == [connection] and 0 < backend.client.ttl(key) <= 100
    backend.client.delete(key)


def test_a_store_interrupted_while_its_replies_are_read_drops_the_connection(backend):
    key = f'tf-test-store-{uuid.uuid4().hex}'
    backend._set_result(key, b'stored', 100)
    connection = backend._idle[-1]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    connection.read_response = interrupted
    with pytest.raises(KeyboardInterrupt):
        backend._get(key)
    del connection.read_response
    assert connection not in backend._idle and backend._idle == []
    # given back to the pool, disconnected (a reconnect before its next use)
    assert connection not in backend.client.connection_pool._in_use_connections
    assert connection._sock is None
    assert backend._get(key) == b'stored'  # on a connection in step
    backend.client.delete(key)


@pytest.fixture(params=['3', '2'], ids=['resp3', 'resp2'])
def waiting_backend(request):
    app = Taskflow('t', broker='memory://', backend=f'{REDIS_BACKEND_URL}?protocol={request.param}')
    yield app.backend
    app.close()


def _store(backend, task_id, value):
    backend.store_result(task_id, value, states.SUCCESS)


def test_waits_see_results_stored_before_during_and_after_the_subscription(waiting_backend):
    backend = waiting_backend
    reads = []
    get = backend._get
    backend._get = lambda key: reads.append(key) or get(key)  # the read on a connection of its own
    ids = [f'tf-test-wait-{uuid.uuid4().hex}' for _ in range(4)]
    try:
        _store(backend, ids[0], 'before')
        assert backend.wait_for(ids[0], timeout=5)['result'] == 'before'
        # Stored once the wait has subscribed: the PUBLISH wakes it.
        subscribe = backend._subscribe_and_read

        def store_after_subscribing(subscriber, task_id, channel, deadline):
            meta = subscribe(subscriber, task_id, channel, deadline)
            assert meta['status'] == states.PENDING
            _store(backend, task_id, 'after')
            return meta
        backend._subscribe_and_read = store_after_subscribing
        assert backend.wait_for(ids[1], timeout=5)['result'] == 'after'
        del backend._subscribe_and_read
        # Back to back, each wait after the last one's unsubscribe, on the one pub/sub connection.
        _store(backend, ids[2], 'third')
        _store(backend, ids[3], 'fourth')
        assert [backend.wait_for(i, timeout=5)['result'] for i in ids[2:]] == ['third', 'fourth']
        # RESP3 reads on the subscribed connection, in the SUBSCRIBE's round trip; RESP2 cannot.
        assert len(reads) == (0 if backend._subscriber().resp3 else 4)
    finally:
        backend.client.delete(*[backend.get_key_for_task(i) for i in ids])


def test_a_wait_for_a_result_that_never_comes_times_out(waiting_backend):
    with pytest.raises(ResultTimeout):
        waiting_backend.wait_for(f'tf-test-wait-{uuid.uuid4().hex}', timeout=0.3)
    task_id = f'tf-test-wait-{uuid.uuid4().hex}'  # and the connection is still in step after it
    _store(waiting_backend, task_id, 'later')
    try:
        assert waiting_backend.wait_for(task_id, timeout=5)['result'] == 'later'
    finally:
        waiting_backend.client.delete(waiting_backend.get_key_for_task(task_id))


def test_a_wait_that_times_out_before_its_read_is_answered_leaves_no_reply_for_the_next(waiting_backend):
    backend = waiting_backend
    ids = [f'tf-test-wait-{uuid.uuid4().hex}' for _ in range(2)]
    _store(backend, ids[0], 'first')
    _store(backend, ids[1], 'second')
    try:
        with pytest.raises(ResultTimeout):
            backend.wait_for(ids[0], timeout=0)  # gives up before reading what it asked for
        assert backend.wait_for(ids[1], timeout=5)['result'] == 'second'
    finally:
        backend.client.delete(*[backend.get_key_for_task(i) for i in ids])


def _subscribers(backend, channel):
    return backend.client.pubsub_numsub(channel)[0][1]


def test_each_wait_is_one_write_that_also_unsubscribes_the_last_wait_s_channel(waiting_backend):
    backend = waiting_backend
    ids = [f'tf-test-wait-{uuid.uuid4().hex}' for _ in range(3)]
    channels = [backend.get_key_for_task(i) for i in ids]
    for task_id, value in zip(ids, 'abc'):
        _store(backend, task_id, value)
    subscriber = backend._subscriber()
    writes = []
    send = subscriber.send
    subscriber.send = lambda *commands: writes.append(commands) or send(*commands)
    try:
        assert [backend.wait_for(i, timeout=5)['result'] for i in ids] == ['a', 'b', 'c']
        assert len(writes) == 3
        assert [command[0] for command in writes[1]][:2] == [b'UNSUBSCRIBE', b'SUBSCRIBE']
        # Only the last wait's channel is still subscribed; closing the backend ends it.
        wait_for(lambda: [_subscribers(backend, c) for c in channels] == [0, 0, 1], timeout=5,
                 message='the earlier channels unsubscribed')
        backend._reset_subscriber()
        wait_for(lambda: _subscribers(backend, channels[2]) == 0, timeout=5, message='the last one unsubscribed')
    finally:
        backend.client.delete(*channels)


def _kill_subscriber_connection(backend, sock):
    host, port = sock.getsockname()[:2]
    assert backend.client.client_kill(f'{host}:{port}')


def test_a_wait_outlives_a_lost_connection(waiting_backend):
    """Between waits (Redis restarted meanwhile) and during one (the kill lands while it
    sleeps on the channel): a new connection subscribes again and the result still comes."""
    backend = waiting_backend
    ids = [f'tf-test-wait-{uuid.uuid4().hex}' for _ in range(3)]
    channels = [backend.get_key_for_task(i) for i in ids]
    try:
        _store(backend, ids[0], 'first')
        assert backend.wait_for(ids[0], timeout=5)['result'] == 'first'
        _kill_subscriber_connection(backend, backend._subscriber().sock)
        _store(backend, ids[1], 'second')
        assert backend.wait_for(ids[1], timeout=5)['result'] == 'second'

        lost = backend._subscriber().sock

        def kill_then_store():
            wait_for(lambda: _subscribers(backend, channels[2]) == 1, timeout=5, message='the wait subscribed')
            _kill_subscriber_connection(backend, lost)
            wait_for(lambda: _subscribers(backend, channels[2]) == 1 and lost.fileno() == -1, timeout=5,
                     message='subscribed again on a new connection')
            _store(backend, ids[2], 'third')

        helper = threading.Thread(target=kill_then_store)
        helper.start()
        assert backend.wait_for(ids[2], timeout=10)['result'] == 'third'
        helper.join(5)
        assert backend._subscriber().sock is not lost
    finally:
        backend.client.delete(*channels)


def test_a_forked_child_waits_on_a_connection_of_its_own(waiting_backend):
    backend = waiting_backend
    ids = [f'tf-test-wait-{uuid.uuid4().hex}' for _ in range(2)]
    for task_id in ids:
        _store(backend, task_id, task_id)
    try:
        assert backend.wait_for(ids[0], timeout=5)['result'] == ids[0]
        parent = backend._subscriber()
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 when it waited on a subscriber of its own
            code = 1
            try:
                backend._ready_cache.clear()
                ok = backend.wait_for(ids[1], timeout=5)['result'] == ids[1]
                code = 0 if ok and backend._subscriber() is not parent else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        backend._ready_cache.clear()
        assert backend.wait_for(ids[1], timeout=5)['result'] == ids[1]  # the parent's is in step
        assert backend._subscriber() is parent
    finally:
        backend.client.delete(*[backend.get_key_for_task(i) for i in ids])
