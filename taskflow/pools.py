"""Execution pools behind one small interface: ``SoloPool`` (in the consumer thread),
``ThreadPool`` and ``PreforkPool`` (billiard processes, the default).

``apply_async(fields, on_done, time_limit, soft_time_limit)`` runs
``tracer.trace_from_message(fields)`` and later calls ``on_done(outcome_or_exception)`` from
whatever thread the pool uses, or from the worker's own in ``collect``; the worker only queues
it there.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import select
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from billiard.pool import RUN, TASK, ApplyResult, ResultHandler
from billiard.pool import Pool as BilliardPool
from billiard.sharedctypes import RawArray
from typing import Any, Callable, Iterable

import taskflow._state as _state
import taskflow.signals as signals
from .exceptions import TaskRevokedError
from .protocol import is_expired
from .tracer import trace_from_message

__all__ = ['Pool', 'SoloPool', 'ThreadPool', 'PreforkPool', 'POOLS']

logger = logging.getLogger(__name__)

OnDone = Callable[[Any], None]


class Pool:
    """What the worker needs from a pool."""

    limit: int = 1
    #: True when the pool enforces time limits itself.
    supports_time_limits = False
    #: How many jobs per child the pool takes queued beyond the running ones (see
    #: ``PreforkPool``); such a job is "accepted" only when a child takes it up. 0: none.
    queues_ahead = 0
    #: True when outcomes come from ``collect`` in the worker's thread, not from a thread of
    #: the pool's own.
    collects = False

    def collect(self, timeout: float) -> bool:
        """Read what the pool's processes finished and call their ``on_done``/``on_accepted``,
        waiting up to ``timeout`` seconds for the first; False if nothing came (``collects``
        pools)."""
        return False

    def revoke_queued(self, task_ids: Iterable[str]) -> None:
        """Make queued jobs of these tasks end without running (``queues_ahead`` pools)."""

    def withdraw(self, job: Any) -> None:
        """Make this queued job (what ``apply_async`` returned) end without running."""

    def start(self) -> None:
        """Start the pool's threads or processes."""

    def apply_async(self, fields: dict[str, Any], on_done: OnDone, time_limit: float | None = None,
                    soft_time_limit: float | None = None, on_accepted: Callable[[int], None] | None = None) -> Any:
        raise NotImplementedError

    def terminate_job(self, pid: int | None, signum: int) -> bool:
        """Kill the process running a task (only pools with processes can)."""
        return False

    def resize(self, delta: int) -> bool:
        """Add (or remove, when negative) workers; False when this pool cannot."""
        return False

    def stop(self) -> None:
        """Finish the running tasks, then stop."""

    def terminate(self) -> None:
        """Stop now, killing what runs."""

    def processes(self) -> list[int]:
        return [os.getpid()]


class SoloPool(Pool):
    """Runs each task inline, in the consumer thread: one at a time, no isolation."""

    def apply_async(self, fields: dict[str, Any], on_done: OnDone, time_limit: float | None = None,
                    soft_time_limit: float | None = None, on_accepted: Callable[[int], None] | None = None) -> None:
        if on_accepted is not None:
            on_accepted(os.getpid())
        try:
            outcome: Any = trace_from_message(fields)
        except BaseException as exc:  # noqa: BLE001 - the worker must see every ending
            outcome = exc
        on_done(outcome)


