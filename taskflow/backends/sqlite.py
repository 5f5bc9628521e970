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
import time
import uuid
from typing import Any

import taskflow.config as config
import taskflow.states as states
# the broker's file handling (a connection per thread, fork safety): often it is the same file
import taskflow.transports.sqlite as sqlite_transport
from .base import Backend

__all__ = ['SQLiteBackend', 'DEFAULT_PATH']

logger = logging.getLogger(__name__)

DEFAULT_PATH = sqlite_transport.DEFAULT_PATH
#: ``INSERT ... ON CONFLICT DO UPDATE`` (no ``RETURNING``, so older than the broker needs).
MIN_SQLITE = (3, 24, 0)
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
    default = DEFAULT_PATH
    if broker_url and broker_url.startswith('sqlite:') and broker_url != url:
        default = sqlite_transport.path_from_url(broker_url)
    return sqlite_transport.path_from_url(url, default)


class SQLiteBackend(Backend):
    """Results and chord joins in a local SQLite file (see the module docstring)."""

    supports_native_join = True
    first_poll_interval = 0.002  # then by half up to max_poll_interval (0.05 s by default)

    def __init__(self, app: Any, url: str | None = None, **options: Any) -> None:
        super().__init__(app, url)
        conf = app.conf
        opts = dict(conf.result_backend_transport_options or {})
        self.path = path_from_url(url, config.broker_url(conf))
        self.db = sqlite_transport.SQLiteFile(
            self.path, SCHEMA, busy_timeout=float(opts.get('busy_timeout', 30.0)),
            synchronous=str(opts.get('synchronous', 'NORMAL')), min_version=MIN_SQLITE)
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

    # --- chords -----------------------------------------------------------------------------------
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
            order = 'group_index, seq' if self.chord_ordered else 'seq'
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
