"""Redis result backend: Celery's keys and JSON; SETEX + PUBLISH in one round trip; ``get()``
woken by pub/sub on the result key's own channel, as Celery clients and workers expect.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import redis

import taskflow.states as states
from ..exceptions import ImproperlyConfigured, TimeoutError
from ..transports.redis import read_replies, send_commands
from .base import PENDING_META, Backend

logger = logging.getLogger(__name__)


def redis_client(url: str, conf: Any) -> redis.Redis:
    """A redis-py client for a Celery-style URL (``redis://``, ``rediss://``, ``redis+socket://``)."""
    if url.startswith('redis+socket://'):
        url = 'unix://' + url[len('redis+socket://'):]
    options: dict[str, Any] = {
        'socket_timeout': conf.redis_socket_timeout,
        'socket_connect_timeout': conf.redis_socket_connect_timeout,
        'socket_keepalive': conf.redis_socket_keepalive,
        'retry_on_timeout': conf.redis_retry_on_timeout,
        'health_check_interval': conf.redis_backend_health_check_interval or 0,
    }
    if conf.redis_max_connections:
        options['max_connections'] = conf.redis_max_connections
    if conf.redis_username:
        options['username'] = conf.redis_username
    if conf.redis_password:
        options['password'] = conf.redis_password
    parts = urlsplit(url)
    if parts.scheme not in ('redis', 'rediss', 'unix'):
        raise ImproperlyConfigured(f'Not a Redis URL: {url!r}')
    return redis.Redis.from_url(url, **options)


# The chord join, atomic in Redis (Celery 5.7's keys and values, so mixed fleets agree).
# KEYS: 1 results <gkey>.j (zset by group index)  2 members added later <gkey>.t
#       3 chord size <gkey>.s  4 members seen <gkey>.d  5 group meta <gkey>  6 dispatch claim <gkey>.c
# ARGV: 1 task id  2 encoded [1, id, state, result]  3 '1' ordered (zset) / '0' list
#       4 group index  5 key ttl  6 group meta ttl  7 claim ttl  8 claim token
# Returns {results so far, added later, size (-1 unknown), 1 if this caller must send the body}.
# A member is counted once per (task id, index), so a redelivered header task does no harm;
# once the body was sent, .c holds "done" and late copies return -1.
JOIN_LUA = """
if redis.call('GET', KEYS[6]) == 'done' then
  return {-1, 0, 0, 0}
end
if redis.call('SADD', KEYS[4], ARGV[1] .. ':' .. ARGV[4]) == 1 then
  if ARGV[3] == '1' then
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
  else
    redis.call('RPUSH', KEYS[1], ARGV[2])
  end
end
local count
if ARGV[3] == '1' then count = redis.call('ZCARD', KEYS[1]) else count = redis.call('LLEN', KEYS[1]) end
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
  if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[5], tonumber(ARGV[6])) end
end
local added = tonumber(redis.call('GET', KEYS[2]) or '0')
local size = tonumber(redis.call('GET', KEYS[3]) or '-1')
local claimed = 0
if size >= 0 and count == size + added then
  if redis.call('SET', KEYS[6], ARGV[8], 'NX', 'EX', tonumber(ARGV[7])) then claimed = 1 end
end
return {count, added, size, claimed}
"""

# After the body was sent: drop the join state and leave "done" (only the claim's owner may).
# KEYS: 1 claim  2-5 .j .t .s .d   ARGV: 1 claim token  2 ttl of the "done" marker
CLEANUP_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
return 1
"""


def _store_commands(key: str, value: Any, ttl: float | None) -> tuple[tuple[Any, ...], ...]:
    """Store and notify together (Celery's readers subscribe to the key)."""
    store = ('SET', key, value, 'EX', int(ttl)) if ttl else ('SET', key, value)
    return store, ('PUBLISH', key, value)


class RedisBackend(Backend):
    """Results in Redis strings with a TTL; waits through pub/sub."""

    supports_native_join = True
    supports_wakeup = True

    def __init__(self, app: Any, url: str | None = None, **options: Any) -> None:
        super().__init__(app, url)
        self.client = redis_client(url or 'redis://127.0.0.1:6379/0', app.conf)
        self._local = threading.local()  # pub/sub connections are not thread-safe
        self._idle: list[Any] = []  # connections lent by the pool, kept for the next round trip
        self._idle_pid = os.getpid()

    # --- primitives -------------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        return self._round_trip((('GET', key),))[0]

    def _mget(self, keys: list[str]) -> list[Any]:
        return self._round_trip((('MGET', *keys),))[0] if keys else []

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        self._round_trip(_store_commands(key, value, ttl))

    def _set_result(self, key: str, value: Any, ttl: float | None) -> None:
        """A task's state, written now; its replies are read when the connection is next lent
        (they have come by then). The worker's child used to sleep on them between its task
        and its next one: a third of the store's time, and a wake-up per task. Redis runs a
        connection's commands in order, so any later command on it, or one sent after this
        returned on another (in Redis's buffer after this one), sees the result; readers
        waiting on the key are woken by the PUBLISH as before."""
        self._round_trip(_store_commands(key, value, ttl), read=False)

    def _round_trip(self, commands: tuple[tuple[Any, ...], ...], read: bool = True) -> list[Any]:
        """``commands`` in one write and one read on a kept connection, returning their replies
        (with ``read=False``, the write only: the replies are read at the connection's next
        loan). Written on the connection directly rather than through a redis-py pipeline
        object, which cost a third of a store (160-190 -> 110-130 us of CPU a result); the
        connection's own retry policy applies as in a pipeline."""
        connection = self._lend_connection()
        try:
            replies = send_commands(connection, commands, read=read)
        except BaseException:
            self._drop(connection)  # it may be half-way through a reply
            raise
        if not read:
            connection.taskflow_unread = commands
        self._idle.append(connection)
        return replies

    def _lend_connection(self) -> Any:
        """A connection for one round trip, kept for the next rather than given back to the
        pool: redis-py's pool checks a connection for unread data on every loan (a zero-timeout
        read and the socket-flag calls around it: 8 us of a 76 us store). Nothing is left unread
        here: a round trip reads all its replies or disconnects, and the replies of a
        ``_set_result`` are read before the connection is lent again. list.pop/append are
        atomic, so threads need no lock."""
        if self._idle_pid != os.getpid():  # a forked child must not use its parent's sockets
            self._idle, self._idle_pid = [], os.getpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            return self.client.connection_pool.get_connection()
        self._read_unread(connection)
        return connection

    def _read_unread(self, connection: Any) -> None:
        """Read the replies of the store ``_set_result`` left on ``connection``, if any. A
        refusal (an error reply) is logged: its task was reported already. A connection lost
        before they came may have lost the store too, so it is written again (the same value)."""
        commands = getattr(connection, 'taskflow_unread', None)
        if not commands:
            return
        connection.taskflow_unread = None
        key = commands[0][1]
        try:
            read_replies(connection, len(commands))
        except redis.ResponseError as exc:
            logger.error('Redis refused to store %s: %s', key, exc)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            self._rewrite(connection, commands)
        except BaseException:
            self._drop(connection)
            raise

    def _rewrite(self, connection: Any, commands: tuple[tuple[Any, ...], ...]) -> None:
        """Store again what a lost connection may have lost; the connection is dropped if
        that fails too."""
        try:
            send_commands(connection, commands)
        except BaseException as exc:
            if isinstance(exc, Exception):
                logger.error('Could not store %s: %r', commands[0][1], exc)
            self._drop(connection)
            raise

    def _drop(self, connection: Any) -> None:
        """Give back a connection that may be out of step with its replies: the pool
        reconnects it before its next loan."""
        connection.disconnect()
        self.client.connection_pool.release(connection)

    def _delete(self, key: str) -> None:
        self._round_trip((('DEL', key),))

    # --- waiting ------------------------------------------------------------------------------
    def _subscriber(self) -> ResultSubscriber:
        subscriber = getattr(self._local, 'subscriber', None)
        if subscriber is None or subscriber.pid != os.getpid():  # (a forked child makes its own)
            subscriber = self._local.subscriber = ResultSubscriber(self.client.connection_pool)
        return subscriber

    def _reset_subscriber(self) -> None:
        subscriber = getattr(self._local, 'subscriber', None)
        self._local.subscriber = None
        if subscriber is not None and subscriber.pid == os.getpid():
            subscriber.close()

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5,
                 on_interval: Any = None) -> dict[str, Any]:
        """Subscribe to the result key, then read it once; sleep on the channel until the
        worker's PUBLISH arrives. A read every few seconds guards against a missed message.
        A lost connection (Redis restarted, a proxy closed it) is replaced once per wait."""
        if task_id in self._ready_cache:
            return self._ready_cache[task_id]
        channel = self.get_key_for_task(task_id).encode()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._wait(task_id, channel, deadline, on_interval)
        except redis.ConnectionError:
            return self._wait(task_id, channel, deadline, on_interval)

    def _wait(self, task_id: str, channel: bytes, deadline: float | None, on_interval: Any) -> dict[str, Any]:
        subscriber = self._subscriber()
        try:
            meta = self._subscribe_and_read(subscriber, task_id, channel, deadline)
            next_read = time.monotonic() + 5.0
            while meta['status'] not in states.READY_STATES:
                payload = subscriber.next_payload(channel, self._wait_step(deadline, most=1.0))
                if payload is not _NOTHING:
                    meta = self.meta_from_payload(task_id, payload)
                elif time.monotonic() >= next_read:
                    if subscriber.resp3:
                        subscriber.send((b'MGET', channel))  # answered through next_payload
                    else:
                        meta = self.get_task_meta(task_id)
                    next_read = time.monotonic() + 5.0
                if on_interval is not None and meta['status'] not in states.READY_STATES:
                    on_interval()
            return meta
        except TimeoutError:
            raise  # the connection is in step: an unanswered read is skipped by the next wait
        except BaseException:
            self._reset_subscriber()  # it may be half-way through a reply, or lost
            raise
        finally:
            subscriber.stale.append(channel)  # unsubscribed by the next wait's write

    def _subscribe_and_read(self, subscriber: ResultSubscriber, task_id: str, channel: bytes,
                            deadline: float | None) -> dict[str, Any]:
        """Subscribe to ``channel``, then read the result once (it may have been stored before
        the subscription took effect). On a RESP3 connection (redis-py's default with Redis 6+)
        the read is an MGET in the SUBSCRIBE's write: Redis answers it after the subscription,
        so one round trip serves both. RESP2 allows no other command while subscribed: the read
        then waits for the confirmation and goes on another connection, a second round trip."""
        subscriber.subscribe(channel)
        while True:
            payload = subscriber.next_payload(channel, self._wait_step(deadline))
            if payload is _SUBSCRIBED:
                return self.get_task_meta(task_id, cache=False)
            if payload is not _NOTHING:
                return self.meta_from_payload(task_id, payload)

    @staticmethod
    def _wait_step(deadline: float | None, most: float = 5.0) -> float:
        """Seconds to wait for the subscription's next reply (at most ``most``); TimeoutError
        past ``deadline``."""
        if deadline is None:
            return most
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError('The operation timed out.')
        return min(most, left)

    # --- chords --------------------------------------------------------------------------------
    def _chord_keys(self, group_id: str) -> dict[str, str]:
        base = self.get_key_for_group(group_id)
        return {suffix: base + suffix for suffix in ('', '.j', '.t', '.s', '.d', '.c')}

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Record how many header results complete the chord (before its first member is sent)."""
        keys = self._chord_keys(group_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(keys['.c'])  # a re-applied frozen chord is a new run
        pipe.set(keys['.s'], size, ex=int(self.expires) if self.expires else None)
        pipe.execute()

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None, state: str,
                          result: Any) -> tuple[str, list[tuple[str, str, Any]]] | None:
        """Record one header result. Returns ``(claim token, [(id, state, value), ...])`` to
        the one caller whose result completed the chord, ``None`` to everybody else."""
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            result = self.prepare_exception(result)
        keys = self._chord_keys(group_id)
        token = uuid.uuid4().hex
        join_timeout = self.app.conf.result_chord_join_timeout or 5.0
        claim_ttl = max(30, int(join_timeout * 2))
        ttl = int(self.expires) if self.expires else 0
        count, _added, _size, claimed = self._join_script(
            keys=[keys['.j'], keys['.t'], keys['.s'], keys['.d'], keys[''], keys['.c']],
            args=[task_id, self.encode([1, task_id, state, result]), '1' if self.chord_ordered else '0',
                  '+inf' if group_index is None else group_index, ttl, ttl, claim_ttl, token])
        if count == -1 or not claimed:
            return None
        raw = (self.client.zrange(keys['.j'], 0, -1) if self.chord_ordered
               else self.client.lrange(keys['.j'], 0, -1))
        entries = []
        for item in raw:
            _, member_id, member_state, value = self.decode(item)
            if member_state in states.EXCEPTION_STATES:
                value = self.meta_from_decoded({'status': member_state, 'result': value})['result']
            entries.append((member_id, member_state, value))
        return token, entries

    def chord_cleanup(self, group_id: str, token: str) -> None:
        keys = self._chord_keys(group_id)
        done_ttl = max(300, int(self.expires or 0) and 300)
        self._cleanup_script(keys=[keys['.c'], keys['.j'], keys['.t'], keys['.s'], keys['.d']],
                             args=[token, done_ttl])

    @cached_property
    def _join_script(self) -> Any:
        return self.client.register_script(JOIN_LUA)

    @cached_property
    def _cleanup_script(self) -> Any:
        return self.client.register_script(CLEANUP_LUA)

    def close(self) -> None:
        self._reset_subscriber()
        if self._idle_pid == os.getpid():
            pool = self.client.connection_pool
            while self._idle:
                connection = self._idle.pop()
                try:  # a store's refusal is logged, a lost one written again, before we go
                    self._read_unread(connection)
                except Exception:  # (logged; the connection is back in the pool, disconnected)
                    continue
                pool.release(connection)
        self.client.close()


# --- the result subscriber: RESP written and read directly -------------------------------------
_NOTHING = object()     # next_payload: nothing for the channel within the wait
_SUBSCRIBED = object()  # next_payload (RESP2): the subscription is in effect; read the key now


class _Push(list):
    """A RESP3 push: a subscription's confirmations and messages, apart from the replies."""


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """The RESP2/RESP3 value at ``pos`` of ``buf`` and where the next begins; IndexError when
    ``buf`` ends before it does. Error replies come back as ResponseError values, RESP3 maps
    as flat lists, simple strings and numbers other than integers as their text."""
    end = buf.find(b'\r\n', pos)
    if end < 0:
        raise IndexError(pos)
    kind, line, pos = buf[pos], buf[pos + 1:end], end + 2
    if kind in b'$=!':  # bulk string, verbatim string, bulk error
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise IndexError(pos)
        value = buf[pos:pos + size]
        return (redis.ResponseError(value.decode(errors='replace')) if kind == 33 else value), pos + size + 2
    if kind in b'*>~%|':  # array, push, set, map, attribute
        count = int(line) * (2 if kind in b'%|' else 1)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        if kind == 124:  # an attribute describes the value that follows it
            return _parse(buf, pos)
        return (_Push(items) if kind == 62 else items), pos
    if kind == 95:  # null
        return None, pos
    if kind == 45:  # error
        return redis.ResponseError(line.decode(errors='replace')), pos
    if kind == 58:  # integer
        return int(line), pos
    return line, pos


class ResultSubscriber:
    """One thread's connection for waiting on results, subscribed to their keys.

    Commands are written with the connection's own packing, and replies parsed here from the
    socket redis-py connected (with its handshake, auth and TLS), rather than through
    redis-py's PubSub: its command and reply layers were most of a ``get()``'s CPU (180 us a
    round trip) on a path where every microsecond is the caller's latency. A channel stays
    subscribed after its wait until the next wait's write unsubscribes it, so a wait makes one
    write.

    On RESP3, every value that is not a push answers an MGET, in order: ``unanswered`` counts
    them, so the answer to a wait that gave up (a timeout) is skipped by the next one."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.pid = pool, os.getpid()
        self.connection = pool.get_connection()
        self.sock = self.connection._sock
        self.resp3 = str(self.connection.protocol) == '3'
        self.buffer = b''
        self.stale: list[bytes] = []  # channels of finished waits, still subscribed
        self.unanswered = 0  # MGETs sent, not yet answered

    def send(self, *commands: tuple[bytes, ...]) -> None:
        # (No health check: a PING's reply would be taken for an MGET's answer.)
        self.connection.send_packed_command(self.connection.pack_commands(commands), check_health=False)
        self.unanswered += sum(command[0] == b'MGET' for command in commands)

    def subscribe(self, channel: bytes) -> None:
        """Subscribe to ``channel`` (and on RESP3 read it) in one write, with the unsubscribe of
        the channels of finished waits."""
        commands = [(b'UNSUBSCRIBE', *self.stale)] if self.stale else []
        self.stale = []
        commands.append((b'SUBSCRIBE', channel))
        if self.resp3:
            commands.append((b'MGET', channel))
        self.send(*commands)

    def next_payload(self, channel: bytes, timeout: float) -> Any:
        """The next stored value for ``channel``: a message published to it, or the answer to
        the latest MGET (``None`` when the key is not there); ``_SUBSCRIBED`` when RESP2's
        confirmation of its subscription comes; ``_NOTHING`` when nothing of that came within
        ``timeout`` seconds."""
        give_up = time.monotonic() + timeout
        while True:
            value = self._read(give_up)
            if value is _NOTHING:
                return value
            if isinstance(value, redis.ResponseError):  # (refused: the subscriber is replaced)
                raise value
            if self.resp3 and not isinstance(value, _Push):
                self.unanswered -= 1
                if not self.unanswered:  # (an earlier MGET's answer is skipped)
                    return value[0]
            elif isinstance(value, list) and len(value) >= 3 and value[1] == channel:
                if value[0] == b'message':
                    return value[2]
                if value[0] == b'subscribe' and not self.resp3:
                    return _SUBSCRIBED

    def _read(self, give_up: float) -> Any:
        """The next value on the connection; ``_NOTHING`` if none is whole by ``give_up``."""
        while True:
            if self.buffer:
                try:
                    value, end = _parse(self.buffer, 0)
                except IndexError:
                    pass
                else:
                    self.buffer = self.buffer[end:]
                    return value
            left = give_up - time.monotonic()
            if left <= 0:
                return _NOTHING
            try:
                self.sock.settimeout(left)
                data = self.sock.recv(65536)
            except socket.timeout:
                return _NOTHING
            except OSError as exc:
                raise redis.ConnectionError(f'Error reading from Redis: {exc}') from exc
            if not data:
                raise redis.ConnectionError('Redis closed the connection')
            self.buffer += data

    def close(self) -> None:
        self.connection.disconnect()
        self.pool.release(self.connection)


__all__ = ['RedisBackend', 'redis_client', 'PENDING_META']
