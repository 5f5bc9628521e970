"""Environment variables shared by the benchmark driver, the client processes and the two
apps: the driver sets them for every worker and client subprocess it starts.

Kept free of framework imports: the taskflow worker must not import Celery, nor the other way.
"""
from __future__ import annotations

import os
from typing import Any

BROKER = 'TF_BENCH_BROKER'      # broker URL (Redis DB 10 or the RabbitMQ vhost taskflow-bench)
BACKEND = 'TF_BENCH_BACKEND'    # result backend URL (Redis DB 11)
QUEUE = 'TF_BENCH_QUEUE'        # the queue of this run (a fresh name per worker)
COUNTERS = 'TF_BENCH_COUNTERS'  # Redis URL of the counters the `incr` task bumps (DB 12)
KEYPREFIX = 'TF_BENCH_KEYPREFIX'  # prefix of every result key of this run (so it can delete them)

DEFAULT_BROKER = 'redis://127.0.0.1:6379/10'
DEFAULT_BACKEND = 'redis://127.0.0.1:6379/11'
DEFAULT_COUNTERS = 'redis://127.0.0.1:6379/12'
DEFAULT_QUEUE = 'bench'


def app_settings() -> dict[str, Any]:
    """The settings both apps are made with; everything else is each framework's default.

    ``global_keyprefix`` (both frameworks support it) puts the run's result keys in a namespace
    of their own: the run deletes exactly those afterwards, never a whole Redis DB, so two runs
    (or a run and the smoke test) sharing the DBs cannot wipe each other's results."""
    settings = {
        'broker': os.environ.get(BROKER, DEFAULT_BROKER),
        'backend': os.environ.get(BACKEND, DEFAULT_BACKEND),
        'task_default_queue': os.environ.get(QUEUE, DEFAULT_QUEUE),
    }
    if os.environ.get(KEYPREFIX):
        settings['result_backend_transport_options'] = {'global_keyprefix': os.environ[KEYPREFIX]}
    return settings


def counters_url() -> str:
    return os.environ.get(COUNTERS, DEFAULT_COUNTERS)
