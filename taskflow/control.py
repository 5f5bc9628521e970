"""Remote control and inspect over ``kombu.pidbox``, in Celery's message format, so
``celery inspect``/Flower work against taskflow workers and ``taskflow inspect`` against
Celery's.

- client side: ``Control`` (``app.control``) broadcasts commands; ``Inspect`` gathers replies;
- worker side: ``HANDLERS``, the commands a worker answers, each ``fn(worker, **arguments)``;
- ``RevokedSet``: revoked task ids, bounded and expiring, optionally kept in a file (``--statedb``).
"""
from __future__ import annotations

import json
import os
import resource
import signal as signal_module
import tempfile
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

from kombu.pidbox import Mailbox

__all__ = ['Control', 'Inspect', 'RevokedSet', 'HANDLERS', 'mailbox_for']


def mailbox_for(app: Any) -> Mailbox:
    conf = app.conf
    return Mailbox(conf.control_exchange, type='fanout', accept=['json'], serializer='json',
                   queue_ttl=conf.control_queue_ttl, queue_expires=conf.control_queue_expires,
                   reply_queue_ttl=conf.control_queue_ttl, reply_queue_expires=conf.control_queue_expires,
                   queue_durable=conf.control_queue_durable, queue_exclusive=conf.control_queue_exclusive)


def _ids(task_id: str | Iterable[str]) -> list[str]:
    return [task_id] if isinstance(task_id, str) else list(task_id)


