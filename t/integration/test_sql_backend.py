"""The SQL result backend on real databases: PostgreSQL, MariaDB (PyMySQL) and a SQLite file,
each through SQLAlchemy with Celery 5.7's tables.

Each database gets tables of its own for this run, dropped afterwards: a fresh schema in
PostgreSQL's ``test`` database, a fresh MariaDB database, a temporary SQLite file. A server
that does not answer on 127.0.0.1 skips its tests (SQLite always runs), unless
``TF_TEST_REQUIRE_SQL=1`` (CI sets it: there, a missing server is a failure). The users are
``postgres`` and ``root`` without a password, or ``TF_TEST_PG_USER`` / ``TF_TEST_MYSQL_USER``
as ``user:password`` (``.ci/run`` sets them where it had to create users).

Covers storing and reading (also the raw rows, which must be what Celery writes), failures
with their exception type, ``result_extended`` fields, groups, the SUCCESS-wins rule, clean-up,
table names/schemas and lazy creation, columns added to an older table, legacy pickled rows,
a real Celery 5.7 client and backend reading and writing the same tables as we do, and a real
worker (Redis broker, SQL backend) running a chord through ``celery.chord_unlock``.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest

sa = pytest.importorskip('sqlalchemy')

from taskflow import Taskflow, chord, states  # noqa: E402
from taskflow.backends.database import DatabaseBackend  # noqa: E402
from taskflow.protocol import Context  # noqa: E402
from taskflow.result import GroupResult  # noqa: E402
from t.integration import embedded_tasks as et  # noqa: E402
from t.integration.conftest import REDIS_BROKER_URL, ROOT, WorkerProcess, wait_for  # noqa: E402

PG_USER = os.environ.get('TF_TEST_PG_USER', 'postgres')
MYSQL_USER = os.environ.get('TF_TEST_MYSQL_USER', 'root')
PG_ADMIN = f'postgresql+psycopg2://{PG_USER}@127.0.0.1:5432/test'
MYSQL_ADMIN = f'mysql+pymysql://{MYSQL_USER}@127.0.0.1:3306/test'
REQUIRE_SQL = os.environ.get('TF_TEST_REQUIRE_SQL') == '1'


def _skip_unless_required(reason: str) -> None:
    if REQUIRE_SQL:
        pytest.fail(f'{reason} (TF_TEST_REQUIRE_SQL=1)')
    pytest.skip(reason)


@dataclass
class Target:
    """One database for this run: our URL, Celery's URL, the schema and an engine to inspect."""
    kind: str
    url: str                 # what taskflow is given (Celery's form, no driver where possible)
    celery_url: str          # Celery 5.7 with SQLAlchemy 2.1 needs the driver spelled out
    schema: str | None
    engine: Any
    conf: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> str:
        return f'{self.schema}.{name}' if self.schema else name

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).fetchall()


def _reachable(url: str) -> bool:
    engine = sa.create_engine(url, connect_args={'connect_timeout': 3})
    try:
        with engine.connect():
            return True
    except Exception:  # noqa: BLE001 - any failure: the server is not there
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope='module', params=['sqlite', 'postgresql', 'mysql'])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    run = uuid.uuid4().hex[:10]
    if request.param == 'sqlite':
        path = tmp_path_factory.mktemp('sqlbackend') / 'results.sqlite'
        url = f'sqlite:///{path}'
        t = Target('sqlite', f'db+{url}', f'db+{url}', None, sa.create_engine(url))
        yield t
        t.engine.dispose()
        path.unlink(missing_ok=True)
    elif request.param == 'postgresql':
        if not _reachable(PG_ADMIN):
            _skip_unless_required('PostgreSQL is not answering on 127.0.0.1:5432')
        schema = f'tf_test_{run}'
        admin = sa.create_engine(PG_ADMIN)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA {schema}'))
        t = Target('postgresql', f'db+postgresql://{PG_USER}@127.0.0.1:5432/test', f'db+{PG_ADMIN}', schema, admin,
                   {'database_table_schemas': {'task': schema, 'group': schema}})
        yield t
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA {schema} CASCADE'))
        admin.dispose()
    else:
        if not _reachable(MYSQL_ADMIN):
            _skip_unless_required('MariaDB/MySQL is not answering on 127.0.0.1:3306')
        database = f'tf_test_{run}'
        admin = sa.create_engine(MYSQL_ADMIN)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE DATABASE {database}'))
        url = f'mysql+pymysql://{MYSQL_USER}@127.0.0.1:3306/{database}'
        t = Target('mysql', f'db+mysql://{MYSQL_USER}@127.0.0.1:3306/{database}', f'db+{url}', None,
                   sa.create_engine(url))
        yield t
        t.engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP DATABASE {database}'))
        admin.dispose()