class ThreadPool(Pool):
    """Tasks in threads of this process (for I/O-bound work; time limits are not enforced)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.limit, thread_name_prefix='ThreadPoolWorker')

    def apply_async(self, fields: dict[str, Any], on_done: OnDone, time_limit: float | None = None,
                    soft_time_limit: float | None = None, on_accepted: Callable[[int], None] | None = None) -> Any:
        assert self._executor is not None
        if on_accepted is not None:
            on_accepted(os.getpid())
        future = self._executor.submit(trace_from_message, fields)
        future.add_done_callback(lambda f: on_done(f.exception() or f.result()))
        return future

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


#: Digests of queued jobs a child must not run: tasks revoked meanwhile (by task id) and jobs
#: withdrawn after a lost connection (by job number: the redelivered message is a new job).
#: Shared memory made before the children fork, written by the worker, read by a child before
#: it runs a job. A ring: the newest entries overwrite the oldest; a job waits in the pipe
#: behind a few running tasks at most (two queued per child), so only recent ones matter.
_RING_SLOTS, _DIGEST_SIZE = 256, 16
_EMPTY_SLOT = bytes(_DIGEST_SIZE)
_revoked_ring: Any = None


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode('utf-8', 'surrogatepass'), digest_size=_DIGEST_SIZE).digest()


def _run_unless_revoked(fields: dict[str, Any], job: int) -> Any:
    """The job a child runs: the task, unless it expired, was revoked or was withdrawn while
    it waited (the worker then tells which and records it)."""
    ring = _revoked_ring
    if ring is not None and ring[:_DIGEST_SIZE] != _EMPTY_SLOT:  # the first write fills slot 0
        refused = ring.raw
        if _digest('task:' + fields['id']) in refused or _digest(f'job:{job}') in refused:
            return TaskRevokedError(fields['id'])
    if is_expired(fields.get('expires')):
        return TaskRevokedError(fields['id'])
    return trace_from_message(fields)


def _process_init(app: Any, hostname: str, ring: Any = None) -> None:
    """Runs first in every child process."""
    global _revoked_ring
    _revoked_ring = ring
    # Ctrl-C in a terminal, or systemd's SIGTERM, reaches the whole process group; only the
    # worker decides what a shutdown means (a warm one lets running tasks finish), so children
    # ignore both. Killing a child on purpose (revoke terminate, cold shutdown) uses SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if app.conf.worker_pool_batch_scheduling:
        _schedule_as_batch()
    _state.set_current_app(app)
    signals.worker_process_init.send(sender=None)


def _schedule_as_batch() -> None:
    """Put this child under Linux's SCHED_BATCH policy, if it has the default one (no-op
    elsewhere, or where a sandbox refuses). The child keeps its fair share of CPU; what changes
    is that waking up (its next job arrived, Redis answered) no longer preempts the process on
    that CPU. On a busy machine that process is often the worker's own, which hands the
    children their jobs, reads their results and acknowledges messages: preempted at each
    wake-up, it left the children and the broker waiting on it (-P prefork -c 2 on 2 CPUs,
    20,000 tasks, alternated: RabbitMQ 3,150 -> 3,500 tasks/s, Redis 4,020 -> 4,750; a round
    trip is no slower)."""
    try:
        if os.sched_getscheduler(0) == os.SCHED_OTHER:  # a policy the operator chose (chrt) stays
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        logger.debug('SCHED_BATCH is not available: children keep the default scheduling')


class _ResultsReadByCaller(ResultHandler):
    """billiard's result handler, whose thread starts only when the pool stops: until then
    ``_DirectPool.read_results`` runs its handlers in the worker's thread."""

    handed_over = False

    def start(self, *args: Any, **kwargs: Any) -> None:
        if self.handed_over:
            super().start(*args, **kwargs)


