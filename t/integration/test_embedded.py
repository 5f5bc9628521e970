"""The zero-server set-up end to end: real ``taskflow worker`` processes started through the CLI,
with one SQLite file as broker *and* result store (``sqlite:////tmp/.../tf.sqlite`` and
``sqlite://``, which means "the broker's file").

Covers calling, failure, retry with countdown, group, chain, chords (native join and the
``celery.chord_unlock`` fallback), remote control (ping, inspect, ``taskflow status``), a worker
killed with SIGKILL while running an ``acks_late`` task (the task runs again once the
visibility timeout passes), and two workers sharing one file (each of 200 tasks runs once).
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from taskflow import chain, chord, group
from t.integration import embedded_tasks as et
from t.integration.conftest import ROOT, WorkerProcess, wait_for

TASKFLOW = [sys.executable, '-m', 'taskflow', '-A', 't.integration.embedded_tasks']


def broker_url(path: Path) -> str:
    return f'sqlite:///{path}'  # an absolute path: sqlite:////tmp/...


def configure(path: Path, **conf: Any) -> None:
    """Point the test process's app at ``path`` (broker and, through ``sqlite://``, results)."""
    et.app.close()
    et.app.conf.update(broker_url=broker_url(path), result_backend='sqlite://', result_chord_join='native',
                       result_chord_retry_interval=0.2, **conf)
    et.app.close()


def remove_db(path: Path) -> None:
    for suffix in ('', '-wal', '-shm'):
        Path(f'{path}{suffix}').unlink(missing_ok=True)


class Workers:
    """Starts ``taskflow worker`` processes on one SQLite file; stops them all at the end."""

    def __init__(self, path: Path, logdir: Path) -> None:
        self.path, self.logdir = path, logdir
        self.started: list[WorkerProcess] = []

    def start(self, vt: float = 300.0, concurrency: int = 2, name: str | None = None,
              extra: tuple[str, ...] = ()) -> WorkerProcess:
        env = {**os.environ, 'TF_EMB_BROKER': broker_url(self.path), 'TF_EMB_BACKEND': 'sqlite://',
               'TF_EMB_VT': str(vt)}
        env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
        node = name or f'emb-{uuid.uuid4().hex[:6]}@%h'
        w = WorkerProcess([*TASKFLOW, 'worker', '-l', 'INFO', '-c', str(concurrency), '-n', node, *extra],
                          env, self.logdir / f'worker-{len(self.started)}.log')
        w.node = node.replace('%h', os.uname().nodename)  # type: ignore[attr-defined]
        self.started.append(w)
        return w

    def wait_ready(self, w: WorkerProcess, timeout: float = 30.0) -> None:
        """Ready when the worker answers a ping addressed to it (it consumes by then)."""
        def answered() -> bool:
            if w.proc.poll() is not None:
                raise AssertionError(f'worker exited with {w.proc.returncode}:\n{w.log()}')
            return any(w.node in reply for reply in et.app.control.ping(destination=[w.node], timeout=0.5))
        wait_for(answered, timeout=timeout, interval=0.05, message=f'{w.node} to answer a ping')

    def stop_all(self) -> None:
        for w in self.started:
            w.stop()


@pytest.fixture(scope='module')
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, WorkerProcess]]:
    """One worker on one file for the module's simple tests."""
    base = tmp_path_factory.mktemp('embedded')
    path = base / 'tf.sqlite'
    configure(path)
    workers = Workers(path, base)
    w = workers.start()
    workers.wait_ready(w)
    yield path, w
    workers.stop_all()
    assert w.proc.returncode == 0, w.log()
    et.app.close()
    remove_db(path)


@pytest.fixture
def app_on(shared: tuple[Path, WorkerProcess]) -> Iterator[Path]:
    configure(shared[0])
    yield shared[0]
    configure(shared[0])


@pytest.fixture
def own_file(tmp_path: Path) -> Iterator[tuple[Path, Workers]]:
    """A fresh file and a worker factory for tests that kill or share workers."""
    path = tmp_path / 'own.sqlite'
    configure(path)
    workers = Workers(path, tmp_path)
    yield path, workers
    workers.stop_all()
    et.app.close()
    remove_db(path)


# --- one worker -----------------------------------------------------------------------------------
def test_a_result_round_trips_through_one_file(app_on: Path) -> None:
    result = et.add.delay(2, 3)
    assert result.get(timeout=10) == 5
    assert result.worker and result.name == 't.integration.embedded_tasks.add'
    with sqlite3.connect(app_on) as db:  # the same file holds the result
        assert db.execute('SELECT COUNT(*) FROM taskflow_result WHERE key = ?',
                          (f'celery-task-meta-{result.id}',)).fetchone() == (1,)
    # and the message is gone: acked when the child took the job up, which the worker hears of
    # on its own thread, so possibly just after the result was stored
    def consumed() -> bool:
        with sqlite3.connect(app_on) as db:
            return db.execute("SELECT COUNT(*) FROM taskflow_message WHERE queue = 'celery'").fetchone() == (0,)
    wait_for(consumed, timeout=5, message='the message acknowledged')


def test_a_failure_carries_its_exception(app_on: Path) -> None:
    result = et.fail.delay('bad input')
    with pytest.raises(ValueError, match='bad input'):
        result.get(timeout=10)
    assert result.state == 'FAILURE' and 'ValueError' in (result.traceback or '')


