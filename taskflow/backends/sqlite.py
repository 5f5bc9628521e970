"""The embedded result backend: results in a SQLite file (``sqlite:///path``), by default the
same file as the embedded broker, so one file holds a whole taskflow set-up.

- Keys and values are the Redis backend's (``celery-task-meta-<id>`` -> the encoded meta), in
  table ``taskflow_result`` with an expiry time (``result_expires``); ``cleanup()`` (run by
  ``celery.backend_cleanup``) deletes expired rows, and reads never return them.
- ``get()`` polls the file: every 2 ms at first, growing by half each time to 50 ms (or the
  ``interval`` given, if smaller). A read is a few microseconds on a local file.
- Chords join natively (``supports_native_join``): one ``BEGIN IMMEDIATE`` transaction records
  a header result, counts the members and, for the one that completes the set, claims the
  right to send the body. Members are keyed by (task id, group index), so a redelivered member
  is counted once. ``result_chord_join = 'poll'`` uses ``celery.chord_unlock`` instead.

URL: ``sqlite:///relative/path`` or ``sqlite:////absolute/path`` (SQLAlchemy's form);
``sqlite://`` alone means the broker's file when the broker is ``sqlite://`` too, else
``./taskflow.sqlite``. Options (``result_backend_transport_options``): ``busy_timeout`` (30 s),
``synchronous`` (``'NORMAL'``), ``max_poll_interval`` (0.05 s).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import taskflow.states as states
from ..exceptions import TimeoutError
from .base import Backend

__all__ = ['SQLiteBackend', 'DEFAULT_PATH']

logger = logging.getLogger(__name__)

DEFAULT_PATH = './taskflow.sqlite'
#: Seconds a chord body's sender holds its claim: another member may take over after it.
CLAIM_TTL = 60.0
#: A group index for members sent without one: they sort after the indexed ones.
NO_INDEX = 1 << 62

SCHEMA = """
CREATE TABLE IF NOT EXISTS taskflow_result (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL          -- NULL: kept forever
);
CREATE INDEX IF NOT EXISTS taskflow_result_expiry ON taskflow_result (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS taskflow_chord (
    group_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    token TEXT,              -- who claimed the body
    claimed_until REAL,
    done INTEGER NOT NULL DEFAULT 0,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS taskflow_chord_part (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    group_index INTEGER NOT NULL,
    state TEXT NOT NULL,
    value BLOB,
    UNIQUE (group_id, task_id, group_index)
);
"""


def path_from_url(url: str | None, broker_url: str | None = None) -> str:
    """The file of ``sqlite:///path``; for a bare ``sqlite://`` the broker's file when the
    broker is SQLite too, else ``DEFAULT_PATH``."""
    path = unquote(urlsplit(url or '').path)
    path = path[1:] if path.startswith('/') else path
    if path:
        return path
    if broker_url and broker_url.startswith('sqlite:') and broker_url != url:
        return path_from_url(broker_url)
    return DEFAULT_PATH


class _Handle:
    __slots__ = ('conn', 'lock', '__weakref__')

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.lock = threading.Lock()


class _File:
    """This backend's handle on the file: a connection per thread (WAL mode, schema made once
    per process), each used under its own lock.

    Fork safety, as in ``taskflow.transports.sqlite.SQLiteFile`` (this is its twin: backends and
    transports are separate L2 packages that do not import each other): a child forked while
    this process has the file open inherits SQLite's per-process lock tables, and its writes
    can get lost. So all our connections close before ``fork()`` (under their locks, held
    until the fork is done) and reopen lazily after it.
    """

    _files: 'weakref.WeakSet[_File]' = weakref.WeakSet()
    _created: set[tuple[int, str]] = set()

    def __init__(self, path: str, busy_timeout: float, synchronous: str) -> None:
        if synchronous.upper() not in ('OFF', 'NORMAL', 'FULL', 'EXTRA'):
            raise ValueError(f'synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}')
        self.path, self.busy_timeout, self.synchronous = path, busy_timeout, synchronous.upper()
        self._pid = os.getpid()
        self._local = threading.local()
        self._handles: 'weakref.WeakSet[_Handle]' = weakref.WeakSet()
        self._handles_lock = threading.Lock()
        with _files_lock:
            self._files.add(self)

    @contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():  # forked without Python's at-fork hooks: start afresh
            _abandoned.append((self._local, list(self._handles)))
            self._pid, self._local, self._handles = os.getpid(), threading.local(), weakref.WeakSet()
            self._handles_lock = threading.Lock()
        handle: _Handle | None = getattr(self._local, 'handle', None)
        if handle is None:
            handle = self._local.handle = _Handle()
            with self._handles_lock:
                self._handles.add(handle)
        with handle.lock:
            if handle.conn is None:
                handle.conn = self._open()
            yield handle.conn

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False only so the fork hook may close it (used under handle.lock)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f'PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}')
        conn.execute('PRAGMA journal_mode = WAL')
        conn.execute(f'PRAGMA synchronous = {self.synchronous}')
        key = (os.getpid(), os.path.abspath(self.path))
        if key not in self._created:
            conn.executescript(SCHEMA)
            self._created.add(key)
        return conn

    def query(self, sql: str, params: Any = ()) -> list[Any]:
        with self.use() as conn:
            return conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Any = ()) -> None:
        with self.use() as conn:
            conn.execute(sql, params)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short transaction holding the write lock from its start (``BEGIN IMMEDIATE``)."""
        with self.use() as conn:
            conn.execute('BEGIN IMMEDIATE')
            try:
                yield conn
            except BaseException:
                conn.execute('ROLLBACK')
                raise
            conn.execute('COMMIT')

    def close(self) -> None:
        handle: _Handle | None = getattr(self._local, 'handle', None)
        if handle is not None and self._pid == os.getpid():
            with handle.lock:
                if handle.conn is not None:
                    handle.conn.close()
                    handle.conn = None

    def before_fork(self) -> list[_Handle]:
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

    def after_fork(self, handles: list[_Handle], child: bool) -> None:
        for handle in handles:
            handle.lock.release()
        if child:
            self._pid, self._local, self._handles = os.getpid(), threading.local(), weakref.WeakSet()
        self._handles_lock.release()


_abandoned: list[Any] = []
_forking: list[tuple[_File, list[_Handle]]] = []
_files_lock = threading.Lock()


def _before_fork() -> None:
    _files_lock.acquire()  # released after the fork: no file is added meanwhile
    _forking[:] = [(db, db.before_fork()) for db in list(_File._files)]


def _after_fork(child: bool) -> None:
    for db, handles in _forking:
        db.after_fork(handles, child)
    _forking.clear()
    _files_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=lambda: _after_fork(False),
                    after_in_child=lambda: _after_fork(True))