class _MessageReader:
    """Reads billiard's length-prefixed pickles off a pipe: every complete message one read
    returned (billiard reads each message with two reads after a poll of its own)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.buffer = bytearray()

    def wait(self, timeout: float) -> bool:
        """True when there is something to read within ``timeout`` seconds."""
        return bool(self.poller.poll(timeout * 1000))

    def read(self) -> list[Any]:
        data = os.read(self.fd, 1 << 16)
        if not data:
            raise EOFError
        buffer = self.buffer
        buffer += data
        messages, at, end = [], 0, len(buffer)
        view = memoryview(buffer)
        try:
            while end - at >= 4:
                size = _from_bytes(view[at:at + 4], 'big', signed=True)
                if at + 4 + size > end:
                    break
                messages.append(pickle.loads(view[at + 4:at + 4 + size]))
                at += 4 + size
        finally:
            view.release()
        del buffer[:at]
        return messages


_from_bytes = int.from_bytes


class _DirectPool(BilliardPool):
    """billiard's pool without two of its thread hops on the hot path.

    ``put_job`` writes a job to the children's pipe from the calling thread: billiard's
    ``apply_async`` (with its handler threads on) queues it for its task-handler thread, which
    then writes it, a thread wake-up and a GIL hand-off per task. Only the worker's consumer
    thread writes jobs (and the stop sentinels of ``PreforkPool.resize``), so writes never
    interleave. ``func`` gets the job's number after ``args``.

    ``read_results`` reads the children's accepts and outcomes in the calling thread too: a
    result thread woke for each of them, two per task, and fought the consumer thread for the
    GIL on every syscall. It takes every message one read returns (``_MessageReader``). The
    supervisor thread reads them as well (under the same lock) before it looks for exited
    children, so a child's last accept is seen before its exit is; the result thread of
    billiard takes over when the pool stops (``hand_over_results``)."""

    ResultHandler = _ResultsReadByCaller

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._results_lock = threading.Lock()
        super().__init__(*args, **kwargs)
        self._results_reader = _MessageReader(self._outqueue._reader.fileno())

    def put_job(self, func: Callable[..., Any], args: tuple[Any, ...], callback: OnDone,
                error_callback: Callable[[Any], None], accept_callback: Callable[..., None] | None,
                timeout: float | None, soft_timeout: float | None) -> ApplyResult | None:
        if self._state != RUN:  # a closing pool takes no new jobs
            return None
        timeout, soft_timeout = timeout or self.timeout, soft_timeout or self.soft_timeout
        job = ApplyResult(self._cache, callback, accept_callback, None, error_callback, soft_timeout,
                          timeout, self.lost_worker_timeout, on_timeout_set=self.on_timeout_set,
                          on_timeout_cancel=self.on_timeout_cancel)
        if timeout or soft_timeout:
            self._start_timeout_handler()
        self._quick_put((TASK, (job._job, None, func, (*args, job._job), {})))
        return job

    def read_results(self, timeout: float) -> bool:
        """Handle every message the children sent, waiting up to ``timeout`` seconds for the
        first; False if none came."""
        with self._results_lock:
            return self._read_results(timeout)

    def _read_results(self, timeout: float) -> bool:
        handler = self._result_handler
        if handler.handed_over:
            return False
        reader = self._results_reader
        if not reader.wait(timeout):
            return False
        while True:
            try:
                messages = reader.read()
            except (OSError, EOFError):  # the pipe is gone: the pool is being torn down
                return True
            self._handle(messages)
            if not reader.wait(0):
                return True

    def _handle(self, messages: list[Any]) -> None:
        on_state_change = self._result_handler.on_state_change
        for message in messages:
            if message is not None:  # (None: billiard's stop sentinel, sent only when closing)
                on_state_change(message)

    def _join_exited_workers(self, shutdown: bool = False) -> Any:
        with self._results_lock:  # (the supervisor thread)
            self._read_results(0)
            return super()._join_exited_workers(shutdown)

    def hand_over_results(self) -> None:
        """From now on billiard's result thread reads the children's messages (it drains them
        while the pool stops)."""
        with self._results_lock:
            handler = self._result_handler
            if handler.handed_over:
                return
            # billiard's thread reads from a message boundary: finish the one half read here
            # (its writer holds the pipe's lock until it is all written; 5 s for a dead one).
            reader = self._results_reader
            while reader.buffer and reader.wait(5.0):
                self._handle(reader.read())
            handler.handed_over = True
            handler.start()


class PreforkPool(Pool):
    """Child processes from billiard: isolation, time limits, recycling.

    The worker keeps two more jobs per child in the children's pipe, so that a child that
    finishes a task starts the next at once instead of waiting for the worker to hear of it
    and send one (children were idle 70% of the time on RabbitMQ at -c 2 waiting for that
    round of thread hops; a second queued job per child, rather than one, drained 10k tasks
    7% faster on Redis and 13% on RabbitMQ, a third no faster). A queued job is not started
    yet: it is acknowledged when a child takes it up, as Celery does, and a revoke reaches it
    through ``revoke_queued``."""

    supports_time_limits = True
    queues_ahead = 2
    collects = True

    def __init__(self, limit: int, app: Any, hostname: str, max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None, time_limit: float | None = None,
                 soft_time_limit: float | None = None, lost_worker_timeout: float | None = None) -> None:
        self.limit = limit
        self.app = app
        self.hostname = hostname
        self.options = dict(maxtasksperchild=max_tasks_per_child, max_memory_per_child=max_memory_per_child,
                            timeout=time_limit, soft_timeout=soft_time_limit,
                            lost_worker_timeout=lost_worker_timeout)
        self._pool: Any = None
        self._ring: Any = None
        self._ring_next = 0

    def start(self) -> None:
        self._ring = RawArray('c', _RING_SLOTS * _DIGEST_SIZE)
        self._pool = _DirectPool(processes=self.limit, initializer=_process_init,
                                  initargs=(self.app, self.hostname, self._ring), threads=True,
                                  enable_timeouts=True,  # per-task limits need billiard's timeout thread
                                  **{k: v for k, v in self.options.items() if v})

    def apply_async(self, fields: dict[str, Any], on_done: OnDone, time_limit: float | None = None,
                    soft_time_limit: float | None = None, on_accepted: Callable[[int], None] | None = None) -> Any:
        # The process boundary: `fields` is pickled to a child, which runs the task there;
        # `collect` (in the worker's thread) calls `on_done` with the outcome, or billiard's
        # threads with the error that ended the child (TimeLimitExceeded, WorkerLostError,
        # Terminated).
        return self._pool.put_job(
            _run_unless_revoked, (fields,), on_done, lambda einfo: on_done(_unwrap(einfo)),
            (lambda pid, _accepted_at: on_accepted(pid)) if on_accepted else None,
            time_limit, soft_time_limit)

    def collect(self, timeout: float) -> bool:
        return self._pool.read_results(timeout)

    def revoke_queued(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._refuse('task:' + task_id)

    def withdraw(self, job: Any) -> None:
        if job is not None:
            self._refuse(f'job:{job._job}')

    def _refuse(self, key: str) -> None:
        if self._ring is not None:
            at = self._ring_next * _DIGEST_SIZE
            self._ring[at:at + _DIGEST_SIZE] = _digest(key)
            self._ring_next = (self._ring_next + 1) % _RING_SLOTS

    def terminate_job(self, pid: int | None, signum: int) -> bool:
        if not pid or self._pool is None:
            return False
        # Children ignore SIGTERM (see _process_init); for an unhandled SIGTERM the effect was
        # an immediate exit anyway, which SIGKILL gives.
        self._pool.terminate_job(pid, signal.SIGKILL if signum == signal.SIGTERM else signum)
        return True

    def resize(self, delta: int) -> bool:
        if self._pool is None:
            return False
        if delta > 0:
            self._pool.grow(delta)
        elif delta < 0:
            # billiard's own shrink() SIGTERMs idle children, and one that dies holding the
            # shared queue's read lock wedges the pool. Instead send one stop sentinel per
            # process to retire: an idle child reads it and exits cleanly, and the pool does
            # not replace it because its size was lowered first.
            self._pool._processes += delta
            for _ in range(-delta):
                self._pool._quick_put(None)
        self.limit += delta
        return True

    def stop(self, timeout: float = 3.0) -> None:
        """Close the pool and wait for it; children killed from outside (a SIGTERM sent to
        the whole process group) can leave billiard's join waiting forever, so after
        ``timeout`` seconds the pool is terminated instead."""
        if self._pool is None:
            return
        self._pool.hand_over_results()
        self._pool.close()
        joiner = threading.Thread(target=self._pool.join, name='pool-join', daemon=True)
        joiner.start()
        joiner.join(timeout)
        if joiner.is_alive():
            logger.warning('Pool did not stop within %ss; terminating it', timeout)
            self._pool.terminate()

    def terminate(self, timeout: float = 3.0) -> None:
        """Cold shutdown: billiard's terminate() waits seconds for unfinished jobs and can hang
        on children that died underneath it, so give it ``timeout`` seconds, then SIGKILL
        whatever children are left (the process exits right after a cold shutdown)."""
        if self._pool is None:
            return
        children = self.processes()
        self._pool.hand_over_results()
        stopper = threading.Thread(target=lambda: (self._pool.terminate(), self._pool.join()),
                                   name='pool-terminate', daemon=True)
        stopper.start()
        stopper.join(timeout)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def processes(self) -> list[int]:
        return [p.pid for p in getattr(self._pool, '_pool', [])]


def _unwrap(einfo: Any) -> BaseException:
    """billiard reports errors as ``ExceptionInfo``, sometimes around ``ExceptionWithTraceback``."""
    exc = getattr(einfo, 'exception', einfo)
    return getattr(exc, 'exc', exc)


POOLS = {'prefork': PreforkPool, 'processes': PreforkPool, 'threads': ThreadPool, 'solo': SoloPool}
