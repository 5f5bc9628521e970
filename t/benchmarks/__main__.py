"""``python -m t.benchmarks``: taskflow and Celery side by side, alternately, on the same broker,
result backend, task bodies and worker flags; prints a table of medians with the
taskflow/Celery ratio of every row and writes it all to a JSON file. See README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import redis

from t.benchmarks.runner import (FRAMEWORKS, Client, RunFailed, Sentinels, Worker, check_broker, delete_prefixed,
                                 delete_queue, prepare_vhost, wait_counter)

SECTIONS = ('publish', 'drain', 'startup', 'roundtrip', 'canvas', 'scaling', 'memory')
HERE = Path(__file__).resolve().parent


# --- rows -------------------------------------------------------------------------------------
@dataclass
class Row:
    key: str
    label: str
    unit: str
    better: str  # 'higher' or 'lower'
    section: str


def _fmt_size(n: int) -> str:
    return f'{n:,}'.replace(',', ' ')


def rows_for(cfg: 'Config') -> list[Row]:
    """The rows of the table, in order, for the selected sections."""
    rows: list[Row] = []
    on, n, cs = cfg.only, _fmt_size(cfg.n), cfg.canvas_size

    def add(key: str, label: str, unit: str, section: str) -> None:
        rows.append(Row(key, label, unit, 'higher' if unit == 'tasks/s' else 'lower', section))

    if 'publish' in on:
        add('publish', f'publish: {n} x delay(), no worker', 'tasks/s', 'publish')
    if 'drain' in on:
        add('drain.prefork2', f'drain {n} INCR tasks, -P prefork -c 2', 'tasks/s', 'drain')
        add('drain.solo1', f'drain {n} INCR tasks, -P solo', 'tasks/s', 'drain')
    if 'startup' in on:
        add('startup', 'worker start-up: start -> 1st task done', 's', 'startup')
    if 'roundtrip' in on:
        for p in ('p50', 'p99'):
            add(f'roundtrip.{p}', f'round trip add.delay(1,1).get() x{cfg.roundtrips}, {p}', 'ms', 'roundtrip')
    if 'canvas' in on:
        add(f'chord.{cs}', f'canvas: chord of {_fmt_size(cs)} add -> xsum', 's', 'canvas')
        add(f'group.{cs}', f'canvas: group of {_fmt_size(cs)} add, .get()', 's', 'canvas')
        add(f'chain.{cfg.chain_length}', f'canvas: chain of {cfg.chain_length} add', 's', 'canvas')
    if 'scaling' in on:
        for kind in ('chord', 'group'):
            for size in cfg.sizes:
                add(f'{kind}.{size}', f'scaling: {kind} of {_fmt_size(size)}', 's', 'scaling')
        for c in (1, 2, 4):
            add(f'drain.prefork{c}', f'scaling: drain, -P prefork -c {c}', 'tasks/s', 'scaling')
    drains = drain_configs(cfg)
    if 'memory' in on or 'drain' in on or 'scaling' in on:
        for pool, c in drains:
            flags = '-P solo' if pool == 'solo' else f'-P prefork -c {c}'
            add(f'rss.{pool}{c}', f'memory: peak RSS after drain, {flags}', 'MiB', 'memory')
    seen: set[tuple[str, str]] = set()
    unique = []
    for row in rows:  # a measurement shown in two sections keeps its first place only once per section
        if (row.key, row.section) not in seen:
            seen.add((row.key, row.section))
            unique.append(row)
    return unique


def drain_configs(cfg: 'Config') -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    if 'drain' in cfg.only or 'memory' in cfg.only:
        out.append(('prefork', 2))
    if 'drain' in cfg.only:
        out.append(('solo', 1))
    if 'scaling' in cfg.only:
        out += [('prefork', 1), ('prefork', 2), ('prefork', 4)]
    return sorted(set(out), key=lambda pc: (pc[0] != 'prefork', pc[1]))


# --- configuration and results --------------------------------------------------------------
@dataclass
class Config:
    brokers: list[str]
    n: int
    repeat: int
    quick: bool
    only: list[str]
    sizes: list[int]
    canvas_size: int
    chain_length: int
    roundtrips: int
    worker_args: list[str]
    redis_base: str
    redis_dbs: tuple[int, int, int]
    amqp_base: str
    vhost: str
    json_path: Path
    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix='taskflow-bench-')))
    #: every result key of this run starts with it (see env.app_settings)
    keyprefix: str = field(default_factory=lambda: f'tfbench-{uuid.uuid4().hex[:10]}_')

    def urls(self, broker: str) -> dict[str, str]:
        b, r, c = self.redis_dbs
        broker_url = f'{self.redis_base}/{b}' if broker == 'redis' else f'{self.amqp_base}/{self.vhost}'
        return {'broker': broker_url, 'backend': f'{self.redis_base}/{r}', 'counters': f'{self.redis_base}/{c}',
                'keyprefix': self.keyprefix}


class Results:
    """results[broker][row key][framework] -> list of values, plus failures."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.failures: dict[str, dict[str, dict[str, list[str]]]] = {}
        self.extra: dict[str, dict[str, dict[str, list[Any]]]] = {}
        #: returns a note when the run was disturbed (a Redis DB flushed by someone else)
        self.disturbed: Callable[[], str] | None = None

    def add(self, broker: str, key: str, framework: str, value: float, extra: Any = None) -> None:
        self.values.setdefault(broker, {}).setdefault(key, {}).setdefault(framework, []).append(value)
        if extra is not None:
            self.extra.setdefault(broker, {}).setdefault(key, {}).setdefault(framework, []).append(extra)

    def fail(self, broker: str, key: str, framework: str, reason: str) -> None:
        if self.disturbed is not None:
            flushed = self.disturbed()
            if flushed:
                reason = f'{flushed}; {reason}'
        self.failures.setdefault(broker, {}).setdefault(key, {}).setdefault(framework, []).append(reason)

    def get(self, broker: str, key: str, framework: str) -> list[float]:
        return self.values.get(broker, {}).get(key, {}).get(framework, [])

    def failed(self, broker: str, key: str, framework: str) -> list[str]:
        return self.failures.get(broker, {}).get(key, {}).get(framework, [])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- jobs: each runs one framework once and records its rows ---------------------------------
