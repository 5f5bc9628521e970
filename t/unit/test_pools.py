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
from taskflow.pools import PreforkPool, _unwrap


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


def test_outcomes_come_from_collect_in_the_calling_thread(pool):
    outcomes, accepts = put(pool, _double, 21)
    deadline = time.monotonic() + 15
    while outcomes.empty() and time.monotonic() < deadline:
        pool.collect(0.1)
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
