"""Processes of the benchmark: a worker started through its framework's own CLI, the client
processes (``t.benchmarks.client``), and the broker/Redis housekeeping between runs.

Every wait has a deadline; a worker is stopped with SIGTERM (warm shutdown) and its whole
process group is killed if it does not exit in time.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from t.benchmarks import env

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ('taskflow', 'celery')
CLI = {
    'taskflow': [sys.executable, '-m', 'taskflow', '-A', 't.benchmarks.tf_app', 'worker'],
    'celery': [sys.executable, '-m', 'celery', '-A', 't.benchmarks.celery_app', 'worker'],
}


class RunFailed(Exception):
    """One measurement could not be made (the reason is shown in the table's notes)."""


def _env(urls: dict[str, str], queue: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({env.BROKER: urls['broker'], env.BACKEND: urls['backend'], env.COUNTERS: urls['counters'],
              env.KEYPREFIX: urls.get('keyprefix', ''), env.QUEUE: queue})
    e['PYTHONPATH'] = str(ROOT) + (os.pathsep + e['PYTHONPATH'] if e.get('PYTHONPATH') else '')
    e.pop('TASKFLOW_APP', None)
    return e


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors='replace')
    except OSError:
        return ''
    return '\n'.join(text.splitlines()[-lines:])


# --- workers --------------------------------------------------------------------------------
class Worker:
    """One worker of ``framework``, started through its CLI as a subprocess (own session)."""

    def __init__(self, framework: str, urls: dict[str, str], queue: str, args: list[str], logdir: Path) -> None:
        self.framework, self.urls, self.queue = framework, urls, queue
        self.name = f'bench-{framework[:2]}-{uuid.uuid4().hex[:6]}'
        self.cmd = [*CLI[framework], '-l', 'WARNING', '-n', f'{self.name}@%h', *args]
        self.logpath = logdir / f'{self.name}.log'
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> float:
        """Start the process; returns the ``time.monotonic()`` just before the fork."""
        self._log = open(self.logpath, 'wb')
        self._log.write(('$ ' + ' '.join(self.cmd) + '\n').encode())
        self._log.flush()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=_env(self.urls, self.queue), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.started

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RunFailed(f'{self.framework} worker exited with status {self.proc.returncode}: '
                            f'{self.log_tail(3)} (log: {self.logpath})')

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Ready when a ``ping`` task round-trips (a client process with the same deadline)."""
        client = Client(self.framework, self.urls, self.queue, self.logpath.parent)
        results = client.run([{'op': 'ping', 'timeout': timeout}], timeout=timeout + 60, worker=self)
        self.check_alive()
        if not results or not results[0].get('ok'):
            reason = results[0].get('error') if results else client.failure
            raise RunFailed(f'{self.framework} worker not ready: {reason}; worker log: {self.log_tail(3)}')

    def pids(self) -> list[int]:
        """The worker's process tree: the main process and its descendants (pool children)."""
        assert self.proc is not None
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(_children(pid))
        return found

    def peak_rss_kib(self) -> dict[str, Any]:
        """Peak resident memory (VmHWM) of each process of the tree, and their sum."""
        per = {pid: _status_kib(pid, 'VmHWM') for pid in self.pids()}
        per = {pid: kib for pid, kib in per.items() if kib is not None}
        return {'total_kib': sum(per.values()), 'processes': len(per),
                'main_kib': per.get(self.proc.pid) if self.proc else None}

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (warm shutdown); kill the process group on timeout. Returns the exit status."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._kill_group()
                    self.proc.wait(timeout=10)
                    return None
            self._kill_group()  # leftover pool children, if the main process left them behind
            return self.proc.returncode
        finally:
            self._log.close()

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 3) -> str:
        return _tail(self.logpath, lines).replace('\n', ' | ')


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f'/proc/{pid}/task'):
            try:
                with open(f'/proc/{pid}/task/{tid}/children') as fh:
                    kids.extend(int(x) for x in fh.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return kids


def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f'/proc/{pid}/status') as fh:
            for line in fh:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --- clients ----------------------------------------------------------------------------------
class Client:
    """One ``t.benchmarks.client`` process running a list of operations."""

    def __init__(self, framework: str, urls: dict[str, str], queue: str, logdir: Path) -> None:
        self.framework, self.urls, self.queue = framework, urls, queue
        self.tag = f'client-{framework[:2]}-{uuid.uuid4().hex[:6]}'
        self.outpath = logdir / f'{self.tag}.out'
        self.errpath = logdir / f'{self.tag}.err'
        self.failure = ''

    def run(self, ops: list[dict[str, Any]], timeout: float, worker: 'Worker | None' = None) -> list[dict[str, Any]]:
        """Run ``ops``; returns one result dict per operation that ended, the last one failed
        if something went wrong. Killed after ``timeout`` seconds, or as soon as ``worker``
        (the worker the operations need) exits."""
        cmd = [sys.executable, '-m', 't.benchmarks.client', self.framework, json.dumps(ops)]
        with open(self.outpath, 'wb') as out, open(self.errpath, 'wb') as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(self.urls, self.queue), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
            deadline = time.monotonic() + timeout
            code: int | None = None
            died = ''
            while True:
                code = proc.poll()
                if code is not None:
                    break
                if worker is not None and worker.proc is not None and worker.proc.poll() is not None:
                    died = (f'{worker.framework} worker exited with status {worker.proc.returncode}: '
                            f'{worker.log_tail(3)} (log: {worker.logpath})')
                if died or time.monotonic() > deadline:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=10)
                    code = None
                    break
                time.sleep(0.05)
        results = []
        for line in self.outpath.read_text(errors='replace').splitlines():
            try:
                results.append(json.loads(line))
            except ValueError:
                continue
        if died:
            self.failure = died
        elif code is None:
            self.failure = f'client killed after {timeout:.0f}s'
        elif code != 0 and (not results or results[-1].get('ok')):
            self.failure = f'client exited with {code}: {_tail(self.errpath, 5)}'
        elif code == 0 and len(results) < len(ops):
            self.failure = 'client ended early'
        if self.failure and len(results) < len(ops):
            op = ops[len(results)]
            results.append({'op': op['op'], 'label': op.get('label', op['op']), 'ok': False, 'error': self.failure})
        return results


