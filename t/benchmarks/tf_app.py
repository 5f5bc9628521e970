"""The taskflow side: ``python -m taskflow -A t.benchmarks.tf_app worker``.

Broker, backend and queue come from the environment (``t.benchmarks.env``); the tasks are the
shared bodies of ``t.benchmarks.bodies``.
"""
from __future__ import annotations

from taskflow import Taskflow, chain, chord, group  # noqa: F401 - the client uses them from here

from t.benchmarks import bodies
from t.benchmarks.env import app_settings

FRAMEWORK = 'taskflow'

app = Taskflow('t.benchmarks.tf_app', **app_settings())

ping = app.task(name='bench.ping')(bodies.ping)
add = app.task(name='bench.add')(bodies.add)
xsum = app.task(name='bench.xsum')(bodies.xsum)
incr = app.task(name='bench.incr')(bodies.incr)


def declare_queue() -> None:
    """Declare the default queue as the worker will (so nothing published before a worker
    exists is dropped by RabbitMQ)."""
    with app.connection_for_write() as conn:
        app.broker.queues.default(conn.default_channel).declare()
