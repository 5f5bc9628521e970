"""The embedded broker: a kombu virtual transport on one SQLite file (standard library ``sqlite3``).

No server to run: clients and workers on one machine share the file. It is a real kombu
transport, so ``Connection('sqlite:///jobs.sqlite')``, ``Producer``, ``Consumer``, pidbox
(remote control) and events work on it as on any other broker.

Features
========
* Type: Virtual
* Supports Direct: Yes
* Supports Topic: Yes
* Supports Fanout: Yes (bindings are stored in the file, so every process sees them)
* Supports Priority: Yes, AMQP semantics: a higher number is delivered first (0-255, default 0);
  equal priorities are FIFO
* Supports TTL: Yes (the ``expiration`` message property, ``x-message-ttl`` and ``x-expires``
  queue arguments)
* Acknowledgements: a delivered message is *claimed*, not removed: it becomes invisible until
  a deadline (``visibility_timeout``). ``ack`` deletes it, ``reject(requeue=True)`` and a closed
  channel make it visible again at once, and a consumer that dies (SIGKILL, power cut) simply
  stops renewing its claims: its messages come back once the deadline passes. A live consumer
  renews the claims it holds every ``visibility_timeout / 4`` seconds, so a long task or an
  ETA message it keeps is *not* redelivered behind its back (unlike kombu's Redis transport).

Connection string
=================
SQLAlchemy's form: ``sqlite:///`` followed by the file's path, so three slashes for a relative
path and four for an absolute one::

    sqlite:///taskflow.sqlite       ./taskflow.sqlite
    sqlite:////var/lib/app/q.db     /var/lib/app/q.db
    sqlite://                       ./taskflow.sqlite (``DEFAULT_PATH``; ``config.EMBEDDED_URL``)

The file and its tables are created on first use; its directory must exist.

Transport options
=================
* ``visibility_timeout`` (float, 300): seconds a delivered, unacknowledged message stays
  invisible before it is delivered again. The holder renews it while it is alive, so this is
  how long a *dead* consumer's messages wait before another consumer gets them.
* ``polling_interval`` (float, 0.1): the longest sleep between two polls of an idle consumer.
* ``polling_interval_min`` (float, 0.005): the sleep between polls while busy (a message was
  delivered in the last second); the sleep grows from it by half each empty poll after that.
* ``busy_timeout`` (float, 30): seconds to wait for another process's write lock.
* ``synchronous`` (str, ``'NORMAL'``): SQLite's ``PRAGMA synchronous``. With WAL, ``NORMAL``
  loses nothing when a process dies; a power cut may lose the last commits. ``'FULL'`` syncs
  every commit.
* ``body_encoding`` (str, ``'base64'``): as for every kombu virtual transport.

Concurrency
===========
WAL journal (readers never block the writer), short transactions, one ``sqlite3`` connection
per thread. Every connection is closed before ``fork()`` and reopened lazily after it, in
parent and child: SQLite's per-process lock tables are inherited by a forked child, whose own
connections would otherwise lose writes (see ``SQLiteFile``). A message is claimed by one
``UPDATE ... RETURNING`` statement, so two consumers never get the same delivery. Needs SQLite
3.35 or newer (``RETURNING``). An idle consumer costs one indexed read per queue per poll.
"""
from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic, sleep, time
from typing import Any
from urllib.parse import unquote, urlsplit

from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.transport.virtual.base import queue_declare_ok_t
from kombu.utils.json import dumps

from . import loads_envelope

__all__ = ['Transport', 'Channel', 'QoS', 'SQLiteFile', 'path_from_url', 'DEFAULT_PATH']

logger = logging.getLogger(__name__)

DEFAULT_PATH = './taskflow.sqlite'
MIN_SQLITE = (3, 35, 0)  # UPDATE/DELETE ... RETURNING

#: Messages claimed by one poll at most (the channel's prefetch limit may lower it).
FETCH_LIMIT = 32
#: A consumer polls at ``polling_interval_min`` for this long after its last delivery.
BUSY_WINDOW = 1.0
#: Seconds between sweeps of expired messages and expired queues (by consumers).
GC_INTERVAL = 10.0
_MAX_PRIORITY = 255

