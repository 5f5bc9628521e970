"""Beat with real processes, on Redis and on RabbitMQ (results, and so the single-beat lock, in
Redis): ``taskflow beat`` feeding a real worker, ``worker -B``, and two beats of which the leader
is killed with SIGKILL.

How "no fire time missed, none doubled" is checked: beat puts each message's scheduled fire
time in the ``beat_fire_time`` header; the task (``t/integration/beat_app.py``) appends that
header to a Redis list when it runs. An interval schedule's fire times lie on a fixed grid
(``last_run_at`` is the scheduled time, not the send time), so across the kill the recorded
times must be distinct and exactly one period apart from the first to the last: a gap means a
missed fire time, a repeat a doubled one. The takeover window is covered because the new
leader replays the fire times that passed while nobody held the lock.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from t.integration.conftest import (REDIS_BACKEND_URL, REDIS_BROKER_URL, ROOT, TASKFLOW, WorkerProcess,
                                    broker_env, wait_for)

pytestmark = pytest.mark.integration

APP = 't.integration.beat_app'
SCHEDULER = 't.integration.beat_app:TestScheduler'
LOCK_TTL = 6.0  # Scheduler.lock_ttl


class BeatRun:
    """One test's beat set-up: its env (record list, lock name), its processes, its clean-up."""

    def __init__(self, broker: str, queue: str, tmp_path: Path) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.record_key = f'tf-beat-records-{self.tag}'
        self.lock_name = f'tf-beat-test-{self.tag}'
        self.tmp_path = tmp_path
        self.env = {**broker_env(broker, queue), 'TF_BEAT_PERIOD': '1', 'TF_BEAT_RECORD_KEY': self.record_key,
                    'TF_BEAT_LOCK_NAME': self.lock_name}
        self.beats: list[WorkerProcess] = []
        self.backend = redis.Redis.from_url(REDIS_BACKEND_URL)

    def start_beat(self, name: str) -> WorkerProcess:
        env = {**os.environ, **self.env}
        env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
        cmd = [*TASKFLOW, '-A', APP, 'beat', '-S', SCHEDULER, '-s', str(self.state_file(name)), '-l', 'INFO']
        beat = WorkerProcess(cmd, env, self.tmp_path / f'beat-{name}.log')
        self.beats.append(beat)
        return beat

    def state_file(self, name: str) -> Path:
        return self.tmp_path / f'beat-{name}.state'

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.backend.lrange(self.record_key, 0, -1)]

    def fire_times(self) -> list[datetime]:
        return [datetime.fromisoformat(r['fire_time']) for r in self.records()]

    def wait_records(self, count: int, timeout: float = 20.0) -> list[datetime]:
        wait_for(lambda: len(self.records()) >= count, timeout=timeout,
                 message=f'{count} periodic runs (have {len(self.records())})\n' + self.logs())
        return self.fire_times()

    def logs(self) -> str:
        return '\n'.join(f'--- {b.logpath.name}\n{b.log()}' for b in self.beats)

    def close(self) -> None:
        for beat in self.beats:
            beat.stop(timeout=15)
        self.backend.delete(self.record_key)
        for url in (REDIS_BROKER_URL, REDIS_BACKEND_URL):
            client = redis.Redis.from_url(url)
            try:
                for key in client.scan_iter(match=f'taskflow:beat-*:{self.lock_name}*'):
                    client.delete(key)
            finally:
                client.close()
        self.backend.close()


@pytest.fixture
def beat_run(broker: str, own_queue: str, tmp_path: Path) -> Iterator[BeatRun]:
    run = BeatRun(broker, own_queue, tmp_path)
    try:
        yield run
    finally:
        run.close()


@pytest.fixture
def beat_worker(start_worker: Callable[..., WorkerProcess], own_queue: str, beat_run: BeatRun) -> WorkerProcess:
    """A worker for the beat app's task on this test's own queue."""
    return start_worker('-A', APP, queue=own_queue, env=beat_run.env)


def assert_one_per_period(fire_times: list[datetime]) -> None:
    assert len(fire_times) == len(set(fire_times)), f'a fire time ran twice: {sorted(fire_times)}'
    ordered = sorted(fire_times)
    gaps = [b - a for a, b in zip(ordered, ordered[1:])]
    assert set(gaps) == {timedelta(seconds=1)}, f'a fire time is missing: {ordered}'


def test_beat_fires_and_the_worker_runs_the_task(beat_run: BeatRun, beat_worker: WorkerProcess) -> None:
    beat = beat_run.start_beat('a')
    fire_times = beat_run.wait_records(4)
    assert beat.stop() == 0, beat.log()  # SIGTERM: a clean stop
    assert_one_per_period(fire_times)
    log = beat.log()
    assert 'Sending due task record-fire (t.integration.beat_app.record_fire)' in log
    assert f'taskflow:beat-lock:{beat_run.lock_name}' in log
    state = json.loads(beat_run.state_file('a').read_text())['entries']['record-fire']
    assert state['total_run_count'] >= 4
    assert datetime.fromisoformat(state['last_run_at']) >= max(fire_times)


