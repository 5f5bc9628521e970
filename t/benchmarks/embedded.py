"""The zero-server set-ups side by side: taskflow on its embedded SQLite broker (one file, results
in the same file) against Celery 5.7 on kombu's ``sqla+sqlite://`` and ``filesystem://``
transports (results in Celery's ``db+sqlite://`` backend), same task bodies, same worker flags
(``-P prefork -c 2``), every framework with its defaults otherwise::

    python -m t.benchmarks.embedded [--n 2000] [--roundtrips 200] [--only taskflow,celery-sqla]

Rows: *drain* -- ``n`` INCR tasks queued before the worker starts, timed from the worker's start
to the last INCR (as ``python -m t.benchmarks`` does); *round trip* -- ``roundtrips`` sequential
``add.delay(1, 1).get()`` after 10 warm-up ones, p50 and p99. Then taskflow's ratios to each
Celery set-up. Redis (127.0.0.1:6379, DB 12) only keeps the drain counters. Files live in a
temporary directory, removed at the end. A measurement, not a test: nothing is asserted.

This module is also the app of the worker and client processes it starts (``-A
t.benchmarks.embedded``): ``EMB_FW`` chooses the framework, ``EMB_BROKER``, ``EMB_BACKEND``,
``EMB_TOPTS`` (JSON transport options) and ``EMB_QUEUE`` the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from t.benchmarks import bodies
from t.benchmarks.env import COUNTERS, DEFAULT_COUNTERS

ROOT = Path(__file__).resolve().parents[2]

# --- the app, in worker and client processes ------------------------------------------------------
_FW = os.environ.get('EMB_FW')
app: Any = None
if _FW == 'taskflow':
    from taskflow import Taskflow
    app = Taskflow('t.benchmarks.embedded', broker=os.environ['EMB_BROKER'], backend=os.environ['EMB_BACKEND'],
                   task_default_queue=os.environ.get('EMB_QUEUE', 'bench'),
                   broker_transport_options=json.loads(os.environ.get('EMB_TOPTS') or '{}'))
elif _FW == 'celery':
    from celery import Celery
    app = Celery('t.benchmarks.embedded', broker=os.environ['EMB_BROKER'], backend=os.environ['EMB_BACKEND'])
    app.conf.update(task_default_queue=os.environ.get('EMB_QUEUE', 'bench'), broker_connection_retry_on_startup=True,
                    broker_transport_options=json.loads(os.environ.get('EMB_TOPTS') or '{}'))
if app is not None:
    ping = app.task(name='bench.ping')(bodies.ping)
    add = app.task(name='bench.add')(bodies.add)
    incr = app.task(name='bench.incr')(bodies.incr)


def declare_queue() -> None:
    """Declare the default queue as the worker will (before anything is published)."""
    with app.connection_for_write() as conn:
        if _FW == 'taskflow':
            app.broker.queues.default(conn.default_channel).declare()
        else:
            app.amqp.queues[app.conf.task_default_queue](conn.default_channel).declare()


# --- set-ups -------------------------------------------------------------------------------------------
def setups(workdir: Path) -> dict[str, dict[str, Any]]:
    """name -> framework, broker, backend, transport options (files under ``workdir``)."""
    fs = workdir / 'fs-queue'
    fs.mkdir(exist_ok=True)
    celery_results = f'db+sqlite:///{workdir}/celery-results.sqlite'
    return {
        'taskflow': {'fw': 'taskflow', 'broker': f'sqlite:///{workdir}/taskflow.sqlite', 'backend': 'sqlite://',
                     'topts': {}, 'label': 'taskflow  sqlite:// (+ results in the same file)'},
        'celery-sqla': {'fw': 'celery', 'broker': f'sqla+sqlite:///{workdir}/celery-broker.sqlite',
                        'backend': celery_results, 'topts': {},
                        'label': 'Celery 5.7 sqla+sqlite:// (+ db+sqlite://)'},
        'celery-fs': {'fw': 'celery', 'broker': 'filesystem://', 'backend': celery_results,
                      'topts': {'data_folder_in': str(fs), 'data_folder_out': str(fs)},
                      'label': 'Celery 5.7 filesystem:// (+ db+sqlite://)'},
    }


def _env(setup: dict[str, Any], queue: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({'EMB_FW': setup['fw'], 'EMB_BROKER': setup['broker'], 'EMB_BACKEND': setup['backend'],
                'EMB_TOPTS': json.dumps(setup['topts']), 'EMB_QUEUE': queue,
                COUNTERS: os.environ.get(COUNTERS, DEFAULT_COUNTERS)})
    env['PYTHONPATH'] = str(ROOT) + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    return env


class Worker:
    def __init__(self, setup: dict[str, Any], queue: str, logdir: Path) -> None:
        cli = 'taskflow' if setup['fw'] == 'taskflow' else 'celery'
        self.cmd = [sys.executable, '-m', cli, '-A', 't.benchmarks.embedded', 'worker', '-l', 'WARNING',
                    '-P', 'prefork', '-c', '2', '-n', f'emb-{uuid.uuid4().hex[:6]}@%h']
        self.env = _env(setup, queue)
        self.logpath = logdir / f'worker-{uuid.uuid4().hex[:6]}.log'
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        self._log = open(self.logpath, 'wb')
        started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return started

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the pool, if any
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)
        self._log.close()


def run_client(setup: dict[str, Any], queue: str, ops: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Run ``ops`` in a client process of the set-up's framework (see ``client_main``)."""
    proc = subprocess.run([sys.executable, '-m', 't.benchmarks.embedded', 'client', json.dumps(ops)], cwd=ROOT,
                          env=_env(setup, queue), capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    if proc.returncode != 0 or len(results) < len(ops):
        raise RuntimeError(f'client failed ({proc.returncode}): {results[-1:] or proc.stderr[-2000:]}')
    return results


def client_main(ops: list[dict[str, Any]]) -> int:
    from t.benchmarks import client  # noqa: PLC0415 - its operations take any module with the tasks
    module = sys.modules[__name__]
    for spec in ops:
        name = spec.pop('op')
        if name == 'declare':
            declare_queue()
            result: dict[str, Any] = {}
        elif name == 'enqueue':
            result = client.op_enqueue(module, **spec)
        elif name == 'ping':
            result = client.op_ping(module, **spec)
        elif name == 'roundtrip':
            result = client.op_roundtrip(module, **spec)
        else:
            raise ValueError(name)
        print(json.dumps({'op': name, **result}), flush=True)
    return 0


# --- measurements -------------------------------------------------------------------------------
def drain(setup: dict[str, Any], n: int, logdir: Path) -> float:
    """Tasks per second draining ``n`` INCR tasks queued before the worker starts."""
    import redis  # noqa: PLC0415 - only the driver needs it

    queue = f'bench-{uuid.uuid4().hex[:8]}'
    key = f'emb:{queue}'
    counters = redis.Redis.from_url(os.environ.get(COUNTERS, DEFAULT_COUNTERS), socket_timeout=10)
    counters.delete(key)
    run_client(setup, queue, [{'op': 'declare'}, {'op': 'enqueue', 'n': n, 'key': key}], timeout=600)
    worker = Worker(setup, queue, logdir)
    started = worker.start()
    try:
        last, last_change = 0, time.monotonic()
        while True:
            value = int(counters.get(key) or 0)
            now = time.monotonic()
            if value >= n:
                return n / (now - started)
            if value != last:
                last, last_change = value, now
            if now - last_change > 60 or not worker.alive():
                raise RuntimeError(f'drain stalled at {value}/{n}; log: {worker.logpath}')
            time.sleep(0.005)
    finally:
        worker.stop()
        counters.delete(key)
        counters.close()


def roundtrip(setup: dict[str, Any], n: int, logdir: Path) -> dict[str, float]:
    queue = f'bench-{uuid.uuid4().hex[:8]}'
    worker = Worker(setup, queue, logdir)
    worker.start()
    try:
        out = run_client(setup, queue, [{'op': 'ping', 'timeout': 60}, {'op': 'roundtrip', 'n': n, 'timeout': 30}],
                         timeout=120 + n * 10)
        return out[-1]
    finally:
        worker.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ['client']:
        return client_main(json.loads(argv[1]))
    parser = argparse.ArgumentParser(prog='python -m t.benchmarks.embedded', description=__doc__.split('\n\n')[0])
    parser.add_argument('--n', type=int, default=2000, help='tasks drained (default 2000)')
    parser.add_argument('--roundtrips', type=int, default=200, help='sequential round trips (default 200)')
    parser.add_argument('--only', default='taskflow,celery-sqla,celery-fs', help='set-ups, comma-separated')
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix='tf-embedded-bench-'))
    results: dict[str, dict[str, float]] = {}
    try:
        all_setups = setups(workdir)
        for name in args.only.split(','):
            setup = all_setups[name]
            print(f'{setup["label"]}:', flush=True)
            rate = drain(setup, args.n, workdir)
            print(f'  drain {args.n}: {rate:,.0f} tasks/s', flush=True)
            rt = roundtrip(setup, args.roundtrips, workdir)
            print(f'  round trip x{args.roundtrips}: p50 {rt["p50_ms"]:.1f} ms, p99 {rt["p99_ms"]:.1f} ms', flush=True)
            results[name] = {'drain': rate, 'p50': rt['p50_ms'], 'p99': rt['p99_ms']}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if 'taskflow' in results:
        tf = results['taskflow']
        print('\ntaskflow ratios (drain: higher is better; round trip: Celery / taskflow, higher is better)')
        for name, other in results.items():
            if name == 'taskflow':
                continue
            print(f'  vs {name:12s} drain x{tf["drain"] / other["drain"]:.1f}   '
                  f'p50 x{other["p50"] / tf["p50"]:.1f}   p99 x{other["p99"] / tf["p99"]:.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