class Bench:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.results = Results()
        self.exit_statuses: list[dict[str, Any]] = []
        self.sentinels: Sentinels | None = None
        self.results.disturbed = lambda: self.sentinels.check() if self.sentinels else ''

    def _queue(self, framework: str, broker: str) -> str:
        return f'bench-{framework}-{broker}-{uuid.uuid4().hex[:8]}'

    def _cleanup(self, broker: str, urls: dict[str, str], queue: str) -> None:
        """Between runs (no worker alive): purge and delete the queue, delete this run's results
        (only keys of this run: other runs may share the DBs)."""
        try:
            delete_queue(urls['broker'], queue)
        except Exception as exc:  # noqa: BLE001
            log(f'  warning: could not delete queue {queue}: {exc!r}')
        delete_prefixed(urls['backend'], urls['keyprefix'])

    def _stop(self, worker: Worker, what: str) -> None:
        code = worker.stop()
        self.exit_statuses.append({'framework': worker.framework, 'what': what, 'exit_status': code,
                                   'log': str(worker.logpath)})
        if code != 0:
            log(f'  note: {worker.framework} worker ({what}) exited with status {code} after SIGTERM '
                f'(log: {worker.logpath})')

    def publish(self, broker: str, framework: str) -> None:
        urls, n = self.cfg.urls(broker), self.cfg.n
        queue = self._queue(framework, broker)
        try:
            client = Client(framework, urls, queue, self.cfg.logdir)
            out = client.run([{'op': 'declare'}, {'op': 'publish', 'n': n}], timeout=120 + n * 0.05)
            last = out[-1] if out else {'error': client.failure}
            if not out or not last.get('ok'):
                raise RunFailed(last.get('error') or 'client failed')
            self.results.add(broker, 'publish', framework, last['rate'])
            log(f'  {framework:8s} publish: {last["rate"]:,.0f} tasks/s')
        except RunFailed as exc:
            self.results.fail(broker, 'publish', framework, str(exc))
            log(f'  {framework:8s} publish FAILED: {exc}')
        finally:
            self._cleanup(broker, urls, queue)

    def _drain_once(self, broker: str, framework: str, n: int, pool_args: list[str],
                    what: str) -> tuple[float, dict[str, Any]]:
        """Queue ``n`` INCR tasks, start a worker, wait for the counter to reach ``n``; returns
        (seconds from worker start, peak RSS of the worker tree)."""
        urls = self.cfg.urls(broker)
        queue = self._queue(framework, broker)
        key = f'bench:{queue}'
        counters = redis.Redis.from_url(urls['counters'], socket_timeout=10)
        worker = Worker(framework, urls, queue, [*pool_args, *self.cfg.worker_args], self.cfg.logdir)
        try:
            counters.delete(key)
            client = Client(framework, urls, queue, self.cfg.logdir)
            out = client.run([{'op': 'declare'}, {'op': 'enqueue', 'n': n, 'key': key}], timeout=120 + n * 0.05)
            if len(out) < 2 or not out[-1].get('ok'):
                raise RunFailed(f'could not queue the tasks: {(out[-1] if out else {}).get("error") or client.failure}')
            started = worker.start()
            done = wait_counter(counters, key, n, worker, deadline=started + 120 + n * 0.05, stall=60)
            rss = worker.peak_rss_kib()
            return done - started, rss
        finally:
            self._stop(worker, what) if worker.proc is not None else None
            counters.delete(key)
            counters.close()
            self._cleanup(broker, urls, queue)

    def drain(self, broker: str, framework: str, pool: str, c: int) -> None:
        key = f'{pool}{c}'
        args = ['-P', 'solo'] if pool == 'solo' else ['-P', pool, '-c', str(c)]
        try:
            seconds, rss = self._drain_once(broker, framework, self.cfg.n, args, f'drain {key}')
        except RunFailed as exc:
            for row in (f'drain.{key}', f'rss.{key}'):
                self.results.fail(broker, row, framework, str(exc))
            log(f'  {framework:8s} drain {" ".join(args)} FAILED: {exc}')
            return
        rate = self.cfg.n / seconds
        self.results.add(broker, f'drain.{key}', framework, rate, {'seconds': seconds})
        self.results.add(broker, f'rss.{key}', framework, rss['total_kib'] / 1024, rss)
        log(f'  {framework:8s} drain {" ".join(args)}: {rate:,.0f} tasks/s ({seconds:.2f}s), '
            f'peak RSS {rss["total_kib"] / 1024:.1f} MiB in {rss["processes"]} processes')

    def startup(self, broker: str, framework: str) -> None:
        try:
            seconds, _ = self._drain_once(broker, framework, 1, ['-P', 'prefork', '-c', '2'], 'startup')
        except RunFailed as exc:
            self.results.fail(broker, 'startup', framework, str(exc))
            log(f'  {framework:8s} startup FAILED: {exc}')
            return
        self.results.add(broker, 'startup', framework, seconds)
        log(f'  {framework:8s} startup: {seconds:.3f}s')

    def client_ops(self, broker: str, framework: str, ops: list[dict[str, Any]]) -> None:
        """Run ``ops`` against one running worker (-P prefork -c 2); after a failure, the rest
        run against a fresh worker and a fresh queue."""
        urls = self.cfg.urls(broker)
        pending = list(ops)
        while pending:
            queue = self._queue(framework, broker)
            worker = Worker(framework, urls, queue, ['-P', 'prefork', '-c', '2', *self.cfg.worker_args],
                            self.cfg.logdir)
            results: list[dict[str, Any]] = []
            try:
                worker.start()
                try:
                    worker.wait_ready()
                except RunFailed as exc:
                    for op in pending:
                        self._record_op(broker, framework, {'ok': False, 'label': op['label'], 'error': str(exc)})
                    return
                client = Client(framework, urls, queue, self.cfg.logdir)
                budget = sum(op.get('timeout', 60) for op in pending) + 60
                results = client.run(pending, timeout=budget, worker=worker)
            finally:
                self._stop(worker, 'client ops')
                self._cleanup(broker, urls, queue)
            for result in results:
                if not result.get('ok') and worker.proc is not None and worker.proc.returncode not in (0, None):
                    result['error'] = f'{result.get("error")}; worker exit status {worker.proc.returncode}'
                self._record_op(broker, framework, result)
            if not results:
                return
            pending = pending[len(results):]

    def _record_op(self, broker: str, framework: str, result: dict[str, Any]) -> None:
        label = result['label']
        if not result.get('ok'):
            reason = result.get('error', 'failed')
            keys = ['roundtrip.p50', 'roundtrip.p99'] if label == 'roundtrip' else [label]
            for key in keys:
                self.results.fail(broker, key, framework, reason)
            log(f'  {framework:8s} {label} FAILED: {reason}')
            if result.get('traceback'):
                log('    ' + result['traceback'].strip().splitlines()[-1])
            return
        if label == 'roundtrip':
            self.results.add(broker, 'roundtrip.p50', framework, result['p50_ms'])
            self.results.add(broker, 'roundtrip.p99', framework, result['p99_ms'])
            log(f'  {framework:8s} round trip: p50 {result["p50_ms"]:.2f} ms, p99 {result["p99_ms"]:.2f} ms')
        else:
            self.results.add(broker, label, framework, result['seconds'])
            log(f'  {framework:8s} {label}: {result["seconds"]:.3f}s')

    # --- the plan -------------------------------------------------------------------------------
    def client_plan(self) -> list[dict[str, Any]]:
        cfg, ops = self.cfg, []
        if 'roundtrip' in cfg.only:
            ops.append({'op': 'roundtrip', 'label': 'roundtrip', 'n': cfg.roundtrips,
                        'timeout': 60 + cfg.roundtrips * 0.2})
        canvas: list[tuple[str, int]] = []
        if 'canvas' in cfg.only:
            canvas += [('chord', cfg.canvas_size), ('group', cfg.canvas_size), ('chain', cfg.chain_length)]
        if 'scaling' in cfg.only:
            canvas += [(kind, size) for size in cfg.sizes for kind in ('chord', 'group')]
        seen = set()
        for kind, size in canvas:
            if (kind, size) in seen:
                continue
            seen.add((kind, size))
            timeout = 30 + size * (0.2 if kind == 'chain' else 0.03)
            ops.append({'op': kind, 'label': f'{kind}.{size}', 'size': size, 'timeout': timeout})
        return ops

    def jobs(self) -> list[tuple[str, Callable[[str, str], None]]]:
        cfg, jobs = self.cfg, []
        if 'publish' in cfg.only:
            jobs.append(('publish', self.publish))
        for pool, c in drain_configs(cfg):
            flags = '-P solo' if pool == 'solo' else f'-P prefork -c {c}'
            jobs.append((f'drain {flags}', lambda b, f, pool=pool, c=c: self.drain(b, f, pool, c)))
        if 'startup' in cfg.only:
            jobs.append(('startup', self.startup))
        ops = self.client_plan()
        if ops:
            names = ', '.join(op['label'] for op in ops)
            jobs.append((f'against a running worker: {names}', lambda b, f: self.client_ops(b, f, ops)))
        return jobs

    def run(self) -> None:
        cfg = self.cfg
        for broker in cfg.brokers:
            urls = cfg.urls(broker)
            log(f'\n=== broker {broker}: {urls["broker"]} (results: {urls["backend"]}) ===')
            if broker == 'amqp':
                warning = prepare_vhost(cfg.vhost)
                if warning:
                    log(f'  warning: {warning}')
            reason = check_broker(urls['broker']) or check_broker(urls['backend'])
            if reason:
                log(f'  broker unusable, every {broker} row fails: {reason}')
            for name, job in self.jobs():
                for rep in range(cfg.repeat):
                    log(f'[{broker}] {name} (rep {rep + 1}/{cfg.repeat})')
                    for framework in FRAMEWORKS:  # alternate: taskflow, celery, taskflow, ...
                        if reason:
                            self._fail_all(broker, framework, f'broker unusable: {reason}')
                            continue
                        sentinels = Sentinels(urls, broker)
                        self.sentinels = sentinels
                        try:
                            sentinels.set()
                            job(broker, framework)
                        except Exception as exc:  # noqa: BLE001 - a harness error fails the rows, never the run
                            log(f'  {framework} {name}: harness error: {exc!r}\n{traceback.format_exc()}')
                            self._fail_all(broker, framework, f'harness error: {exc!r}', only_missing=True)
                        finally:
                            try:
                                sentinels.clear()
                            except Exception:  # noqa: BLE001
                                pass
                if reason:
                    break
            if not reason:
                delete_prefixed(urls['backend'], cfg.keyprefix)

    def _fail_all(self, broker: str, framework: str, reason: str, only_missing: bool = False) -> None:
        for row in rows_for(self.cfg):
            measured = self.results.get(broker, row.key, framework) or self.results.failed(broker, row.key, framework)
            if only_missing and measured:
                continue
            if reason not in self.results.failed(broker, row.key, framework):
                self.results.fail(broker, row.key, framework, reason)


