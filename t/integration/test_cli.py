"""The ``taskflow`` command line as a user runs it: a subprocess (``python -m taskflow`` and the
installed ``taskflow`` script) against real brokers, with the module's worker running the tasks.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import taskflow
from t.integration import tasks
from t.integration.conftest import (ROOT, broker_env, configure_app, delete_queue, queue_length,
                                    wait_for)

pytestmark = pytest.mark.integration

PYTHON_M = [sys.executable, '-m', 'taskflow']
SCRIPT = [str(Path(sys.executable).parent / 'taskflow')]


def run(args: list[str], broker: str | None = None, queue: str | None = None, input: str | None = None,
        cmd: list[str] = PYTHON_M) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if broker is not None:
        env.update(broker_env(broker, queue or 'tf-test-cli-unused'))
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, input=input)


def task_id_from(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert str(uuid.UUID(out)) == out, proc.stdout
    return out


# --- call / result -------------------------------------------------------------------------------
def test_call_prints_id_and_result_gets_it(broker, worker, queue_name):
    proc = run(['-A', 't.integration.tasks', 'call', 't.integration.tasks.add', '--args', '[2, 3]'],
               broker, queue_name)
    task_id = task_id_from(proc)
    assert tasks.app.AsyncResult(task_id).get(timeout=10) == 5
    shown = run(['-A', 't.integration.tasks', 'result', task_id, '--timeout', '10'], broker, queue_name)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == '5'


def test_call_with_app_after_the_verb(broker, worker, queue_name):
    proc = run(['call', '-A', 't.integration.tasks', 't.integration.tasks.mul', '--args', '[3, 4]'],
               broker, queue_name, cmd=SCRIPT)
    task_id = task_id_from(proc)
    assert tasks.app.AsyncResult(task_id).get(timeout=10) == 12
    shown = run(['result', '-A', 't.integration.tasks', task_id, '--timeout', '10'], broker, queue_name,
                cmd=SCRIPT)
    assert shown.stdout.strip() == '12', shown.stderr


def test_call_with_kwargs_and_countdown(broker, worker, queue_name):
    sent = datetime.now(timezone.utc)
    proc = run(['-A', 't.integration.tasks', 'call', 't.integration.tasks.echo', '--args', '[1]',
                '--kwargs', '{"k": [2, "three"]}', '--countdown', '1'], broker, queue_name)
    result = tasks.app.AsyncResult(task_id_from(proc))
    assert result.get(timeout=10) == [[1], {'k': [2, 'three']}]
    assert result.date_done >= sent + timedelta(seconds=1)


def test_call_with_bad_json_args(broker):
    proc = run(['-A', 't.integration.tasks', 'call', 't.integration.tasks.add', '--args', '[2, '], broker)
    assert proc.returncode == 2
    assert 'not valid JSON' in proc.stderr and '--args' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_result_of_a_failed_task(broker, worker, queue_name):
    result = tasks.fail.delay('shown by the cli')
    with pytest.raises(ValueError):
        result.get(timeout=10)
    shown = run(['-A', 't.integration.tasks', 'result', result.id, '--timeout', '10'], broker, queue_name)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "ValueError('shown by the cli')"
    with_tb = run(['-A', 't.integration.tasks', 'result', result.id, '--traceback'], broker, queue_name)
    assert 'Traceback' in with_tb.stdout and 'ValueError: shown by the cli' in with_tb.stdout


def test_result_timeout(broker):
    task_id = str(uuid.uuid4())
    proc = run(['-A', 't.integration.tasks', 'result', task_id, '--timeout', '0.5'], broker)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f'Error: No result for {task_id} within 0.5s (state PENDING)'


# --- purge -----------------------------------------------------------------------------------------
@pytest.fixture
def idle_queue(broker, queue_name):
    """A queue no worker consumes, with 3 task messages in it; the test app sends there."""
    name = f'tf-test-{broker}-purge-{uuid.uuid4().hex[:8]}'
    configure_app(broker, name)
    for i in range(3):
        tasks.add.delay(i, i)
    wait_for(lambda: queue_length(name) == 3, timeout=10, message='3 messages in the queue')
    yield name
    delete_queue(name)
    configure_app(broker, queue_name)


def test_purge_force_empties_the_queue(broker, idle_queue):
    proc = run(['-A', 't.integration.tasks', 'purge', '-f'], broker, idle_queue)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f'Purged 3 messages from {idle_queue}.'
    assert queue_length(idle_queue) == 0


def test_purge_named_queue(broker, idle_queue):
    proc = run(['-A', 't.integration.tasks', 'purge', '-f', '-Q', idle_queue], broker)
    assert proc.stdout.strip() == f'Purged 3 messages from {idle_queue}.', proc.stderr
    assert queue_length(idle_queue) == 0


def test_purge_asks_first(broker, idle_queue):
    proc = run(['-A', 't.integration.tasks', 'purge'], broker, idle_queue, input='n\n')
    assert proc.returncode == 1
    assert f'Delete all messages from {idle_queue}?' in proc.stdout
    assert 'Aborted' in proc.stderr
    assert queue_length(idle_queue) == 3


# --- no broker needed ---------------------------------------------------------------------------------
@pytest.mark.parametrize('cmd', [PYTHON_M, SCRIPT], ids=['python-m', 'script'])
def test_version(cmd):
    proc = run(['--version'], cmd=cmd)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f'taskflow {taskflow.__version__}'


@pytest.mark.parametrize('app_path, verb', [
    ('t.integration.no_such_module', ['worker']),
    ('t.integration.no_such_module', ['call', 't.integration.tasks.add']),
    ('no_such_package.tasks', ['purge', '-f']),
    ('t.integration.tasks:no_such_app', ['result', 'some-id']),
    ('t.integration', ['call', 't.integration.tasks.add']),  # a package holding no app
])
def test_bad_app_path(app_path, verb):
    proc = run(['-A', app_path, *verb])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    output = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(output) == 1, output
    assert output[0].startswith(f"Error: Unable to load app '{app_path}'"), output


def test_worker_unknown_pool():
    proc = run(['-A', 't.integration.tasks', 'worker', '-P', 'bogus'])
    assert proc.returncode != 0
    assert "Invalid value for '-P' / '--pool'" in proc.stderr
    assert "'bogus'" in proc.stderr
    assert 'Traceback' not in proc.stderr
