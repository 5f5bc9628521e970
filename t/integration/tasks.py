"""The app and tasks the integration tests run in real worker processes.

The worker is started as ``taskflow -A t.integration.tasks worker``; the broker, backend and
queue come from the environment (``TF_TEST_BROKER``, ``TF_TEST_BACKEND``, ``TF_TEST_QUEUE``),
which the test process sets the same way (see conftest.py).
"""
from __future__ import annotations

import os
import time

from taskflow import Taskflow
from taskflow.exceptions import Reject

app = Taskflow(
    't.integration.tasks',
    broker=os.environ.get('TF_TEST_BROKER', 'redis://127.0.0.1:6379/2'),
    backend=os.environ.get('TF_TEST_BACKEND', 'redis://127.0.0.1:6379/3'),
    task_default_queue=os.environ.get('TF_TEST_QUEUE', 'tf-test'),
    result_extended=True,
)


@app.task
def ping() -> str:
    return 'pong'


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task
def echo(*args, **kwargs):
    return [list(args), kwargs]


@app.task
def fail(message: str = 'expected failure') -> None:
    raise ValueError(message)


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(bind=True)
def request_info(self) -> dict:
    r = self.request
    return {'id': r.id, 'retries': r.retries, 'hostname': r.hostname, 'root_id': r.root_id,
            'parent_id': r.parent_id, 'delivery_info': r.delivery_info, 'eta': r.eta,
            'args': r.args, 'kwargs': r.kwargs, 'group': r.group, 'name': self.name}


@app.task(bind=True, max_retries=3, default_retry_delay=0.1)
def retry_until(self, succeed_on: int) -> int:
    if self.request.retries < succeed_on:
        raise self.retry(exc=KeyError(f'attempt {self.request.retries}'))
    return self.request.retries


@app.task(bind=True, autoretry_for=(KeyError,), retry_kwargs={'max_retries': 2, 'countdown': 0.1})
def autoretry_fail(self) -> None:
    raise KeyError(f'attempt {self.request.retries}')


@app.task(bind=True)
def reject_me(self, requeue: bool = False) -> None:
    raise Reject('no thanks', requeue=requeue)


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
def die_once(self, marker_path: str) -> str:
    """Kill the process running it the first time (marker file absent), succeed the next."""
    if not os.path.exists(marker_path):
        open(marker_path, 'w').close()
        os.kill(os.getpid(), 9)
    return 'survived'


@app.task
def kill_self() -> None:
    os.kill(os.getpid(), 9)


@app.task
def record(path: str, value: str) -> str:
    """Append ``value`` to ``path`` (for callbacks whose effect a test reads)."""
    with open(path, 'a') as fh:
        fh.write(value + '\n')
    return value


@app.task
def on_error_record(request, exc, traceback, path: str = '') -> None:  # noqa: ARG001
    """A new-style errback: called in the worker with the failed request and exception."""
    with open(path or '/dev/null', 'a') as fh:
        fh.write(f'{request.id} {type(exc).__name__}\n')


# --- tasks for test_calling.py / test_worker.py -----------------------------------------------
@app.task
def record_value(value, *, path: str) -> None:
    """Append ``repr(value)`` to ``path``: a link callback (value = the parent's return value) or
    an old-style errback (value = the failed task's id; one positional parameter, as Celery
    requires of old-style errbacks)."""
    with open(path, 'a') as fh:
        fh.write(f'{value!r}\n')


@app.task(track_started=True)
def tracked_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task
def getpid() -> int:
    return os.getpid()


@app.task
def sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.task
def catch_soft_limit(seconds: float) -> str:
    """Sleep; return a marker when the soft time limit interrupts the sleep."""
    from taskflow.exceptions import SoftTimeLimitExceeded
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return 'soft-limit-caught'
    return 'slept'


@app.task
def record_then_reject(path: str, requeue: bool = False) -> None:
    """Record a run, then reject the message."""
    with open(path, 'a') as fh:
        fh.write('run\n')
    raise Reject('rejected on purpose', requeue=requeue)


@app.task(bind=True, max_retries=2, default_retry_delay=0.1)
def retry_record(self, path: str) -> int:
    """Record each attempt, retry until max_retries is exceeded (-> the KeyError as FAILURE)."""
    with open(path, 'a') as fh:
        fh.write(f'{self.request.retries}\n')
    raise self.retry(exc=KeyError(f'attempt {self.request.retries}'))


@app.task
def span(seconds: float) -> list:
    """Sleep; return ``[start, end, pid]`` (wall-clock times) so tests can see what overlapped."""
    start = time.time()
    time.sleep(seconds)
    return [start, time.time(), os.getpid()]


# --- tasks for test_worker_semantics.py ---------------------------------------------------------
@app.task(rate_limit='2/s')
def rate_limited(i: int) -> int:
    """Rate-limited to 2 per second per worker (tests measure the spread of ``date_done``)."""
    return i


@app.task(time_limit=1)
def sleep_hard_limited(seconds: float) -> float:
    """A hard time limit of 1 s as a task attribute."""
    time.sleep(seconds)
    return seconds


@app.task(soft_time_limit=0.5)
def sleep_soft_limited(seconds: float) -> str:
    """A soft time limit of 0.5 s as a task attribute; returns a marker when it interrupts."""
    from taskflow.exceptions import SoftTimeLimitExceeded
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return 'soft-limit-caught'
    return 'slept'


_HOARD: list = []


@app.task
def hog_memory(megabytes: int) -> int:
    """Allocate ``megabytes`` MB and keep it in a module global (the child's RSS grows); the pid."""
    _HOARD.append(bytearray(megabytes * 1024 * 1024))
    for block in _HOARD:  # touch the pages so they count as resident
        for i in range(0, len(block), 4096):
            block[i] = 1
    return os.getpid()


@app.task
def send_add(x: int, y: int) -> str:
    """Publish ``add(x, y)`` from inside the worker; the child's id."""
    return add.delay(x, y).id


@app.task
def ignore_soft_limit(seconds: float) -> str:
    """Swallow the soft time limit and sleep on (only the hard limit can end it early)."""
    from taskflow.exceptions import SoftTimeLimitExceeded
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            pass
    return 'slept through'


# --- tasks for test_canvas.py -----------------------------------------------------------------
@app.task
def record_sum(numbers: list, path: str) -> int:
    """A chord body with a visible effect: append ``sum(numbers)`` to ``path`` (one line per run)."""
    total = sum(numbers)
    with open(path, 'a') as fh:
        fh.write(f'{total}\n')
    return total


@app.task
def slow_add(x: int, y: int, seconds: float = 0.5) -> int:
    """``x + y`` after ``seconds``: a header member that finishes last."""
    time.sleep(seconds)
    return x + y


def bulk_items():
    """The --source of the `taskflow map` test: 40 numbers."""
    return range(40)


@app.task
def square_or_fail(n: int) -> int:
    if n == 13:
        raise ValueError('unlucky 13')
    return n * n
