"""The canvas examples (``examples/parallel_sum``, ``examples/wordcount``) against a real worker
started through the CLI (``python -m taskflow -A examples.<name>.tasks worker``), on Redis and on
RabbitMQ (results in Redis), and on the embedded SQLite broker (results in its file). Each
example's ``run.py`` sends the canvas and prints the results; the expected values are computed
here independently.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from kombu import Connection, Exchange, Queue

from t.integration.conftest import BROKERS, REDIS_BACKEND_URL, ROOT, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

TEXTS = ROOT / 'examples' / 'wordcount' / 'texts'


@pytest.fixture(params=['redis', 'amqp', 'sqlite'])
def example_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment for an example's worker and ``run.py``: the test broker and backend, and a
    queue of its own (deleted afterwards); for ``sqlite``, a file of the test's own and no result
    backend (results go to the broker's file)."""
    if request.param == 'sqlite':
        env = {k: v for k, v in os.environ.items() if not k.startswith(('TASKFLOW_', 'CELERY_'))}
        env.pop('PYTHONPATH', None)
        env['TASKFLOW_BROKER_URL'] = f'sqlite:///{tmp_path}/examples.sqlite'
        yield env
        return
    queue = f'tf-test-example-{request.param}-{uuid.uuid4().hex[:8]}'
    env = dict(os.environ, TASKFLOW_BROKER_URL=BROKERS[request.param],
               TASKFLOW_RESULT_BACKEND=REDIS_BACKEND_URL, TASKFLOW_TASK_DEFAULT_QUEUE=queue)
    env.pop('PYTHONPATH', None)  # the examples are found from the repository root, the cwd
    yield env
    with Connection(BROKERS[request.param]) as conn:
        for make in (lambda ch: Queue(queue, Exchange(queue), routing_key=queue, channel=ch),
                     lambda ch: Exchange(queue, channel=ch)):
            try:
                make(conn.channel()).delete()
            except Exception:  # noqa: BLE001 - best-effort clean-up
                pass


def start_worker(example: str, env: dict[str, str], logdir: Path) -> WorkerProcess:
    cmd = [sys.executable, '-m', 'taskflow', '-A', f'examples.{example}.tasks', 'worker', '-l', 'INFO',
           '-c', '2', '-n', f'{example}-{uuid.uuid4().hex[:6]}@%h']
    worker = WorkerProcess(cmd, env, logdir / f'{example}-worker.log')

    def ready() -> bool:
        if worker.proc.poll() is not None:
            raise AssertionError(f'worker exited with {worker.proc.returncode}:\n{worker.log()}')
        return ' ready.' in worker.log()
    try:
        wait_for(ready, timeout=30, message=f'the {example} worker to be ready')
    except BaseException:
        worker.stop()
        raise
    return worker


def run_example(example: str, env: dict[str, str], tmp_path: Path, *runs: list[str]) -> list[str]:
    """Start the example's worker, run ``python -m examples.<example>.run`` once per argument list
    in ``runs`` (once without arguments when none), stop the worker; the outputs."""
    worker = start_worker(example, env, tmp_path)
    outputs = []
    try:
        for args in runs or ([],):
            proc = subprocess.run([sys.executable, '-m', f'examples.{example}.run', *args], cwd=ROOT, env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150)
            assert proc.returncode == 0, f'exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{worker.log()}'
            outputs.append(proc.stdout)
    finally:
        code = worker.stop()
    assert code == 0, worker.log()
    return outputs


def test_parallel_sum(example_env, tmp_path):
    default, uneven = run_example('parallel_sum', example_env, tmp_path, [], ['1001', '7'])
    assert default.splitlines() == [
        'chunks: 100 of up to 10000 numbers',
        f'first partial sums: {[sum(range(i * 10000, (i + 1) * 10000)) for i in range(3)]}',
        f'sum(range(1000000)) = {sum(range(1_000_000))}',
        'OK',
    ]
    assert uneven.splitlines() == [
        'chunks: 7 of up to 143 numbers',
        f'first partial sums: {[sum(range(i * 143, (i + 1) * 143)) for i in range(3)]}',
        f'sum(range(1001)) = {sum(range(1001))}',
        'OK',
    ]


def expected_counts() -> tuple[list[str], Counter]:
    names, total = [], Counter()
    for path in sorted(TEXTS.glob('*.txt')):
        names.append(path.stem)
        total.update(re.findall(r"[a-z]+(?:'[a-z]+)*", path.read_text(encoding='utf-8').lower()))
    return names, total


def test_wordcount(example_env, tmp_path):
    [out] = run_example('wordcount', example_env, tmp_path)
    names, counts = expected_counts()
    assert len(names) == 5 and counts['the'] > 10
    ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
    expected = [
        f'documents: 5 ({", ".join(names)})',
        f'words: {sum(counts.values())} in total, {len(counts)} distinct',
        'most common: ' + ', '.join(f'{w} {c}' for w, c in ranked[:10]),
        'most common by first letter:',
    ]
    for letter in 'abcdefghijklmnopqrstuvwxyz':
        top = [(w, c) for w, c in ranked if w.startswith(letter)][:3]
        if top:
            expected.append(f'  {letter}: ' + ', '.join(f'{w} {c}' for w, c in top))
    assert out.splitlines() == expected
    assert 'most common: the 27, of 24, it 15, was 14' in out  # a fixed point, in case both sides agree wrongly