class SQLiteBackend(Backend):
    """Results and chord joins in a local SQLite file (see the module docstring)."""

    supports_native_join = True

    def __init__(self, app: Any, url: str | None = None, **options: Any) -> None:
        super().__init__(app, url)
        conf = app.conf
        opts = dict(conf.result_backend_transport_options or {})
        self.path = path_from_url(url, conf.broker_url)
        self.db = _File(self.path, float(opts.get('busy_timeout', 30.0)), str(opts.get('synchronous', 'NORMAL')))
        self.max_poll_interval = float(opts.get('max_poll_interval', 0.05))
        self._next_cleanup = 0.0

    # --- primitives -----------------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        rows = self.db.query(
            'SELECT value FROM taskflow_result WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)',
            (key, time.time()))
        return rows[0][0] if rows else None

    def _mget(self, keys: list[str]) -> list[Any]:
        found: dict[str, Any] = {}
        now = time.time()
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            rows = self.db.query(
                f'SELECT key, value FROM taskflow_result WHERE key IN ({",".join("?" * len(part))}) '
                f'AND (expires_at IS NULL OR expires_at > ?)', [*part, now])
            found.update(rows)
        return [found.get(key) for key in keys]

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        now = time.time()
        self.db.run(
            'INSERT INTO taskflow_result (key, value, expires_at) VALUES (?, ?, ?) '
            'ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at',
            (key, value, now + ttl if ttl else None))
        if ttl and now >= self._next_cleanup:
            # results expire without a beat running celery.backend_cleanup: sweep now and then
            self._next_cleanup = now + 3600.0
            self.cleanup()

    def _delete(self, key: str) -> None:
        self.db.run('DELETE FROM taskflow_result WHERE key = ?', (key,))

    def cleanup(self) -> None:
        """Delete expired results and finished chords' leftovers."""
        now = time.time()
        with self.db.write() as conn:
            conn.execute('DELETE FROM taskflow_result WHERE expires_at IS NOT NULL AND expires_at <= ?', (now,))
            conn.execute('DELETE FROM taskflow_chord_part WHERE group_id IN (SELECT group_id FROM taskflow_chord '
                         'WHERE expires_at IS NOT NULL AND expires_at <= ?)', (now,))
            conn.execute('DELETE FROM taskflow_chord WHERE expires_at IS NOT NULL AND expires_at <= ?', (now,))

    # --- waiting ----------------------------------------------------------------------------------
    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5,
                 on_interval: Any = None) -> dict[str, Any]:
        """Poll until ``task_id`` is ready: 2 ms at first, growing to ``max_poll_interval``
        (50 ms) or ``interval`` if smaller. ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cap = max(0.001, min(interval, self.max_poll_interval))
        pause = min(0.002, cap)
        while True:
            meta = self.get_task_meta(task_id)
            if meta['status'] in states.READY_STATES:
                return meta
            if on_interval is not None:
                on_interval()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError('The operation timed out.')
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - now)))
            pause = min(pause * 1.5, cap)

    # --- chords -----------------------------------------------------------------------------------
    @property
    def _ordered(self) -> bool:
        options = self.app.conf.result_backend_transport_options or {}
        return bool(options.get('result_chord_ordered', self.app.conf.result_chord_ordered))

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Start a chord's join: ``size`` members complete it. A re-applied chord with the same
        group id starts afresh."""
        expires_at = time.time() + self.expires if self.expires else None
        with self.db.write() as conn:
            conn.execute('DELETE FROM taskflow_chord_part WHERE group_id = ?', (group_id,))
            conn.execute('INSERT OR REPLACE INTO taskflow_chord (group_id, size, token, claimed_until, done, '
                         'expires_at) VALUES (?, ?, NULL, NULL, 0, ?)', (group_id, int(size), expires_at))

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None, state: str,
                          result: Any) -> tuple[str, list[tuple[str, str, Any]]] | None:
        """Record one header result, atomically. Returns ``(claim token, [(id, state, value),
        ...])`` to the one caller whose result completed the chord, ``None`` to everybody else
        (also to a member delivered again after the body was sent)."""
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            result = self.prepare_exception(result)
        value = self.encode(result)
        index = NO_INDEX if group_index is None else int(group_index)
        now = time.time()
        token = uuid.uuid4().hex
        with self.db.write() as conn:
            chord = conn.execute('SELECT size, token, claimed_until, done FROM taskflow_chord WHERE group_id = ?',
                                 (group_id,)).fetchone()
            if chord is not None and chord[3]:
                return None  # the body was sent already
            conn.execute('INSERT OR IGNORE INTO taskflow_chord_part (group_id, task_id, group_index, state, value) '
                         'VALUES (?, ?, ?, ?, ?)', (group_id, task_id, index, state, value))
            if chord is None:
                return None  # size unknown (no set_chord_size): nobody can complete it, as on Redis
            size, holder, claimed_until = chord[0], chord[1], chord[2]
            count = conn.execute('SELECT COUNT(*) FROM taskflow_chord_part WHERE group_id = ?',
                                 (group_id,)).fetchone()[0]
            if count < size or (holder is not None and claimed_until is not None and claimed_until > now):
                return None
            conn.execute('UPDATE taskflow_chord SET token = ?, claimed_until = ? WHERE group_id = ?',
                         (token, now + CLAIM_TTL, group_id))
            order = 'group_index, seq' if self._ordered else 'seq'
            rows = conn.execute(f'SELECT task_id, state, value FROM taskflow_chord_part WHERE group_id = ? '
                                f'ORDER BY {order}', (group_id,)).fetchall()
        entries = []
        for member_id, member_state, raw in rows:
            decoded = self.decode(raw)
            if member_state in states.EXCEPTION_STATES:
                decoded = self.meta_from_decoded({'status': member_state, 'result': decoded})['result']
            entries.append((member_id, member_state, decoded))
        return token, entries

    def chord_cleanup(self, group_id: str, token: str) -> None:
        """The body was sent: drop the members and mark the chord done (only the claim's holder
        may), so late duplicates of its members are ignored."""
        with self.db.write() as conn:
            marked = conn.execute('UPDATE taskflow_chord SET done = 1, token = NULL, claimed_until = NULL '
                                  'WHERE group_id = ? AND token = ?', (group_id, token)).rowcount
            if marked:
                conn.execute('DELETE FROM taskflow_chord_part WHERE group_id = ?', (group_id,))

    def close(self) -> None:
        self.db.close()