SCHEMA = """
CREATE TABLE IF NOT EXISTS taskflow_message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a late ack must not hit a newer message
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL DEFAULT 0,    -- claimable when <= now; a claim sets the deadline
    expires_at REAL,                       -- message TTL; NULL: never
    deliveries INTEGER NOT NULL DEFAULT 0,
    payload TEXT NOT NULL                  -- kombu's message dict as JSON
);
CREATE INDEX IF NOT EXISTS taskflow_message_next ON taskflow_message (queue, priority DESC, id);
CREATE INDEX IF NOT EXISTS taskflow_message_expiry ON taskflow_message (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS taskflow_queue (
    name TEXT PRIMARY KEY,
    expires REAL,          -- x-expires in seconds: dropped when nobody polled it for that long
    message_ttl REAL,      -- x-message-ttl in seconds
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS taskflow_exchange (name TEXT PRIMARY KEY, type TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS taskflow_binding (
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    pattern TEXT,
    queue TEXT NOT NULL,
    PRIMARY KEY (exchange, routing_key, queue)
);
"""

_READY = 'queue = ? AND visible_at <= ? AND (expires_at IS NULL OR expires_at > ?)'
_PEEK = f'SELECT 1 FROM taskflow_message WHERE {_READY} LIMIT 1'
_NEXT = f'SELECT id FROM taskflow_message WHERE {_READY} ORDER BY priority DESC, id LIMIT ?'
# One statement, so atomic: two consumers can never claim the same row.
_CLAIM = (f'UPDATE taskflow_message SET visible_at = ?, deliveries = deliveries + 1 '
          f'WHERE id IN ({_NEXT}) RETURNING id, priority, deliveries, payload')
_TAKE = f'DELETE FROM taskflow_message WHERE id IN ({_NEXT}) RETURNING id, priority, deliveries + 1, payload'
_INSERT = ('INSERT INTO taskflow_message (queue, priority, expires_at, payload) VALUES '
           '(?, ?, COALESCE(?, (SELECT ? + message_ttl FROM taskflow_queue WHERE name = ?)), ?)')
# A binding counts while its queue has not expired (x-expires and nobody polling it).
_BINDINGS = ('SELECT b.routing_key, b.pattern, b.queue FROM taskflow_binding b '
             'LEFT JOIN taskflow_queue q ON q.name = b.queue WHERE b.exchange = ? '
             'AND (q.expires IS NULL OR q.last_seen + q.expires >= ?)')


def path_from_url(url: str | None, default: str = DEFAULT_PATH) -> str:
    """The file of a ``sqlite:///path`` URL (SQLAlchemy's form); ``default`` when it has none."""
    if not url:
        return default
    path = unquote(urlsplit(url).path)
    return _path_from_vhost(path[1:] if path.startswith('/') else path, default)


def _path_from_vhost(vhost: str | None, default: str = DEFAULT_PATH) -> str:
    # kombu gives '/' (its default virtual host) for 'sqlite://' with no path
    return default if not vhost or vhost == '/' else vhost


# --- the file ---------------------------------------------------------------------------------
class _Handle:
    """One thread's sqlite3 connection, and the lock held while it is in use (so that a fork
    can wait for the statement in progress, then close it)."""

    __slots__ = ('conn', 'lock', '__weakref__')

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.lock = threading.Lock()