# --- housekeeping -----------------------------------------------------------------------------
def delete_prefixed(url: str, prefix: str) -> int:
    """Delete the keys starting with ``prefix`` (this run's results) from the Redis DB at ``url``."""
    if not prefix:
        raise ValueError('refusing to delete every key: empty prefix')
    client = redis.Redis.from_url(url, socket_timeout=10)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix.replace('*', r'\*') + '*', count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted


def delete_queue(broker_url: str, name: str) -> None:
    """Purge and delete queue ``name`` and its exchange (best effort: they may not exist)."""
    from kombu import Connection  # noqa: PLC0415 - kombu is what both frameworks use

    with Connection(broker_url, connect_timeout=10, transport_options={'max_retries': 1}) as conn:
        conn.ensure_connection(max_retries=2)
        for action in (lambda ch: ch.queue_purge(name), lambda ch: ch.queue_delete(name),
                       lambda ch: ch.exchange_delete(name)):
            channel = conn.channel()
            try:
                action(channel)
            except Exception:  # noqa: BLE001 - a missing queue or exchange is fine
                pass
            finally:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001
                    pass
    if broker_url.startswith('redis'):
        # kombu's virtual transport leaves the binding sets of a deleted queue behind
        client = redis.Redis.from_url(broker_url, socket_timeout=10)
        try:
            client.delete(f'_kombu.binding.{name}', f'_kombu.binding_permanent.{name}')
        finally:
            client.close()


def prepare_vhost(vhost: str) -> str | None:
    """Create the RabbitMQ vhost and give ``guest`` all rights there; returns a warning (or
    None). Without rabbitmqctl rights (not root) an existing vhost still works."""
    ctl = shutil.which('rabbitmqctl')
    if ctl is None:
        return 'rabbitmqctl not found: the vhost must exist already'
    try:
        subprocess.run([ctl, 'add_vhost', vhost], capture_output=True, timeout=60)
        done = subprocess.run([ctl, 'set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*'],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f'rabbitmqctl failed ({exc}): the vhost must exist already'
    if done.returncode != 0:
        return f'rabbitmqctl set_permissions failed: {done.stderr.decode(errors="replace").strip()[:200]}'
    return None


def check_broker(url: str) -> str | None:
    """None if the broker answers, else the reason."""
    from kombu import Connection  # noqa: PLC0415

    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001
        return f'{type(exc).__name__}: {exc}'
    return None


class Sentinels:
    """A key in each Redis DB the run uses, set before a measurement: if one has vanished when
    the measurement fails, somebody flushed that DB meanwhile (another process sharing it), and
    the failure says so instead of blaming the framework."""

    def __init__(self, urls: dict[str, str], broker: str) -> None:
        self.key = f'tfbench-sentinel-{uuid.uuid4().hex[:10]}'
        names = ['backend', 'counters'] + (['broker'] if broker == 'redis' else [])
        self.urls = {name: urls[name] for name in names}

    def _each(self, action: Any) -> dict[str, Any]:
        out = {}
        for name, url in self.urls.items():
            client = redis.Redis.from_url(url, socket_timeout=10)
            try:
                out[name] = action(client)
            finally:
                client.close()
        return out

    def set(self) -> None:
        self._each(lambda c: c.set(self.key, 1, ex=24 * 3600))

    def check(self) -> str:
        """'' if every DB kept its sentinel, else a sentence naming the flushed DBs."""
        try:
            gone = [f'{name} ({self.urls[name]})' for name, there in self._each(lambda c: c.exists(self.key)).items()
                    if not there]
        except redis.RedisError as exc:
            return f'Redis unreachable: {exc}'
        return f'DISTURBED: Redis DB flushed by another process during the run: {", ".join(gone)}' if gone else ''

    def clear(self) -> None:
        self._each(lambda c: c.delete(self.key))


def counter_value(client: Any, key: str) -> int:
    value = client.get(key)
    return int(value) if value is not None else 0


def wait_counter(client: Any, key: str, target: int, worker: Worker, deadline: float, stall: float,
                 interval: float = 0.005) -> float:
    """Poll ``key`` until it reaches ``target``; returns the ``time.monotonic()`` it did. Fails
    at ``deadline``, when no progress is seen for ``stall`` seconds, or if the worker exits."""
    last, last_change = -1, time.monotonic()
    while True:
        now = time.monotonic()
        value = counter_value(client, key)
        if value >= target:
            return now
        if value != last:
            last, last_change = value, now
        if now > deadline or now - last_change > stall:
            worker.check_alive()
            why = 'deadline' if now > deadline else f'no progress for {stall:.0f}s'
            raise RunFailed(f'{worker.framework} worker: counter at {value}/{target} ({why}); '
                            f'log: {worker.log_tail(5)}')
        if worker.proc is not None and worker.proc.poll() is not None:
            worker.check_alive()
        time.sleep(interval)
