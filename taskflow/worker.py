"""The worker: consume task messages, run them in a pool, acknowledge, and shut down cleanly.

One consumer thread (the main thread) owns the kombu connection: it receives, decides, acks.
Pools report completions through a queue that only this thread reads. The loop blocks on the
event source that can unblock it: the broker while pool slots are free, the completion queue
while they are not.

Message fates, in order of ``_on_message``:
- unreadable (content type refused, undecodable body, missing headers) or unknown task: one
  error line with the id and reason, then rejected without requeue (dropped, or dead-lettered
  on RabbitMQ when the queue has a DLX);
- expired: stored as REVOKED, acked;
- ETA in the future: held on a heap (prefetch raised by one while it is held);
- otherwise reserved, and dispatched when a slot is free: acked just before (default) or after
  the run (``acks_late``).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import signal
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from kombu.common import QoS

from . import signals, states
from .exceptions import ImproperlyConfigured, NotRegistered, Terminated, TimeLimitExceeded, WorkerLostError
from .pools import POOLS, Pool, PreforkPool, ThreadPool, SoloPool
from .protocol import Context, default_nodename, from_iso, request_from_message
from .canvas import run_errbacks
from .tracer import Outcome, fail_rest

if TYPE_CHECKING:
    from .app import Taskflow

__all__ = ['Worker']

logger = logging.getLogger('taskflow.worker')

RUNNING, WARM, COLD = 'running', 'warm', 'cold'


class _GiveUp(Exception):
    """The broker stayed unreachable for all the configured retries."""


class Request:
    """A task message the worker holds, with what it needs to decide and acknowledge."""

    __slots__ = ('message', 'fields', 'task', 'id', 'name', 'eta', 'acked', 'time_limit',
                 'soft_time_limit', 'started')

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
        self.started = 0.0

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
                 install_signal_handlers: bool = True, **options: Any) -> None:
        conf = app.conf
        self.app = app
        self.hostname = default_nodename(hostname)
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.pool_name = pool or conf.worker_pool
        if self.pool_name not in POOLS:
            raise ValueError(f'Unknown pool {self.pool_name!r}; choose from {", ".join(POOLS)}')
        if self.pool_name == 'solo':
            self.concurrency = 1
        multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        self.prefetch_count = self.concurrency if conf.worker_disable_prefetch else self.concurrency * multiplier
        self.queue_names = queues or None
        self.exclude_queues = set(exclude_queues or ())
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.time_limit = time_limit or conf.task_time_limit
        self.soft_time_limit = soft_time_limit or conf.task_soft_time_limit
        self.install_signal_handlers = install_signal_handlers
        self.options = options
        self.mode = RUNNING
        self.pool: Pool | None = None
        self._completions: queue.SimpleQueue[tuple[Request, Any]] = queue.SimpleQueue()
        self._reserved: deque[Request] = deque()
        self._eta: list[tuple[float, int, Request]] = []
        self._eta_seq = itertools.count()
        self._active: set[Request] = set()  # by identity: a retry reuses the task id
        self._qos: QoS | None = None
        self._consumer: Any = None
        self.processed = 0
        self.exitcode = 0

    # --- set-up ----------------------------------------------------------------------------
    def _queues(self) -> list[Any]:
        known = self.app.broker.queues
        names = self.queue_names or list(known)
        return [q for q in known.select(names) if q.name not in self.exclude_queues]

    def _make_pool(self) -> Pool:
        if self.pool_name == 'solo':
            return SoloPool()
        if self.pool_name == 'threads':
            return ThreadPool(self.concurrency)
        return PreforkPool(self.concurrency, self.app, self.hostname, self.max_tasks_per_child,
                           self.max_memory_per_child, self.time_limit, self.soft_time_limit)

    def banner(self) -> str:
        from . import __version__  # noqa: PLC0415
        from .config import mask_url  # noqa: PLC0415
        conf = self.app.conf
        tasks = sorted(n for n in self.app.tasks if not n.startswith('celery.'))
        lines = [
            f'taskflow {__version__} worker {self.hostname}',
            f'  app:         {self.app.main or "__main__"}',
            f'  broker:      {mask_url(conf.broker_url or "memory://")}',
            f'  backend:     {mask_url(conf.result_backend) if conf.result_backend else "disabled"}',
            f'  concurrency: {self.concurrency} ({self.pool_name}), prefetch {self.prefetch_count}',
            f'  queues:      {", ".join(q.name for q in self._queues())}',
            '  tasks:',
            *(f'    . {name}' for name in tasks),
        ]
        return '\n'.join(lines)

    # --- running -----------------------------------------------------------------------------
    def start(self) -> int:
        """Run until shut down; returns the process exit code."""
        from . import _state  # noqa: PLC0415
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
        first = True
        while True:
            connection = self.app.connection_for_read()
            try:
                self._connect(connection, first)
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
            finally:
                self._consumer = None
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
        channel = connection.channel()
        queues = self._queues()
        for q in queues:
            q(channel).declare()
        self._consumer = self.app.broker.task_consumer(channel, queues, self._on_message)
        self._qos = QoS(self._consumer.qos, self.prefetch_count + len(self._eta))
        self._qos.update()
        self._consumer.consume()
        logger.info('Connected to %s', connection.as_uri())
        if first:
            logger.info('%s ready.', self.hostname)
            signals.worker_ready.send(sender=self)

    def _consume(self, connection: Any) -> None:
        heartbeat_rate = self.app.conf.broker_heartbeat_checkrate
        while self.mode == RUNNING:
            self._drain_completions()
            self._release_due_etas()
            self._dispatch_reserved()
            if self._qos is not None:
                self._qos.update()
            wait = self._next_wait()
            if len(self._active) < self.concurrency:
                try:
                    connection.drain_events(timeout=wait)
                except socket.timeout:
                    connection.heartbeat_check(rate=heartbeat_rate)
            else:
                self._wait_completion(wait)
                connection.heartbeat_check(rate=heartbeat_rate)

    def _next_wait(self) -> float:
        wait = 1.0
        if self._eta:
            wait = min(wait, max(0.0, self._eta[0][0] - time.time()))
        if self._active:
            # Completions (late acks, freed slots) must not wait behind a long broker poll;
            # a short timeout is cheap: kombu keeps the pending BRPOP / socket read across calls.
            wait = min(wait, 0.05)
        return wait

    def _wait_completion(self, timeout: float) -> None:
        try:
            self._on_done(*self._completions.get(timeout=timeout))
        except queue.Empty:
            pass

    def _drain_completions(self) -> None:
        while True:
            try:
                item = self._completions.get_nowait()
            except queue.Empty:
                return
            self._on_done(*item)

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
        expires = from_iso(fields.get('expires'))
        if expires is not None and expires.timestamp() < time.time():
            self._revoke_expired(request)
        elif request.eta is not None and request.eta.timestamp() > time.time():
            heapq.heappush(self._eta, (request.eta.timestamp(), next(self._eta_seq), request))
            if self._qos is not None:
                self._qos.increment_eventually()  # a held ETA message must not block new ones
        else:
            self._reserved.append(request)

    def _revoke_expired(self, request: Request) -> None:
        logger.info('Discarding expired task %s[%s] (expired at %s)', request.name, request.id,
                    request.fields.get('expires'))
        ctx = request.context()
        if not (ctx.ignore_result or request.task.ignore_result):
            request.task.backend.mark_as_revoked(request.id, 'expired', request=ctx)
        signals.task_revoked.send(sender=request.task, request=ctx, terminated=False, signum=None, expired=True)
        request.ack()

    def _release_due_etas(self) -> None:
        now = time.time()
        while self._eta and self._eta[0][0] <= now:
            _, _, request = heapq.heappop(self._eta)
            if self._qos is not None:
                self._qos.decrement_eventually()
            expires = from_iso(request.fields.get('expires'))
            if expires is not None and expires.timestamp() < now:
                self._revoke_expired(request)
            else:
                self._reserved.append(request)

    # --- dispatch and completion ---------------------------------------------------------------
    def _dispatch_reserved(self) -> None:
        while self._reserved and len(self._active) < self.concurrency and self.mode == RUNNING:
            self._dispatch(self._reserved.popleft())

    def _dispatch(self, request: Request) -> None:
        if not request.acks_late:
            request.ack()
        self._active.add(request)
        request.started = time.monotonic()
        assert self.pool is not None
        put = self._completions.put
        self.pool.apply_async(request.fields, lambda outcome: put((request, outcome)),
                              time_limit=request.time_limit, soft_time_limit=request.soft_time_limit)

    def _on_done(self, request: Request, outcome: Any) -> None:
        self._active.discard(request)
        self.processed += 1
        if isinstance(outcome, Outcome):
            if outcome.state == states.REJECTED:
                request.reject(requeue=outcome.requeue)
            elif outcome.state == states.FAILURE and not request.task.acks_on_failure_or_timeout:
                request.reject(requeue=False)
            else:
                request.ack()
            return
        self._on_pool_error(request, outcome)

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
        if request.acks_late and not task.acks_on_failure_or_timeout:
            request.reject(requeue=False)
        else:
            request.ack()

    # --- shutdown ------------------------------------------------------------------------------
    def _forget_undispatched(self) -> None:
        """After a lost connection: give back what we hold but have not started."""
        held = list(self._reserved) + [r for _, _, r in self._eta]
        self._reserved.clear()
        self._eta.clear()
        for request in held:
            request.reject(requeue=True)

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
        """Ask the worker to stop (from another thread or a signal handler)."""
        self.mode = WARM if warm and self.mode == RUNNING else COLD

    def _wind_down(self, connection: Any) -> None:
        """Stop consuming, give back held messages, let running tasks finish (warm shutdown);
        the connection stays open so late acks still reach the broker."""
        if self._consumer is not None:
            try:
                self._consumer.cancel()
            except Exception:
                pass
        # Reserved and ETA messages were never started: they go back to the queue now.
        self._forget_undispatched()
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

    def _shutdown(self) -> None:
        signals.worker_shutting_down.send(sender=self.hostname, sig='', how=self.mode, exitcode=self.exitcode)
        if self.pool is not None:
            if self.mode == COLD:
                self.pool.terminate()
            else:
                self.pool.stop()
        signals.worker_shutdown.send(sender=self)
        logger.info('%s stopped (%d task(s) processed)', self.hostname, self.processed)