class SQLiteFile:
    """One SQLite file: a connection per thread (opened in WAL mode, schema created once per
    process), used through ``query``/``run``/``write``. The embedded broker and the embedded
    result store (``taskflow.backends.sqlite``) both use it, each with its own schema.

    Fork safety: SQLite keeps per-process tables of open files and the locks it believes it
    holds; a child forked while the parent has the file open inherits them, and even the
    child's *own* new connections then skip real locks -- writes get lost (we measured it).
    So before every ``fork()`` all our connections are closed (each under its lock, held
    until the fork is done) and reopened lazily afterwards, in parent and child alike.
    """

    _files: 'weakref.WeakSet[SQLiteFile]' = weakref.WeakSet()
    _created: set[tuple[int, str, str]] = set()

    def __init__(self, path: str, schema: str, busy_timeout: float = 30.0, synchronous: str = 'NORMAL',
                 min_version: tuple[int, int, int] = MIN_SQLITE) -> None:
        if sqlite3.sqlite_version_info < min_version:
            raise RuntimeError(f'The embedded SQLite store needs SQLite >= {".".join(map(str, min_version))}; '
                               f'this Python has {sqlite3.sqlite_version}')
        if synchronous.upper() not in ('OFF', 'NORMAL', 'FULL', 'EXTRA'):
            raise ValueError(f'synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}')
        self.path = path
        self.schema = schema
        self.busy_timeout = float(busy_timeout)
        self.synchronous = synchronous.upper()
        self._pid = os.getpid()
        self._local = threading.local()
        self._handles: 'weakref.WeakSet[_Handle]' = weakref.WeakSet()  # a dead thread's closes by GC
        self._handles_lock = threading.Lock()
        with _files_lock:
            self._files.add(self)

    @contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held for the block (opened on first use)."""
        if self._pid != os.getpid():
            self._forked_without_hooks()
        handle: _Handle | None = getattr(self._local, 'handle', None)
        if handle is None:
            handle = self._local.handle = _Handle()
            with self._handles_lock:
                self._handles.add(handle)
        with handle.lock:
            if handle.conn is None:
                handle.conn = self._open()
            yield handle.conn

    def query(self, sql: str, params: Any = ()) -> list[Any]:
        """Run one statement (its own transaction) and return all its rows."""
        with self.use() as conn:
            return conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Any = ()) -> int:
        """Run one statement (its own transaction); the number of rows it changed."""
        with self.use() as conn:
            return int(conn.execute(sql, params).rowcount)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short transaction that takes the write lock up front (``BEGIN IMMEDIATE``), so it
        waits for other writers (``busy_timeout``) rather than failing half-way."""
        with self.use() as conn:
            conn.execute('BEGIN IMMEDIATE')
            try:
                yield conn
            except BaseException:
                conn.execute('ROLLBACK')
                raise
            conn.execute('COMMIT')

    def _open(self) -> sqlite3.Connection:
        try:
            # check_same_thread=False: only so the fork hook may close it; each connection is
            # still used by one thread at a time, under its handle's lock
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise sqlite3.OperationalError(f'cannot open SQLite file {self.path!r}: {exc}') from exc
        conn.execute(f'PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}')
        mode = conn.execute('PRAGMA journal_mode = WAL').fetchone()[0]
        if str(mode).lower() != 'wal':
            logger.warning('SQLite file %s is in %r journal mode, not WAL (a network file system?): '
                           'readers and writers will block each other', self.path, mode)
        conn.execute(f'PRAGMA synchronous = {self.synchronous}')
        key = (os.getpid(), os.path.abspath(self.path), self.schema)
        if key not in self._created:
            conn.executescript(self.schema)
            self._created.add(key)
        return conn

    def close(self) -> None:
        """Close this thread's connection (another thread's closes with its thread)."""
        handle: _Handle | None = getattr(self._local, 'handle', None)
        if handle is not None and self._pid == os.getpid():
            with handle.lock:
                if handle.conn is not None:
                    handle.conn.close()
                    handle.conn = None

    # --- fork -------------------------------------------------------------------------------------
    def _before_fork(self) -> list[_Handle]:
        self._handles_lock.acquire()
        handles = list(self._handles)
        for handle in handles:
            handle.lock.acquire()
            if handle.conn is not None:
                try:
                    handle.conn.close()
                except sqlite3.Error:
                    pass
                handle.conn = None
        return handles

    def _after_fork(self, handles: list[_Handle], child: bool) -> None:
        for handle in handles:
            handle.lock.release()
        if child:
            self._pid = os.getpid()
            self._local = threading.local()
            self._handles = weakref.WeakSet()
        self._handles_lock.release()

    def _forked_without_hooks(self) -> None:
        # fork() without Python's at-fork hooks (an extension module): the parent's connections
        # were not closed; never use or close them here, start afresh
        _abandoned.append((self._local, list(self._handles)))
        self._pid = os.getpid()
        self._local = threading.local()
        self._handles = weakref.WeakSet()
        self._handles_lock = threading.Lock()


_abandoned: list[Any] = []
_forking: list[tuple[SQLiteFile, list[_Handle]]] = []


_files_lock = threading.Lock()


def _before_fork() -> None:
    _files_lock.acquire()  # released after the fork: no file is added meanwhile
    _forking[:] = [(db, db._before_fork()) for db in list(SQLiteFile._files)]