def make_app(target: Target, **conf: Any) -> Taskflow:
    app = Taskflow('sqltest', broker='memory://', backend=target.url, set_as_current=False)
    app.conf.update(result_extended=True, **target.conf)
    app.conf.update(**conf)
    return app


@pytest.fixture
def app(target: Target) -> Iterator[Taskflow]:
    app = make_app(target)
    yield app
    app.close()


@pytest.fixture
def celery_app(target: Target) -> Iterator[Any]:
    celery = pytest.importorskip('celery')
    capp = celery.Celery('sqltest-celery', broker='memory://', backend=target.celery_url, set_as_current=False)
    capp.conf.update(result_extended=True, **target.conf)
    yield capp
    capp.backend.session_manager.invalidate(capp.backend.url) if hasattr(capp.backend, 'session_manager') else None


def request_for(task_id: str, name: str = 'proj.add', args: Any = (2, 2), kwargs: Any = None) -> Context:
    return Context(id=task_id, task=name, args=list(args), kwargs=kwargs or {}, hostname='w1@host', retries=1,
                   delivery_info={'routing_key': 'celery'})


def drop_tables(target: Target, *names: str) -> None:
    """DROP TABLE, not SQLAlchemy's ``Table.drop``: that would drop the shared id sequences
    (``task_id_sequence``) with them, under the other tables' feet."""
    with target.engine.begin() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS {target.table(name)}'))


def new_id() -> str:
    return str(uuid.uuid4())


# --- storing and reading ----------------------------------------------------------------------------
def test_the_backend_is_the_sql_one(app: Taskflow, target: Target) -> None:
    assert isinstance(app.backend, DatabaseBackend)
    assert app.backend.supports_native_join is False
    # SQLite: no pooled connection may stay open across fork(); servers: a normal pool
    assert isinstance(app.backend.engine.pool, sa.pool.NullPool) == (target.kind == 'sqlite')


def test_store_and_read_with_extended_fields(app: Taskflow, target: Target) -> None:
    task_id = new_id()
    app.backend.store_result(task_id, 4, states.SUCCESS, request=request_for(task_id, kwargs={'z': 1}))
    result = app.AsyncResult(task_id)
    assert result.get(timeout=5) == 4
    assert (result.name, result.args, result.kwargs, result.worker, result.queue, result.retries) == \
        ('proj.add', [2, 2], {'z': 1}, 'w1@host', 'celery', 1)
    assert abs(result.date_done - datetime.now(timezone.utc)) < timedelta(minutes=1)
    # the raw row, as Celery 5.7 writes it
    [row] = target.rows(f'SELECT status, result, name, args, kwargs, worker, retries, queue, date_done, children '
                        f'FROM {target.table("celery_taskmeta")} WHERE task_id = :id', id=task_id)
    status, value, name, args, kwargs, worker, retries, queue, date_done, children = row
    assert (status, bytes(value), name, bytes(args), bytes(kwargs), worker, retries, queue) == \
        ('SUCCESS', b'4', 'proj.add', b'[2, 2]', b'{"z": 1}', 'w1@host', 1, 'celery')
    if isinstance(date_done, str):  # SQLite has no datetime type: SQLAlchemy's text form
        date_done = datetime.fromisoformat(date_done)
    assert date_done.tzinfo is None and abs(date_done - datetime.utcnow()) < timedelta(minutes=1)
    assert children is None


def test_a_pending_task_and_a_started_one(app: Taskflow, target: Target) -> None:
    assert app.AsyncResult(new_id()).state == states.PENDING
    task_id = new_id()
    app.backend.mark_as_started(task_id, pid=12, hostname='w1')
    assert app.AsyncResult(task_id).state == states.STARTED
    assert app.AsyncResult(task_id).result == {'pid': 12, 'hostname': 'w1'}
    [(date_done,)] = target.rows(f'SELECT date_done FROM {target.table("celery_taskmeta")} WHERE task_id = :id',
                                 id=task_id)
    assert date_done is None  # only ready states have one


