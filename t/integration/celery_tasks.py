"""A real Celery 5.7 app with tasks named like those of ``t/integration/tasks.py``.

Two uses (see ``test_interop.py`` and ``test_interop_canvas.py``):
- a ``celery worker`` subprocess runs it (``python -m celery -A t.integration.celery_tasks worker``)
  and executes messages, chains and chords a taskflow client sends;
- the test process uses it as a Celery *client* that sends tasks and canvases to a taskflow worker.

The broker, backend and queue come from ``TF_TEST_BROKER``, ``TF_TEST_BACKEND`` and
``TF_TEST_QUEUE``, exactly like the taskflow test app. The test process reloads this module
after changing them (``importlib.reload``), so a fresh Celery app is made for each broker.
"""
from __future__ import annotations

import os
import time

from celery import Celery

celery_app = Celery(
    't.integration.celery_tasks',
    broker=os.environ.get('TF_TEST_BROKER', 'redis://127.0.0.1:6379/2'),
    backend=os.environ.get('TF_TEST_BACKEND', 'redis://127.0.0.1:6379/3'),
)
celery_app.conf.update(
    task_default_queue=os.environ.get('TF_TEST_QUEUE', 'tf-test'),
    result_extended=True,
    broker_connection_retry_on_startup=True,
)
app = celery_app  # ``celery -A t.integration.celery_tasks`` finds it under this name too


@celery_app.task(name='t.integration.tasks.ping')
def ping() -> str:
    return 'pong'


@celery_app.task(name='t.integration.tasks.add')
def add(x: int, y: int) -> int:
    return x + y


@celery_app.task(name='t.integration.tasks.mul')
def mul(x: int, y: int) -> int:
    return x * y


@celery_app.task(name='t.integration.tasks.echo')
def echo(*args, **kwargs):
    return [list(args), kwargs]


@celery_app.task(name='t.integration.tasks.fail')
def fail(message: str = 'expected failure') -> None:
    raise ValueError(message)


@celery_app.task(name='t.integration.tasks.request_info', bind=True)
def request_info(self) -> dict:
    r = self.request
    return {'id': r.id, 'retries': r.retries, 'hostname': r.hostname, 'root_id': r.root_id,
            'parent_id': r.parent_id, 'delivery_info': r.delivery_info, 'eta': r.eta,
            'args': r.args, 'kwargs': r.kwargs, 'group': r.group, 'name': self.name}


@celery_app.task(name='t.integration.tasks.retry_until', bind=True, max_retries=3,
                 default_retry_delay=0.1)
def retry_until(self, succeed_on: int) -> int:
    if self.request.retries < succeed_on:
        raise self.retry(exc=KeyError(f'attempt {self.request.retries}'))
    return self.request.retries


@celery_app.task(name='t.integration.tasks.record')
def record(path: str, value: str) -> str:
    """Append ``value`` to ``path`` (for callbacks whose effect a test reads)."""
    with open(path, 'a') as fh:
        fh.write(value + '\n')
    return value


@celery_app.task(name='t.integration.tasks.xsum')
def xsum(numbers: list) -> int:
    return sum(numbers)


@celery_app.task(name='t.integration.tasks.slow_add')
def slow_add(x: int, y: int, seconds: float = 0.5) -> int:
    time.sleep(seconds)
    return x + y


@celery_app.task(name='t.integration.tasks.record_sum')
def record_sum(numbers: list, path: str) -> int:
    total = sum(numbers)
    with open(path, 'a') as fh:
        fh.write(f'{total}\n')
    return total


@celery_app.task(name='t.integration.tasks.on_error_record')
def on_error_record(request, exc, traceback, path: str = '') -> None:  # noqa: ARG001
    with open(path or '/dev/null', 'a') as fh:
        fh.write(f'{request.id} {type(exc).__name__}\n')