# --- the table --------------------------------------------------------------------------------
def _fmt(value: float, unit: str) -> str:
    if unit == 'tasks/s':
        return f'{value:,.0f}'
    if unit == 'ms':
        return f'{value:.2f}'
    if unit == 's':
        return f'{value:.3f}' if value < 100 else f'{value:.1f}'
    return f'{value:.1f}'


def summarise(cfg: Config, results: Results) -> tuple[str, dict[str, Any]]:
    """The printed table and the JSON document."""
    rows = rows_for(cfg)
    lines: list[str] = []
    notes: dict[str, int] = {}  # failure reason -> its number in the notes
    doc: dict[str, Any] = {}
    for broker in cfg.brokers:
        table = [('row', 'unit', 'taskflow', 'celery', 'tf/celery', 'better')]
        doc_rows: list[dict[str, Any]] = []
        section = None
        section_rows: list[int] = []
        for row in rows:
            if row.section != section:
                section = row.section
                section_rows.append(len(table))
            cells: dict[str, Any] = {}
            shown = []
            for fw in FRAMEWORKS:
                values, failures = results.get(broker, row.key, fw), results.failed(broker, row.key, fw)
                median = statistics.median(values) if values else None
                cells[fw] = {'median': median, 'values': values, 'failures': failures,
                             'extra': results.extra.get(broker, {}).get(row.key, {}).get(fw, [])}
                if median is None:
                    text = 'FAILED' if failures else 'n/a'
                else:
                    text = _fmt(median, row.unit)
                    if failures:
                        text += f' ({len(values)}/{len(values) + len(failures)})'
                for reason in dict.fromkeys(failures):
                    reason = reason.replace('\n', ' ')[:600]
                    number = notes.setdefault(reason, len(notes) + 1)
                    text += f' [{number}]'
                shown.append(text)
            tf, ce = cells['taskflow']['median'], cells['celery']['median']
            ratio = tf / ce if tf is not None and ce else None
            if ratio is None:
                verdict = ''
            else:
                gain = ratio if row.better == 'higher' else 1 / ratio
                if abs(gain - 1) < 0.03:
                    verdict = 'same'
                else:
                    verdict = f'taskflow {gain:.2f}x' if gain > 1 else f'celery {1 / gain:.2f}x'
            ratio_text = f'{ratio:.2f}' if ratio is not None else '-'
            table.append((row.label, row.unit, shown[0], shown[1], ratio_text, verdict))
            doc_rows.append({'key': row.key, 'label': row.label, 'section': row.section, 'unit': row.unit,
                             'better': row.better, 'ratio': ratio, 'verdict': verdict, **cells})
        widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
        urls = cfg.urls(broker)

        def fmt_line(r: tuple[str, ...], widths: list[int] = widths) -> str:
            return '  '.join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        lines.append('')
        lines.append(f'broker {broker} ({_mask(urls["broker"])}), results in Redis ({urls["backend"]}); '
                     f'median of {cfg.repeat} run(s) each, run alternately')
        lines.append(fmt_line(table[0]))
        lines.append('  '.join('-' * w for w in widths))
        for i, r in enumerate(table[1:], start=1):
            if i in section_rows and i != 1:
                lines.append('')
            lines.append(fmt_line(r))
        doc[broker] = {'broker_url': _mask(urls['broker']), 'backend_url': urls['backend'], 'rows': doc_rows}
    lines.append('')
    lines.append("tf/celery = taskflow's median / Celery's; 'better' names the faster or smaller one "
                 '(for tasks/s higher is better, for s, ms and MiB lower is better).')
    if notes:
        lines.append('Failed runs ([k] in a cell; "(x/y)": x of y runs succeeded, median of those):')
        lines.extend(f'  [{number}] {reason}' for reason, number in notes.items())
    return '\n'.join(lines), doc