def test_a_failure_keeps_its_exception_type(app: Taskflow, target: Target) -> None:
    task_id = new_id()
    app.backend.mark_as_failure(task_id, KeyError('missing key'), traceback='Traceback (most recent call last): ...')
    result = app.AsyncResult(task_id)
    with pytest.raises(KeyError, match='missing key'):
        result.get(timeout=5)
    assert result.traceback.startswith('Traceback')
    [(value,)] = target.rows(f'SELECT result FROM {target.table("celery_taskmeta")} WHERE task_id = :id', id=task_id)
    assert json.loads(bytes(value)) == {'exc_type': 'KeyError', 'exc_message': ['missing key'],
                                        'exc_module': 'builtins'}


def test_a_stored_success_is_never_overwritten(app: Taskflow) -> None:
    task_id = new_id()
    app.backend.mark_as_done(task_id, 'first')
    app.backend.mark_as_failure(task_id, ValueError('late duplicate'))
    app.backend.mark_as_done(task_id, 'second')
    assert app.backend.get_task_meta(task_id, cache=False)['result'] == 'first'


def test_many_metas_and_forget(app: Taskflow) -> None:
    ids = [new_id() for _ in range(3)]
    for i, task_id in enumerate(ids):
        app.backend.mark_as_done(task_id, i)
    metas = app.backend.get_many_metas([*ids, 'missing'])
    assert [metas[i]['result'] for i in ids] == [0, 1, 2] and metas['missing']['status'] == states.PENDING
    app.AsyncResult(ids[0]).forget()
    assert app.backend.get_task_meta(ids[0], cache=False)['status'] == states.PENDING


def test_groups_save_restore_delete(app: Taskflow, target: Target) -> None:
    gid = new_id()
    members = [app.AsyncResult(new_id()) for _ in range(2)]
    GroupResult(gid, members, app=app).save()
    restored = GroupResult.restore(gid, app=app)
    assert restored is not None and [r.id for r in restored.results] == [m.id for m in members]
    [(value,)] = target.rows(f'SELECT result FROM {target.table("celery_tasksetmeta")} WHERE taskset_id = :id', id=gid)
    assert json.loads(bytes(value)) == [[gid, None], [[[m.id, None], None] for m in members]]
    GroupResult(gid, members, app=app).delete()
    assert GroupResult.restore(gid, app=app) is None


def test_cleanup_deletes_what_expired(target: Target) -> None:
    app = make_app(target, result_expires=3600)
    try:
        old, fresh, pending = new_id(), new_id(), new_id()
        for task_id in (old, fresh):
            app.backend.mark_as_done(task_id, 1)
        app.backend.mark_as_started(pending)
        with target.engine.begin() as conn:
            conn.execute(sa.text(f'UPDATE {target.table("celery_taskmeta")} SET date_done = :when WHERE task_id = :id'),
                         {'when': datetime.utcnow() - timedelta(hours=2), 'id': old})
        app.backend.cleanup()
        left = {r[0] for r in target.rows(f'SELECT task_id FROM {target.table("celery_taskmeta")} '
                                          f'WHERE task_id IN (:a, :b, :c)', a=old, b=fresh, c=pending)}
        assert left == {fresh, pending}
    finally:
        app.close()


def test_wait_for_times_out(app: Taskflow) -> None:
    from taskflow.exceptions import TimeoutError
    with pytest.raises(TimeoutError):
        app.AsyncResult(new_id()).get(timeout=0.3)


# --- settings ---------------------------------------------------------------------------------------
def test_table_names_and_lazy_creation(target: Target) -> None:
    prefix = f'tfx{uuid.uuid4().hex[:6]}_'
    names = {'task': f'{prefix}tasks', 'group': f'{prefix}groups'}
    app = make_app(target, database_table_names=names, database_create_tables_at_setup=False,
                   database_short_lived_sessions=True)
    try:
        backend = app.backend
        assert isinstance(backend.engine.pool, sa.pool.NullPool)
        inspector = sa.inspect(target.engine)
        assert not inspector.has_table(names['task'], schema=target.schema)  # not yet: made on first use
        task_id = new_id()
        backend.mark_as_done(task_id, 'x')
        assert app.AsyncResult(task_id).get(timeout=5) == 'x'
        inspector = sa.inspect(target.engine)
        assert inspector.has_table(names['task'], schema=target.schema)
        assert inspector.has_table(names['group'], schema=target.schema)
    finally:
        app.close()
        drop_tables(target, *names.values())