def test_retry_with_a_countdown(app_on: Path, tmp_path: Path) -> None:
    attempts = tmp_path / 'attempts'
    assert et.retry_twice.delay(str(attempts)).get(timeout=20) == 2
    times = [float(line) for line in attempts.read_text().split()]
    assert len(times) == 3
    assert all(later - earlier >= 0.25 for earlier, later in zip(times, times[1:])), times


def test_group_and_chain(app_on: Path) -> None:
    assert group(et.add.s(i, i) for i in range(10)).apply_async().get(timeout=15) == [2 * i for i in range(10)]
    assert chain(et.add.s(1, 2), et.add.s(3), et.add.s(4)).apply_async().get(timeout=15) == 10


@pytest.mark.parametrize('join', ['native', 'poll'])
def test_chord(app_on: Path, join: str) -> None:
    et.app.conf.result_chord_join = join
    result = chord(et.add.s(i, i) for i in range(10))(et.xsum.s())
    assert result.get(timeout=20) == 90


def test_a_failing_header_task_fails_the_chord(app_on: Path) -> None:
    result = chord([et.add.s(1, 1), et.fail.s('header broke')])(et.xsum.s())
    with pytest.raises(Exception, match='header broke'):
        result.get(timeout=20)
    assert result.state == 'FAILURE'


def test_remote_control_ping_and_inspect(app_on: Path, shared: tuple[Path, WorkerProcess]) -> None:
    node = shared[1].node  # type: ignore[attr-defined]
    assert {node: {'ok': 'pong'}} in et.app.control.ping(timeout=1)
    inspect = et.app.control.inspect(timeout=1)
    queues = inspect.active_queues()
    assert queues is not None and [q['name'] for q in queues[node]] == ['celery']
    stats = inspect.stats()
    assert stats is not None and node in stats
    env = {**os.environ, 'TF_EMB_BROKER': broker_url(app_on), 'TF_EMB_BACKEND': 'sqlite://',
           'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    status = subprocess.run([*TASKFLOW, 'status'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert node in status.stdout


# --- killed and shared workers ------------------------------------------------------------------------
def test_an_acks_late_task_runs_again_after_its_worker_is_killed(own_file: tuple[Path, Workers],
                                                                 tmp_path: Path) -> None:
    path, workers = own_file
    vt = 2.0
    first = workers.start(vt=vt)
    workers.wait_ready(first)
    runs = tmp_path / 'runs'
    result = et.slow_first_run.delay(str(runs), 60)
    wait_for(lambda: runs.exists() and runs.read_text().strip(), timeout=20, message='the first run to start')
    os.killpg(first.proc.pid, signal.SIGKILL)  # the worker and its pool: no ack, no clean-up
    killed_at = time.monotonic()
    first.wait(10)
    with sqlite3.connect(path) as db:  # still in the file, claimed by the dead worker
        assert db.execute("SELECT COUNT(*) FROM taskflow_message WHERE queue = 'celery' AND deliveries = 1"
                          ).fetchone() == (1,)
    second = workers.start(vt=vt)
    outcome = result.get(timeout=30)
    assert outcome['redelivered'] is True
    assert time.monotonic() - killed_at >= vt - 0.5  # not before the claim ran out
    pids = runs.read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1] and outcome['pid'] == int(pids[1])
    with sqlite3.connect(path) as db:  # acked this time
        wait_for(lambda: db.execute("SELECT COUNT(*) FROM taskflow_message WHERE queue = 'celery'").fetchone()
                 == (0,), timeout=10, message='the redelivered message to be acked')
    assert second.proc.poll() is None


def test_two_workers_on_one_file_run_each_task_once(own_file: tuple[Path, Workers], tmp_path: Path) -> None:
    path, workers = own_file
    pair = [workers.start(), workers.start()]
    for w in pair:
        workers.wait_ready(w)
    out = tmp_path / 'done'
    results = [et.record.delay(str(out), str(i)) for i in range(200)]
    by_worker: dict[str, int] = {}
    for r in results:
        r.get(timeout=60)
        by_worker[r.worker] = by_worker.get(r.worker, 0) + 1
    lines = out.read_text().split()
    assert sorted(lines, key=int) == [str(i) for i in range(200)], 'each task ran exactly once'
    assert set(by_worker) == {w.node for w in pair}, by_worker  # type: ignore[attr-defined]


def test_pool_children_forked_while_the_file_is_open_lose_nothing(own_file: tuple[Path, Workers],
                                                                   tmp_path: Path) -> None:
    """``--max-tasks-per-child 2``: billiard keeps forking new children from a parent that has
    the SQLite file open; each child stores results in it (SQLite's fork hazard, see
    taskflow.transports.sqlite.SQLiteFile)."""
    path, workers = own_file
    w = workers.start(extra=('--max-tasks-per-child', '2'))
    workers.wait_ready(w)
    out = tmp_path / 'done'
    results = [et.record.delay(str(out), str(i)) for i in range(60)]
    assert [r.get(timeout=60) for r in results] == [str(i) for i in range(60)]
    assert sorted(out.read_text().split(), key=int) == [str(i) for i in range(60)]
    with sqlite3.connect(path) as db:
        assert db.execute('PRAGMA integrity_check').fetchone() == ('ok',)
        stored = db.execute("SELECT COUNT(*) FROM taskflow_result WHERE value LIKE '%\"SUCCESS\"%'").fetchone()[0]
    assert stored >= 60
