"""The app and tasks of the embedded-broker and SQL-backend tests, run in real worker processes.

The worker is started as ``taskflow -A t.integration.embedded_tasks worker``; broker, backend,
queue, the SQLite visibility timeout and the SQL tables' schema and name prefix come from the
environment (``TF_EMB_BROKER``, ``TF_EMB_BACKEND``, ``TF_EMB_QUEUE``, ``TF_EMB_VT``,
``TF_EMB_DB_SCHEMA``, ``TF_EMB_DB_PREFIX``); the test process configures its copy of ``app``
the same way.
"""
from __future__ import annotations

import os
import time

from taskflow import Taskflow

app = Taskflow(
    't.integration.embedded_tasks',
    broker=os.environ.get('TF_EMB_BROKER', 'sqlite:///taskflow-test.sqlite'),
    backend=os.environ.get('TF_EMB_BACKEND', 'sqlite://'),
    task_default_queue=os.environ.get('TF_EMB_QUEUE', 'celery'),
    result_extended=True,
    broker_transport_options={'visibility_timeout': float(os.environ.get('TF_EMB_VT', '300'))},
)
if os.environ.get('TF_EMB_DB_SCHEMA'):
    app.conf.database_table_schemas = {'task': os.environ['TF_EMB_DB_SCHEMA'], 'group': os.environ['TF_EMB_DB_SCHEMA']}
if os.environ.get('TF_EMB_DB_PREFIX'):
    prefix = os.environ['TF_EMB_DB_PREFIX']
    app.conf.database_table_names = {'task': f'{prefix}taskmeta', 'group': f'{prefix}tasksetmeta'}


@app.task
def ping() -> str:
    return 'pong'


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task
def fail(message: str = 'expected failure') -> None:
    raise ValueError(message)


@app.task(bind=True, max_retries=3)
def retry_twice(self, path: str) -> int:
    """Fail twice (retrying with a countdown of 0.3 s), succeed the third time; each attempt
    appends its wall-clock time to ``path``."""
    with open(path, 'a') as fh:
        fh.write(f'{time.time()}\n')
    if self.request.retries < 2:
        raise self.retry(exc=KeyError(f'attempt {self.request.retries}'), countdown=0.3)
    return self.request.retries


@app.task(bind=True, acks_late=True)
def slow_first_run(self, path: str, seconds: float) -> dict:
    """Append this process's pid to ``path``; the first run (empty file) then sleeps ``seconds``
    (long enough for a test to kill its worker), later runs return at once."""
    first = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, 'a') as fh:
        fh.write(f'{os.getpid()}\n')
    if first:
        time.sleep(seconds)
    return {'pid': os.getpid(), 'redelivered': bool((self.request.delivery_info or {}).get('redelivered'))}


@app.task
def record(path: str, value: str) -> str:
    """Append ``value`` to ``path`` (O_APPEND: lines from several processes never interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f'{value}\n'.encode())
    finally:
        os.close(fd)
    return value
