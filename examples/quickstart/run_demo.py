"""The quickstart demo: start a real worker for ``proj.tasks``, send it a few tasks, print their
results, stop the worker. Every wait has a deadline; the worker is stopped on every path.

Run from anywhere: ``python examples/quickstart/run_demo.py`` (``make demo`` does, after
starting Redis). Exit status 0 when every result was as expected.

The broker and backend are ``proj.tasks``'s (Redis DBs 0 and 1) unless ``TASKFLOW_BROKER_URL``,
``TASKFLOW_RESULT_BACKEND`` (and ``TASKFLOW_TASK_DEFAULT_QUEUE``) say otherwise; the worker
inherits the same environment, so both sides always agree.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from proj.tasks import add, app, fail, flaky  # noqa: E402

READY_TIMEOUT = 30.0
RESULT_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


def check_redis(url: str) -> None:
    """Fail with one clear line when the Redis server of ``url`` does not answer."""
    if not url.startswith('redis'):
        return
    import redis  # noqa: PLC0415 - a dependency of taskflow

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f'demo: Redis at {url} does not answer ({exc}). '
                         'Start it first (make demo does), or set TASKFLOW_BROKER_URL.') from None
    finally:
        client.close()


class DemoWorker:
    """``taskflow worker -A proj.tasks -c 2 -l INFO`` as a subprocess, output in a file."""

    def __init__(self) -> None:
        self.logfile = tempfile.NamedTemporaryFile(prefix='taskflow-demo-worker-', suffix='.log', delete=False)
        cmd = [sys.executable, '-m', 'taskflow', 'worker', '-A', 'proj.tasks', '-c', '2', '-l', 'INFO',
               '-n', f'demo-{os.getpid()}@%h']
        env = dict(os.environ)
        env['PYTHONPATH'] = str(HERE) + os.pathsep + env.get('PYTHONPATH', '')
        print('$ ' + ' '.join(['taskflow', *cmd[3:]]), flush=True)
        self.proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.logfile, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return Path(self.logfile.name).read_text(errors='replace')

    def wait_ready(self) -> None:
        """Ready when a task round-trips (the worker is consuming and storing results)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f'demo: the worker exited with {self.proc.returncode}:\n{self.log()}')
            try:
                if add.delay(0, 0).get(timeout=2) == 0:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f'demo: the worker was not ready after {READY_TIMEOUT:.0f}s:\n{self.log()}')

    def stop(self) -> int:
        """Warm shutdown (SIGTERM); kill the process group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f'demo: the worker did not stop within {STOP_TIMEOUT:.0f}s; killing it', flush=True)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.logfile.close()
        return self.proc.returncode


def run() -> int:
    """Send the demo tasks; print one line per result. Returns the number of surprises."""
    surprises = 0

    result = add.delay(2, 2)
    value = result.get(timeout=RESULT_TIMEOUT)
    print(f'add(2, 2) = {value!r}  [{result.state}, task {result.id}]', flush=True)
    surprises += value != 4

    result = fail.delay('boom')
    try:
        value = result.get(timeout=RESULT_TIMEOUT)
    except ValueError as exc:
        print(f"fail('boom') raised {type(exc).__name__}: {exc}  [{result.state}, task {result.id}]", flush=True)
    else:
        print(f"fail('boom') returned {value!r}: expected a ValueError", flush=True)
        surprises += 1

    result = flaky.delay(2)
    value = result.get(timeout=RESULT_TIMEOUT)
    print(f'flaky(2) = {value!r} after {value} retries  [{result.state}, task {result.id}]', flush=True)
    surprises += value != 2
    return surprises


def main() -> int:
    print(f'broker:  {app.conf.broker_url}\nbackend: {app.conf.result_backend}', flush=True)
    check_redis(app.conf.broker_url)
    check_redis(app.conf.result_backend)
    worker = DemoWorker()
    surprises = 1
    try:
        worker.wait_ready()
        print('worker ready', flush=True)
        surprises = run()
    finally:
        code = worker.stop()
        print(f'worker stopped (exit code {code})', flush=True)
        app.close()
        if code != 0 or surprises:
            print(f'--- worker log ({worker.logfile.name}) ---\n{worker.log()}', flush=True)
    if code != 0 or surprises:
        print('demo: FAILED', flush=True)
        return 1
    print('demo: OK', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
