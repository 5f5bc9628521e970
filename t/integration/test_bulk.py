"""Bulk jobs against a real worker: bounded window, resume from a checkpoint, failures summary,
the `taskflow map` and `taskflow watch` verbs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from t.integration import tasks
from t.integration.conftest import ROOT, broker_env
from taskflow import group
from taskflow.bulk import bulk_map, iter_progress

pytestmark = pytest.mark.integration


def test_bulk_map_runs_every_item_within_the_window(broker, worker, tmp_path):
    summary = bulk_map(tasks.add, ((i, i) for i in range(300)), star=True, window=25,
                       checkpoint=str(tmp_path / 'ck.json'), progress=False)
    assert summary.sent == 300 and summary.succeeded == 300 and summary.failed == 0
    assert summary.done_upto == 300
    assert json.loads((tmp_path / 'ck.json').read_text())['done_upto'] == 300


def test_bulk_map_window_bounds_in_flight(broker, worker, tmp_path, monkeypatch):
    import taskflow.bulk as bulk_module
    peak = []
    real_collect = bulk_module._collect

    def spy(backend, in_flight, summary):
        peak.append(len(in_flight))
        return real_collect(backend, in_flight, summary)

    monkeypatch.setattr(bulk_module, '_collect', spy)
    bulk_map(tasks.add, ((i, 1) for i in range(120)), star=True, window=10, progress=False)
    assert peak and max(peak) <= 10


def test_bulk_map_resumes_after_an_interruption(broker, worker, tmp_path):
    checkpoint = str(tmp_path / 'ck.json')

    def items_then_ctrl_c():
        for i in range(60):
            if i == 30:
                raise KeyboardInterrupt
            yield i

    first = bulk_map(tasks.square_or_fail, (i + 100 for i in items_then_ctrl_c()), window=5,
                     checkpoint=checkpoint, progress=False)
    assert first.interrupted
    assert 0 < first.done_upto <= 30
    second = bulk_map(tasks.square_or_fail, (i + 100 for i in range(60)), window=5,
                      checkpoint=checkpoint, progress=False)
    assert not second.interrupted
    assert second.skipped == first.done_upto
    assert second.done_upto == 60
    # every item ran at least once over the two runs; at most one window ran twice
    assert first.succeeded + second.succeeded >= 60
    assert first.succeeded + second.succeeded <= 60 + 5


def test_bulk_map_summarises_failures(broker, worker):
    summary = bulk_map(tasks.square_or_fail, range(20), window=8, progress=False)
    assert summary.succeeded == 19 and summary.failed == 1
    index, task_id, error = summary.failures[0]
    assert index == 13 and 'unlucky 13' in error
    assert tasks.app.AsyncResult(task_id).state == 'FAILURE'


def test_iter_progress_of_a_group(broker, worker):
    result = group(tasks.add.s(i, i) for i in range(20)).apply_async()
    updates = list(iter_progress(result, interval=0.05, timeout=20))
    assert updates[-1] == (20, 0, 20)
    assert all(done <= total for done, _, total in updates)


def _cli(broker, queue_name, *args, timeout=60):
    env = dict(os.environ, **broker_env(broker, queue_name))
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    return subprocess.run([sys.executable, '-m', 'taskflow', '-A', 't.integration.tasks', *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_map_verb(broker, worker, queue_name, tmp_path):
    checkpoint = tmp_path / 'map.json'
    done = _cli(broker, queue_name, 'map', 't.integration.tasks.square_or_fail',
                '--source', 't.integration.tasks:bulk_items', '--window', '8',
                '--checkpoint', str(checkpoint), '--total', '40')
    assert done.returncode == 1, done.stderr  # one item fails (13)
    assert '39 succeeded, 1 failed, 40 sent' in done.stdout
    assert 'unlucky 13' in done.stdout
    assert json.loads(checkpoint.read_text())['done_upto'] == 40


def test_map_verb_refuses_an_unknown_source(broker, worker, queue_name):
    done = _cli(broker, queue_name, 'map', 't.integration.tasks.add', '--source', 'nope.module:items')
    assert done.returncode != 0
    assert 'Cannot import --source' in done.stderr


def test_watch_verb(broker, worker, queue_name):
    result = group(tasks.add.s(i, 1) for i in range(10)).apply_async()
    result.save()
    done = _cli(broker, queue_name, 'watch', result.id, '--interval', '0.05', '--timeout', '30')
    assert done.returncode == 0, done.stderr
    assert '10/10 finished, 0 failed' in done.stdout
    missing = _cli(broker, queue_name, 'watch', 'no-such-group', '--timeout', '1')
    assert missing.returncode == 1 and 'No saved group' in missing.stderr
