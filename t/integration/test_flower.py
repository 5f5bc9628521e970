"""Flower, unmodified, watching a taskflow worker, on Redis and on RabbitMQ.

A taskflow worker runs with ``-E``; Flower runs as ``celery -A t.integration.celery_tasks flower``
(a real Celery app on the same broker: Flower needs one) with its HTTP API opened by
``FLOWER_UNAUTHENTICATED_API=true``. The test polls the API with a deadline until it shows the
worker (through remote control: ``/api/workers``), its liveness (heartbeat events) and the finished
task (task events: ``/api/tasks``, ``/api/task/info/<id>``).

Set ``TF_TEST_FLOWER_SCREENSHOT=/path/file.png`` to also have headless Chromium (``/usr/bin/chromium``)
take a picture of Flower's tasks page at that moment (``docs/flower-tasks.png`` was made this way).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from t.integration import tasks
from t.integration.conftest import ROOT, WorkerProcess, broker_env, free_port, nodename_of, wait_for

pytestmark = pytest.mark.integration


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def flower(broker: str, own_queue: str, tmp_path: Path) -> Iterator[tuple[str, WorkerProcess]]:
    """A Flower process on a free port, for this test's broker; yields (base URL, process)."""
    port = free_port()
    env = dict(os.environ, **broker_env(broker, own_queue), FLOWER_UNAUTHENTICATED_API='true')
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    cmd = [sys.executable, '-m', 'celery', '-A', 't.integration.celery_tasks', 'flower',
           f'--port={port}', '--address=127.0.0.1']
    proc = WorkerProcess(cmd, env, tmp_path / 'flower.log')  # a subprocess with its output in a file
    base = f'http://127.0.0.1:{port}'
    try:
        wait_for(lambda: proc.proc.poll() is None and answers(f'{base}/healthcheck') or proc.proc.poll() is not None,
                 timeout=30, interval=0.2, message=f'Flower to listen on {port}')
        assert proc.proc.poll() is None, f'Flower exited:\n{proc.log()}'
        yield base, proc
    finally:
        if proc.proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.proc.wait(timeout=10)
        proc.stop()


def screenshot(url: str, path: str) -> None:
    """Headless Chromium's picture of ``url`` (the page's scripts get 5 s of virtual time)."""
    chromium = shutil.which('chromium') or '/usr/bin/chromium'
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                        '--disable-background-networking', '--disable-component-update', '--disable-sync',
                        f'--user-data-dir={profile}', f'--screenshot={path}', '--window-size=1400,900',
                        '--virtual-time-budget=5000', url], capture_output=True, timeout=120, check=True)
    assert Path(path).stat().st_size > 10_000, 'an empty screenshot'


def test_flower_shows_a_taskflow_worker_and_its_task(start_worker, own_queue, flower):
    base, flower_proc = flower
    w = start_worker('-E', queue=own_queue)
    node = nodename_of(w)

    # the worker, through remote control (Flower's inspector: stats, active_queues, registered, ...)
    def inspected() -> Any:
        workers = get_json(f'{base}/api/workers?refresh=1&workername={node}')
        info = workers.get(node) or {}
        return info if {'stats', 'registered', 'active_queues', 'conf'} <= set(info) else None
    info = wait_for(inspected, timeout=30, interval=0.5, message=f'{node} in /api/workers')
    assert info['stats']['pid'] == w.pid
    assert 't.integration.tasks.add' in info['registered']
    assert [q['name'] for q in info['active_queues']] == [own_queue]
    assert info['conf']['task_default_queue'] == own_queue
    for method in ('active', 'reserved', 'scheduled', 'revoked'):
        assert isinstance(info.get(method), list), (method, info.get(method))

    # alive, from its heartbeats
    wait_for(lambda: get_json(f'{base}/api/workers?status=1').get(node) is True, timeout=20, interval=0.5,
             message=f'{node} online in Flower (heartbeats)')

    # a task, from the task events
    result = tasks.add.delay(20, 22)
    assert result.get(timeout=10) == 42

    def finished() -> Any:
        listed = get_json(f'{base}/api/tasks').get(result.id)
        return listed if listed and listed.get('state') == 'SUCCESS' else None
    listed = wait_for(finished, timeout=20, interval=0.5, message=f'{result.id} SUCCESS in /api/tasks')
    assert listed['name'] == 't.integration.tasks.add'
    assert listed['result'] == '42'
    assert listed['worker'] == node
    task = get_json(f'{base}/api/task/info/{result.id}')
    assert task['state'] == 'SUCCESS'
    assert task['result'] == '42'
    assert task['args'] == '(20, 22)' and task['kwargs'] == '{}'
    assert task['worker'] == node
    assert task['received'] <= task['started'] <= task['succeeded']
    assert isinstance(task['runtime'], float)

    failed = tasks.fail.delay('flower sees this')
    with pytest.raises(ValueError):
        failed.get(timeout=10)
    bad = wait_for(lambda: (lambda t: t if t and t.get('state') == 'FAILURE' else None)(
        get_json(f'{base}/api/tasks').get(failed.id)), timeout=20, interval=0.5,
        message=f'{failed.id} FAILURE in /api/tasks')
    assert 'flower sees this' in bad['exception']

    target = os.environ.get('TF_TEST_FLOWER_SCREENSHOT')
    if target:
        screenshot(f'{base}/tasks', target)
    assert 'Traceback' not in flower_proc.log(), flower_proc.log()