def test_missing_columns_are_added_to_an_older_table(target: Target) -> None:
    name = f'tfold{uuid.uuid4().hex[:6]}'
    old = sa.MetaData()
    table = sa.Table(name, old, sa.Column('id', sa.Integer, sa.Sequence('task_id_sequence', schema=target.schema),
                                          primary_key=True, autoincrement=True),
                     sa.Column('task_id', sa.String(155), unique=True), sa.Column('status', sa.String(50)),
                     sa.Column('result', sa.LargeBinary), sa.Column('date_done', sa.DateTime),
                     sa.Column('traceback', sa.Text), schema=target.schema)
    table.create(target.engine, checkfirst=True)  # a Celery < 5.5 table without children or the extended columns
    app = make_app(target, database_table_names={'task': name, 'group': f'{name}_g'})
    try:
        task_id = new_id()
        app.backend.store_result(task_id, [1], states.SUCCESS, request=request_for(task_id))
        assert app.AsyncResult(task_id).args == [2, 2]
        columns = {c['name'] for c in sa.inspect(target.engine).get_columns(name, schema=target.schema)}
        assert {'children', 'name', 'args', 'kwargs', 'worker', 'retries', 'queue'} <= columns
    finally:
        app.close()
        drop_tables(target, name, f'{name}_g')


def test_a_lost_id_sequence_is_made_again_past_the_highest_id(app: Taskflow, target: Target) -> None:
    if not app.backend.engine.dialect.supports_sequences:  # known once connected
        pytest.skip(f'{target.kind} numbers ids without a sequence')
    first = new_id()
    app.backend.mark_as_done(first, 1)  # at least one row, so a restart at 1 would collide
    sequence = app.backend.tasks.c.id.default
    with target.engine.begin() as conn:  # what dropping another table that shares it does
        conn.execute(sa.text(f'DROP SEQUENCE {target.table(sequence.name)}'))
    fresh = make_app(target)
    try:
        second = new_id()
        fresh.backend.mark_as_done(second, 2)
        assert fresh.AsyncResult(second).get(timeout=5) == 2
        ids = dict(target.rows(f'SELECT task_id, id FROM {target.table("celery_taskmeta")} '
                               f'WHERE task_id IN (:a, :b)', a=first, b=second))
        assert ids[second] > ids[first]
    finally:
        fresh.close()


class Opaque:
    pass


def test_legacy_pickled_rows(app: Taskflow, target: Target) -> None:
    app.backend.columns  # noqa: B018 - the tables exist
    plain, unsafe = new_id(), new_id()
    with target.engine.begin() as conn:  # rows as Celery < 5.5 wrote them (PickleType)
        for task_id, value in ((plain, {'total': 3, 'when': datetime(2020, 1, 2)}), (unsafe, Opaque())):
            conn.execute(sa.insert(app.backend.tasks).values(task_id=task_id, status='SUCCESS',
                                                             result=pickle.dumps(value, protocol=4),
                                                             date_done=datetime.utcnow()))
    assert app.AsyncResult(plain).get(timeout=5) == {'total': 3, 'when': datetime(2020, 1, 2)}
    with pytest.raises(pickle.UnpicklingError, match='Opaque'):
        app.backend.get_task_meta(unsafe, cache=False)


# --- a real Celery 5.7 on the same tables --------------------------------------------------------------
def test_celery_reads_what_we_store(app: Taskflow, celery_app: Any) -> None:
    ok, bad, gid = new_id(), new_id(), new_id()
    app.backend.store_result(ok, {'sum': [1, 2]}, states.SUCCESS, request=request_for(ok))
    app.backend.mark_as_failure(bad, ValueError('nope'))
    theirs = celery_app.AsyncResult(ok)
    assert theirs.get(timeout=5) == {'sum': [1, 2]}
    assert (theirs.name, theirs.args, theirs.worker, theirs.queue) == ('proj.add', [2, 2], 'w1@host', 'celery')
    assert theirs.date_done is not None
    with pytest.raises(ValueError, match='nope'):
        celery_app.AsyncResult(bad).get(timeout=5)
    GroupResult(gid, [app.AsyncResult(ok), app.AsyncResult(bad)], app=app).save()
    restored = celery_app.GroupResult.restore(gid)
    assert restored is not None and [r.id for r in restored.results] == [ok, bad]


