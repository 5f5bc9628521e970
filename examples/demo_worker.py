"""A real ``taskflow worker`` process for the demos: started through the CLI, ready when a probe
task round-trips, stopped with a warm shutdown. Every wait has a deadline; the log goes to a
temporary file that is printed when something went wrong."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class DemoWorker:
    """``taskflow worker -A <app_module> -c 2 -l INFO``, run in ``cwd`` with ``path`` prepended
    to ``PYTHONPATH`` (so it imports the same modules, and opens the same ``./taskflow.sqlite``,
    as the process that starts it)."""

    def __init__(self, app_module: str, path: Path, cwd: Path | None = None) -> None:
        self.logfile = tempfile.NamedTemporaryFile(prefix='taskflow-demo-worker-', suffix='.log', delete=False)
        cmd = [sys.executable, '-m', 'taskflow', 'worker', '-A', app_module, '-c', '2', '-l', 'INFO',
               '-n', f'demo-{os.getpid()}@%h']
        env = dict(os.environ)
        env['PYTHONPATH'] = str(path) + os.pathsep + env.get('PYTHONPATH', '')
        print('$ ' + ' '.join(['taskflow', *cmd[3:]]), flush=True)
        self.proc = subprocess.Popen(cmd, cwd=cwd or os.getcwd(), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.logfile, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return Path(self.logfile.name).read_text(errors='replace')

    def wait_ready(self, probe: Callable[[], bool]) -> None:
        """Ready when ``probe()`` (send a task, wait briefly for its result) returns true."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f'demo: the worker exited with {self.proc.returncode}:\n{self.log()}')
            try:
                if probe():
                    return
            except Exception:  # noqa: BLE001 - not ready yet; the deadline decides
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


def run_demo(app: Any, app_module: str, path: Path, probe: Callable[[], bool], body: Callable[[], int],
             cwd: Path | None = None) -> int:
    """Start a worker for ``app_module``, wait until ``probe()`` succeeds, run ``body()`` (which
    returns the number of surprises), stop the worker; print ``demo: OK`` or ``demo: FAILED``
    (with the worker's log) and return the exit status."""
    worker = DemoWorker(app_module, path=path, cwd=cwd)
    surprises = 1
    try:
        worker.wait_ready(probe)
        print('worker ready', flush=True)
        surprises = body()
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
