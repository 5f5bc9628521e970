"""Periodic tasks for the beat integration tests (``t/integration/test_beat.py``).

Run as ``taskflow -A t.integration.beat_app beat`` and ``... worker``: it adds one task to the
shared test app (so the harness's ``ping`` readiness check still works) and, only when
``TF_BEAT_PERIOD`` is set, one periodic entry, so importing it elsewhere changes nothing.

- ``TF_BEAT_PERIOD``: seconds between fires of the entry ``record-fire``;
- ``TF_BEAT_RECORD_KEY``: the Redis list (backend DB) each run appends its fire time to;
- ``TF_BEAT_LOCK_NAME``: the single-beat lock name for ``TestScheduler`` (one per test);
- ``TF_BEAT_VIA=hook``: add the entry from ``app.on_after_configure`` with
  ``add_periodic_task``, as Celery users write it, instead of ``beat_schedule``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import redis

from t.integration.tasks import app
from taskflow.beat import PersistentScheduler

RECORD_KEY = os.environ.get('TF_BEAT_RECORD_KEY', 'tf-beat-records')


class TestScheduler(PersistentScheduler):
    """The default scheduler with a lock name of the test's own."""

    lock_name = os.environ.get('TF_BEAT_LOCK_NAME') or None


@app.task(bind=True, name='t.integration.beat_app.record_fire')
def record_fire(self: Any, key: str) -> str | None:
    """Append ``{fire_time, id}`` to list ``key``: the fire time beat put in the message."""
    fire_time = (self.request.headers or {}).get('beat_fire_time')
    client = redis.Redis.from_url(app.conf.result_backend)
    try:
        client.rpush(key, json.dumps({'fire_time': fire_time, 'id': self.request.id}))
    finally:
        client.close()
    return fire_time


if os.environ.get('TF_BEAT_PERIOD'):
    _period = float(os.environ['TF_BEAT_PERIOD'])
    if os.environ.get('TF_BEAT_VIA') == 'hook':
        @app.on_after_configure.connect
        def _setup_periodic_tasks(sender: Any, **kwargs: Any) -> None:
            sender.add_periodic_task(_period, record_fire.s(RECORD_KEY), name='record-fire')
    else:
        app.conf.beat_schedule = {
            'record-fire': {'task': record_fire.name, 'schedule': _period, 'args': (RECORD_KEY,)},
        }