def _after_fork(child: bool) -> None:
    for db, handles in _forking:
        db._after_fork(handles, child)
    _forking.clear()
    _files_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=lambda: _after_fork(False),
                    after_in_child=lambda: _after_fork(True))


# --- kombu ------------------------------------------------------------------------------------
def _delivery(delivery_tag: Any) -> tuple[int, int]:
    """Our delivery tags are ``"<row id>.<delivery number>"``."""
    row_id, _, number = str(delivery_tag).partition('.')
    return int(row_id), int(number or 0)


def _chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class QoS(virtual.QoS):
    """Prefetch accounting as kombu's, with the settlement done in the file: ``ack`` and
    ``reject`` delete the claimed row, ``reject(requeue=True)`` and ``restore_unacked`` make it
    visible again (rather than publishing a copy, which would leave the claimed original to
    come back later as a duplicate)."""

    channel: 'Channel'

    def ack(self, delivery_tag: Any) -> None:
        self.channel._settle([delivery_tag], requeue=False)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        self.channel._settle([delivery_tag], requeue=requeue)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        self._flush()
        delivered: Any = self._delivered  # kombu's stubs type it as None
        tags = list(delivered)
        delivered.clear()
        try:
            self.channel._settle(tags, requeue=True)
        except Exception as exc:  # the claims expire by themselves: nothing is lost
            logger.warning('Could not give back %d unacknowledged message(s) (they are delivered again '
                           'after the visibility timeout): %r', len(tags), exc)
        return []

    def held(self) -> list[Any]:
        """Delivery tags delivered to this channel and not yet settled."""
        dirty: Any = self._dirty
        delivered: Any = self._delivered
        return [tag for tag in list(delivered) if tag not in dirty]