def _mask(url: str) -> str:
    if '@' in url and '://' in url:
        scheme, rest = url.split('://', 1)
        creds, host = rest.rsplit('@', 1)
        return f'{scheme}://{creds.split(":")[0]}:**@{host}'
    return url


def _source_state() -> dict[str, Any]:
    """Where the taskflow under test lives and a digest of its sources: compared at the end of
    the run, it tells whether somebody edited taskflow while it was being measured."""
    import hashlib  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    spec = importlib.util.find_spec('taskflow')
    if spec is None or not spec.origin:
        return {'path': None, 'digest': None, 'git': None}
    package = Path(spec.origin).parent
    digest = hashlib.sha1()
    for path in sorted(package.rglob('*.py')):
        digest.update(str(path.relative_to(package)).encode() + b'\0' + path.read_bytes())
    git = None
    try:
        head = subprocess.run(['git', '-C', str(package.parent), 'rev-parse', '--short', 'HEAD'],
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(['git', '-C', str(package.parent), 'status', '--porcelain', '--', package.name],
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            git = head.stdout.strip() + ('+uncommitted changes' if dirty.stdout.strip() else '')
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {'path': str(package), 'digest': digest.hexdigest()[:12], 'git': git}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return 'not installed'


# --- command line -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog='python -m t.benchmarks', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--brokers', default='redis,amqp', help='comma-separated: redis, amqp (default: both)')
    p.add_argument('--n', type=int, default=None, help='tasks for publish and drain (default 20000; --quick: 200)')
    p.add_argument('--repeat', type=int, default=None, help='runs per framework, alternating (default 3; --quick: 1)')
    p.add_argument('--quick', action='store_true', help='everything small: N=200, 1 run, sizes 10 and 100')
    p.add_argument('--only', default=','.join(SECTIONS), help=f'comma-separated sections: {", ".join(SECTIONS)}')
    p.add_argument('--sizes', default=None,
                   help='chord/group sizes for scaling (default 10,100,1000,10000; --quick: 10,100)')
    p.add_argument('--roundtrips', type=int, default=None, help='sequential round trips (default 500; --quick: 50)')
    p.add_argument('--json', dest='json_path', default=str(HERE / 'results.json'),
                   help='where to write the results (default: t/benchmarks/results.json)')
    p.add_argument('--worker-args', default='', help='extra arguments for both workers, e.g. "--without-mingle"')
    p.add_argument('--redis', default='redis://127.0.0.1:6379', help='Redis server (no DB)')
    p.add_argument('--redis-dbs', default=os.environ.get('TF_BENCH_REDIS_DBS', '10,11,12'),
                   help='Redis DBs for broker, results and counters (default 10,11,12)')
    p.add_argument('--amqp', default='amqp://guest:guest@127.0.0.1:5672', help='RabbitMQ server (no vhost)')
    p.add_argument('--vhost', default=os.environ.get('TF_BENCH_VHOST', 'taskflow-bench'),
                   help='RabbitMQ vhost (created with rabbitmqctl when possible)')
    p.add_argument('--keep-logs', action='store_true', help='keep the worker and client logs even when all went well')
    a = p.parse_args(argv)
    brokers = [b.strip() for b in a.brokers.split(',') if b.strip()]
    bad = [b for b in brokers if b not in ('redis', 'amqp')]
    only = [s.strip() for s in a.only.split(',') if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if bad or not brokers:
        p.error(f'unknown broker(s) {bad}: choose from redis, amqp')
    if unknown or not only:
        p.error(f'unknown section(s) {unknown}: choose from {", ".join(SECTIONS)}')
    dbs = tuple(int(x) for x in a.redis_dbs.split(','))
    if len(dbs) != 3:
        p.error('--redis-dbs takes three DB numbers')
    sizes = [int(x) for x in a.sizes.split(',')] if a.sizes else ([10, 100] if a.quick else [10, 100, 1000, 10000])
    n = a.n if a.n is not None else (200 if a.quick else 20000)
    cfg = Config(brokers=brokers, n=n, repeat=a.repeat or (1 if a.quick else 3), quick=a.quick, only=only,
                 sizes=sizes, canvas_size=100 if a.quick else 1000, chain_length=20 if a.quick else 100,
                 roundtrips=a.roundtrips or (50 if a.quick else 500), worker_args=shlex.split(a.worker_args),
                 redis_base=a.redis.rstrip('/'), redis_dbs=dbs, amqp_base=a.amqp.rstrip('/'), vhost=a.vhost,
                 json_path=Path(a.json_path))
    cfg.keep_logs = a.keep_logs  # type: ignore[attr-defined]
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.monotonic()
    versions = {d: _version(d) for d in ('taskflow', 'celery', 'kombu', 'billiard', 'redis', 'amqp')}
    log(f'taskflow {versions["taskflow"]} vs Celery {versions["celery"]}: N={cfg.n}, {cfg.repeat} run(s), '
        f'sections {",".join(cfg.only)}; logs in {cfg.logdir}')
    source = _source_state()
    load_before = os.getloadavg()
    bench = Bench(cfg)
    try:
        bench.run()
    except KeyboardInterrupt:
        log('interrupted: showing what was measured')
    load_after = os.getloadavg()
    source_after = _source_state()
    table, doc = summarise(cfg, bench.results)
    header = (f'taskflow {versions["taskflow"]} ({source["git"] or source["path"]}, sources {source["digest"]}) / '
              f'Celery {versions["celery"]} (kombu {versions["kombu"]}), Python {platform.python_version()}, '
              f'{os.cpu_count()} CPUs, load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end; '
              f'N={cfg.n}, workers: -P prefork -c 2 unless stated'
              f'{" " + " ".join(cfg.worker_args) if cfg.worker_args else ""}')
    if source_after['digest'] != source['digest']:
        header += (f'\nWARNING: the taskflow sources changed during the run ({source["digest"]} -> '
                   f'{source_after["digest"]}): rows measured before and after the change are mixed.')
    print(header)
    print(table)
    failed = bool(bench.results.failures)
    document = {
        'meta': {'date': datetime.now(timezone.utc).isoformat(), 'versions': versions,
                 'python': platform.python_version(), 'cpus': os.cpu_count(), 'n': cfg.n, 'repeat': cfg.repeat,
                 'quick': cfg.quick, 'only': cfg.only, 'sizes': cfg.sizes, 'canvas_size': cfg.canvas_size,
                 'chain_length': cfg.chain_length, 'roundtrips': cfg.roundtrips, 'worker_args': cfg.worker_args,
                 'elapsed_s': time.monotonic() - started, 'logs': str(cfg.logdir),
                 'taskflow_source': source, 'taskflow_source_at_end': source_after,
                 'loadavg_start': load_before, 'loadavg_end': load_after, 'redis': cfg.redis_base,
                 'redis_dbs': cfg.redis_dbs, 'vhost': cfg.vhost,
                 'worker_exit_statuses': bench.exit_statuses},
        'brokers': doc, 'table': header + '\n' + table,
    }
    try:
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_path.write_text(json.dumps(document, indent=2, default=str))
        print(f'\nresults written to {cfg.json_path}')
    except OSError as exc:
        print(f'\ncould not write {cfg.json_path}: {exc}')
    if failed or getattr(cfg, 'keep_logs', False):
        print(f'worker and client logs: {cfg.logdir}')
    else:
        shutil.rmtree(cfg.logdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
