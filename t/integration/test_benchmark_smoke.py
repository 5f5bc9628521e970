"""Smoke run of the side-by-side benchmark (``python -m t.benchmarks``): it runs end to end
against real workers of both frameworks and prints its table with the taskflow/Celery ratios.

Never asserts on speed: only that every row was measured for both frameworks. Uses the
benchmark's Redis DBs (10, 11, 12; ``TF_BENCH_REDIS_DBS`` moves them), which it never flushes.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# a table row: ... <taskflow> <celery> <ratio> <better>
ROW = re.compile(r'\s(?P<ratio>\d+\.\d\d)\s+(?P<better>taskflow \d+\.\d\dx|celery \d+\.\d\dx|same)$')


@pytest.mark.timeout(300)
def test_quick_benchmark_prints_a_ratio_table(tmp_path: Path) -> None:
    out = tmp_path / 'bench.json'
    env = dict(os.environ)
    env['PYTHONPATH'] = str(ROOT) + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    cmd = [sys.executable, '-m', 't.benchmarks', '--quick', '--brokers', 'redis', '--only', 'roundtrip,canvas',
           '--json', str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    report = f'exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr[-5000:]}'
    assert done.returncode == 0, report

    lines = done.stdout.splitlines()
    header = next((line for line in lines if line.startswith('row ')), None)
    assert header is not None, report
    assert header.split()[-4:] == ['taskflow', 'celery', 'tf/celery', 'better'], report
    expected = ['round trip add.delay(1,1).get() x50, p50', 'round trip add.delay(1,1).get() x50, p99',
                'canvas: chord of 100 add -> xsum', 'canvas: group of 100 add, .get()', 'canvas: chain of 20 add']
    for label in expected:
        row = next((line for line in lines if line.startswith(label)), None)
        assert row is not None, f'no row {label!r}\n{report}'
        assert ROW.search(row), f'no ratio in {row!r}\n{report}'
    assert 'FAILED' not in done.stdout, report

    doc = json.loads(out.read_text())
    rows = doc['brokers']['redis']['rows']
    assert [r['label'] for r in rows] == expected
    for r in rows:
        assert r['ratio'] is not None and r['ratio'] > 0, r
        for framework in ('taskflow', 'celery'):
            assert r[framework]['failures'] == [] and len(r[framework]['values']) == 1, r
