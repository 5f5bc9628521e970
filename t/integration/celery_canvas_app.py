"""A real Celery 5.7 app for the canvas interop tests (``test_interop_canvas.py``), with tasks
named like those of ``t/integration/tasks.py`` (``t.integration.tasks.add``, ``xsum``, ...).

Two uses:
- a ``celery worker`` subprocess runs it (``python -m celery -A t.integration.celery_canvas_app
  worker``) and executes chains and chords a taskflow client sends;
- the test process uses it as a Celery *client* that builds chains and chords for a taskflow
  worker.

The broker, backend and queue come from ``TF_TEST_BROKER``, ``TF_TEST_BACKEND`` and
``TF_TEST_QUEUE``, as for the taskflow test app; the test process reloads this module after
changing them (``importlib.reload``), so each broker gets a fresh Celery app.
"""
from __future__ import annotations

import os
import time

from celery import Celery

celery_app = Celery(
    't.integration.celery_canvas_app',
    broker=os.environ.get('TF_TEST_BROKER', 'redis://127.0.0.1:6379/2'),
    backend=os.environ.get('TF_TEST_BACKEND', 'redis://127.0.0.1:6379/3'),
)
celery_app.conf.update(
    task_default_queue=os.environ.get('TF_TEST_QUEUE', 'tf-test'),
    result_extended=True,
    broker_connection_retry_on_startup=True,
)
app = celery_app  # ``celery -A t.integration.celery_canvas_app`` finds it under this name too


@celery_app.task(name='t.integration.tasks.ping')
def ping() -> str:
    return 'pong'


@celery_app.task(name='t.integration.tasks.add')
def add(x: int, y: int) -> int:
    return x + y


@celery_app.task(name='t.integration.tasks.mul')
def mul(x: int, y: int) -> int:
    return x * y


@celery_app.task(name='t.integration.tasks.xsum')
def xsum(numbers: list) -> int:
    return sum(numbers)


@celery_app.task(name='t.integration.tasks.echo')
def echo(*args, **kwargs):
    return [list(args), kwargs]


@celery_app.task(name='t.integration.tasks.fail')
def fail(message: str = 'expected failure') -> None:
    raise ValueError(message)


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
