"""The embedded SQLite result backend on a real file: storing and reading metas (Celery's keys
and JSON), expiry and clean-up, groups, polling waits, and the native chord join (atomic,
idempotent, one claimer even across processes). Also the URL table of ``by_url``.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from taskflow import Taskflow, states
from taskflow.backends import by_url
from taskflow.backends import sqlite as backend_module
from taskflow.backends.sqlite import SQLiteBackend, path_from_url
from taskflow.exceptions import TimeoutError
from taskflow.protocol import Context
from taskflow.result import GroupResult


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / 'results.sqlite'
    yield path
    for suffix in ('', '-wal', '-shm'):
        Path(f'{path}{suffix}').unlink(missing_ok=True)


def make_app(db_path: Path, **conf: Any) -> Taskflow:
    app = Taskflow('t', broker='memory://', backend=f'sqlite:///{db_path}', set_as_current=False)
    app.conf.update(**conf)
    return app


@pytest.fixture
def app(db_path: Path) -> Iterator[Taskflow]:
    app = make_app(db_path, result_extended=True)
    yield app
    app.close()


def rows(db_path: Path, table: str = 'taskflow_result') -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as db:
        return db.execute(f'SELECT * FROM {table}').fetchall()


# --- URLs --------------------------------------------------------------------------------------
def test_by_url_picks_the_sqlite_and_database_backends(db_path: Path) -> None:
    app = make_app(db_path)
    assert isinstance(app.backend, SQLiteBackend)
    assert app.backend.path == str(db_path)
    app.conf.database_create_tables_at_setup = False  # no database needed to build it
    for url in ('db+sqlite:///x.sqlite', 'db+postgresql://u@h/db', 'db+mysql+pymysql://root@h/db',
                'db+postgresql+psycopg2://u@h/db'):
        assert type(by_url(app, url)).__name__ == 'DatabaseBackend', url


def test_a_bare_url_uses_the_brokers_file_when_the_broker_is_sqlite() -> None:
    assert path_from_url('sqlite:///results.sqlite') == 'results.sqlite'
    assert path_from_url('sqlite:////var/lib/r.sqlite') == '/var/lib/r.sqlite'
    assert path_from_url('sqlite://', broker_url='sqlite:////data/q.sqlite') == '/data/q.sqlite'
    assert path_from_url('sqlite://', broker_url='redis://localhost') == './taskflow.sqlite'
    assert path_from_url('sqlite://') == './taskflow.sqlite'


# --- results -----------------------------------------------------------------------------------
def test_store_and_read_a_result_in_celerys_format(app: Taskflow, db_path: Path) -> None:
    request = Context(id='t1', task='t.add', args=[2, 2], kwargs={}, hostname='w1@h', retries=0,
                      delivery_info={'routing_key': 'celery'})
    app.backend.store_result('t1', 4, states.SUCCESS, request=request)
    assert app.AsyncResult('t1').get(timeout=1) == 4
    [(key, value, expires_at)] = rows(db_path)
    assert key == 'celery-task-meta-t1'
    meta = json.loads(value)
    assert meta['status'] == 'SUCCESS' and meta['result'] == 4 and meta['task_id'] == 't1'
    assert meta['name'] == 't.add' and meta['args'] == [2, 2] and meta['worker'] == 'w1@h'
    assert meta['queue'] == 'celery'
    assert expires_at == pytest.approx(time.time() + 86400, abs=60)


def test_a_failure_comes_back_as_its_exception(app: Taskflow) -> None:
    app.backend.mark_as_failure('t2', KeyError('missing'), traceback='Traceback ...')
    result = app.AsyncResult('t2')
    with pytest.raises(KeyError, match='missing'):
        result.get(timeout=1)
    assert result.state == states.FAILURE and result.traceback == 'Traceback ...'


def test_unknown_ids_are_pending_and_forget_removes(app: Taskflow, db_path: Path) -> None:
    assert app.AsyncResult('nobody').state == states.PENDING
    app.backend.mark_as_done('t3', 'x')
    app.AsyncResult('t3').forget()
    assert rows(db_path) == []
    assert app.backend.get_task_meta('t3', cache=False)['status'] == states.PENDING


def test_many_metas_in_one_read(app: Taskflow) -> None:
    for i in range(3):
        app.backend.mark_as_done(f'm{i}', i)
    metas = app.backend.get_many_metas(['m0', 'm1', 'm2', 'missing'])
    assert [metas[f'm{i}']['result'] for i in range(3)] == [0, 1, 2]
    assert metas['missing']['status'] == states.PENDING


def test_expired_results_are_not_read_and_cleanup_deletes_them(db_path: Path) -> None:
    app = make_app(db_path, result_expires=0.2)
    try:
        app.backend.mark_as_done('short', 1)
        assert app.backend.get_task_meta('short', cache=False)['status'] == states.SUCCESS
        time.sleep(0.25)
        assert app.backend.get_task_meta('short', cache=False)['status'] == states.PENDING
        assert len(rows(db_path)) == 1  # still in the file until cleaned up
        app.backend.cleanup()
        assert rows(db_path) == []
    finally:
        app.close()


def test_no_expiry_keeps_results(db_path: Path) -> None:
    app = make_app(db_path, result_expires=None)
    try:
        app.backend.mark_as_done('kept', 1)
        app.backend.cleanup()
        assert [r[2] for r in rows(db_path)] == [None]
    finally:
        app.close()


def test_groups_save_restore_delete(app: Taskflow) -> None:
    group = GroupResult('g1', [app.AsyncResult('a'), app.AsyncResult('b')], app=app)
    group.save()
    restored = GroupResult.restore('g1', app=app)
    assert restored is not None and [r.id for r in restored.results] == ['a', 'b']
    group.delete()
    assert GroupResult.restore('g1', app=app) is None


def test_wait_for_returns_when_another_thread_stores(app: Taskflow) -> None:
    threading.Timer(0.1, app.backend.mark_as_done, ('later', 'ok')).start()
    started = time.monotonic()
    assert app.AsyncResult('later').get(timeout=5) == 'ok'
    assert time.monotonic() - started < 4


def test_wait_for_times_out(app: Taskflow) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        app.backend.wait_for('never', timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2


def test_wait_for_polls_fast_first(app: Taskflow, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(backend_module.time, 'sleep', pauses.append)
    with pytest.raises(TimeoutError):
        app.backend.wait_for('never', timeout=0.05, interval=0.5)
    assert pauses[0] == pytest.approx(0.002)
    assert max(pauses) <= 0.05 + 1e-9


# --- the chord join ------------------------------------------------------------------------------
def test_the_member_that_completes_the_chord_gets_the_results_in_order(app: Taskflow) -> None:
    backend = app.backend
    backend.set_chord_size('c1', 3)
    assert backend.chord_part_return('c1', 'id2', 2, states.SUCCESS, 20) is None
    assert backend.chord_part_return('c1', 'id0', 0, states.SUCCESS, 0) is None
    assert backend.chord_part_return('c1', 'id0', 0, states.SUCCESS, 0) is None  # redelivered: counted once
    joined = backend.chord_part_return('c1', 'id1', 1, states.SUCCESS, 10)
    assert joined is not None
    token, entries = joined
    assert entries == [('id0', 'SUCCESS', 0), ('id1', 'SUCCESS', 10), ('id2', 'SUCCESS', 20)]
    # a copy of a member arriving while the body is being sent does not fire it again
    assert backend.chord_part_return('c1', 'id2', 2, states.SUCCESS, 20) is None
    backend.chord_cleanup('c1', token)
    assert backend.chord_part_return('c1', 'id1', 1, states.SUCCESS, 10) is None  # done: late copies ignored


def test_a_failed_member_comes_back_as_its_exception(app: Taskflow) -> None:
    backend = app.backend
    backend.set_chord_size('c2', 2)
    backend.chord_part_return('c2', 'ok', 0, states.SUCCESS, 1)
    joined = backend.chord_part_return('c2', 'bad', 1, states.FAILURE, ValueError('boom'))
    assert joined is not None
    (_, _, first), (_, state, second) = joined[1]
    assert first == 1 and state == states.FAILURE
    assert isinstance(second, ValueError) and second.args == ('boom',)


def test_unordered_chords_keep_arrival_order(db_path: Path) -> None:
    app = make_app(db_path, result_chord_ordered=False)
    try:
        app.backend.set_chord_size('c3', 2)
        app.backend.chord_part_return('c3', 'b', 1, states.SUCCESS, 'b')
        joined = app.backend.chord_part_return('c3', 'a', 0, states.SUCCESS, 'a')
        assert joined is not None and [e[2] for e in joined[1]] == ['b', 'a']
    finally:
        app.close()


def test_without_a_size_nobody_completes_the_chord(app: Taskflow) -> None:
    assert app.backend.chord_part_return('unknown', 'x', 0, states.SUCCESS, 1) is None


def test_re_applying_a_chord_starts_afresh(app: Taskflow) -> None:
    backend = app.backend
    backend.set_chord_size('c4', 2)
    backend.chord_part_return('c4', 'x', 0, states.SUCCESS, 'old')
    backend.set_chord_size('c4', 2)
    assert backend.chord_part_return('c4', 'y', 1, states.SUCCESS, 'new') is None  # 'old' was dropped


def test_a_claim_whose_holder_died_can_be_taken_over(app: Taskflow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, 'CLAIM_TTL', 0.1)
    backend = app.backend
    backend.set_chord_size('c5', 1)
    first = backend.chord_part_return('c5', 'x', 0, states.SUCCESS, 1)
    assert first is not None  # ... and its holder dies before sending the body
    assert backend.chord_part_return('c5', 'x', 0, states.SUCCESS, 1) is None  # claim still held
    time.sleep(0.15)
    second = backend.chord_part_return('c5', 'x', 0, states.SUCCESS, 1)  # the redelivered member
    assert second is not None and second[0] != first[0]
    backend.chord_cleanup('c5', first[0])  # the stale holder's clean-up does nothing
    assert backend.chord_part_return('c5', 'x', 0, states.SUCCESS, 1) is None
    backend.chord_cleanup('c5', second[0])
    with sqlite3.connect(app.backend.path) as db:
        assert db.execute("SELECT done FROM taskflow_chord WHERE group_id = 'c5'").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM taskflow_chord_part WHERE group_id = 'c5'").fetchone() == (0,)


def test_members_finishing_at_once_in_several_processes_fire_the_body_once(db_path: Path) -> None:
    app = make_app(db_path)
    size = 8
    app.backend.set_chord_size('race', size)
    read_fd, write_fd = os.pipe()
    children = []
    for i in range(size):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                joined = app.backend.chord_part_return('race', f'm{i}', i, states.SUCCESS, i)
                os.write(write_fd, b'C' if joined is not None else b'-')
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.close(write_fd)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with os.fdopen(read_fd, 'rb') as pipe:
        outcomes = pipe.read()
    assert len(outcomes) == size and outcomes.count(b'C') == 1
    app.close()
