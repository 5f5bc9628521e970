"""SQL result backend through SQLAlchemy (optional extra ``taskflow[sql]``), in Celery 5.7's
tables and columns, so Celery and taskflow read each other's results from one database.

URL: ``db+`` followed by a SQLAlchemy URL: ``db+postgresql://user@host/db``,
``db+mysql+pymysql://root@127.0.0.1/db``, ``db+sqlite:///results.sqlite``. A URL without a driver
uses psycopg2 / PyMySQL (what ``taskflow[sql]`` installs) when SQLAlchemy's default driver for
that database is not installed.

Tables (names from ``database_table_names`` ``{'task': ..., 'group': ...}``, schemas from
``database_table_schemas``; made at start-up unless ``database_create_tables_at_setup`` is
False, then on first use):

- ``celery_taskmeta``: ``id`` (sequence ``task_id_sequence``), ``task_id`` (unique),
  ``status``, ``result``, ``date_done`` (naive UTC; NULL until ready), ``traceback``,
  ``children``; with ``result_extended`` also ``name``, ``args``, ``kwargs``, ``worker``,
  ``retries``, ``queue`` (and Celery's ``stamps``, left alone). Missing nullable columns are
  added to an existing table, as Celery does.
- ``celery_tasksetmeta``: ``id`` (sequence ``taskset_id_sequence``), ``taskset_id`` (unique),
  ``result``, ``date_done``.

``result``, ``children``, ``args`` and ``kwargs`` hold values encoded with
``result_serializer`` (JSON by default: ``b'4'``, an exception as ``{exc_type, exc_message,
exc_module}``), exactly as Celery 5.7 writes them. Rows written by Celery before 5.5 hold
pickles: those are read with an unpickler that only builds plain data unless ``pickle`` is in
``result_accept_content``. As in Celery 5.7, a stored SUCCESS is never overwritten.

``get()`` polls (5 ms at first, growing by half to ``max_poll_interval``, 0.2 s, or the
``interval`` given if smaller); chords use the ``celery.chord_unlock`` task. Operational and
interface errors (a dropped connection) are retried three times. ``database_engine_options``
go to ``create_engine`` (defaults ``pool_pre_ping=True, pool_recycle=3600``);
``database_short_lived_sessions`` opens a connection per operation (``NullPool``), as does a
SQLite database (a pooled SQLite connection must not stay open across ``fork()``). As with
Celery, MySQL's ``BLOB`` columns hold 64 KiB: larger results need a ``LONGBLOB`` column.
"""
from __future__ import annotations

import importlib.util
import io
import logging
import os
import pickle
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, TypeVar

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import taskflow.states as states
from ..exceptions import ImproperlyConfigured
from ..protocol import result_meta, utcnow
from .base import PENDING_META, Backend

__all__ = ['DatabaseBackend', 'task_table', 'group_table', 'engine_url']

logger = logging.getLogger(__name__)

T = TypeVar('T')
RETRIES = 3
RETRYABLE = (sa.exc.InterfaceError, sa.exc.OperationalError)
EXTENDED_COLUMNS = ('name', 'args', 'kwargs', 'worker', 'retries', 'queue')


def _integer() -> Any:
    return sa.Integer().with_variant(sa.BigInteger(), 'mssql')  # Celery's id type


def task_table(metadata: sa.MetaData, name: str = 'celery_taskmeta', schema: str | None = None) -> sa.Table:
    """Celery 5.7's ``TaskExtended`` table (a superset of ``Task``)."""
    return sa.Table(
        name, metadata,
        sa.Column('id', _integer(), sa.Sequence('task_id_sequence', schema=schema), primary_key=True,
                  autoincrement=True),
        sa.Column('task_id', sa.String(155), unique=True),
        sa.Column('status', sa.String(50), default=states.PENDING),
        sa.Column('result', sa.LargeBinary, nullable=True),
        sa.Column('date_done', sa.DateTime, nullable=True, index=True),
        sa.Column('traceback', sa.Text, nullable=True),
        sa.Column('children', sa.LargeBinary, nullable=True),
        sa.Column('name', sa.String(155), nullable=True),
        sa.Column('args', sa.LargeBinary, nullable=True),
        sa.Column('kwargs', sa.LargeBinary, nullable=True),
        sa.Column('worker', sa.String(155), nullable=True),
        sa.Column('retries', sa.Integer, nullable=True),
        sa.Column('queue', sa.String(155), nullable=True),
        sa.Column('stamps', sa.LargeBinary, nullable=True),
        schema=schema, sqlite_autoincrement=True)