def test_restarted_beat_goes_on_from_its_state(beat_run: BeatRun, beat_worker: WorkerProcess) -> None:
    beat = beat_run.start_beat('a')
    beat_run.wait_records(3)
    assert beat.stop() == 0, beat.log()
    stopped = json.loads(beat_run.state_file('a').read_text())['entries']['record-fire']
    again = beat_run.start_beat('a')  # the same state file
    wait_for(lambda: len(beat_run.records()) >= stopped['total_run_count'] + 3, timeout=20,
             message='runs after the restart\n' + beat_run.logs())
    assert again.stop() == 0, again.log()
    wait_for(lambda: len(beat_run.records()) >= _runs_sent(beat_run, 'a'), timeout=10, message='the queue to drain')
    # A restart within the catch-up window (twice the lock TTL) replays what passed meanwhile:
    # the grid goes on from the stored last run, with no fire time lost or repeated.
    assert_one_per_period(beat_run.fire_times())
    assert min(t for t in beat_run.fire_times() if t > datetime.fromisoformat(stopped['last_run_at'])) == \
        datetime.fromisoformat(stopped['last_run_at']) + timedelta(seconds=1)


def _runs_sent(beat_run: BeatRun, name: str) -> int:
    return int(json.loads(beat_run.state_file(name).read_text())['entries']['record-fire']['total_run_count'])


def test_worker_dash_b_runs_beat_too(beat_run: BeatRun, start_worker: Callable[..., WorkerProcess],
                                     own_queue: str) -> None:
    """``worker -B`` with the entry added the Celery way: ``add_periodic_task`` in an
    ``app.on_after_configure`` receiver."""
    state = beat_run.tmp_path / 'embedded.state'
    w = start_worker('-A', APP, '-B', '-S', SCHEDULER, '-s', str(state), queue=own_queue,
                     env={**beat_run.env, 'TF_BEAT_VIA': 'hook'})
    fire_times = beat_run.wait_records(3)
    assert w.stop() == 0, w.log()
    assert_one_per_period(fire_times)
    assert 'Sending due task record-fire' in w.log()
    assert json.loads(state.read_text())['entries']['record-fire']['total_run_count'] >= 3


def test_two_beats_leader_killed_no_fire_time_missed_or_doubled(beat_run: BeatRun,
                                                                beat_worker: WorkerProcess) -> None:
    leader = beat_run.start_beat('a')
    beat_run.wait_records(3)
    standby = beat_run.start_beat('b')
    wait_for(lambda: 'standing by' in standby.log(), timeout=20, message='the second beat to stand by\n' +
             beat_run.logs())
    before = len(beat_run.wait_records(len(beat_run.records()) + 2))
    assert 'Sending due task' not in standby.log(), 'the standby sent while the leader was alive'
    # Kill the leader just after one of its runs arrived: it is then asleep until the next fire
    # time, not between claiming a fire time and publishing it (where a kill loses that one
    # fire time by design: claims come first, so that two beats never double one).
    beat_run.wait_records(before + 1)
    os.killpg(leader.pid, signal.SIGKILL)
    killed = time.monotonic()
    leader.wait(timeout=10)
    wait_for(lambda: 'took over the lock' in standby.log(), timeout=LOCK_TTL + 10,
             message='the standby to take over\n' + beat_run.logs())
    took_over = time.monotonic() - killed
    assert took_over <= LOCK_TTL + 3, f'took {took_over:.1f}s to take over'
    # the new leader replays the gap at once, then keeps to the schedule
    resumed_at = datetime.now(timezone.utc)
    wait_for(lambda: max(beat_run.fire_times()) >= resumed_at + timedelta(seconds=2), timeout=15,
             message='runs after the takeover\n' + beat_run.logs())
    assert standby.stop() == 0, standby.log()
    assert standby.log().count('Sending due task record-fire') >= 3
    wait_for(lambda: len(beat_run.records()) >= _runs_sent_total(beat_run), timeout=15,
             message='the worker to run every message')
    fire_times = beat_run.fire_times()
    assert_one_per_period(fire_times)
    assert len(fire_times) >= before + 1 + 3
    assert 'missed' not in standby.log(), 'the takeover gap was coalesced instead of replayed'


def _runs_sent_total(beat_run: BeatRun) -> int:
    """Messages sent by both beats: the killed one's count is in the shared state it last wrote,
    which the new leader adopted, so the survivor's state file holds the grand total."""
    return _runs_sent(beat_run, 'b')