class Channel(virtual.Channel):
    """A virtual channel whose queues, exchanges and bindings live in the SQLite file."""

    QoS = QoS
    connection: 'Transport'
    supports_fanout = True
    do_restore = True
    min_priority = 0
    max_priority = _MAX_PRIORITY

    def __init__(self, connection: 'Transport', **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.db = connection.db
        self.visibility_timeout = connection.visibility_timeout
        self._no_ack_queues: set[str] = set()
        self._rotation = 0
        now = monotonic()
        self._next_renew = now + self.visibility_timeout / 4
        self._next_gc = now + GC_INTERVAL
        self._next_seen: dict[str, float] = {}

    # --- declarations -------------------------------------------------------------------------
    def exchange_declare(self, exchange: str | None = None, type: str = 'direct', durable: bool = False,
                         auto_delete: bool = False, arguments: Any = None, nowait: bool = False,
                         passive: bool = False) -> None:
        super().exchange_declare(exchange, type, durable, auto_delete, arguments, nowait, passive)
        if exchange and not passive:
            # other processes route through it without declaring it themselves (pidbox replies)
            self.db.run('INSERT OR REPLACE INTO taskflow_exchange (name, type) VALUES (?, ?)',
                        (exchange, type or 'direct'))

    def typeof(self, exchange: str, default: str = 'direct') -> Any:
        if exchange and exchange not in self.state.exchanges:
            rows = self.db.query('SELECT type FROM taskflow_exchange WHERE name = ?', (exchange,))
            if rows:
                return self.exchange_types[rows[0][0]]
        return super().typeof(exchange, default)

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        super().exchange_delete(exchange, if_unused, nowait)
        with self.db.write() as conn:
            conn.execute('DELETE FROM taskflow_binding WHERE exchange = ?', (exchange,))
            conn.execute('DELETE FROM taskflow_exchange WHERE name = ?', (exchange,))

    def prepare_queue_arguments(self, arguments: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # Queue(expires=..., message_ttl=...) -> x-expires / x-message-ttl, as on RabbitMQ
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def queue_declare(self, queue: str | None = None, passive: bool = False, **kwargs: Any) -> Any:
        if passive and queue and self._has_queue(queue):
            # kombu's version would re-declare it, dropping its x-expires / x-message-ttl
            return queue_declare_ok_t(queue, self._size(queue), 0)
        return super().queue_declare(queue, passive, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        arguments = kwargs.get('arguments') or {}
        expires, ttl = arguments.get('x-expires'), arguments.get('x-message-ttl')
        self.db.run(
            'INSERT INTO taskflow_queue (name, expires, message_ttl, last_seen) VALUES (?, ?, ?, ?) '
            'ON CONFLICT (name) DO UPDATE SET expires = excluded.expires, message_ttl = excluded.message_ttl, '
            'last_seen = excluded.last_seen',
            (queue, None if expires is None else expires / 1000.0, None if ttl is None else ttl / 1000.0, time()))

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return bool(self.db.query('SELECT 1 FROM taskflow_queue WHERE name = ? UNION ALL '
                                  'SELECT 1 FROM taskflow_message WHERE queue = ? LIMIT 1', (queue, queue)))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str) -> None:
        self.db.run('INSERT OR REPLACE INTO taskflow_binding (exchange, routing_key, pattern, queue) '
                    'VALUES (?, ?, ?, ?)', (exchange, routing_key or '', pattern, queue))

    def queue_unbind(self, queue: str, exchange: str | None = None, routing_key: str = '',
                     arguments: Any = None, **kwargs: Any) -> None:
        super().queue_unbind(queue, exchange, routing_key, arguments, **kwargs)
        self.db.run('DELETE FROM taskflow_binding WHERE queue = ? AND exchange = ? AND routing_key = ?',
                    (queue, exchange, routing_key or ''))

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        """The bindings of ``exchange``, from the file (shared by every process)."""
        return [tuple(row) for row in self.db.query(_BINDINGS, (exchange, time()))]  # type: ignore[misc]

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> None:
        # kombu's version only deletes queues bound in *this* process; the file knows them all.
        if if_empty and self._size(queue):
            return
        self._delete(queue)
        self.state.queue_bindings_delete(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        with self.db.write() as conn:
            conn.execute('DELETE FROM taskflow_message WHERE queue = ?', (queue,))
            conn.execute('DELETE FROM taskflow_binding WHERE queue = ?', (queue,))
            conn.execute('DELETE FROM taskflow_queue WHERE name = ?', (queue,))

    # --- publishing ---------------------------------------------------------------------------
    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self._insert([queue], message)

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        self._insert(sorted({queue for _, _, queue in self.get_table(exchange)}), message)

    def _insert(self, queues: list[str], message: dict[str, Any]) -> None:
        if not queues:
            return
        props = message.get('properties') or {}
        try:
            priority = max(0, min(int(props.get('priority') or 0), _MAX_PRIORITY))
        except (TypeError, ValueError):
            priority = 0
        now = time()
        expiration = props.get('expiration')
        expires_at = now + float(expiration) / 1000.0 if expiration not in (None, '') else None
        payload = dumps(message)
        rows = [(queue, priority, expires_at, now, queue, payload) for queue in queues]
        if len(rows) == 1:
            self.db.run(_INSERT, rows[0])  # one statement: its own transaction
        else:
            with self.db.write() as conn:
                conn.executemany(_INSERT, rows)

    # --- consuming ----------------------------------------------------------------------------
    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues.discard(queue)
        return result

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        payloads = self._claim(queue, 1, no_ack)
        if not payloads:
            return None
        message = self.Message(payloads[0], channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        payloads = self._claim(queue, 1, no_ack=False)
        if not payloads:
            raise Empty()
        return payloads[0]

    def _get_many(self, queues: list[str], timeout: float | None = None) -> None:
        """Claim what the prefetch limit allows from the first non-empty queue (rotating which
        queue goes first, for fairness) and hand each message to its consumer."""
        room = self.qos.can_consume_max_estimate()
        limit = FETCH_LIMIT if room is None else min(room, FETCH_LIMIT)
        if limit <= 0 or not queues:
            raise Empty()
        self._rotation = (self._rotation + 1) % len(queues)
        for queue in queues[self._rotation:] + queues[:self._rotation]:
            payloads = self._claim(queue, limit, queue in self._no_ack_queues)
            if payloads:
                self._deliver_all(queue, payloads)
                return
        raise Empty()

    def _deliver_all(self, queue: str, payloads: list[dict[str, Any]]) -> None:
        for index, payload in enumerate(payloads):
            try:
                self.connection._deliver(payload, queue)
            except BaseException:
                # give back what was claimed but never reached a consumer
                rest = [p['properties']['delivery_tag'] for p in payloads[index + 1:]]
                if rest and queue not in self._no_ack_queues:
                    self._settle(rest, requeue=True)
                raise

    def _claim(self, queue: str, limit: int, no_ack: bool) -> list[dict[str, Any]]:
        """Claim up to ``limit`` ready messages of ``queue`` (highest priority, then oldest);
        ``no_ack`` consumers take them (delete) instead."""
        now = time()
        with self.db.use() as conn:
            if conn.execute(_PEEK, (queue, now, now)).fetchone() is None:
                return []  # the common idle case: a read, no write lock
            if no_ack:
                rows = conn.execute(_TAKE, (queue, now, now, limit)).fetchall()
            else:
                rows = conn.execute(_CLAIM, (now + self.visibility_timeout, queue, now, now, limit)).fetchall()
        rows.sort(key=lambda row: (-row[1], row[0]))  # RETURNING has no defined order
        payloads = []
        for row_id, _priority, deliveries, raw in rows:
            payload = loads_envelope(raw)
            props = payload.setdefault('properties', {})
            # a tag per delivery: the same row delivered again is a different delivery
            props['delivery_tag'] = f'{row_id}.{deliveries}'
            if deliveries > 1:
                payload['redelivered'] = True
                props.setdefault('delivery_info', {})['redelivered'] = True
            payloads.append(payload)
        return payloads

    def _settle(self, delivery_tags: Iterable[Any], requeue: bool) -> None:
        """Ack (delete) or requeue deliveries. An ack deletes the message even if its claim ran
        out meanwhile (the work is done); a requeue only touches a delivery that is still the
        current one, so a late requeue cannot expose a message another consumer now holds."""
        deliveries = [_delivery(tag) for tag in delivery_tags]
        if not deliveries:
            return
        if requeue:
            self._update_current('UPDATE taskflow_message SET visible_at = 0 WHERE id = ? AND deliveries = ?',
                                 deliveries)
            return
        for part in _chunks([row_id for row_id, _ in deliveries]):
            self.db.run(f'DELETE FROM taskflow_message WHERE id IN ({",".join("?" * len(part))})', part)

    def _update_current(self, sql: str, deliveries: list[tuple[int, int]], *leading: Any) -> None:
        if len(deliveries) == 1:
            self.db.run(sql, (*leading, *deliveries[0]))
        else:
            with self.db.write() as conn:
                conn.executemany(sql, [(*leading, *d) for d in deliveries])

    def _size(self, queue: str) -> int:
        now = time()
        return int(self.db.query(f'SELECT COUNT(*) FROM taskflow_message WHERE {_READY}', (queue, now, now))[0][0])

    def _purge(self, queue: str) -> int:
        now = time()
        return self.db.run(f'DELETE FROM taskflow_message WHERE {_READY}', (queue, now, now))

    # --- upkeep, from the consuming thread ------------------------------------------------------
    def maintain(self, now: float) -> None:
        """Renew the claims this channel holds, keep its expiring queues alive, and now and
        then sweep expired messages and queues. Cheap when nothing is due."""
        if now >= self._next_renew:
            self._next_renew = now + self.visibility_timeout / 4
            if self._qos is not None:
                self._renew(self.qos.held())
        if self._active_queues:
            self._touch_queues(now)
            if now >= self._next_gc:
                self._next_gc = now + GC_INTERVAL
                self._sweep()

    def _renew(self, tags: list[Any]) -> None:
        if tags:
            self._update_current('UPDATE taskflow_message SET visible_at = ? WHERE id = ? AND deliveries = ?',
                                 [_delivery(tag) for tag in tags], time() + self.visibility_timeout)

    def _touch_queues(self, now: float) -> None:
        """Mark consumed queues as in use, so queues with ``x-expires`` (pidbox, event and reply
        queues) are only dropped once their consumer is gone."""
        for queue in self._active_queues:
            if now < self._next_seen.get(queue, 0.0):
                continue
            rows = self.db.query('SELECT expires FROM taskflow_queue WHERE name = ?', (queue,))
            expires = rows[0][0] if rows else None
            if not rows:
                self._redeclare(queue)  # swept while we were busy: put it and its bindings back
            elif expires:
                self.db.run('UPDATE taskflow_queue SET last_seen = ? WHERE name = ?', (time(), queue))
            self._next_seen[queue] = now + (max(0.5, expires / 4) if expires else 30.0)

    def _redeclare(self, queue: str) -> None:
        self.db.run('INSERT OR IGNORE INTO taskflow_queue (name, last_seen) VALUES (?, ?)', (queue, time()))
        for exchange, routing_key, arguments in self.state.queue_bindings(queue):
            meta = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
            self._queue_bind(exchange, *meta)

    def _sweep(self) -> None:
        now = time()
        with self.db.write() as conn:
            conn.execute('DELETE FROM taskflow_message WHERE expires_at IS NOT NULL AND expires_at <= ?', (now,))
            gone = [name for (name,) in conn.execute(
                'SELECT name FROM taskflow_queue WHERE expires IS NOT NULL AND last_seen + expires < ?', (now,))]
            for part in _chunks(gone):
                marks = ','.join('?' * len(part))
                conn.execute(f'DELETE FROM taskflow_message WHERE queue IN ({marks})', part)
                conn.execute(f'DELETE FROM taskflow_binding WHERE queue IN ({marks})', part)
                conn.execute(f'DELETE FROM taskflow_queue WHERE name IN ({marks})', part)


class Transport(virtual.Transport):
    """kombu transport for ``sqlite://`` URLs (see the module docstring)."""

    Channel = Channel

    driver_type = 'sqlite'
    driver_name = 'sqlite3'
    default_port = None
    #: the longest sleep of an idle consumer between polls
    polling_interval = 0.1
    polling_interval_min = 0.005
    visibility_timeout = 300.0

    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(['direct', 'topic', 'fanout']),
        heartbeats=False,
    )
    # A locked or unreadable file behaves like a lost connection: kombu's publish retry and the
    # worker's reconnect loop take over.
    connection_errors = virtual.Transport.connection_errors + (sqlite3.OperationalError,)  # type: ignore[assignment]
    channel_errors = virtual.Transport.channel_errors + (sqlite3.DatabaseError,)  # type: ignore[assignment]
    cycle: Any
    channels: Any

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = client.transport_options
        self.visibility_timeout = float(options.get('visibility_timeout', self.visibility_timeout))
        if self.visibility_timeout <= 0:
            raise ValueError('visibility_timeout must be positive')
        self.polling_interval_min = float(options.get('polling_interval_min', self.polling_interval_min))
        self.polling_interval = max(float(self.polling_interval or 0), self.polling_interval_min)
        self.path = _path_from_vhost(client.virtual_host)
        self.db = SQLiteFile(self.path, SCHEMA, busy_timeout=float(options.get('busy_timeout', 30.0)),
                             synchronous=str(options.get('synchronous', 'NORMAL')))
        self._interval = self.polling_interval_min
        self._last_delivery = monotonic()  # a new connection starts polling fast (pidbox replies)

    def establish_connection(self) -> Any:
        with self.db.use():  # opens the file now, so a bad path fails at connect time
            pass
        return super().establish_connection()

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)
        finally:
            self.db.close()

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver what is ready, polling until ``timeout``: every ``polling_interval_min``
        while busy, backing off to ``polling_interval`` when idle."""
        start = monotonic()
        while True:
            self._maintain(start)
            try:
                self.cycle.get(self._deliver, timeout=timeout)
            except Empty:
                now = monotonic()
                if timeout is not None and now - start >= timeout:
                    raise socket.timeout() from None
                if now - self._last_delivery > BUSY_WINDOW:
                    self._interval = min(self._interval * 1.5, self.polling_interval)
                pause = self._interval if timeout is None else min(self._interval, start + timeout - now)
                sleep(max(pause, 0.0))
            else:
                self._last_delivery = monotonic()
                self._interval = self.polling_interval_min
                return

    def heartbeat_check(self, connection: Any, rate: int = 2) -> None:
        """No heartbeats on a file; the worker calls this while its slots are busy, which is
        when held messages' claims must still be renewed."""
        self._maintain(monotonic())

    def _maintain(self, now: float) -> None:
        for channel in list(self.channels):
            if not channel.closed:
                channel.maintain(now)

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # no host: kombu would log "No hostname was supplied" for a default one
        return {'port': None, 'hostname': None}