def group_table(metadata: sa.MetaData, name: str = 'celery_tasksetmeta', schema: str | None = None) -> sa.Table:
    """Celery 5.7's ``TaskSet`` table."""
    return sa.Table(
        name, metadata,
        sa.Column('id', _integer(), sa.Sequence('taskset_id_sequence', schema=schema), primary_key=True,
                  autoincrement=True),
        sa.Column('taskset_id', sa.String(155), unique=True),
        sa.Column('result', sa.LargeBinary, nullable=True),
        sa.Column('date_done', sa.DateTime, nullable=True, index=True),
        schema=schema, sqlite_autoincrement=True)


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain data only: the legacy pickles Celery wrote hold JSON-like values."""

    ALLOWED = {('builtins', n) for n in ('dict', 'list', 'tuple', 'set', 'frozenset', 'str', 'bytes', 'bytearray',
                                         'int', 'float', 'complex', 'bool', 'range', 'slice')} | \
        {('datetime', n) for n in ('datetime', 'date', 'time', 'timedelta', 'timezone')} | \
        {('collections', 'OrderedDict'), ('decimal', 'Decimal'), ('uuid', 'UUID'), ('_codecs', 'encode')}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refusing to unpickle {module}.{name} from a legacy result row; add '
                                     f"'pickle' to result_accept_content to trust this database's pickles")


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return value.encode('utf-8') if isinstance(value, str) else bytes(value)


#: (dialect, the DBAPI module SQLAlchemy uses for it by default, our extra's driver instead)
_FALLBACK_DRIVERS = (('postgresql', 'psycopg', 'psycopg2'),  # SQLAlchemy 2.1 moved to psycopg 3
                     ('mysql', 'MySQLdb', 'pymysql'))


def engine_url(dburi: str) -> sa.URL:
    """The SQLAlchemy URL for ``dburi``; a URL naming no driver gets the one ``taskflow[sql]``
    installs (psycopg2, PyMySQL) when SQLAlchemy's default driver is not installed, so
    Celery-style ``db+postgresql://`` and ``db+mysql://`` work out of the box."""
    url = sa.engine.make_url(dburi)
    if '+' not in url.drivername:
        for dialect, default_module, ours in _FALLBACK_DRIVERS:
            if url.drivername == dialect and importlib.util.find_spec(default_module) is None \
                    and importlib.util.find_spec(ours) is not None:
                return url.set(drivername=f'{dialect}+{ours}')
    return url


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


