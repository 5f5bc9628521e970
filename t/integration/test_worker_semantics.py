"""Worker semantics, each with a real ``taskflow worker`` started through the CLI, on Redis and on
RabbitMQ (results in Redis): ETA/countdown held in the worker, expiry, revocation (also
persistent with ``--statedb``), time limits, rate limits, child recycling and autoscaling, lost
children, remote control and inspect in Celery's pidbox format (Python API, CLI, and a real
Celery on either side), events and signals.

Tests that need worker flags, or change a worker's state through remote control, start their
own worker on a queue of their own (``own_queue``); the rest share the module's worker.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from taskflow import group
from taskflow.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded, WorkerLostError
from t.integration import tasks
from t.integration.conftest import (ROOT, EventCollector, WorkerProcess, broker_env, configure_app,
                                    count_lines, delete_queue, nodename_of, queue_length, raw_meta,
                                    run_cli, wait_for)

pytestmark = pytest.mark.integration

CELERY_CLI = [sys.executable, '-m', 'celery', '-A', 't.integration.celery_tasks']


# --- helpers -----------------------------------------------------------------------------------
def date_done(task_id: str) -> datetime:
    meta = raw_meta(task_id)
    assert meta is not None and meta['date_done'], meta
    return datetime.fromisoformat(meta['date_done'])


def spread(task_ids: list[str]) -> float:
    """Seconds between the first and the last ``date_done`` of these tasks."""
    times = sorted(date_done(i) for i in task_ids)
    return (times[-1] - times[0]).total_seconds()


def inspect(node: str, timeout: float = 3.0) -> Any:
    return tasks.app.control.inspect(destination=[node], timeout=timeout)


def reply_of(replies: Any, node: str) -> Any:
    """The reply of ``node`` in a control reply list (``[{node: reply}, ...]``) or an inspect dict."""
    if isinstance(replies, list):
        merged: dict[str, Any] = {}
        for reply in replies:
            merged.update(reply)
        replies = merged
    assert replies and node in replies, f'no reply from {node}: {replies!r}'
    return replies[node]


def scheduled_ids(node: str) -> list[str]:
    reply = inspect(node).scheduled() or {}
    return [entry['request']['id'] for entry in reply.get(node, [])]


def wait_state(result: Any, state: str, timeout: float = 15.0) -> None:
    wait_for(lambda: raw_meta(result.id) is not None and raw_meta(result.id)['status'] == state,
             timeout=timeout, message=f'{result.id} to be {state} (now {raw_meta(result.id)})')


def in_queue(name: str) -> int:
    try:
        return queue_length(name)
    except Exception:  # noqa: BLE001 - a queue that does not exist holds nothing
        return 0


# === ETA / countdown ===========================================================================
def test_countdown_is_held_in_the_worker_and_runs_not_before_eta(broker, worker, queue_name):
    node = nodename_of(worker)
    sent = datetime.now(timezone.utc)
    result = tasks.request_info.apply_async(countdown=3)
    listed = wait_for(lambda: result.id in scheduled_ids(node), timeout=5,
                      message='the countdown task in inspect().scheduled()')
    assert listed
    entry = next(e for e in inspect(node).scheduled()[node] if e['request']['id'] == result.id)
    eta = datetime.fromisoformat(entry['eta'])
    assert sent + timedelta(seconds=2.5) <= eta <= sent + timedelta(seconds=4)
    assert entry['request']['name'] == 't.integration.tasks.request_info'
    # held by the worker, not put back on the broker, and not run yet
    assert in_queue(queue_name) == 0
    assert result.state == 'PENDING'
    info = result.get(timeout=15)
    assert datetime.fromisoformat(info['eta']) == eta
    assert date_done(result.id) >= eta
    assert result.id not in scheduled_ids(node)
    assert count_lines(worker.log(), f'request_info[{result.id}] received') == 1  # delivered once


def test_far_eta_tasks_do_not_block_immediate_ones(own_queue, start_worker, broker, request):
    w = start_worker('-c', '1', '--prefetch-multiplier', '1', queue=own_queue)
    node = nodename_of(w)
    held = [tasks.add.apply_async((i, i), countdown=300) for i in range(4)]
    wait_for(lambda: set(scheduled_ids(node)) == {r.id for r in held}, timeout=10,
             message='all four far-ETA tasks held by the worker')
    started = time.monotonic()
    assert tasks.add.delay(20, 22).get(timeout=10) == 42
    assert time.monotonic() - started < 5  # promptly, not behind the held ones
    assert all(r.state == 'PENDING' for r in held)
    tasks.app.control.revoke([r.id for r in held], destination=[node], reply=True)


def test_eta_tasks_survive_a_warm_restart(own_queue, start_worker):
    first = start_worker('-c', '1', queue=own_queue)
    node = nodename_of(first)
    held = [tasks.request_info.apply_async(countdown=5) for _ in range(3)]
    wait_for(lambda: set(scheduled_ids(node)) == {r.id for r in held}, timeout=10,
             message='the ETA tasks held by the first worker')
    assert first.stop() == 0, first.log()
    assert not any(raw_meta(r.id) for r in held)  # not run, not marked
    second = start_worker('-c', '1', queue=own_queue)
    infos = [r.get(timeout=30) for r in held]
    assert {info['hostname'] for info in infos} == {nodename_of(second)}
    for r, info in zip(held, infos):
        assert date_done(r.id) >= datetime.fromisoformat(info['eta'])
    assert count_lines(first.log(), 'succeeded') == 1  # only its readiness ping


def test_sigterm_to_the_process_group_is_a_clean_warm_shutdown(own_queue, start_worker):
    w = start_worker('-c', '4', queue=own_queue)
    os.killpg(w.pid, signal.SIGTERM)
    try:
        assert w.wait(timeout=10) == 0, w.log()
    finally:
        if w.proc.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
            w.proc.wait(timeout=10)


# === expires =====================================================================================
def test_expired_task_is_not_run_and_is_revoked(broker, worker, tmp_path):
    path = tmp_path / 'ran'
    # the ETA lies past the expiry: the worker holds it, and finds it expired when it is due
    result = tasks.record.apply_async((str(path), 'ran'), countdown=2, expires=1)
    wait_state(result, 'REVOKED')
    assert result.state == 'REVOKED'
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    assert tasks.add.delay(1, 1).get(timeout=10) == 2  # a round trip behind it
    assert not path.exists()
    assert count_lines(worker.log(), 'Discarding expired task', result.id) == 1


# === revocation ==================================================================================
def test_revoke_before_it_runs(broker, worker, tmp_path):
    path = tmp_path / 'ran'
    result = tasks.record.apply_async((str(path), 'ran'), countdown=2)
    wait_for(lambda: result.id in scheduled_ids(nodename_of(worker)), timeout=5, message='the task held')
    result.revoke()
    wait_state(result, 'REVOKED')
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    assert result.id in reply_of(inspect(nodename_of(worker)).revoked(), nodename_of(worker))
    time.sleep(0.5)  # past its ETA: give a wrongly released task the chance to run
    assert tasks.add.delay(1, 1).get(timeout=10) == 2
    assert not path.exists()


def test_revoke_terminate_kills_a_running_task(broker, worker):
    node = nodename_of(worker)
    result = tasks.tracked_sleep.delay(30)
    wait_for(lambda: result.state == 'STARTED', timeout=10, message='the sleep to start')
    started = time.monotonic()
    replies = tasks.app.control.revoke(result.id, terminate=True, reply=True, destination=[node])
    assert 'ok' in reply_of(replies, node)
    wait_state(result, 'REVOKED', timeout=10)
    assert time.monotonic() - started < 10
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    assert count_lines(worker.log(), 'terminated', result.id) >= 1
    assert tasks.add.delay(2, 3).get(timeout=10) == 5  # the worker still serves
    assert tasks.getpid.delay().get(timeout=10) != worker.pid


def test_revoke_group_result(broker, worker, tmp_path):
    path = tmp_path / 'ran'
    result = group(tasks.record.s(str(path), str(i)) for i in range(3)).apply_async(countdown=2)
    wait_for(lambda: {r.id for r in result.results} <= set(scheduled_ids(nodename_of(worker))),
             timeout=5, message='the group held')
    result.revoke()
    for r in result.results:
        wait_state(r, 'REVOKED')
    assert tasks.add.delay(1, 1).get(timeout=10) == 2
    assert not path.exists()


def test_revoked_id_is_honoured_when_the_message_comes_later(broker, worker, tmp_path):
    node = nodename_of(worker)
    path = tmp_path / 'ran'
    task_id = str(uuid.uuid4())
    assert 'ok' in reply_of(tasks.app.control.revoke(task_id, reply=True, destination=[node]), node)
    result = tasks.record.apply_async((str(path), 'ran'), task_id=task_id)
    wait_state(result, 'REVOKED')
    assert count_lines(worker.log(), 'Discarding revoked task', task_id) == 1
    assert not path.exists()


def test_statedb_keeps_revocations_across_a_restart(own_queue, start_worker, tmp_path):
    statedb = tmp_path / 'worker.state'
    path = tmp_path / 'ran'
    first = start_worker('--statedb', str(statedb), queue=own_queue)
    task_id = str(uuid.uuid4())
    node = nodename_of(first)
    assert 'ok' in reply_of(tasks.app.control.revoke(task_id, reply=True, destination=[node]), node)
    assert first.stop() == 0, first.log()
    assert statedb.exists()
    second = start_worker('--statedb', str(statedb), queue=own_queue)
    assert task_id in reply_of(inspect(nodename_of(second)).revoked(), nodename_of(second))
    result = tasks.record.apply_async((str(path), 'ran'), task_id=task_id)
    wait_state(result, 'REVOKED')
    assert tasks.add.delay(1, 1).get(timeout=10) == 2
    assert not path.exists()
    assert count_lines(second.log(), 'Discarding revoked task', task_id) == 1


# === time limits ===================================================================================
def test_soft_time_limit_task_attribute(broker, worker):
    started = time.monotonic()
    assert tasks.sleep_soft_limited.delay(5).get(timeout=10) == 'soft-limit-caught'
    assert time.monotonic() - started < 4


def test_soft_time_limit_per_call(broker, worker):
    started = time.monotonic()
    assert tasks.catch_soft_limit.apply_async((5,), soft_time_limit=0.5).get(timeout=10) == 'soft-limit-caught'
    assert time.monotonic() - started < 4
    assert tasks.catch_soft_limit.delay(0.1).get(timeout=10) == 'slept'  # no limit without one


def test_hard_time_limit_task_attribute(broker, worker):
    result = tasks.sleep_hard_limited.delay(10)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)
    assert result.state == 'FAILURE'
    assert raw_meta(result.id)['result']['exc_type'] == 'TimeLimitExceeded'
    assert count_lines(worker.log(), 'Hard time limit', result.id) == 1
    assert tasks.add.delay(1, 1).get(timeout=10) == 2  # the worker keeps serving


def test_hard_time_limit_per_call(broker, worker):
    started = time.monotonic()
    result = tasks.sleep.apply_async((10,), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)
    assert time.monotonic() - started < 8
    assert result.state == 'FAILURE'
    assert tasks.add.delay(2, 2).get(timeout=10) == 4


def test_worker_wide_time_limits(own_queue, start_worker):
    w = start_worker('--time-limit', '2', '--soft-time-limit', '0.5', queue=own_queue)
    node = nodename_of(w)
    assert reply_of(inspect(node).stats(), node)['pool']['timeouts'] == [0.5, 2.0]
    assert tasks.catch_soft_limit.delay(5).get(timeout=10) == 'soft-limit-caught'
    soft = tasks.sleep.delay(10)  # does not catch it: fails with it
    with pytest.raises(SoftTimeLimitExceeded):
        soft.get(timeout=10)
    assert soft.state == 'FAILURE'
    started = time.monotonic()
    hard = tasks.ignore_soft_limit.delay(10)  # swallows the soft limit: the hard one kills it
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=15)
    assert time.monotonic() - started < 8
    assert count_lines(w.log(), 'Hard time limit', hard.id) == 1
    assert tasks.add.delay(1, 1).get(timeout=10) == 2  # the worker keeps serving


# === rate limits =====================================================================================
def test_rate_limit_spaces_runs_and_can_change_at_run_time(own_queue, start_worker):
    w = start_worker('-c', '2', queue=own_queue)
    node = nodename_of(w)
    name = tasks.rate_limited.name
    slow = [tasks.rate_limited.delay(i) for i in range(6)]
    assert [r.get(timeout=30) for r in slow] == list(range(6))
    slow_spread = spread([r.id for r in slow])
    assert slow_spread >= 2.0, f'6 tasks at 2/s finished within {slow_spread:.2f}s'
    replies = tasks.app.control.rate_limit(name, '100/s', reply=True, destination=[node])
    assert reply_of(replies, node) == {'ok': 'new rate limit set successfully'}
    fast = [tasks.rate_limited.delay(i) for i in range(6)]
    assert [r.get(timeout=30) for r in fast] == list(range(6))
    fast_spread = spread([r.id for r in fast])
    assert fast_spread < slow_spread / 2, (slow_spread, fast_spread)
    bad = tasks.app.control.rate_limit(name, 'lots', reply=True, destination=[node])
    assert 'error' in reply_of(bad, node)


# === child recycling and autoscale ==================================================================
def test_max_tasks_per_child_replaces_the_child(own_queue, start_worker):
    w = start_worker('-c', '1', '--max-tasks-per-child', '2', queue=own_queue)
    node = nodename_of(w)
    pids = [tasks.getpid.delay().get(timeout=15) for _ in range(5)]
    assert len(set(pids)) >= 3, pids
    assert max(Counter(pids).values()) <= 2, pids
    assert w.pid not in pids
    assert reply_of(inspect(node).stats(), node)['pool']['max-tasks-per-child'] == 2


def test_max_memory_per_child_replaces_the_child(own_queue, start_worker):
    w = start_worker('-c', '1', '--max-memory-per-child', '150000', queue=own_queue)  # KiB
    before = [tasks.getpid.delay().get(timeout=15) for _ in range(2)]
    assert before[0] == before[1]  # a small child stays
    hog_pid = tasks.hog_memory.delay(200).get(timeout=30)
    assert hog_pid == before[1]
    after = tasks.getpid.delay().get(timeout=15)
    assert after != hog_pid and after != w.pid  # replaced after the 200 MB task


def test_autoscale_grows_the_pool_under_a_backlog(own_queue, start_worker):
    w = start_worker('--autoscale', '3,1', queue=own_queue)
    node = nodename_of(w)
    assert len(reply_of(inspect(node).stats(), node)['pool']['processes']) == 1
    results = [tasks.span.delay(1.5) for _ in range(6)]
    seen = []

    def grown() -> bool:
        stats = (inspect(node, timeout=1).stats() or {}).get(node)
        if stats:
            seen.append(len(stats['pool']['processes']))
        return bool(seen) and max(seen) > 1
    try:
        wait_for(grown, timeout=8, interval=0.2, message=f'the pool to grow (sizes seen: {seen})')
    finally:
        spans = [r.get(timeout=30) for r in results]
    assert len({s[2] for s in spans}) > 1


# === lost children ===================================================================================
def test_killed_child_is_worker_lost_error_and_the_worker_serves_on(broker, worker):
    result = tasks.kill_self.delay()
    with pytest.raises(WorkerLostError):
        result.get(timeout=30)
    assert result.state == 'FAILURE'
    assert raw_meta(result.id)['result']['exc_type'] == 'WorkerLostError'
    assert [tasks.add.delay(i, i).get(timeout=10) for i in range(3)] == [0, 2, 4]


def test_acks_late_reject_on_worker_lost_runs_again(broker, worker, tmp_path):
    marker = tmp_path / 'died-once'
    result = tasks.die_once.delay(str(marker))
    assert result.get(timeout=30) == 'survived'
    assert marker.exists()
    assert count_lines(worker.log(), f'die_once[{result.id}] received') == 2
    assert [tasks.add.delay(i, 1).get(timeout=10) for i in range(3)] == [1, 2, 3]  # still serves


def test_revoke_a_task_queued_for_a_busy_child(own_queue, start_worker, tmp_path):
    """With -c 1 the pool holds one job queued behind the running one (prefork queues ahead):
    inspect lists it as reserved, not active; revoked there, it never runs and is REVOKED, and
    it is acknowledged (a later worker does not get it)."""
    w = start_worker('-c', '1', queue=own_queue)
    node = nodename_of(w)
    busy = tasks.tracked_sleep.delay(2)
    wait_for(lambda: busy.state == 'STARTED', timeout=10, message='the sleep to start')
    path = tmp_path / 'ran'
    queued = tasks.record.delay(str(path), 'ran')
    wait_for(lambda: queued.id in [r['id'] for r in reply_of(inspect(node).reserved(), node)], timeout=10,
             message='the second task reserved behind the sleep')
    assert [a['id'] for a in reply_of(inspect(node).active(), node)] == [busy.id]
    tasks.app.control.revoke(queued.id, reply=True, destination=[node])
    assert busy.get(timeout=10) == 2
    wait_state(queued, 'REVOKED')
    assert tasks.add.delay(1, 1).get(timeout=10) == 2
    assert not path.exists()
    assert count_lines(w.log(), 'Discarding revoked task', queued.id) == 1
    assert w.stop() == 0, w.log()
    assert queue_length(own_queue) == 0


# === remote control and inspect: Python API ======================================================
def test_ping(broker, worker):
    node = nodename_of(worker)
    assert reply_of(tasks.app.control.ping(destination=[node], timeout=3), node) == {'ok': 'pong'}
    assert reply_of(inspect(node).ping(), node) == {'ok': 'pong'}


def test_inspect_active_reserved_registered_stats_queues_conf(broker, worker, queue_name):
    node = nodename_of(worker)
    running = tasks.tracked_sleep.delay(4)
    wait_for(lambda: running.state == 'STARTED', timeout=10, message='the sleep to start')
    handle = inspect(node)
    active = reply_of(handle.active(), node)
    [entry] = [a for a in active if a['id'] == running.id]
    assert entry['name'] == 't.integration.tasks.tracked_sleep'
    assert entry['args'] == [4] and entry['kwargs'] == {}
    assert entry['hostname'] == node
    assert entry['worker_pid'] and entry['worker_pid'] != worker.pid
    assert entry['time_start'] and abs(entry['time_start'] - time.time()) < 10
    assert entry['delivery_info']['routing_key'] == queue_name
    assert set(entry) >= {'id', 'name', 'args', 'kwargs', 'type', 'hostname', 'time_start',
                          'acknowledged', 'delivery_info', 'worker_pid'}
    reserved = reply_of(handle.reserved(), node)
    assert isinstance(reserved, list) and running.id not in [r['id'] for r in reserved]
    unknown = '00000000-0000-4000-8000-000000000000'
    found = reply_of(handle.query_task(running.id, unknown), node)
    assert list(found) == [running.id]  # an id the worker does not hold is left out
    assert found[running.id][0] == 'active' and found[running.id][1]['id'] == running.id
    registered = reply_of(handle.registered(), node)
    assert 't.integration.tasks.add' in registered and 't.integration.tasks.rate_limited' in registered
    assert 't.integration.tasks.rate_limited [rate_limit=2/s]' in reply_of(handle.registered('rate_limit'), node)
    stats = reply_of(handle.stats(), node)
    assert stats['pid'] == worker.pid
    assert stats['pool']['max-concurrency'] == 2 and len(stats['pool']['processes']) == 2
    assert stats['prefetch_count'] == 8
    assert stats['total'].get('t.integration.tasks.ping', 0) >= 1
    assert set(stats) >= {'broker', 'clock', 'pid', 'pool', 'prefetch_count', 'rusage', 'total', 'uptime'}
    queues = reply_of(handle.active_queues(), node)
    assert [q['name'] for q in queues] == [queue_name]
    assert {'name', 'exchange', 'routing_key', 'durable'} <= set(queues[0])
    conf = reply_of(handle.conf(), node)
    assert conf['task_default_queue'] == queue_name
    assert conf['result_extended'] is True
    assert 'guest:guest' not in json.dumps(conf)  # secrets masked
    assert running.get(timeout=10) == 4


def test_inspect_scheduled_and_revoked(broker, worker):
    node = nodename_of(worker)
    result = tasks.add.apply_async((1, 2), countdown=30)
    wait_for(lambda: result.id in scheduled_ids(node), timeout=5, message='the task in scheduled()')
    [entry] = [e for e in inspect(node).scheduled()[node] if e['request']['id'] == result.id]
    assert set(entry) >= {'eta', 'priority', 'request'}
    assert entry['request']['args'] == [1, 2]
    tasks.app.control.revoke(result.id, reply=True, destination=[node])
    assert result.id in reply_of(inspect(node).revoked(), node)
    # like Celery, the held message stays listed until its ETA, when it is discarded as REVOKED
    assert result.state == 'PENDING'


def test_remote_control_answered_while_every_slot_is_busy(own_queue, start_worker):
    w = start_worker('-c', '1', queue=own_queue)
    node = nodename_of(w)
    running = tasks.tracked_sleep.delay(10)
    wait_for(lambda: running.state == 'STARTED', timeout=10, message='the sleep to start')
    try:
        active = reply_of(inspect(node, timeout=2).active(), node)
        assert [a['id'] for a in active] == [running.id]
        tasks.app.control.revoke(running.id, terminate=True, destination=[node])
        wait_state(running, 'REVOKED', timeout=5)
    finally:
        running.get(timeout=20, propagate=False)


def test_control_terminate_time_limit_and_pool_grow(own_queue, start_worker):
    w = start_worker('-c', '2', queue=own_queue)
    node = nodename_of(w)
    control = tasks.app.control
    # terminate = revoke(terminate=True)
    running = tasks.tracked_sleep.delay(30)
    wait_for(lambda: running.state == 'STARTED', timeout=10, message='the sleep to start')
    assert 'ok' in reply_of(control.terminate(running.id, reply=True, destination=[node]), node)
    wait_state(running, 'REVOKED', timeout=10)
    # time_limit on a task type, at run time
    replies = control.time_limit(tasks.sleep.name, soft=None, hard=1, reply=True, destination=[node])
    assert reply_of(replies, node) == {'ok': 'time limits set successfully'}
    limited = tasks.sleep.delay(10)
    with pytest.raises(TimeLimitExceeded):
        limited.get(timeout=15)
    assert 'error' in reply_of(control.time_limit('no.such.task', hard=1, reply=True, destination=[node]), node)
    # pool_grow
    assert reply_of(control.pool_grow(2, reply=True, destination=[node]), node) == {'ok': 'pool will grow'}
    wait_for(lambda: len(reply_of(inspect(node).stats(), node)['pool']['processes']) == 4, timeout=10,
             message='the pool to grow to 4')
    assert reply_of(inspect(node).stats(), node)['pool']['max-concurrency'] == 4
    spans = [r.get(timeout=15) for r in [tasks.span.delay(1) for _ in range(4)]]
    assert max(s[0] for s in spans) < min(s[1] for s in spans)  # four at once
    assert tasks.add.delay(1, 1).get(timeout=10) == 2


def test_pool_shrink_keeps_the_worker_serving(own_queue, start_worker):
    w = start_worker('-c', '8', queue=own_queue)
    node = nodename_of(w)
    control = tasks.app.control
    try:
        for attempt in range(3):
            if attempt:
                assert 'ok' in reply_of(control.pool_grow(7, reply=True, destination=[node]), node)
            wait_for(lambda: len(reply_of(inspect(node).stats(), node)['pool']['processes']) == 8,
                     timeout=10, message='eight processes')
            replies = control.pool_shrink(7, reply=True, destination=[node])
            assert reply_of(replies, node) == {'ok': 'pool will shrink'}
            wait_for(lambda: len(reply_of(inspect(node).stats(), node)['pool']['processes']) == 1,
                     timeout=10, message='the pool to shrink to 1')
            assert tasks.add.delay(attempt, 1).get(timeout=5) == attempt + 1
    finally:
        if w.proc.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)  # a hung pool would make the warm stop wait 30 s
            w.proc.wait(timeout=10)


def test_control_add_and_cancel_consumer(own_queue, start_worker):
    w = start_worker(queue=own_queue)
    node = nodename_of(w)
    q2 = f'{own_queue}-q2'
    try:
        first = tasks.add.apply_async((1, 1), queue=q2)  # waits in q2, nobody consumes it yet
        wait_for(lambda: in_queue(q2) == 1, timeout=5, message='the message waiting in q2')
        assert first.state == 'PENDING'
        replies = tasks.app.control.add_consumer(q2, reply=True, destination=[node])
        assert reply_of(replies, node) == {'ok': f'add consumer {q2}'}
        assert first.get(timeout=10) == 2
        names = [q['name'] for q in reply_of(inspect(node).active_queues(), node)]
        assert names == [own_queue, q2]
        replies = tasks.app.control.cancel_consumer(q2, reply=True, destination=[node])
        assert 'ok' in reply_of(replies, node)
        assert [q['name'] for q in reply_of(inspect(node).active_queues(), node)] == [own_queue]
        later = tasks.add.apply_async((2, 2), queue=q2)
        assert tasks.add.delay(3, 3).get(timeout=10) == 6  # the worker still serves its own queue
        wait_for(lambda: in_queue(q2) == 1, timeout=5, message='the q2 message left in the queue')
        assert later.state == 'PENDING'
    finally:
        delete_queue(q2)


def test_control_shutdown_exits_zero(own_queue, start_worker):
    w = start_worker(queue=own_queue)
    node = nodename_of(w)
    assert reply_of(tasks.app.control.shutdown(reply=True, destination=[node], timeout=3), node) == \
        {'ok': 'shutting down'}
    assert w.wait(timeout=20) == 0, w.log()
    assert tasks.app.control.ping(destination=[node], timeout=1) == []


def test_control_enable_and_disable_events(own_queue, start_worker):
    w = start_worker(queue=own_queue)  # no -E: worker events only
    node = nodename_of(w)
    with EventCollector() as ev:
        ev.wait('worker-heartbeat', hostname=node)
        quiet = tasks.add.delay(1, 1)
        assert quiet.get(timeout=10) == 2
        # the worker has taken in its completion (and decided about its events) before we go on
        wait_for(lambda: reply_of(inspect(node).stats(), node)['total'].get(tasks.add.name) == 1,
                 timeout=10, message='the worker to count the quiet task')
        assert reply_of(tasks.app.control.enable_events(reply=True, destination=[node]), node) == \
            {'ok': 'task events enabled'}
        loud = tasks.add.delay(2, 2)
        assert loud.get(timeout=10) == 4
        ev.wait('task-succeeded', uuid=loud.id)
        assert reply_of(tasks.app.control.disable_events(reply=True, destination=[node]), node) == \
            {'ok': 'task events disabled'}
        quiet_again = tasks.add.delay(3, 3)
        assert quiet_again.get(timeout=10) == 6
        ev.wait('worker-heartbeat', hostname=node, timeout=10)  # let events in flight arrive
        heartbeats = len(ev.of('worker-heartbeat', hostname=node))
        wait_for(lambda: len(ev.of('worker-heartbeat', hostname=node)) > heartbeats, timeout=10,
                 message='one more heartbeat')
        task_events = {(e['type'], e['uuid']) for e in ev.events if e['type'].startswith('task-')}
        assert not {uid for _, uid in task_events} & {quiet.id, quiet_again.id}, task_events
        assert ('task-received', loud.id) in task_events


# === remote control: CLI ===========================================================================
def test_cli_inspect_ping_status_and_control(own_queue, start_worker, broker):
    w = start_worker('-c', '2', queue=own_queue)
    node = nodename_of(w)
    done = run_cli(broker, own_queue, 'inspect', 'ping', '-d', node, '-t', '5')
    assert done.returncode == 0, done.stderr
    assert f'-> {node}: OK pong' in done.stdout
    assert '1 node online.' in done.stdout
    done = run_cli(broker, own_queue, 'status', '-t', '3')
    assert done.returncode == 0, done.stderr
    assert f'{node}: OK' in done.stdout
    done = run_cli(broker, own_queue, 'inspect', 'stats', '-d', node, '-t', '5', '--json')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[node]['pid'] == w.pid
    for method in ('active', 'reserved', 'scheduled', 'registered', 'revoked', 'active_queues', 'conf'):
        done = run_cli(broker, own_queue, 'inspect', method, '-d', node, '-t', '5', '-j')
        assert done.returncode == 0, (method, done.stderr)
        assert node in json.loads(done.stdout), (method, done.stdout)
    done = run_cli(broker, own_queue, 'control', 'pool_grow', '1', '-d', node, '-t', '5')
    assert done.returncode == 0, done.stderr
    assert f'-> {node}: OK pool will grow' in done.stdout
    wait_for(lambda: len(reply_of(inspect(node).stats(), node)['pool']['processes']) == 3, timeout=10,
             message='the pool to grow to 3')
    done = run_cli(broker, own_queue, 'control', 'rate_limit', tasks.add.name, '50/s', '-d', node, '-t', '5')
    assert done.returncode == 0 and 'new rate limit set successfully' in done.stdout, done.stdout + done.stderr
    assert f'{tasks.add.name} [rate_limit=50/s]' in reply_of(inspect(node).registered('rate_limit'), node)
    task_id = str(uuid.uuid4())
    done = run_cli(broker, own_queue, 'control', 'revoke', task_id, '-d', node, '-t', '5')
    assert done.returncode == 0 and task_id in done.stdout, done.stdout + done.stderr
    assert task_id in reply_of(inspect(node).revoked(), node)
    done = run_cli(broker, own_queue, 'control', 'shutdown', '-d', node, '-t', '5')
    assert done.returncode == 0 and 'shutting down' in done.stdout, done.stdout + done.stderr
    assert w.wait(timeout=20) == 0
    done = run_cli(broker, own_queue, 'inspect', 'ping', '-d', node, '-t', '1')
    assert done.returncode != 0 and 'No nodes replied' in done.stderr


# === interop: real Celery on either side of the pidbox =============================================
def test_celery_inspect_ping_answers_for_a_taskflow_worker(broker, worker, queue_name):
    node = nodename_of(worker)
    done = run_cli(broker, queue_name, 'inspect', 'ping', '-d', node, '-t', '5', command=CELERY_CLI)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf'^->\s+{re.escape(node)}: OK\n\s+pong$', done.stdout, re.MULTILINE), done.stdout
    done = run_cli(broker, queue_name, 'inspect', 'stats', '-d', node, '-t', '5', '--json', command=CELERY_CLI)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)[node]['pid'] == worker.pid


def test_taskflow_inspect_ping_answers_for_a_celery_worker(broker, queue_name, tmp_path):
    celery_queue = f'tf-test-celery-{broker}-{uuid.uuid4().hex[:8]}'
    name = f'celery-{uuid.uuid4().hex[:6]}'
    configure_app(broker, celery_queue)
    env = dict(os.environ, **broker_env(broker, celery_queue))
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    w = WorkerProcess([*CELERY_CLI, 'worker', '-l', 'INFO', '-P', 'solo', '-Q', celery_queue,
                       '-n', f'{name}@%h'], env, tmp_path / 'celery-worker.log')
    try:
        w.wait_ready(timeout=60)
        node = wait_for(lambda: [n for r in tasks.app.control.ping(timeout=2) or [] for n in r
                                 if n.startswith(f'{name}@')], timeout=15, message='the celery node')[0]
        done = run_cli(broker, celery_queue, 'inspect', 'ping', '-d', node, '-t', '5')
        assert done.returncode == 0, done.stdout + done.stderr
        assert f'-> {node}: OK pong' in done.stdout
        done = run_cli(broker, celery_queue, 'inspect', 'registered', '-d', node, '-t', '5', '-j')
        assert done.returncode == 0, done.stderr
        assert 't.integration.tasks.add' in json.loads(done.stdout)[node]
        # a Celery worker does not reply to shutdown (it raises WorkerShutdown), so the CLI says
        # 'No nodes replied' exactly as `celery control shutdown` does; the worker exits all the same
        run_cli(broker, celery_queue, 'control', 'shutdown', '-d', node, '-t', '2')
        assert w.wait(timeout=30) == 0, w.log()
    finally:
        w.stop()
        delete_queue(celery_queue)
        configure_app(broker, queue_name)


# === events =======================================================================================
CELERY_FIELDS = {'type', 'hostname', 'utcoffset', 'pid', 'clock', 'timestamp'}


def test_task_events_with_celery_field_names(own_queue, start_worker):
    w = start_worker('-E', queue=own_queue)
    node = nodename_of(w)
    with EventCollector() as ev:
        ok = tasks.add.delay(2, 3)
        assert ok.get(timeout=10) == 5
        bad = tasks.fail.delay('boom')
        with pytest.raises(ValueError):
            bad.get(timeout=10)
        revoked_id = str(uuid.uuid4())
        tasks.app.control.revoke(revoked_id, reply=True, destination=[node])
        revoked = tasks.add.apply_async((0, 0), task_id=revoked_id)
        wait_state(revoked, 'REVOKED')
        received = ev.wait('task-received', uuid=ok.id)
        started = ev.wait('task-started', uuid=ok.id)
        succeeded = ev.wait('task-succeeded', uuid=ok.id)
        failed = ev.wait('task-failed', uuid=bad.id)
        revoked_event = ev.wait('task-revoked', uuid=revoked_id)
    for event in (received, started, succeeded, failed, revoked_event):
        assert set(event) >= CELERY_FIELDS, event
        assert event['hostname'] == node and event['pid'] == w.pid
    assert received['name'] == 't.integration.tasks.add'
    assert received['args'] == '(2, 3)' and received['kwargs'] == '{}'
    assert set(received) >= {'uuid', 'name', 'args', 'kwargs', 'root_id', 'parent_id', 'retries', 'eta', 'expires'}
    assert received['root_id'] == ok.id and received['retries'] == 0
    assert succeeded['result'] == '5'  # saferepr of the return value, as Celery sends it
    assert isinstance(succeeded['runtime'], float) and succeeded['runtime'] >= 0
    assert "ValueError('boom')" in failed['exception']
    assert set(failed) >= {'exception', 'traceback'}
    assert revoked_event['terminated'] is False and revoked_event['expired'] is False
    assert set(revoked_event) >= {'terminated', 'signum', 'expired'}
    assert received['clock'] < started['clock'] < succeeded['clock']


def test_task_received_events_for_messages_waiting_at_start(own_queue, start_worker, broker, request):
    """Tasks already in the queue when the worker starts get their events too."""
    waiting = [tasks.add.delay(i, i) for i in range(3)]
    with EventCollector() as ev:
        w = start_worker('-E', queue=own_queue, ready=False)
        assert [r.get(timeout=30) for r in waiting] == [0, 2, 4]
        node = ev.wait('worker-online')['hostname']
        assert node == nodename_of(w)
        for r in waiting:
            ev.wait('task-succeeded', uuid=r.id)
        received = {e['uuid'] for e in ev.of('task-received')}
    assert {r.id for r in waiting} <= received


def test_worker_send_task_events_setting(own_queue, start_worker):
    """``worker_send_task_events`` (here from the environment) does what ``-E`` does."""
    w = start_worker(queue=own_queue, env={'TASKFLOW_WORKER_SEND_TASK_EVENTS': 'true'})
    assert 'events:      task events on' in w.log(), w.log()
    with EventCollector() as ev:
        result = tasks.add.delay(7, 7)
        assert result.get(timeout=10) == 14
        assert ev.wait('task-succeeded', uuid=result.id)['result'] == '14'


def test_worker_heartbeats(own_queue, start_worker):
    w = start_worker('-E', queue=own_queue)
    node = nodename_of(w)
    with EventCollector() as ev:
        first = ev.wait('worker-heartbeat', hostname=node)
        assert [tasks.add.delay(i, i).get(timeout=10) for i in range(3)] == [0, 2, 4]
        later = wait_for(lambda: [e for e in ev.of('worker-heartbeat', hostname=node)
                                  if e['processed'] >= first['processed'] + 3], timeout=10,
                         message='a heartbeat counting the three tasks')[0]
    assert set(first) >= CELERY_FIELDS | {'freq', 'active', 'processed', 'loadavg', 'sw_ident', 'sw_ver', 'sw_sys'}
    assert first['freq'] == 2.0 and isinstance(first['active'], int)
    assert later['timestamp'] - first['timestamp'] < 2 * first['freq'] * 3
    beats = [e['timestamp'] for e in ev.of('worker-heartbeat', hostname=node)]
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert gaps and max(gaps) < 2 * first['freq'], gaps  # monitors call a worker gone after 2 x freq
    assert w.stop() == 0
    # (worker-offline is sent at shutdown; the collector is closed by now: checked in the next test)


def test_worker_online_and_offline(own_queue, start_worker):
    with EventCollector() as ev:
        w = start_worker(queue=own_queue)
        node = nodename_of(w)
        online = ev.wait('worker-online', hostname=node)
        assert w.stop() == 0
        offline = ev.wait('worker-offline', hostname=node)
    assert online['freq'] == 2.0 and offline['pid'] == w.pid


@pytest.fixture
def sent_events(broker: str) -> Any:
    """``task_send_sent_event`` on in this (client) process, with a fresh task-sent dispatcher:
    the app keeps the one it made first even across ``app.close()`` (see the xfail below)."""
    def reset() -> None:
        old = getattr(tasks.app, '_sent_events', None)
        if old is not None:
            old.close()
        tasks.app._sent_events = None
    reset()
    tasks.app.conf.task_send_sent_event = True
    yield
    tasks.app.conf.task_send_sent_event = False
    reset()


def test_task_sent_event_from_the_client(broker, worker, queue_name, sent_events):
    with EventCollector() as ev:
        result = tasks.add.apply_async((4, 4), countdown=0.1)
        assert result.get(timeout=10) == 8
        sent = ev.wait('task-sent', uuid=result.id)
    assert set(sent) >= CELERY_FIELDS | {'uuid', 'root_id', 'parent_id', 'name', 'args', 'kwargs', 'retries',
                                         'eta', 'expires', 'queue', 'exchange', 'routing_key'}
    assert sent['name'] == 't.integration.tasks.add' and sent['args'] == '(4, 4)'
    assert sent['queue'] == queue_name and sent['routing_key'] == queue_name
    assert sent['hostname'].startswith(f'gen{os.getpid()}@')  # a client's anonymous node name
    assert sent['eta'] is not None


def test_task_sent_event_follows_the_broker_after_app_close(broker, queue_name, sent_events):
    tasks.ping.apply_async(queue=queue_name)  # the dispatcher is made now, on this broker
    other = 'amqp' if broker == 'redis' else 'redis'
    configure_app(other, queue_name)  # conf change + app.close()
    try:
        with EventCollector() as ev:
            result = tasks.ping.apply_async(queue=queue_name)
            ev.wait('task-sent', uuid=result.id, timeout=5)
    finally:
        delete_queue(queue_name)  # on the other broker: nobody consumes it there
        configure_app(broker, queue_name)


def test_cli_events_dump(own_queue, start_worker, broker, tmp_path):
    w = start_worker('-E', queue=own_queue)
    node = nodename_of(w)
    out = tmp_path / 'events.out'
    env = {**os.environ, **broker_env(broker, own_queue)}
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    with open(out, 'w') as fh:
        proc = subprocess.Popen([sys.executable, '-m', 'taskflow', '-A', 't.integration.tasks', 'events',
                                 '--dump', '--timeout', '5'], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: f'{node} [' in out.read_text() and 'worker-heartbeat' in out.read_text(),
                 timeout=15, message='a heartbeat in the dump (the receiver is bound)')
        result = tasks.add.delay(5, 5)
        assert result.get(timeout=10) == 10
        wait_for(lambda: any('task-succeeded: ' in line and result.id in line
                             for line in out.read_text().splitlines()),
                 timeout=10, message='the task events in the dump')
        text = out.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    lines = [line for line in text.splitlines() if result.id in line]
    kinds = [line.split('] ', 1)[1].split(':', 1)[0] for line in lines]
    assert kinds[:3] == ['task-received', 'task-started', 'task-succeeded'], lines
    assert '"result": "10"' in lines[2]


def test_celery_events_dump_sees_a_taskflow_worker(own_queue, start_worker, broker, tmp_path):
    w = start_worker('-E', queue=own_queue)
    node = nodename_of(w)
    out = tmp_path / 'celery-events.out'
    env = {**os.environ, **broker_env(broker, own_queue)}
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    with open(out, 'w') as fh:
        proc = subprocess.Popen([*CELERY_CLI, 'events', '--dump'], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: node in out.read_text(), timeout=20, message='the worker in the celery dump')
        result = tasks.add.delay(6, 6)
        assert result.get(timeout=10) == 12
        wait_for(lambda: f'task succeeded: {result.id}' in out.read_text() or
                 ('task succeeded' in out.read_text() and result.id in out.read_text()),
                 timeout=10, message='task succeeded in the celery dump')
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = out.read_text()
    assert 'task received' in text and 'task started' in text
    assert 'Traceback' not in text


# === signals ======================================================================================
def test_signals_in_the_worker(own_queue, start_worker, tmp_path):
    sigfile = tmp_path / 'signals.txt'
    logfile = tmp_path / 'custom.log'
    w = start_worker('-A', 't.integration.signals_app', '-c', '1', queue=own_queue,
                     env={'TF_TEST_SIGNALS_FILE': str(sigfile), 'TF_TEST_SIGNALS_LOG': str(logfile)})
    node = nodename_of(w)
    ok = tasks.add.delay(2, 2)
    assert ok.get(timeout=10) == 4
    bad = tasks.fail.delay('signal me')
    with pytest.raises(ValueError):
        bad.get(timeout=10)
    retried = tasks.retry_until.delay(1)
    assert retried.get(timeout=15) == 1
    sent = tasks.send_add.delay(1, 2)
    child_id = sent.get(timeout=10)
    assert tasks.app.AsyncResult(child_id).get(timeout=10) == 3
    revoked_id = str(uuid.uuid4())
    tasks.app.control.revoke(revoked_id, reply=True, destination=[node])
    wait_state(tasks.add.apply_async((0, 0), task_id=revoked_id), 'REVOKED')
    assert w.stop() == 0, w.log()

    lines = [line.split(' ', 2) for line in sigfile.read_text().splitlines()]

    def fired(name: str, *needles: str) -> list[int]:
        return [int(pid) for n, pid, detail in lines if n == name and all(x in detail for x in needles)]
    child_pids = set(fired('worker_process_init'))
    assert child_pids and w.pid not in child_pids
    assert fired('worker_ready', node) == [w.pid]
    assert fired('worker_shutdown', node) == [w.pid]
    assert set(fired('task_prerun', tasks.add.name, ok.id)) <= child_pids and fired('task_prerun', ok.id)
    assert fired('task_postrun', ok.id, 'SUCCESS')
    assert fired('task_success', tasks.add.name, '4')
    assert fired('task_failure', bad.id, 'ValueError')
    assert fired('task_retry', tasks.retry_until.name, retried.id)
    # publishing from inside a task (a retry, send_add) fires the publish signals in the child
    assert set(fired('before_task_publish', tasks.add.name, child_id)) <= child_pids
    assert fired('before_task_publish', tasks.add.name, child_id)
    assert fired('after_task_publish', tasks.add.name, child_id)
    assert fired('before_task_publish', tasks.retry_until.name, retried.id)
    assert fired('task_revoked', revoked_id, 'terminated=False')
    # setup_logging: the receiver replaced the worker's logging
    assert fired('setup_logging') == [w.pid]
    custom = logfile.read_text()
    assert f'CUSTOM INFO {node} ready.' in custom
    assert f'CUSTOM INFO Task t.integration.tasks.add[{ok.id}] received' in custom
    assert f'{node} ready.' not in w.log()  # nothing of the default set-up on stderr
