"""The Celery side: ``python -m celery -A t.benchmarks.celery_app worker``.

Same settings and the same task bodies as ``tf_app``; ``broker_connection_retry_on_startup``
only silences Celery's start-up deprecation warning (taskflow retries by default as well).
"""
from __future__ import annotations

from celery import Celery, chain, chord, group  # noqa: F401 - the client uses them from here

from t.benchmarks import bodies
from t.benchmarks.env import app_settings

FRAMEWORK = 'celery'

_settings = app_settings()
app = Celery('t.benchmarks.celery_app', broker=_settings.pop('broker'), backend=_settings.pop('backend'))
app.conf.update(broker_connection_retry_on_startup=True, **_settings)

ping = app.task(name='bench.ping')(bodies.ping)
add = app.task(name='bench.add')(bodies.add)
xsum = app.task(name='bench.xsum')(bodies.xsum)
incr = app.task(name='bench.incr')(bodies.incr)


def declare_queue() -> None:
    """Declare the default queue as the worker will."""
    with app.connection_for_write() as conn:
        app.amqp.queues[app.conf.task_default_queue](conn.default_channel).declare()