class DatabaseBackend(Backend):
    """Results in SQL tables through SQLAlchemy (see the module docstring)."""

    supports_native_join = False
    first_poll_interval = 0.005  # then by half up to max_poll_interval (0.2 s by default)

    def __init__(self, app: Any, url: str | None = None, **options: Any) -> None:
        super().__init__(app, url)
        conf = app.conf
        if not url or not url.lower().startswith('db+'):
            raise ImproperlyConfigured(f'The database backend needs a db+<SQLAlchemy URL>, not {url!r}')
        self.dburi = url[3:]
        self.engine_options: dict[str, Any] = {'pool_pre_ping': True, 'pool_recycle': 3600,
                                               **dict(conf.database_engine_options or {}), **options}
        self.short_lived_sessions = bool(conf.database_short_lived_sessions)
        names = conf.database_table_names or {}
        schemas = conf.database_table_schemas or {}
        self.metadata = sa.MetaData()
        self.tasks = task_table(self.metadata, names.get('task') or 'celery_taskmeta', schemas.get('task'))
        self.groups = group_table(self.metadata, names.get('group') or 'celery_tasksetmeta', schemas.get('group'))
        self.max_poll_interval = float((conf.result_backend_transport_options or {}).get('max_poll_interval', 0.2))
        self._engine: sa.Engine | None = None
        self._engine_lock = threading.Lock()
        self._pid = os.getpid()
        self._columns: set[str] | None = None  # task-table columns the database has
        if conf.database_create_tables_at_setup:
            self._retrying(self._prepare)

    # --- engine and tables --------------------------------------------------------------------------
    @property
    def engine(self) -> sa.Engine:
        if self._engine is not None and self._pid != os.getpid():
            # A forked child must not share its parent's pooled connections (SQLAlchemy's
            # recipe: forget them without closing them).
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = self._create_engine()
                    self._pid = os.getpid()
        return self._engine

    def _create_engine(self) -> sa.Engine:
        url = engine_url(self.dburi)
        options = dict(self.engine_options)
        # SQLite: no pooled connection may stay open across fork() (a child's own connections
        # then lose writes, see taskflow.backends.sqlite), so one connection per operation.
        if self.short_lived_sessions or (url.get_backend_name() == 'sqlite' and 'poolclass' not in options):
            options['poolclass'] = NullPool
            for key in ('pool_size', 'max_overflow', 'pool_timeout'):
                options.pop(key, None)
        return sa.create_engine(url, **options)

    @property
    def columns(self) -> set[str]:
        if self._columns is None:
            self._retrying(self._prepare)
        assert self._columns is not None
        return self._columns

    def _prepare(self) -> None:
        """Create the tables (and sequences) if missing; add missing nullable columns to an
        existing task table, as Celery does; remember which columns there are."""
        engine = self.engine
        for attempt in range(RETRIES + 1):
            try:
                self.metadata.create_all(engine, checkfirst=True)
                break
            except sa.exc.DatabaseError:
                # two processes creating at once: one loses the race, the next check passes
                if attempt == RETRIES:
                    raise
                time.sleep(0.05 * (attempt + 1))
        if engine.dialect.supports_sequences:
            self._ensure_sequences(engine)
        table = self.tasks
        existing = {c['name'] for c in sa.inspect(engine).get_columns(table.name, schema=table.schema)}
        for column in table.columns:
            if column.name in existing or not column.nullable:
                continue
            ddl = (f'ALTER TABLE {engine.dialect.identifier_preparer.format_table(table)} ADD COLUMN '
                   f'{engine.dialect.identifier_preparer.quote(column.name)} {column.type.compile(engine.dialect)}')
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(ddl))
                existing.add(column.name)
            except sa.exc.DatabaseError as exc:
                logger.warning('Could not add column %r to %s (%s): %s', column.name, table.name, ddl, exc)
        self._columns = existing

    def _ensure_sequences(self, engine: sa.Engine) -> None:
        """create_all makes a table's id sequence only together with the table: an existing
        table whose sequence is gone (dropped with another table sharing its name, or never
        made) would fail every insert. Recreate it past the highest id."""
        inspector = sa.inspect(engine)
        for table in (self.tasks, self.groups):
            sequence = table.c.id.default
            if not isinstance(sequence, sa.Sequence) or \
                    sequence.name in inspector.get_sequence_names(schema=sequence.schema):
                continue
            with engine.begin() as conn:
                highest = conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
                sa.Sequence(sequence.name, start=highest + 1, schema=sequence.schema).create(conn, checkfirst=True)

    def _retrying(self, fun: Callable[..., T], *args: Any) -> T:
        for attempt in range(RETRIES + 1):
            try:
                return fun(*args)
            except RETRYABLE as exc:
                if attempt == RETRIES:
                    raise
                logger.warning('Result backend error (retrying): %r', exc)
                time.sleep(0.1 * (2 ** attempt))
        raise AssertionError('unreachable')

    # --- the primitives are not used: rows, not key/value pairs ----------------------------------
    def _get(self, key: str) -> Any:
        raise NotImplementedError('DatabaseBackend stores rows; use get_task_meta/restore_group')

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        raise NotImplementedError('DatabaseBackend stores rows; use store_result/save_group')

    def _delete(self, key: str) -> None:
        raise NotImplementedError('DatabaseBackend stores rows; use forget/delete_group')

    # --- tasks --------------------------------------------------------------------------------------
    def store_result(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Any = None) -> Any:
        """Store one task's state and result as Celery 5.7 does; a SUCCESS already stored wins."""
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            result = self.prepare_exception(result)
        children = [child.as_tuple() for child in (getattr(request, 'children', None) or [])]
        meta = result_meta(task_id, state, result, traceback, children, None, request, self.extended)
        values: dict[str, Any] = {
            'status': state,
            'result': _bytes(self.encode(result)),
            'date_done': _naive_utc(utcnow()) if state in states.READY_STATES else None,
            'traceback': traceback,
        }
        columns = self.columns
        if 'children' in columns:
            values['children'] = _bytes(self.encode(children)) if children else None
        if self.extended:
            for name in EXTENDED_COLUMNS:
                if name in columns:
                    value = meta.get(name)
                    if name in ('args', 'kwargs') and request is not None:
                        value = _bytes(self.encode(value))
                    values[name] = value
        self._retrying(self._upsert_task, task_id, values)
        return result

    def _upsert_task(self, task_id: str, values: dict[str, Any]) -> None:
        t = self.tasks
        not_success = sa.or_(t.c.status.is_(None), t.c.status != states.SUCCESS)
        for _ in range(RETRIES):
            try:
                with self.engine.begin() as conn:
                    if conn.execute(sa.update(t).where(t.c.task_id == task_id, not_success).values(**values)).rowcount:
                        return
                    if conn.execute(sa.select(t.c.status).where(t.c.task_id == task_id)).first() is not None:
                        return  # stored as SUCCESS already: a repeated run does not replace it
                    conn.execute(sa.insert(t).values(task_id=task_id, **values))
                    return
            except sa.exc.IntegrityError:
                continue  # inserted by someone else meanwhile: update that row instead
        raise RuntimeError(f'could not store the result of task {task_id}')

    def _select_tasks(self) -> Any:
        return sa.select(*[c for c in self.tasks.columns if c.name in self.columns and c.name != 'stamps'])

    def _meta_from_row(self, task_id: str, row: Any) -> dict[str, Any]:
        if row is None:
            return dict(PENDING_META, task_id=task_id)
        data = row._mapping
        meta: dict[str, Any] = {
            'task_id': task_id,
            'status': data['status'],
            'result': self._decode_stored(data['result']),
            'traceback': data['traceback'],
            'date_done': _aware(data['date_done']),
            'children': (self._decode_stored(data['children']) if data.get('children') is not None else None) or [],
        }
        if self.extended:
            for name in EXTENDED_COLUMNS:
                if name in data:
                    value = data[name]
                    meta[name] = self.decode(_bytes(value)) if name in ('args', 'kwargs') and value is not None \
                        else value
        return self.meta_from_decoded(meta)

    def _decode_stored(self, payload: Any) -> Any:
        """A value of the ``result``/``children`` columns: the serializer's bytes, or (rows from
        Celery < 5.5, starting with a pickle marker) a pickle."""
        if payload is None:
            return None
        data = _bytes(payload)
        assert data is not None
        try:
            return self.decode(data)
        except Exception:
            if data[:1] != b'\x80':
                raise
            if 'application/x-python-serialize' in self.accept:
                return pickle.loads(data)
            return _PlainUnpickler(io.BytesIO(data)).load()

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        if cache and task_id in self._ready_cache:
            return self._ready_cache[task_id]

        def read() -> Any:
            with self.engine.connect() as conn:
                return conn.execute(self._select_tasks().where(self.tasks.c.task_id == task_id)).first()
        meta = self._meta_from_row(task_id, self._retrying(read))
        self._remember(task_id, meta)
        return meta

    def get_many_metas(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(task_ids)
        missing = [i for i in ids if i not in self._ready_cache]
        rows: dict[str, Any] = {}

        def read(part: list[str]) -> None:
            with self.engine.connect() as conn:
                for row in conn.execute(self._select_tasks().where(self.tasks.c.task_id.in_(part))):
                    rows[row._mapping['task_id']] = row
        for start in range(0, len(missing), 500):
            self._retrying(read, missing[start:start + 500])
        fetched: dict[str, dict[str, Any]] = {}
        for task_id in missing:
            fetched[task_id] = self._meta_from_row(task_id, rows.get(task_id))
            self._remember(task_id, fetched[task_id])
        return {i: fetched[i] if i in fetched else self._ready_cache[i] for i in ids}

    def forget(self, task_id: str) -> None:
        self._ready_cache.pop(task_id, None)

        def delete() -> None:
            self.columns  # noqa: B018 - the tables exist
            with self.engine.begin() as conn:
                conn.execute(sa.delete(self.tasks).where(self.tasks.c.task_id == task_id))
        self._retrying(delete)

    # --- groups -------------------------------------------------------------------------------------
    def save_group(self, group_id: str, result: Any) -> Any:
        """Store a GroupResult as Celery does: the encoded ``as_tuple()``."""
        g = self.groups
        values = {'result': _bytes(self.encode(result.as_tuple())), 'date_done': _naive_utc(utcnow())}

        def save() -> None:
            self.columns  # noqa: B018 - the tables exist before the first write
            for _ in range(RETRIES):
                try:
                    with self.engine.begin() as conn:
                        if not conn.execute(sa.update(g).where(g.c.taskset_id == group_id).values(**values)).rowcount:
                            conn.execute(sa.insert(g).values(taskset_id=group_id, **values))
                        return
                except sa.exc.IntegrityError:
                    continue
            raise RuntimeError(f'could not save group {group_id}')
        self._retrying(save)
        return result

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        g = self.groups

        def read() -> Any:
            self.columns  # noqa: B018
            with self.engine.connect() as conn:
                return conn.execute(sa.select(g.c.taskset_id, g.c.result, g.c.date_done)
                                    .where(g.c.taskset_id == group_id)).first()
        row = self._retrying(read)
        if row is None:
            return None
        return {'taskset_id': row.taskset_id, 'result': self._decode_stored(row.result),
                'date_done': _aware(row.date_done)}

    def delete_group(self, group_id: str) -> None:
        def delete() -> None:
            self.columns  # noqa: B018 - the tables exist
            with self.engine.begin() as conn:
                conn.execute(sa.delete(self.groups).where(self.groups.c.taskset_id == group_id))
        self._retrying(delete)

    # --- upkeep -------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Delete tasks and groups finished longer than ``result_expires`` ago."""
        if not self.expires:
            return
        cutoff = _naive_utc(utcnow() - timedelta(seconds=self.expires))

        def delete() -> None:
            self.columns  # noqa: B018
            with self.engine.begin() as conn:
                conn.execute(sa.delete(self.tasks).where(self.tasks.c.date_done < cutoff))
                conn.execute(sa.delete(self.groups).where(self.groups.c.date_done < cutoff))
        self._retrying(delete)

    def close(self) -> None:
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None