class Control:
    """``app.control``: commands to workers. ``reply=True`` collects answers for ``timeout`` s."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.mailbox = mailbox_for(app)

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  destination: list[str] | None = None, connection: Any = None, reply: bool = False,
                  timeout: float = 1.0, limit: int | None = None, callback: Callable[..., Any] | None = None,
                  channel: Any = None, pattern: str | None = None, matcher: str | None = None,
                  **extra: Any) -> list[dict[str, Any]] | None:
        """Send ``command`` to every worker (or ``destination``); the replies when ``reply``."""
        arguments = dict(arguments or {}, **extra)
        if connection is not None:
            return self.mailbox(connection)._broadcast(command, arguments, destination, reply, timeout, limit,
                                                       callback, channel=channel, pattern=pattern, matcher=matcher)
        with self.app.connection_for_write() as conn:
            return self.mailbox(conn)._broadcast(command, arguments, destination, reply, timeout, limit,
                                                 callback, channel=channel, pattern=pattern, matcher=matcher)

    def inspect(self, destination: list[str] | None = None, timeout: float = 1.0,
                callback: Callable[..., Any] | None = None, connection: Any = None, limit: int | None = None,
                pattern: str | None = None, matcher: str | None = None) -> 'Inspect':
        return Inspect(self.app, destination=destination, timeout=timeout, callback=callback,
                       connection=connection, limit=limit, pattern=pattern, matcher=matcher)

    def ping(self, destination: list[str] | None = None, timeout: float = 1.0, **kwargs: Any) -> Any:
        return self.broadcast('ping', reply=True, destination=destination, timeout=timeout, **kwargs)

    def revoke(self, task_id: str | Iterable[str], destination: list[str] | None = None,
               terminate: bool = False, signal: str | None = None, **kwargs: Any) -> Any:
        """Tell workers not to run these tasks (and to kill them if running, with ``terminate``)."""
        return self.broadcast('revoke', destination=destination, arguments={
            'task_id': _ids(task_id), 'terminate': terminate, 'signal': signal or 'SIGTERM'}, **kwargs)

    def terminate(self, task_id: str | Iterable[str], destination: list[str] | None = None,
                  signal: str = 'SIGTERM', **kwargs: Any) -> Any:
        return self.revoke(task_id, destination=destination, terminate=True, signal=signal, **kwargs)

    def rate_limit(self, task_name: str, rate_limit: str | int | float | None,
                   destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('rate_limit', destination=destination,
                              arguments={'task_name': task_name, 'rate_limit': rate_limit}, **kwargs)

    def time_limit(self, task_name: str, soft: float | None = None, hard: float | None = None,
                   destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('time_limit', destination=destination,
                              arguments={'task_name': task_name, 'soft': soft, 'hard': hard}, **kwargs)

    def shutdown(self, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('shutdown', destination=destination, **kwargs)

    def pool_grow(self, n: int = 1, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('pool_grow', destination=destination, arguments={'n': n}, **kwargs)

    def pool_shrink(self, n: int = 1, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('pool_shrink', destination=destination, arguments={'n': n}, **kwargs)

    def autoscale(self, max: int, min: int, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('autoscale', destination=destination, arguments={'max': max, 'min': min}, **kwargs)

    def add_consumer(self, queue: str, exchange: str | None = None, exchange_type: str = 'direct',
                     routing_key: str | None = None, options: dict[str, Any] | None = None,
                     destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('add_consumer', destination=destination, arguments=dict(
            {'queue': queue, 'exchange': exchange, 'exchange_type': exchange_type,
             'routing_key': routing_key}, **(options or {})), **kwargs)

    def cancel_consumer(self, queue: str, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('cancel_consumer', destination=destination, arguments={'queue': queue}, **kwargs)

    def enable_events(self, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('enable_events', destination=destination, **kwargs)

    def disable_events(self, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('disable_events', destination=destination, **kwargs)

    def heartbeat(self, destination: list[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('heartbeat', destination=destination, **kwargs)

    def purge(self, connection: Any = None) -> int:
        """Delete the waiting messages of the configured queues."""
        return self.app.broker.purge()

    discard_all = purge


class Inspect:
    """Ask workers about themselves; each method returns ``{node name: reply}`` or ``None``
    when nobody answered within the timeout."""

    def __init__(self, app: Any, destination: list[str] | None = None, timeout: float = 1.0,
                 callback: Callable[..., Any] | None = None, connection: Any = None, limit: int | None = None,
                 pattern: str | None = None, matcher: str | None = None) -> None:
        self.app, self.destination, self.timeout = app, destination, timeout
        self.callback, self.connection, self.limit = callback, connection, limit
        self.pattern, self.matcher = pattern, matcher

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = self.app.control.broadcast(
            command, arguments=arguments, destination=self.destination, reply=True, timeout=self.timeout,
            limit=self.limit, callback=self.callback, connection=self.connection, pattern=self.pattern,
            matcher=self.matcher)
        merged: dict[str, Any] = {}
        for reply in replies or ():
            merged.update(reply)
        return merged or None

    def ping(self, destination: list[str] | None = None) -> dict[str, Any] | None:
        return self._request('ping')

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request('active', safe=safe)

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request('reserved')

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request('scheduled')

    def revoked(self) -> dict[str, Any] | None:
        return self._request('revoked')

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        return self._request('registered', taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def stats(self) -> dict[str, Any] | None:
        return self._request('stats')

    def active_queues(self) -> dict[str, Any] | None:
        return self._request('active_queues')

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request('conf', with_defaults=with_defaults)

    def report(self) -> dict[str, Any] | None:
        return self._request('report')

    def clock(self) -> dict[str, Any] | None:
        return self._request('clock')

    def query_task(self, *ids: str) -> dict[str, Any] | None:
        flat = [i for item in ids for i in _ids(item)]
        return self._request('query_task', ids=flat)

    def hello(self, from_node: str, revoked: Any = None) -> dict[str, Any] | None:
        return self._request('hello', from_node=from_node, revoked=revoked)


class RevokedSet:
    """Revoked task ids: at most ``maxlen``, each forgotten after ``expires`` seconds; saved to
    ``path`` (JSON, written atomically) when given, so revocations survive a restart."""

    def __init__(self, maxlen: int = 50000, expires: float = 10800.0, path: str | None = None) -> None:
        self.maxlen, self.expires, self.path = maxlen, expires, path
        self._ids: OrderedDict[str, float] = OrderedDict()
        if path and os.path.exists(path):
            self._load()

    def _purge(self, now: float) -> None:
        while self._ids and (len(self._ids) > self.maxlen or next(iter(self._ids.values())) < now - self.expires):
            self._ids.popitem(last=False)

    def add(self, task_id: str) -> None:
        now = time.time()
        self._ids.pop(task_id, None)
        self._ids[task_id] = now
        self._purge(now)

    def update(self, ids: Iterable[str]) -> None:
        for task_id in ids:
            self.add(task_id)
        self.save()

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def as_list(self) -> list[str]:
        return list(self._ids)

    def _load(self) -> None:
        try:
            with open(self.path) as fh:  # type: ignore[arg-type]
                data = json.load(fh)
        except (OSError, ValueError):
            return
        for task_id, stamp in data.get('revoked', {}).items():
            self._ids[task_id] = float(stamp)
        self._purge(time.time())

    def save(self) -> None:
        if not self.path:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix='.statedb-')
        with os.fdopen(fd, 'w') as fh:
            json.dump({'revoked': self._ids}, fh)
        os.replace(tmp, self.path)


# --- the worker's side ------------------------------------------------------------------------
def ok(value: Any) -> dict[str, Any]:
    return {'ok': value}


def nok(value: Any) -> dict[str, Any]:
    return {'error': value}


def _signum(name: str | int | None) -> int:
    if name is None:
        return signal_module.SIGTERM
    if isinstance(name, int):
        return name
    name = name.upper()
    return int(getattr(signal_module, name if name.startswith('SIG') else f'SIG{name}'))


def _revoke(worker: Any, task_id: Any, terminate: bool = False, signal: Any = None, **kwargs: Any) -> dict[str, Any]:
    ids = _ids(task_id)
    worker.revoke(ids, terminate=terminate, signum=_signum(signal) if terminate else None)
    return ok(f'tasks {", ".join(ids)} flagged as revoked')


def _terminate(worker: Any, signal: Any = None, task_id: Any = None, **kwargs: Any) -> dict[str, Any]:
    return _revoke(worker, task_id, terminate=True, signal=signal)


def _rate_limit(worker: Any, task_name: str, rate_limit: Any, **kwargs: Any) -> dict[str, Any]:
    if task_name not in worker.app.tasks:
        return nok(f'unknown task {task_name!r}')
    try:
        worker.set_rate_limit(task_name, rate_limit)
    except ValueError as exc:
        return nok(f'Invalid rate limit string: {exc}')
    if not rate_limit:
        return ok('rate limit disabled successfully')
    return ok('new rate limit set successfully')


def _time_limit(worker: Any, task_name: str | None = None, hard: float | None = None, soft: float | None = None,
                **kwargs: Any) -> dict[str, Any]:
    try:
        task = worker.app.tasks[task_name]
    except KeyError:
        return nok(f'unknown task {task_name!r}')
    task.soft_time_limit, task.time_limit = soft, hard
    return ok('time limits set successfully')


def _shutdown(worker: Any, msg: str = 'Got shutdown from remote', **kwargs: Any) -> dict[str, Any]:
    worker.stop(warm=True)
    return ok('shutting down')


def _pool_grow(worker: Any, n: int = 1, **kwargs: Any) -> dict[str, Any]:
    worker.resize_pool(+int(n))
    return ok('pool will grow')


def _pool_shrink(worker: Any, n: int = 1, **kwargs: Any) -> dict[str, Any]:
    worker.resize_pool(-int(n))
    return ok('pool will shrink')


def _autoscale(worker: Any, max: int, min: int, **kwargs: Any) -> dict[str, Any]:
    worker.set_autoscale(int(max), int(min))
    return ok(f'autoscale now max={max} min={min}')


def _add_consumer(worker: Any, queue: str, exchange: str | None = None, exchange_type: str | None = None,
                  routing_key: str | None = None, **options: Any) -> dict[str, Any]:
    worker.add_consumer(queue, exchange, exchange_type or 'direct', routing_key, **options)
    return ok(f'add consumer {queue}')


def _cancel_consumer(worker: Any, queue: str, **kwargs: Any) -> dict[str, Any]:
    worker.cancel_consumer(queue)
    return ok(f'no longer consuming from {queue}')


def _enable_events(worker: Any, **kwargs: Any) -> dict[str, Any]:
    worker.set_task_events(True)
    return ok('task events enabled')


def _disable_events(worker: Any, **kwargs: Any) -> dict[str, Any]:
    worker.set_task_events(False)
    return ok('task events disabled')


def _heartbeat(worker: Any, **kwargs: Any) -> None:
    worker.send_heartbeat()


def _ping(worker: Any, **kwargs: Any) -> dict[str, Any]:
    return ok('pong')


def _active(worker: Any, safe: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [r.info() for r in worker.active_requests()]


def _reserved(worker: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return [r.info() for r in worker.reserved_requests()]


def _scheduled(worker: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return [{'eta': r.fields.get('eta'), 'priority': (r.fields.get('delivery_info') or {}).get('priority'),
             'request': r.info()} for r in worker.scheduled_requests()]


def _revoked(worker: Any, **kwargs: Any) -> list[str]:
    return worker.revoked.as_list()


def _registered(worker: Any, taskinfoitems: Any = None, **kwargs: Any) -> list[str]:
    items = taskinfoitems or ()
    out = []
    for name, task in sorted(worker.app.tasks.items()):
        if name.startswith('celery.'):
            continue
        extra = ' '.join(f'[{item}={getattr(task, item, None)}]' for item in items if getattr(task, item, None))
        out.append(f'{name} {extra}'.strip())
    return out


def _stats(worker: Any, **kwargs: Any) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        'broker': worker.broker_info(),
        'clock': str(worker.clock),
        'pid': os.getpid(),
        'pool': {'max-concurrency': worker.concurrency, 'processes': worker.pool.processes() if worker.pool else [],
                 'max-tasks-per-child': worker.max_tasks_per_child or 'N/A',
                 'put-guarded-by-semaphore': False, 'timeouts': [worker.soft_time_limit or 0, worker.time_limit or 0],
                 'implementation': worker.pool_name},
        'prefetch_count': worker.prefetch_count,
        'rusage': {'utime': usage.ru_utime, 'stime': usage.ru_stime, 'maxrss': usage.ru_maxrss,
                   'minflt': usage.ru_minflt, 'majflt': usage.ru_majflt, 'nvcsw': usage.ru_nvcsw,
                   'nivcsw': usage.ru_nivcsw},
        'total': dict(worker.totals),
        'uptime': int(time.monotonic() - worker.started_at),
        'sw_ident': 'py-taskflow', 'sw_ver': worker.version,
    }


def _active_queues(worker: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return [q.as_dict(recurse=True) for q in worker.consumed_queues()]


def _conf(worker: Any, with_defaults: bool = False, **kwargs: Any) -> dict[str, Any]:
    table = worker.app.conf.table(with_defaults=with_defaults)
    return {k: v for k, v in table.items() if _jsonable(v)}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _query_task(worker: Any, ids: Any = None, **kwargs: Any) -> dict[str, Any]:
    wanted = set(_ids(ids or []))
    out = {}
    for state, requests in (('active', worker.active_requests()), ('reserved', worker.reserved_requests()),
                            ('scheduled', worker.scheduled_requests())):
        for r in requests:
            if r.id in wanted:
                out[r.id] = [state, r.info()]
    return out


def _clock(worker: Any, **kwargs: Any) -> dict[str, Any]:
    return {'clock': worker.clock}


def _hello(worker: Any, from_node: str | None = None, revoked: Any = None, **kwargs: Any) -> dict[str, Any] | None:
    if from_node == worker.hostname:
        return None
    return {'revoked': worker.revoked.as_list(), 'clock': worker.clock}


def _report(worker: Any, **kwargs: Any) -> dict[str, Any]:
    return ok(f'taskflow {worker.version} worker {worker.hostname}')


HANDLERS: dict[str, Callable[..., Any]] = {
    'ping': _ping, 'active': _active, 'reserved': _reserved, 'scheduled': _scheduled, 'revoked': _revoked,
    'registered': _registered, 'stats': _stats, 'active_queues': _active_queues, 'conf': _conf,
    'query_task': _query_task, 'clock': _clock, 'hello': _hello, 'report': _report,
    'revoke': _revoke, 'terminate': _terminate, 'rate_limit': _rate_limit, 'time_limit': _time_limit,
    'shutdown': _shutdown, 'pool_grow': _pool_grow, 'pool_shrink': _pool_shrink, 'autoscale': _autoscale,
    'add_consumer': _add_consumer, 'cancel_consumer': _cancel_consumer, 'enable_events': _enable_events,
    'disable_events': _disable_events, 'heartbeat': _heartbeat,
}
