"""The README's quickstart demo (``examples/quickstart/run_demo.py``) runs and prints the right
results, pointed at the test Redis DBs through taskflow's own environment overrides."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest
import redis

from t.integration.conftest import REDIS_BACKEND_URL, REDIS_BROKER_URL, ROOT

pytestmark = pytest.mark.integration

DEMO = ROOT / 'examples' / 'quickstart' / 'run_demo.py'
TASK_ID = r'([0-9a-f-]{36})'


def test_quickstart_demo(tmp_path):
    queue = f'tf-test-demo-{uuid.uuid4().hex[:8]}'
    env = dict(os.environ, TASKFLOW_BROKER_URL=REDIS_BROKER_URL, TASKFLOW_RESULT_BACKEND=REDIS_BACKEND_URL,
               TASKFLOW_TASK_DEFAULT_QUEUE=queue)
    env.pop('PYTHONPATH', None)  # the demo must find proj on its own
    proc = subprocess.run([sys.executable, str(DEMO)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=100)
    out = proc.stdout
    assert proc.returncode == 0, f'exit {proc.returncode}\n{out}\n{proc.stderr}'
    assert f'broker:  {REDIS_BROKER_URL}\n' in out
    assert f'backend: {REDIS_BACKEND_URL}\n' in out
    assert 'worker ready\n' in out
    add = re.search(rf'^add\(2, 2\) = 4  \[SUCCESS, task {TASK_ID}\]$', out, re.M)
    fail = re.search(rf"^fail\('boom'\) raised ValueError: boom  \[FAILURE, task {TASK_ID}\]$", out, re.M)
    flaky = re.search(rf'^flaky\(2\) = 2 after 2 retries  \[SUCCESS, task {TASK_ID}\]$', out, re.M)
    assert add and fail and flaky, out
    assert out.rstrip().endswith('worker stopped (exit code 0)\ndemo: OK'), out

    # The results really are in the test backend DB (not in the example's default DB 1).
    client = redis.Redis.from_url(REDIS_BACKEND_URL)
    try:
        metas = {name: json.loads(client.get(f'celery-task-meta-{m.group(1)}'))
                 for name, m in (('add', add), ('fail', fail), ('flaky', flaky))}
    finally:
        client.close()
    assert metas['add']['status'] == 'SUCCESS' and metas['add']['result'] == 4
    assert metas['fail']['status'] == 'FAILURE'
    assert metas['fail']['result']['exc_type'] == 'ValueError'
    assert metas['flaky']['status'] == 'SUCCESS' and metas['flaky']['result'] == 2


WORDCOUNT_DEMO = ROOT / 'examples' / 'wordcount' / 'demo.py'


def _no_network() -> list[str]:
    """``unshare -n`` when it works here (a network namespace without even loopback: nothing can
    reach Redis or RabbitMQ), else nothing."""
    try:
        ok = subprocess.run(['unshare', '-n', 'true'], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return ['unshare', '-n'] if ok else []


def test_wordcount_demo_runs_on_the_embedded_default(tmp_path):
    """The README's first command: nothing configured, no server reachable; a real worker and the
    word-count chord share ./taskflow.sqlite in the working directory."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('TASKFLOW_', 'CELERY_')) and k != 'PYTHONPATH'}
    proc = subprocess.run([*_no_network(), sys.executable, str(WORDCOUNT_DEMO)], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150)
    out = proc.stdout
    assert proc.returncode == 0, f'exit {proc.returncode}\n{out}\n{proc.stderr}'
    assert out.startswith('broker:  sqlite:///./taskflow.sqlite\nbackend: sqlite:///./taskflow.sqlite\n'), out
    assert 'worker ready\n' in out
    assert 'most common: the 27, of 24, it 15, was 14' in out  # the chord's reducer ran
    assert '  t: the 27, to 7, that 5\n' in out                  # and the group after it
    assert out.rstrip().endswith('worker stopped (exit code 0)\ndemo: OK'), out
    assert (tmp_path / 'taskflow.sqlite').is_file()
