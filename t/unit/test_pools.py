"""``taskflow.pools.PreforkPool`` with real billiard children (no broker): the worker's thread
reads the children's messages itself (``collect``), the supervisor thread reads them too before
it looks for dead children, and billiard's result thread takes over when the pool stops."""
from __future__ import annotations

import os
import queue
import signal
import time
from typing import Any

import pytest

from taskflow.app import Taskflow
from taskflow.exceptions import WorkerLostError
from taskflow.pools import PreforkPool, _schedule_as_batch, _unwrap


def _double(value: int, job: int) -> int:
    return value * 2


def _die(job: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def pool():
    pool = PreforkPool(1, app=Taskflow('t', broker='memory://', backend='memory://'), hostname='t@h',
                       lost_worker_timeout=0.1)
    pool.start()
    yield pool
    pool.terminate()


def put(pool: PreforkPool, func: Any, *args: Any) -> tuple[queue.SimpleQueue, queue.SimpleQueue]:
    outcomes: queue.SimpleQueue = queue.SimpleQueue()
    accepts: queue.SimpleQueue = queue.SimpleQueue()
    pool._pool.put_job(func, args, outcomes.put, lambda einfo: outcomes.put(_unwrap(einfo)),
                       lambda pid, _at: accepts.put(pid), None, None)
    return outcomes, accepts


def collect_until_outcome(pool: PreforkPool, outcomes: queue.SimpleQueue, timeout: float = 15) -> None:
    """Read the children's messages in this thread until an outcome is there (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while outcomes.empty() and time.monotonic() < deadline:
        pool.collect(0.1)


def test_outcomes_come_from_collect_in_the_calling_thread(pool):
    outcomes, accepts = put(pool, _double, 21)
    collect_until_outcome(pool, outcomes)
    assert outcomes.get_nowait() == 42
    assert accepts.get_nowait() in pool.processes()
    assert not pool.collect(0)  # nothing more to read


def test_a_child_killed_after_its_accept_is_lost_even_when_nobody_collects(pool):
    # The supervisor must read the child's accept before it clears the dead child away:
    # a job it does not know was taken would wait for its result forever.
    outcomes, accepts = put(pool, _die)
    outcome = outcomes.get(timeout=15)
    assert isinstance(outcome, WorkerLostError)
    assert isinstance(accepts.get_nowait(), int)


def test_results_are_read_by_billiards_thread_once_the_pool_stops(pool):
    outcomes, _ = put(pool, _double, 4)
    pool.stop(timeout=15)  # nobody collects: the handed-over result thread does
    assert outcomes.get(timeout=5) == 8


def _blob(size: int, job: int) -> bytes:
    return bytes(range(256)) * (size // 256)


def test_many_and_large_outcomes_arrive_whole_and_in_order(pool):
    # Outcomes larger than the pipe's buffer reach the reader in pieces; small ones arrive
    # several to a read. Each must come out whole, once.
    sizes = [256, 1 << 20, 512, 300 * 1024, 1024, 256 * 3]
    got: queue.SimpleQueue = queue.SimpleQueue()
    for size in sizes:
        pool._pool.put_job(_blob, (size,), got.put, lambda einfo: got.put(_unwrap(einfo)), None, None, None)
    outcomes = []
    deadline = time.monotonic() + 30
    while len(outcomes) < len(sizes) and time.monotonic() < deadline:
        pool.collect(0.1)
        while not got.empty():
            outcomes.append(got.get_nowait())
    assert [len(o) for o in outcomes] == sizes  # one child: in the order sent
    assert all(o == _blob(len(o), 0) for o in outcomes)
    assert not pool.collect(0)


def test_a_large_outcome_half_read_at_stop_reaches_billiards_thread_whole(pool):
    outcomes, _ = put(pool, _blob, 1 << 20)
    reader = pool._pool._results_reader
    with pool._pool._results_lock:  # (the supervisor thread reads under it too)
        while not reader.buffer:  # the accept, then the first 64 KiB read of the 1 MiB outcome
            assert reader.wait(15)
            for message in reader.read():
                pool._pool._result_handler.on_state_change(message)
    pool.stop(timeout=15)
    assert len(outcomes.get(timeout=5)) == 1 << 20


def _policy(job: int) -> int:
    return os.sched_getscheduler(0)


@pytest.mark.skipif(not hasattr(os, 'SCHED_BATCH'), reason='Linux scheduling policies')
@pytest.mark.parametrize('batch, policy', [(True, 'SCHED_BATCH'), (False, 'SCHED_OTHER')])
def test_children_run_as_batch_work_unless_turned_off(batch, policy):
    # (the default is True; SCHED_BATCH keeps a waking child from preempting the worker)
    app = Taskflow('t', broker='memory://', backend='memory://')
    if not batch:
        app.conf.worker_pool_batch_scheduling = False
    pool = PreforkPool(1, app=app, hostname='t@h')
    pool.start()
    try:
        outcomes, _ = put(pool, _policy)
        collect_until_outcome(pool, outcomes)
        assert outcomes.get_nowait() == getattr(os, policy)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the worker's own process is left alone
    finally:
        pool.terminate()


@pytest.mark.skipif(not hasattr(os, 'SCHED_IDLE'), reason='Linux scheduling policies')
def test_a_policy_the_operator_chose_is_kept():
    # A worker started under `chrt --idle` keeps its children idle-class, not batch. (In a
    # forked process: this one could not always leave SCHED_IDLE again.)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            _schedule_as_batch()
            os.write(write_end, str(os.sched_getscheduler(0)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        assert int(os.read(read_end, 16) or -1) == os.SCHED_IDLE
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
