"""The consumer loop's choice of what to wait on (``Worker._only_the_pool_can_move``) and the
order of its steps: pure logic on the worker's counts, no broker and no children."""
from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest
from kombu.common import QoS

from taskflow.app import Taskflow
from taskflow.pools import PreforkPool
from taskflow.tracer import Outcome
from taskflow.worker import Request, Worker

app = Taskflow('t', broker='memory://', backend='memory://')


@app.task(name='t.loop.early')
def early() -> None:
    pass


@app.task(name='t.loop.late', acks_late=True)
def late_task() -> None:
    pass


def request(task: Any, acked: bool = False) -> Request:
    r = Request(SimpleNamespace(), {'id': f'id-{id(object())}', 'name': task.name}, task)
    r.acked = acked
    return r


def worker(multiplier: int) -> Worker:
    w = Worker(app, concurrency=2, pool='prefork', prefetch_multiplier=multiplier,
               install_signal_handlers=False)
    w.pool = PreforkPool(2, app=app, hostname='t@h')  # not started: only its shape is read
    w._qos = QoS(lambda prefetch_count: None, w.prefetch_count)
    return w


@pytest.mark.parametrize('running, queued, reserved, multiplier, late, expected', [
    # --prefetch-multiplier 1, -c 2 (window 2): two running (acked at accept), two queued in
    # the pipe (unacked) -> the broker sends nothing until a child accepts one
    (2, 2, 0, 1, False, True),
    # late acks: two running, unacked, fill the window
    (2, 0, 0, 1, True, True),
    # one running with room in the window: the broker can still deliver
    (1, 0, 0, 1, True, False),
    # window of 8: four in the pool, nothing waiting -> read the broker
    (2, 2, 0, 4, False, False),
    # every slot busy, the pipe full (two queued per child) and messages waiting for room
    (2, 4, 2, 4, False, True),
    # nothing in the pool: only the broker can bring work
    (0, 0, 2, 1, False, False),
])
def test_what_the_loop_waits_on(running: int, queued: int, reserved: int, multiplier: int, late: bool,
                                expected: bool) -> None:
    w = worker(multiplier)
    task = late_task if late else early
    w._active = {request(task, acked=not late) for _ in range(running)}
    w._active |= {request(task) for _ in range(queued)}
    w._reserved.extend(request(task) for _ in range(reserved))
    assert w._only_the_pool_can_move() is expected


def test_no_prefetch_limit_never_waits_on_the_pool_alone() -> None:
    w = worker(0)  # prefetch 0: unlimited
    w._active = {request(late_task), request(late_task)}
    assert w._only_the_pool_can_move() is False


def test_held_eta_messages_count_against_the_raised_window() -> None:
    w = worker(1)
    w._active = {request(late_task)}
    w._held = [(0.0, 0, request(early))]
    w._qos.increment_eventually()  # as Worker._hold does: window 3, unacked 2
    assert w._only_the_pool_can_move() is False
    w._active.add(request(late_task))
    assert w._only_the_pool_can_move() is True


class _QueueingPool:
    """Records jobs the way a pool that queues two per child receives them."""
    queues_ahead = 2
    collects = True

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def apply_async(self, fields: Any, callback: Any, **kwargs: Any) -> None:
        self.jobs.append(kwargs['on_accepted'])


class _Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, kind: str, **fields: Any) -> None:
        self.sent.append((kind, fields['uuid']))


@pytest.mark.parametrize('task', [early, late_task])
def test_a_queued_job_starts_when_a_child_takes_it_up(task: Any) -> None:
    w = worker(4)
    w.pool = _QueueingPool()  # type: ignore[assignment]
    w.events, w.task_events = _Events(), True  # type: ignore[assignment]
    acks: list[str] = []
    r = request(task)
    r.message = SimpleNamespace(ack=lambda: acks.append(r.id))
    w._dispatch(r)
    assert (r.time_start, w.events.sent, acks) == (None, [], [])  # in the pipe only
    assert [x.id for x in w.reserved_requests()] == [r.id] and w.active_requests() == []

    w.pool.jobs[0](4242)  # the child's accept (read by collect(), maybe for a control command) ...
    assert r.time_start is not None and [x.id for x in w.active_requests()] == [r.id]  # listed stamped
    w._handle_completions()  # ... then the worker's loop handles it
    assert r.time_start is not None and w.events.sent == [('task-started', r.id)]
    assert acks == ([r.id] if task is early else [])  # early acks at accept; late after the outcome
    assert [x.id for x in w.active_requests()] == [r.id] and r.worker_pid == 4242


class _RecordingPool(_QueueingPool):
    """Records, in order, the loop's reads of the children's messages and its job writes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def collect(self, timeout: float) -> None:
        self.calls.append('read the pool')

    def apply_async(self, fields: Any, callback: Any, **kwargs: Any) -> None:
        self.calls.append(f'job {fields["id"]}')
        super().apply_async(fields, callback, **kwargs)


class _OneDelivery:
    """A broker connection that delivers one message, then finds nothing and stops the loop."""

    def __init__(self, w: Worker, message: Request) -> None:
        self.w, self.message = w, message

    def drain_events(self, timeout: float) -> None:
        if self.message is not None:
            self.w._reserved.append(self.message)
            self.message = None  # type: ignore[assignment]
            return
        self.w.mode = 'warm'
        raise socket.timeout()

    def heartbeat_check(self, rate: float) -> None:
        pass


def test_a_delivered_message_goes_to_the_pool_before_the_pools_news_is_read() -> None:
    """A task sent to an idle worker must not wait while the loop reads and handles the
    previous task's accept and outcome (two reads and their handling)."""
    w = worker(4)
    w.pool = pool = _RecordingPool()  # type: ignore[assignment]
    w._next_heartbeat = float('inf')
    w._active.add(request(early, acked=True))  # its outcome waits in the pipe, unread
    delivered = request(early)
    w._consume(_OneDelivery(w, delivered))
    assert pool.calls[:3] == ['read the pool', f'job {delivered.id}', 'read the pool']


class _FinishingPool(_QueueingPool):
    """A pool whose collect() reads one finished task's outcome."""

    def __init__(self, w: Worker, finished: Request) -> None:
        super().__init__()
        self.w, self.finished = w, finished

    def collect(self, timeout: float) -> None:
        if self.finished is not None:
            self.w._completions.put((self.finished, Outcome('SUCCESS', self.finished.id, 'pong', 0.0, False, None)))
            self.finished = None  # type: ignore[assignment]


def test_a_control_command_sees_the_tasks_the_pool_has_finished_meanwhile() -> None:
    """``inspect active`` answered between a child's outcome and the loop's next turn must not
    list the task that outcome finished."""
    w = worker(4)
    finished = request(early, acked=True)
    finished.worker_pid = 4242
    finished.message = SimpleNamespace(ack=lambda: None)
    w._active.add(finished)
    w.pool = _FinishingPool(w, finished)  # type: ignore[assignment]
    seen: list[list[str]] = []
    node = SimpleNamespace(handle_message=lambda body, message: seen.append([r.id for r in w.active_requests()]))
    w._on_control(node, {'method': 'active'}, SimpleNamespace())
    assert seen == [[]] and w.processed == 1
