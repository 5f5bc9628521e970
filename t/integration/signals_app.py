"""The test app of ``tasks.py`` with a receiver on each Celery-named signal the worker sends.

``taskflow -A t.integration.signals_app worker`` loads it; each receiver appends
``<signal> <pid> <detail>`` to the file named by ``TF_TEST_SIGNALS_FILE``. When
``TF_TEST_SIGNALS_LOG`` names a file, the ``setup_logging`` receiver takes over logging and sends
every record there as ``CUSTOM <level> <message>`` (so the worker's own set-up must stay away).
"""
from __future__ import annotations

import logging
import os

from taskflow import signals
from t.integration.tasks import app  # noqa: F401 - the app ``-A`` finds here

SIGNALS_FILE = os.environ.get('TF_TEST_SIGNALS_FILE', os.devnull)


def _write(name: str, detail: object = '') -> None:
    with open(SIGNALS_FILE, 'a') as fh:
        fh.write(f'{name} {os.getpid()} {detail}\n')


def _task_name(sender: object) -> str:
    return getattr(sender, 'name', None) or str(sender)


@signals.task_prerun.connect
def on_task_prerun(sender=None, task_id=None, **kwargs):
    _write('task_prerun', f'{_task_name(sender)} {task_id}')


@signals.task_postrun.connect
def on_task_postrun(sender=None, task_id=None, state=None, **kwargs):
    _write('task_postrun', f'{_task_name(sender)} {task_id} {state}')


@signals.task_success.connect
def on_task_success(sender=None, result=None, **kwargs):
    _write('task_success', f'{_task_name(sender)} {result!r}')


@signals.task_failure.connect
def on_task_failure(sender=None, task_id=None, exception=None, **kwargs):
    _write('task_failure', f'{_task_name(sender)} {task_id} {type(exception).__name__}')


@signals.task_retry.connect
def on_task_retry(sender=None, request=None, reason=None, **kwargs):
    _write('task_retry', f'{_task_name(sender)} {getattr(request, "id", None)} {type(reason).__name__}')


@signals.task_revoked.connect
def on_task_revoked(sender=None, request=None, terminated=None, expired=None, **kwargs):
    _write('task_revoked', f'{_task_name(sender)} {getattr(request, "id", None)} '
                           f'terminated={terminated} expired={expired}')


@signals.before_task_publish.connect
def on_before_task_publish(sender=None, headers=None, **kwargs):
    _write('before_task_publish', f'{sender} {(headers or {}).get("id")}')


@signals.after_task_publish.connect
def on_after_task_publish(sender=None, headers=None, **kwargs):
    _write('after_task_publish', f'{sender} {(headers or {}).get("id")}')


@signals.worker_ready.connect
def on_worker_ready(sender=None, **kwargs):
    _write('worker_ready', getattr(sender, 'hostname', ''))


@signals.worker_process_init.connect
def on_worker_process_init(**kwargs):
    _write('worker_process_init')


@signals.worker_shutdown.connect
def on_worker_shutdown(sender=None, **kwargs):
    _write('worker_shutdown', getattr(sender, 'hostname', ''))


if os.environ.get('TF_TEST_SIGNALS_LOG'):
    @signals.setup_logging.connect
    def on_setup_logging(loglevel=None, **kwargs):
        handler = logging.FileHandler(os.environ['TF_TEST_SIGNALS_LOG'])
        handler.setFormatter(logging.Formatter('CUSTOM %(levelname)s %(message)s'))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        _write('setup_logging', loglevel)