def test_we_read_what_celery_stores(app: Taskflow, celery_app: Any) -> None:
    from celery.result import GroupResult as CeleryGroupResult
    ok, bad, gid = new_id(), new_id(), new_id()
    celery_app.backend.store_result(ok, [1, 'two', {'3': 4}], 'SUCCESS')
    celery_app.backend.mark_as_failure(bad, KeyError('theirs'))
    assert app.AsyncResult(ok).get(timeout=5) == [1, 'two', {'3': 4}]
    with pytest.raises(KeyError, match='theirs'):
        app.AsyncResult(bad).get(timeout=5)
    CeleryGroupResult(gid, [celery_app.AsyncResult(ok), celery_app.AsyncResult(bad)], app=celery_app).save()
    restored = GroupResult.restore(gid, app=app)
    assert restored is not None and [r.id for r in restored.results] == [ok, bad]


# --- a real worker: Redis broker, SQL backend -----------------------------------------------------------
@pytest.fixture(scope='module')
def sql_worker(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, WorkerProcess]]:
    queue = f'tf-sql-{target.kind}-{uuid.uuid4().hex[:8]}'
    env = {**os.environ, 'TF_EMB_BROKER': REDIS_BROKER_URL, 'TF_EMB_BACKEND': target.url, 'TF_EMB_QUEUE': queue,
           'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    if target.schema:
        env['TF_EMB_DB_SCHEMA'] = target.schema
    log = tmp_path_factory.mktemp('sqlworker') / 'worker.log'
    w = WorkerProcess([sys.executable, '-m', 'taskflow', '-A', 't.integration.embedded_tasks', 'worker', '-l', 'INFO',
                       '-c', '2', '-Q', queue, '-n', f'sql-{uuid.uuid4().hex[:6]}@%h'], env, log)
    configure_client(target, queue)
    try:
        wait_for(lambda: _pings(w), timeout=30, interval=0.1, message='the SQL-backend worker')
        yield queue, w
    finally:
        code = w.stop()
        et.app.close()
    assert code == 0, w.log()


def configure_client(target: Target, queue: str) -> None:
    et.app.close()
    et.app.conf.update(broker_url=REDIS_BROKER_URL, result_backend=target.url, task_default_queue=queue,
                       result_chord_join='native', result_chord_retry_interval=0.2,
                       database_table_schemas=target.conf.get('database_table_schemas', {}))
    et.app.close()


def _pings(w: WorkerProcess) -> bool:
    if w.proc.poll() is not None:
        raise AssertionError(f'worker exited with {w.proc.returncode}:\n{w.log()}')
    try:
        return et.ping.delay().get(timeout=1) == 'pong'
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_a_worker_stores_results_in_sql(target: Target, sql_worker: tuple[str, WorkerProcess]) -> None:
    queue, _ = sql_worker
    configure_client(target, queue)
    result = et.add.delay(20, 22)
    assert result.get(timeout=15) == 42
    assert result.worker and result.queue == queue
    [(status,)] = target.rows(f"SELECT status FROM {target.table('celery_taskmeta')} WHERE task_id = :id", id=result.id)
    assert status == 'SUCCESS'
    failed = et.fail.delay('in sql')
    with pytest.raises(ValueError, match='in sql'):
        failed.get(timeout=15)


def test_a_chord_joins_through_chord_unlock(target: Target, sql_worker: tuple[str, WorkerProcess]) -> None:
    queue, worker = sql_worker
    configure_client(target, queue)
    assert et.app.backend.supports_native_join is False
    result = chord(et.add.s(i, i) for i in range(6))(et.xsum.s())
    assert result.get(timeout=30) == 30
    # the body was sent by celery.chord_unlock, which polled the header's rows
    assert 'celery.chord_unlock' in worker.log()


def test_a_failing_chord_member_fails_the_body(target: Target, sql_worker: tuple[str, WorkerProcess]) -> None:
    queue, _ = sql_worker
    configure_client(target, queue)
    result = chord([et.add.s(1, 1), et.fail.s('member failed')])(et.xsum.s())
    with pytest.raises(Exception, match='member failed'):
        result.get(timeout=30)

