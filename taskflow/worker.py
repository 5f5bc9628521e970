"""The worker: consume task messages, run them in a pool, acknowledge, and shut down cleanly.

One consumer thread (the main thread) owns the broker connection: it receives, decides, acks,
answers remote control and sends events. Pools report completions through a queue that only
this thread reads. The loop blocks on the event source that can unblock it: the broker while
pool slots are free, the completion queue while they are not.

Message fates, in order of ``_on_message``:
- unreadable (content type refused, undecodable body, missing headers) or unknown task: one
  error line with the id and reason, then rejected without requeue (dropped, or dead-lettered
  on RabbitMQ when the queue has a DLX);
- revoked or expired: stored as REVOKED, acked;
- ETA in the future, or over its rate limit: held on a timer heap (prefetch raised by one while
  held, so held messages never starve the queue);
- otherwise reserved, and dispatched when a slot is free: acked just before (default) or after
  the run (``acks_late``).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import platform
import queue
import signal
import socket
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, Iterable

from kombu import Exchange, Queue
from kombu.common import QoS
from kombu.utils.limits import TokenBucket

import taskflow._state as _state
import taskflow.signals as signals
import taskflow.states as states
from ._version import __version__
from .canvas import run_errbacks
from .config import broker_url, mask_url, result_backend_url
from .control import HANDLERS, RevokedSet, mailbox_for
from .events import HEARTBEAT_FREQ, EventDispatcher
from .exceptions import (ImproperlyConfigured, NotRegistered, TaskRevokedError, Terminated, TimeLimitExceeded,
                         WorkerLostError)
from .pools import POOLS, Pool, PreforkPool, SoloPool, ThreadPool
from .protocol import Context, default_nodename, from_iso, is_expired, request_from_message, saferepr
from .tracer import Outcome, fail_rest

if TYPE_CHECKING:
    from .app import Taskflow

__all__ = ['Worker', 'parse_rate']

logger = logging.getLogger('taskflow.worker')

RUNNING, WARM, COLD = 'running', 'warm', 'cold'
#: What a pool queues as the outcome when a child takes up a queued job (``Pool.queues_ahead``).
_ACCEPTED = object()
_RATE_UNITS = {'s': 1.0, 'm': 60.0, 'h': 3600.0}


def parse_rate(rate: Any) -> float:
    """``'10/s'``, ``'100/m'``, ``'1000/h'`` or a number (per second) -> tasks per second; 0 = none."""
    if not rate:
        return 0.0
    if isinstance(rate, (int, float)):
        return float(rate)
    count, _, unit = str(rate).partition('/')
    try:
        return float(count) / _RATE_UNITS[unit.strip().lower()[:1] or 's']
    except (KeyError, ValueError):
        raise ValueError(f'{rate!r} (expected a number, or N/s, N/m, N/h)') from None


class _GiveUp(Exception):
    """The broker stayed unreachable for all the configured retries."""


class Request:
    """A task message the worker holds, with what it needs to decide and acknowledge."""

    __slots__ = ('message', 'fields', 'task', 'id', 'name', 'eta', 'acked', 'time_limit',
                 'soft_time_limit', 'worker_pid', 'time_start', 'job')

    def __init__(self, message: Any, fields: dict[str, Any], task: Any) -> None:
        self.message = message
        self.fields = fields
        self.task = task
        self.id: str = fields['id']
        self.name: str = fields.get('shadow') or fields['name']
        self.eta = from_iso(fields.get('eta'))
        self.acked = False
        hard, soft = (fields.get('timelimit') or (None, None))
        self.time_limit = hard or task.time_limit
        self.soft_time_limit = soft or task.soft_time_limit
        self.time_start: float | None = None  # when a child took it up (time.time())
        self.worker_pid: int | None = None
        self.job: Any = None  # what the pool's apply_async returned

    @property
    def acks_late(self) -> bool:
        return bool(self.task.acks_late)

    def ack(self) -> None:
        if not self.acked:
            self.acked = True
            _settle(self.message, 'ack')

    def reject(self, requeue: bool) -> None:
        if not self.acked:
            self.acked = True
            _settle(self.message, 'requeue' if requeue else 'reject')

    def context(self) -> Context:
        return Context(self.fields, called_directly=False)

    def info(self) -> dict[str, Any]:
        """This request as ``inspect active/reserved`` report it (Celery's keys)."""
        f = self.fields
        return {'id': self.id, 'name': f['name'], 'args': f.get('args'), 'kwargs': f.get('kwargs'),
                'type': f['name'], 'hostname': f.get('hostname'), 'time_start': self.time_start,
                'acknowledged': self.acked, 'delivery_info': f.get('delivery_info'),
                'worker_pid': self.worker_pid}


def _settle(message: Any, how: str) -> None:
    """Ack, reject or requeue; a message from a lost connection cannot be settled (the broker
    redelivers it), which is logged, not raised."""
    try:
        if how == 'ack':
            message.ack()
        elif how == 'requeue':
            message.reject(requeue=True)
        else:
            message.reject(requeue=False)
    except Exception as exc:
        logger.warning('Could not %s message %s: %r (the broker will redeliver it)',
                       how, message.properties.get('correlation_id'), exc)


class Worker:
    """``taskflow worker``: see the module docstring for what it does with each message."""

    def __init__(self, app: 'Taskflow', hostname: str | None = None, concurrency: int | None = None,
                 pool: str | None = None, queues: list[str] | None = None,
                 exclude_queues: list[str] | None = None, prefetch_multiplier: int | None = None,
                 max_tasks_per_child: int | None = None, max_memory_per_child: int | None = None,
                 time_limit: float | None = None, soft_time_limit: float | None = None,
                 send_events: bool | None = None, statedb: str | None = None,
                 autoscale: tuple[int, int] | None = None, install_signal_handlers: bool = True,
                 **options: Any) -> None:
        conf = app.conf
        self.app = app
        self.version = __version__
        self.hostname = default_nodename(hostname)
        self.pool_name = pool or conf.worker_pool
        if self.pool_name not in POOLS:
            raise ValueError(f'Unknown pool {self.pool_name!r}; choose from {", ".join(POOLS)}')
        self.autoscale = autoscale
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        if autoscale:
            self.concurrency = autoscale[1] or 1
        if self.pool_name == 'solo':
            self.concurrency = 1
        self.prefetch_multiplier = (conf.worker_prefetch_multiplier if prefetch_multiplier is None
                                    else prefetch_multiplier)
        self.queue_names = queues or None
        self.exclude_queues = set(exclude_queues or ())
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.time_limit = time_limit or conf.task_time_limit
        self.soft_time_limit = soft_time_limit or conf.task_soft_time_limit
        self.task_events = bool(conf.worker_send_task_events if send_events is None else send_events)
        self.revoked = RevokedSet(path=statedb or conf.worker_state_db)
        self.install_signal_handlers = install_signal_handlers
        self.options = options
        self.mode = RUNNING
        self.pool: Pool | None = None
        self.events: EventDispatcher | None = None
        self._completions: queue.SimpleQueue[tuple[Request, Any]] = queue.SimpleQueue()
        self._reserved: deque[Request] = deque()
        self._held: list[tuple[float, int, Request]] = []  # ETA and rate-limited, by due time
        self._seq = itertools.count()
        self._active: set[Request] = set()  # by identity: a retry reuses the task id
        self._withdrawn: set[Request] = set()  # queued in the pool at a lost connection or shutdown
        self._qos: QoS | None = None
        self._consumer: Any = None
        self._connection: Any = None
        self._buckets: dict[str, TokenBucket | None] = {}
        self._extra_queues: list[Queue] = []
        self._cancelled_queues: set[str] = set()
        self._next_heartbeat = 0.0
        self._idle_since = time.monotonic()
        self.totals: Counter[str] = Counter()
        self.processed = 0
        self.clock = 0
        self.started_at = time.monotonic()
        self.exitcode = 0

    @property
    def prefetch_count(self) -> int:
        slots = self.autoscale[0] if self.autoscale else self.concurrency
        if self.app.conf.worker_disable_prefetch:
            return slots
        return slots * self.prefetch_multiplier

    # --- set-up ----------------------------------------------------------------------------
    def consumed_queues(self) -> list[Queue]:
        known = self.app.broker.queues
        names = self.queue_names or list(known)
        queues = [q for q in known.select(names) if q.name not in self.exclude_queues]
        queues += [q for q in self._extra_queues if q.name not in {x.name for x in queues}]
        return [q for q in queues if q.name not in self._cancelled_queues]

    def _make_pool(self) -> Pool:
        if self.pool_name == 'solo':
            return SoloPool()
        if self.pool_name == 'threads':
            return ThreadPool(self.concurrency)
        return PreforkPool(self.concurrency, self.app, self.hostname, self.max_tasks_per_child,
                           self.max_memory_per_child, self.time_limit, self.soft_time_limit,
                           lost_worker_timeout=self.app.conf.worker_lost_wait)

    def banner(self) -> str:
        conf = self.app.conf
        tasks = sorted(n for n in self.app.tasks if not n.startswith('celery.'))
        scaling = f'autoscale {self.autoscale[0]},{self.autoscale[1]}' if self.autoscale else str(self.concurrency)
        lines = [
            f'taskflow {self.version} worker {self.hostname}',
            f'  app:         {self.app.main or "__main__"}',
            f'  broker:      {mask_url(broker_url(conf))}',
            f'  backend:     {mask_url(result_backend_url(conf) or "disabled")}',
            f'  concurrency: {scaling} ({self.pool_name}), prefetch {self.prefetch_count}',
            f'  events:      {"task events on" if self.task_events else "off (-E to enable)"}',
            f'  queues:      {", ".join(q.name for q in self.consumed_queues())}',
            '  tasks:',
            *(f'    . {name}' for name in tasks),
        ]
        return '\n'.join(lines)

    def broker_info(self) -> dict[str, Any]:
        connection = self._connection
        if connection is None:
            return {}
        info = dict(connection.info())
        info.pop('password', None)
        return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}

    # --- running -----------------------------------------------------------------------------
    def start(self) -> int:
        """Run until shut down; returns the process exit code."""
        _state.set_current_app(self.app)  # the pools find tasks through the current app
        self.app.import_modules()
        self._check_broker_url()
        signals.worker_init.send(sender=self)
        if self.install_signal_handlers:
            self._install_signal_handlers()
        print(self.banner(), flush=True)
        self.pool = self._make_pool()
        self.pool.start()  # children fork before any broker connection exists
        try:
            self._run()
        finally:
            self._shutdown()
        return self.exitcode

    def _check_broker_url(self) -> None:
        """Refuse an unusable broker URL before anything starts (one clear error, not a traceback)."""
        try:
            self.app.connection_for_read().transport  # noqa: B018 - resolves the transport class
        except (KeyError, ImportError, ValueError) as exc:
            reason = exc.args[0] if exc.args else exc
            raise ImproperlyConfigured(f'Cannot use broker_url {self.app.conf.broker_url!r}: {reason}') from None

    def _run(self) -> None:
        first, failures, connected_at = True, 0, time.monotonic()
        while True:
            connection = self.app.connection_for_read()
            try:
                self._connect(connection, first)
                connected_at = time.monotonic()
                first = False
                self._consume(connection)
                self._wind_down(connection)
                return
            except _GiveUp as exc:
                logger.critical('consumer: %s; giving up.', exc)
                self.exitcode = 1
                self.mode = COLD
                return
            except tuple(connection.connection_errors) + tuple(connection.channel_errors) + (OSError,) as exc:
                if self.mode != RUNNING:
                    self._wind_down(None)
                    return
                logger.error('consumer: Connection to broker lost: %r. Trying to re-establish the connection...', exc)
                self._forget_undispatched()
                failures = failures + 1 if time.monotonic() - connected_at < 5 else 1
                time.sleep(min(0.5 * 2 ** (failures - 1), 10.0))  # a broker that keeps refusing: back off
            finally:
                self._consumer = self._connection = None
                if self.events is not None:
                    self.events.close()
                try:
                    connection.release()
                except Exception:
                    pass

    def _connect(self, connection: Any, first: bool) -> None:
        conf = self.app.conf
        retry = conf.broker_connection_retry_on_startup if first else conf.broker_connection_retry

        def on_error(exc: BaseException, interval: float) -> None:
            logger.error('consumer: Cannot connect to %s: %s. Trying again in %.2f seconds...',
                         connection.as_uri(), exc, interval)
            if self.mode != RUNNING:
                raise exc

        try:
            if retry:
                connection.ensure_connection(errback=on_error,
                                             max_retries=conf.broker_connection_max_retries or None)
            else:
                connection.connect()
        except Exception as exc:
            if self.mode != RUNNING:
                raise
            raise _GiveUp(f'Cannot connect to {connection.as_uri()}: {exc}') from exc
        self._connection = connection
        channel = connection.channel()
        if hasattr(channel, 'batched'):  # taskflow's Redis and AMQP transports: this loop drains them
            channel.batched = True
        queues = self.consumed_queues()
        for q in queues:
            q(channel).declare()
        self.events = EventDispatcher(self.app, self.hostname, connection=self.app.connection_for_write(),
                                      groups=None if self.task_events else {'worker'})
        self._consumer = self.app.broker.task_consumer(channel, queues, self._on_message)
        # RabbitMQ applies a basic.qos change only to consumers made after it unless it is
        # channel-wide ("global"); raising the prefetch for held ETA messages needs that.
        apply_global = not connection.qos_semantics_matches_spec and not any(
            (getattr(q, 'queue_arguments', None) or {}).get('x-queue-type') == 'quorum' for q in queues)
        consumer = self._consumer
        self._qos = QoS(lambda prefetch_count: consumer.qos(prefetch_count=prefetch_count,
                                                            apply_global=apply_global),
                        self.prefetch_count + len(self._held))
        self._qos.update()
        self._consumer.consume()
        if conf.worker_enable_remote_control:
            node = mailbox_for(self.app)(connection).Node(self.hostname, state=self, handlers=HANDLERS,
                                                          channel=connection.channel())
            node.listen(callback=lambda body, message: self._on_control(node, body, message))
        logger.info('Connected to %s', connection.as_uri())
        if first:
            self.events.send('worker-online', **self._heartbeat_fields())
            logger.info('%s ready.', self.hostname)
            signals.worker_ready.send(sender=self)

    def _on_control(self, node: Any, body: Any, message: Any) -> None:
        self.clock += 1
        if self.pool is not None:  # what the children started or finished meanwhile counts
            self._drain_completions()  # (for inspect active, revoke terminate)
        try:
            node.handle_message(body, message)
        except Exception as exc:  # a bad command must never stop the worker
            logger.error('Remote control command %r failed: %r', body, exc)

    def _consume(self, connection: Any) -> None:
        heartbeat_rate = self.app.conf.broker_heartbeat_checkrate
        while self.mode == RUNNING:
            self._drain_completions()
            self._release_due()
            self._dispatch_reserved()
            self._housekeeping()
            # The broker is read even while every slot is busy: remote control must answer
            # then, and prefetched messages wait in _reserved (bounded by the QoS prefetch).
            # When only the pool can move (every slot busy, or the prefetch window full), a
            # finished task is what matters first: wait for one (up to 50 ms), fill the freed
            # slot, then read the broker briefly; a broker wait (or a broker round trip) first
            # would hold the freed slot empty meanwhile (46 tasks/s on RabbitMQ with -c 2 and
            # full prefetch; 191/s with --prefetch-multiplier 1, where nothing can come from
            # the broker until the pool's accept lets us ack).
            timeout = self._next_wait()
            if self._only_the_pool_can_move():
                if self._wait_completion(timeout):
                    self._dispatch_reserved()
                timeout = 0.001
            try:
                connection.drain_events(timeout=timeout)
            except socket.timeout:
                connection.heartbeat_check(rate=heartbeat_rate)
            else:
                # What the broker just delivered goes to a free slot before the pool's news is
                # read (the previous task's accept and outcome: polls, reads and their handling,
                # 60-70 us on the path of a task sent to an idle worker).
                self._dispatch_reserved()

    def _only_the_pool_can_move(self) -> bool:
        """True when what must happen next comes from the pool: every slot is busy and
        messages wait for one, or the prefetch window is full, so the broker sends no task until
        the pool's accept or outcome lets us ack one (``--prefetch-multiplier 1``, late acks).
        Waiting on the broker then would leave a finished task unseen for the whole wait."""
        if not self._active:
            return False
        if self._reserved and len(self._active) >= self._capacity():
            return True
        window = self._qos.value if self._qos is not None else 0
        if not window:  # no prefetch limit
            return False
        unacked = len(self._reserved) + len(self._held) + sum(not r.acked for r in self._active)
        return unacked >= window

    def _housekeeping(self) -> None:
        if self._qos is not None:
            self._qos.update()
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self.send_heartbeat()
        if self.autoscale:
            self._autoscale(now)

    def _next_wait(self) -> float:
        wait = 1.0
        if self._held:
            wait = min(wait, max(0.0, self._held[0][0] - time.time()))
        if self._active:
            # Completions (late acks, freed slots) must not wait behind a long broker poll;
            # a short timeout is cheap: kombu keeps the pending BRPOP / socket read across calls.
            wait = min(wait, 0.05)
        return wait

    def _wait_completion(self, timeout: float) -> bool:
        """Handle finished tasks, waiting up to ``timeout`` for the first; False if none came."""
        assert self.pool is not None
        if self.pool.collects:
            self.pool.collect(timeout)
            return self._handle_completions()
        try:
            self._on_done(*self._completions.get(timeout=timeout))
        except queue.Empty:
            return False
        self._handle_completions()
        return True

    def _drain_completions(self) -> bool:
        """Handle the finished tasks there are, without waiting; False if there were none."""
        if self.pool is not None:
            self.pool.collect(0)  # (a no-op for pools with threads of their own)
        return self._handle_completions()

    def _handle_completions(self) -> bool:
        handled = False
        while True:
            try:
                item = self._completions.get_nowait()
            except queue.Empty:
                return handled
            self._on_done(*item)
            handled = True

    # --- intake ------------------------------------------------------------------------------
    def _on_message(self, message: Any) -> None:
        """Called by kombu for each delivered message (in this thread)."""
        task_id = (message.headers or {}).get('id') or message.properties.get('correlation_id')
        try:
            body = message.decode()
            fields = request_from_message(message.headers, message.properties, body, message.delivery_info)
            task = self.app.tasks[fields['name']]
        except NotRegistered as exc:
            logger.error('Received unregistered task of type %r (id %s): the message has been '
                         'ignored and discarded. Did you import the module that defines it '
                         '(-A, include, imports)?', exc.args[0], task_id)
            signals.task_unknown.send(sender=self, message=message, exc=exc, name=exc.args[0], id=task_id)
            message.reject(requeue=False)
            return
        except Exception as exc:  # InvalidTaskError, ContentDisallowed, DecodeError, ...
            logger.error('Refused message %s from queue %r: %s: %s', task_id,
                         (message.delivery_info or {}).get('routing_key'), type(exc).__name__, exc)
            message.reject(requeue=False)
            return
        fields['hostname'] = self.hostname
        request = Request(message, fields, task)
        signals.task_received.send(sender=self, request=request)
        logger.info('Task %s[%s] received', request.name, request.id)
        if self.events is not None and self.task_events:
            self.events.send('task-received', uuid=request.id, name=request.name,
                             args=fields.get('argsrepr') or saferepr(fields['args']),
                             kwargs=fields.get('kwargsrepr') or saferepr(fields['kwargs']),
                             root_id=fields.get('root_id'), parent_id=fields.get('parent_id'),
                             retries=fields.get('retries'), eta=fields.get('eta'), expires=fields.get('expires'))
        if self._refuse_revoked(request):
            return
        if request.eta is not None and request.eta.timestamp() > time.time():
            self._hold(request, request.eta.timestamp())
        else:
            self._reserved.append(request)

    def _refuse_revoked(self, request: Request) -> bool:
        """Revoked or expired: record REVOKED, ack, and say so (True); else False."""
        expired = is_expired(request.fields.get('expires'))
        if not expired and request.id not in self.revoked:
            return False
        reason = 'expired' if expired else 'revoked'
        logger.info('Discarding %s task %s[%s]', reason, request.name, request.id)
        ctx = request.context()
        if not (ctx.ignore_result or request.task.ignore_result):
            request.task.backend.mark_as_revoked(request.id, reason, request=ctx)
        signals.task_revoked.send(sender=request.task, request=ctx, terminated=False, signum=None, expired=expired)
        if self.events is not None and self.task_events:
            self.events.send('task-revoked', uuid=request.id, terminated=False, signum=None, expired=expired)
        request.ack()
        return True

    def _hold(self, request: Request, due: float) -> None:
        heapq.heappush(self._held, (due, next(self._seq), request))
        if self._qos is not None:
            self._qos.increment_eventually()  # a held message must not block new ones

    def _release_due(self) -> None:
        now = time.time()
        while self._held and self._held[0][0] <= now:
            _, _, request = heapq.heappop(self._held)
            if self._qos is not None:
                self._qos.decrement_eventually()
            if not self._refuse_revoked(request):
                self._reserved.append(request)

    # --- dispatch and completion ---------------------------------------------------------------
    def _bucket(self, task: Any) -> TokenBucket | None:
        name = task.name
        if name not in self._buckets:
            rate = 0.0 if self.app.conf.worker_disable_rate_limits else parse_rate(task.rate_limit)
            self._buckets[name] = TokenBucket(rate, capacity=1) if rate else None
        return self._buckets[name]

    def _dispatch_reserved(self) -> None:
        while self._reserved and len(self._active) < self._capacity() and self.mode == RUNNING:
            request = self._reserved.popleft()
            if self._refuse_revoked(request):  # it may have expired or been revoked while waiting
                continue
            bucket = self._bucket(request.task)
            if bucket is not None and not bucket.can_consume(1):
                self._hold(request, time.time() + bucket.expected_time(1))
                continue
            self._dispatch(request)

    def _capacity(self) -> int:
        """How many tasks may be with the pool: one per slot, plus the jobs per slot a pool
        that queues ahead takes."""
        assert self.pool is not None
        return self.concurrency * (1 + self.pool.queues_ahead)

    def _dispatch(self, request: Request) -> None:
        assert self.pool is not None
        queued = self.pool.queues_ahead > 0
        if not (request.acks_late or queued):
            request.ack()  # a queued job is acked when a child takes it up (_ACCEPTED)
        self._active.add(request)
        if not queued:
            request.time_start = time.time()
            self._send_started(request)
        put = self._completions.put

        def on_accepted(pid: int) -> None:  # in the pool's thread, or in collect()
            if not queued:
                request.worker_pid = pid
                return
            # A queued job runs from now: stamped before the pid that makes `inspect active`
            # list it; its event and ack follow in the worker's thread.
            request.time_start = time.time()
            request.worker_pid = pid
            put((request, _ACCEPTED))

        request.job = self.pool.apply_async(
            request.fields, lambda outcome: put((request, outcome)), time_limit=request.time_limit,
            soft_time_limit=request.soft_time_limit, on_accepted=on_accepted)

    def _send_started(self, request: Request) -> None:
        """``task-started``: at dispatch, or for a job the pool queues ahead when a child takes
        it up (not when it was written to the pipe)."""
        if self.events is not None and self.task_events:
            self.events.send('task-started', uuid=request.id)

    def _on_done(self, request: Request, outcome: Any) -> None:
        if outcome is _ACCEPTED:  # a child took up a queued job: it runs now
            # (a withdrawn one is acked only if it turns out to have run: the child accepts a
            # job before it looks for it in the ring)
            if request not in self._withdrawn:
                self._send_started(request)
                if not request.acks_late:
                    request.ack()
            return
        self._active.discard(request)
        withdrawn = request in self._withdrawn
        if withdrawn:
            self._withdrawn.discard(request)
        if isinstance(outcome, TaskRevokedError):  # revoked or withdrawn while queued: not run
            if not withdrawn:  # (a withdrawn one the broker redelivers)
                self._refuse_revoked(request)
            return
        self.processed += 1
        self.totals[request.fields['name']] += 1
        if isinstance(outcome, Outcome):
            self._task_event(request, outcome)
            if outcome.state == states.REJECTED:
                request.reject(requeue=outcome.requeue)
            elif outcome.state == states.FAILURE and not request.task.acks_on_failure_or_timeout:
                request.reject(requeue=False)
            else:
                request.ack()
            return
        self._on_pool_error(request, outcome)

    def _task_event(self, request: Request, outcome: Outcome) -> None:
        if self.events is None or not self.task_events:
            return
        state, uid = outcome.state, request.id
        if state == states.SUCCESS:
            self.events.send('task-succeeded', uuid=uid, result=outcome.retval, runtime=outcome.runtime)
        elif state == states.FAILURE:
            self.events.send('task-failed', uuid=uid, exception=saferepr(outcome.retval),
                             traceback=outcome.traceback)
        elif state == states.RETRY:
            self.events.send('task-retried', uuid=uid, exception=saferepr(outcome.retval),
                             traceback=outcome.traceback)
        elif state == states.REJECTED:
            self.events.send('task-rejected', uuid=uid, requeue=outcome.requeue)

    def _on_pool_error(self, request: Request, exc: BaseException) -> None:
        """The child running ``request`` was killed (time limit, lost, terminated)."""
        task, ctx = request.task, request.context()
        if isinstance(exc, TimeLimitExceeded):
            logger.error('Hard time limit (%ss) exceeded for %s[%s]', request.time_limit, request.name, request.id)
        elif isinstance(exc, WorkerLostError):
            if request.acks_late and task.reject_on_worker_lost:
                logger.error('Process running %s[%s] was lost: requeued (reject_on_worker_lost)',
                             request.name, request.id)
                request.reject(requeue=True)
                return
            logger.error('Task handler raised error: %r', exc)
        elif isinstance(exc, Terminated):
            logger.error('Task %s[%s] terminated: %r', request.name, request.id, exc)
            task.backend.mark_as_revoked(request.id, 'terminated', request=ctx)
            signum = abs(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else None
            signals.task_revoked.send(sender=task, request=ctx, terminated=True, signum=signum, expired=False)
            if self.events is not None and self.task_events:
                self.events.send('task-revoked', uuid=request.id, terminated=True, signum=signum, expired=False)
            request.ack()
            return
        else:
            logger.error('Task %s[%s] failed in the pool: %r', request.name, request.id, exc)
        if not (ctx.ignore_result or task.ignore_result) or task.store_errors_even_if_ignored:
            try:
                task.backend.mark_as_failure(request.id, exc, None, request=ctx)
            except Exception as store_exc:
                logger.error('Could not store the failure of %s[%s]: %r', request.name, request.id, store_exc)
        run_errbacks(self.app, ctx, exc, '')
        fail_rest(self.app, ctx, exc, '')
        signals.task_failure.send(sender=task, task_id=request.id, exception=exc, args=ctx.args,
                                  kwargs=ctx.kwargs, traceback=None, einfo=None)
        if self.events is not None and self.task_events:
            self.events.send('task-failed', uuid=request.id, exception=saferepr(exc), traceback=None)
        if request.acks_late and not task.acks_on_failure_or_timeout:
            request.reject(requeue=False)
        else:
            request.ack()

    # --- what remote control can do --------------------------------------------------------------
    def active_requests(self) -> list[Request]:
        return [r for r in self._active if not self._queued(r)]

    def reserved_requests(self) -> list[Request]:
        return [r for r in self._active if self._queued(r)] + list(self._reserved)

    def _queued(self, request: Request) -> bool:
        """Sent to a queueing pool and not taken up by a child yet."""
        return request.worker_pid is None and self.pool is not None and self.pool.queues_ahead > 0

    def scheduled_requests(self) -> list[Request]:
        return [r for _, _, r in sorted(self._held) if r.eta is not None]

    def revoke(self, ids: Iterable[str], terminate: bool = False, signum: int | None = None) -> None:
        """Never run these tasks; with ``terminate``, kill them if running now."""
        wanted = set(ids)
        self.revoked.update(wanted)
        if self.pool is not None:
            self.pool.revoke_queued(r.id for r in self._active if r.id in wanted and self._queued(r))
        if terminate and self.pool is not None:
            for request in list(self._active):
                if request.id in wanted:
                    logger.info('Terminating %s[%s] (signal %s)', request.name, request.id, signum)
                    self.pool.terminate_job(request.worker_pid, signum or signal.SIGTERM)
        for request in [r for r in self._reserved if r.id in wanted]:
            self._reserved.remove(request)
            self._refuse_revoked(request)

    def set_rate_limit(self, task_name: str, rate: Any) -> None:
        per_second = parse_rate(rate)
        self.app.tasks[task_name].rate_limit = rate
        self._buckets[task_name] = TokenBucket(per_second, capacity=1) if per_second else None

    def resize_pool(self, delta: int) -> bool:
        if self.pool is None or self.concurrency + delta < 1 or not self.pool.resize(delta):
            return False
        self.concurrency += delta
        if self._qos is not None and not self.autoscale:
            self._qos.set(self.prefetch_count + len(self._held))
        logger.info('Pool now has %d processes', self.concurrency)
        return True

    def set_autoscale(self, maximum: int, minimum: int) -> None:
        self.autoscale = (maximum, minimum)
        if self.concurrency > maximum:
            self.resize_pool(maximum - self.concurrency)
        elif self.concurrency < minimum:
            self.resize_pool(minimum - self.concurrency)

    def _autoscale(self, now: float) -> None:
        assert self.autoscale is not None
        maximum, minimum = self.autoscale
        backlog = len(self._reserved) + len(self._active) - self.concurrency
        if backlog > 0 and self.concurrency < maximum:
            self.resize_pool(min(backlog, maximum - self.concurrency))
        if self._active or self._reserved:
            self._idle_since = now
        elif self.concurrency > minimum and now - self._idle_since > 30.0:
            self.resize_pool(-1)  # one at a time while idle
            self._idle_since = now

    def add_consumer(self, queue_name: str, exchange: str | None = None, exchange_type: str = 'direct',
                     routing_key: str | None = None, **options: Any) -> None:
        self._cancelled_queues.discard(queue_name)
        if any(q.name == queue_name for q in self.consumed_queues()):
            if self._consumer is not None and not self._consumer.consuming_from(queue_name):
                self._start_consuming(self.app.broker.queues[queue_name])
            return
        new = Queue(queue_name, Exchange(exchange or queue_name, type=exchange_type),
                    routing_key=routing_key or queue_name, **options)
        self._extra_queues.append(new)
        self._start_consuming(new)

    def _start_consuming(self, queue_: Queue) -> None:
        if self._consumer is not None:
            self._consumer.add_queue(queue_)
            self._consumer.consume()
        logger.info('Started consuming from %s', queue_.name)

    def cancel_consumer(self, queue_name: str) -> None:
        self._cancelled_queues.add(queue_name)
        if self._consumer is not None:
            self._consumer.cancel_by_queue(queue_name)
        logger.info('No longer consuming from %s', queue_name)

    def set_task_events(self, enabled: bool) -> None:
        self.task_events = enabled
        if self.events is not None:
            self.events.groups = None if enabled else {'worker'}

    def _heartbeat_fields(self) -> dict[str, Any]:
        return {'freq': HEARTBEAT_FREQ, 'active': len(self.active_requests()), 'processed': self.processed,
                'loadavg': list(os.getloadavg()), 'sw_ident': 'py-taskflow', 'sw_ver': self.version,
                'sw_sys': platform.system()}

    def send_heartbeat(self) -> None:
        self._next_heartbeat = time.monotonic() + HEARTBEAT_FREQ
        if self.events is not None:
            self.events.send('worker-heartbeat', **self._heartbeat_fields())

    # --- shutdown ------------------------------------------------------------------------------
    def _forget_undispatched(self) -> None:
        """Give back what we hold but have not started, after a lost connection (best effort:
        a broker that noticed the loss redelivers them anyway)."""
        held = list(self._reserved) + [r for _, _, r in self._held]
        self._reserved.clear()
        self._held.clear()
        for request in held:
            request.reject(requeue=True)
        self._withdraw_queued()

    def _withdraw_queued(self) -> int:
        """Jobs queued in the pool and not taken up by a child are still unacked, so the broker
        gets them back (redelivers them): the children must not run these copies."""
        count = 0
        for request in self._active:
            if self._queued(request):
                assert self.pool is not None
                self._withdrawn.add(request)
                self.pool.withdraw(request.job)
                count += 1
        return count

    def _install_signal_handlers(self) -> None:
        def warm(signum: int, frame: Any) -> None:
            if self.mode == RUNNING:
                logger.warning('worker: Warm shutdown (MainProcess)')
                self.mode = WARM
            else:
                cold(signum, frame)

        def cold(signum: int, frame: Any) -> None:
            logger.warning('worker: Cold shutdown (MainProcess)')
            self.mode = COLD
            if isinstance(self.pool, SoloPool):
                raise SystemExit(0)  # the task runs in this thread: interrupt it

        signal.signal(signal.SIGTERM, warm)
        signal.signal(signal.SIGINT, warm)
        signal.signal(signal.SIGQUIT, cold)

    def stop(self, warm: bool = True) -> None:
        """Ask the worker to stop (from another thread, a signal handler or remote control)."""
        self.mode = WARM if warm and self.mode == RUNNING else COLD

    def _wind_down(self, connection: Any) -> None:
        """Stop consuming, give back held messages, let running tasks finish (warm shutdown);
        the connection stays open so late acks still reach the broker."""
        if self._consumer is not None:
            try:
                self._consumer.cancel()
            except Exception:
                pass
        # Reserved, held and queued messages were never started and stay unacked: closing the channel
        # gives them back (RabbitMQ requeues a closed channel's unacked messages; kombu's Redis
        # transport restores them at close). Requeueing them one by one here instead raced with
        # a BRPOP still in flight on Redis and could strand a message.
        held = len(self._reserved) + len(self._held) + self._withdraw_queued()
        self._reserved.clear()
        self._held.clear()
        if held:
            logger.info('Giving %d unstarted message(s) back to the broker', held)
        if self._active and self.mode != COLD:
            logger.info('Waiting for %d running task(s) to finish...', len(self._active))
        while self._active and self.mode != COLD:
            self._wait_completion(0.5)
            if connection is not None:
                try:
                    connection.heartbeat_check(rate=self.app.conf.broker_heartbeat_checkrate)
                except Exception:
                    connection = None
        self._drain_completions()
        if self.events is not None:
            self.events.send('worker-offline', **self._heartbeat_fields())

    def _shutdown(self) -> None:
        signals.worker_shutting_down.send(sender=self.hostname, sig='', how=self.mode, exitcode=self.exitcode)
        if self.pool is not None:
            if self.mode == COLD:
                self.pool.terminate()
            else:
                self.pool.stop()
        self.revoked.save()
        signals.worker_shutdown.send(sender=self)
        logger.info('%s stopped (%d task(s) processed)', self.hostname, self.processed)
