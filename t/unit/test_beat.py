"""``taskflow.beat``: the scheduler's timing with a fake clock and a fake send, persistence
across restarts, the single-beat lock and fire-time claims on an in-memory Redis stand-in,
``add_periodic_task`` and the app hooks, ``Beat``/``EmbeddedBeat`` and the ``beat`` command."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from taskflow import signals
from taskflow.app import Taskflow
from taskflow.beat import (
    FIRE_TIME_HEADER, Beat, EmbeddedBeat, PersistentScheduler, RedisCoordinator, ScheduleEntry, Scheduler,
    _LeaseLost, _redis_url,
)
from taskflow.cli import cli
from taskflow.exceptions import ImproperlyConfigured
from taskflow.schedules import crontab, schedstate, schedule

UTC = timezone.utc
T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def make_app(beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Taskflow:
    return Taskflow('beat-test', broker='memory://', set_as_current=False,
                    beat_schedule=beat_schedule or {}, **conf)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> datetime:
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


class Sent(list):
    """What a recording scheduler sent: dicts of name, args, kwargs, options, fire (seconds after T0)."""

    def fires(self, name: str | None = None) -> list[float]:
        return [s['fire'] for s in self if name is None or s['entry'] == name]


def recording(base: type[Scheduler], sent: Sent, fail: Callable[[], bool] = lambda: False) -> type[Scheduler]:
    class Recording(base):  # type: ignore[valid-type, misc]
        def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True,
                        fire_time: datetime | None = None, **kwargs: Any) -> Any:
            self._entry_name = entry.name
            return super().apply_async(entry, producer, advance, fire_time, **kwargs)

        def send_task(self, name: str | None, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            if fail():
                raise ConnectionError('broker down')
            fire = datetime.fromisoformat(options['headers'][FIRE_TIME_HEADER])
            sent.append({'entry': self._entry_name, 'name': name, 'args': args, 'kwargs': kwargs,
                         'options': options, 'fire': (fire - T0).total_seconds()})
    return Recording


def scheduler(app: Taskflow, clock: Clock, sent: Sent, base: type[Scheduler] = Scheduler, **kwargs: Any) -> Any:
    return recording(base, sent)(app, nowfun=clock, **kwargs)


# --- timing -------------------------------------------------------------------------------------
def test_tick_sleeps_exactly_until_the_next_fire() -> None:
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 10.0}, 'b': {'task': 'b', 'schedule': timedelta(seconds=3)},
                            'c': {'task': 'c', 'schedule': crontab(minute='*/5')}}), clock, sent)
    assert s.tick(clock.at(0)) == 3.0 and sent == []
    assert s.tick(clock.at(3)) == 3.0 and sent.fires() == [3]
    assert s.tick(clock.at(6)) == 3.0
    assert s.tick(clock.at(9)) == 1.0                     # a at 10 comes before b at 12
    assert s.tick(clock.at(9.75)) == 0.25
    assert s.tick(clock.at(10)) == 2.0 and sent.fires('a') == [10]
    assert s.tick(clock.at(298.5)) == 1.5                 # c at 12:05:00
    assert sent.fires('c') == []
    s.tick(clock.at(300))
    assert sent.fires('c') == [300]


def test_a_late_wake_keeps_the_grid() -> None:
    """The next fire counts from the scheduled time, not from when the send happened."""
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 10.0}}), clock, sent)
    s.tick(clock.at(0))
    assert s.tick(clock.at(10.4)) == pytest.approx(9.6)
    s.tick(clock.at(20.2))
    assert sent.fires() == [10, 20]


@pytest.mark.parametrize('kwargs, conf, expected', [
    ({}, {}, 300.0), ({'max_interval': 42}, {}, 42.0), ({}, {'beat_max_loop_interval': 7}, 7.0),
])
def test_sleep_is_capped_by_max_interval(kwargs: dict[str, Any], conf: dict[str, Any], expected: float) -> None:
    clock = Clock()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 3600}}, **conf), clock, Sent(), **kwargs)
    assert s.tick(clock.at(0)) == expected
    assert scheduler(make_app(**conf), clock, Sent(), **kwargs).tick(clock.at(0)) == expected  # nothing scheduled


def test_sends_args_kwargs_options_and_the_fire_time() -> None:
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'add': {'task': 'proj.add', 'schedule': 5, 'args': (2, 3), 'kwargs': {'z': 1},
                                    'options': {'queue': 'periodic', 'priority': 4, 'headers': {'x': 'y'}}}}),
                  clock, sent)
    s.tick(clock.at(5))
    (msg,) = sent
    assert (msg['name'], msg['args'], msg['kwargs']) == ('proj.add', (2, 3), {'z': 1})
    assert msg['options']['queue'] == 'periodic' and msg['options']['priority'] == 4
    assert msg['options']['headers'] == {'x': 'y', FIRE_TIME_HEADER: '2024-01-01T12:00:05+00:00'}
    entry = s.schedule['add']
    assert entry.total_run_count == 1 and entry.last_run_at == T0 + timedelta(seconds=5)


def test_sends_through_the_apps_send_path(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app({'by-name': {'task': 'elsewhere.task', 'schedule': 1, 'args': (1,)},
                    'local': {'task': 'beat-test-local', 'schedule': 1, 'options': {'queue': 'q1'}}})

    @app.task(name='beat-test-local')
    def local() -> None:
        pass

    calls: list[tuple[str, Any, dict[str, Any]]] = []
    monkeypatch.setattr(app, 'send_task', lambda name, args=None, kwargs=None, **options:
                        calls.append((name, args, options)))
    clock = Clock()
    s = Scheduler(app, nowfun=clock)
    s.tick(clock.at(1))
    assert sorted(c[0] for c in calls) == ['beat-test-local', 'elsewhere.task']
    by_name = {c[0]: c for c in calls}
    assert by_name['elsewhere.task'][1] == (1,)
    assert by_name['beat-test-local'][2]['queue'] == 'q1'
    assert by_name['beat-test-local'][2]['task_type'] is local        # via Task.apply_async
    assert all(FIRE_TIME_HEADER in c[2]['headers'] for c in calls)


def test_failed_send_is_retried_with_the_same_fire_time() -> None:
    clock, sent, down = Clock(), Sent(), [True]
    s = recording(Scheduler, sent, fail=lambda: down[0])(make_app({'a': {'task': 'a', 'schedule': 10}}), nowfun=clock)
    s.tick(clock.at(0))
    assert s.tick(clock.at(10)) == Scheduler.retry_delay
    assert sent == [] and s.schedule['a'].total_run_count == 0
    assert s.tick(clock.at(12)) == 3.0  # still waiting for the retry
    down[0] = False
    s.tick(clock.at(15))
    assert sent.fires() == [10] and s.schedule['a'].total_run_count == 1


def test_a_schedule_with_only_is_due_is_asked_like_celery_asks_it() -> None:
    class EveryOtherCheck:
        def __init__(self) -> None:
            self.calls = 0

        def is_due(self, last_run_at: datetime) -> schedstate:
            self.calls += 1
            return schedstate(self.calls % 2 == 0, 4.0)

    clock, sent = Clock(), Sent()
    sched = EveryOtherCheck()
    s = scheduler(make_app({'x': {'task': 'x', 'schedule': sched}}), clock, sent)
    assert s.tick(clock.at(0)) == 4.0 and sent == []
    assert s.tick(clock.at(2)) == 2.0 and sched.calls == 1  # not asked again before its next check
    s.tick(clock.at(4))
    assert sent.fires() == [4] and s.schedule['x'].last_run_at == clock.now


def test_a_run_in_the_future_counts_from_now(caplog: pytest.LogCaptureFixture) -> None:
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 10}}), clock, sent)
    s.schedule['a'].last_run_at = T0 + timedelta(days=1)
    assert s.tick(clock.at(0)) == 10.0
    assert 'in the future' in caplog.text


# --- catch-up -------------------------------------------------------------------------------------
def test_catch_up_after_downtime_runs_once(tmp_path: Path) -> None:
    app, path = make_app({'a': {'task': 'a', 'schedule': 10}}), str(tmp_path / 'state')
    clock, sent = Clock(), Sent()
    s = scheduler(app, clock, sent, PersistentScheduler, schedule_filename=path)
    s.tick(clock.at(0))
    s.tick(clock.at(10))
    s.close()
    restarted = scheduler(app, clock.__class__(clock.at(3605)), sent, PersistentScheduler, schedule_filename=path)
    assert restarted.tick(clock.at(3605)) == 5.0
    assert sent.fires() == [10, 3600]                   # the 359 missed runs coalesce into the latest
    assert restarted.schedule['a'].total_run_count == 2
    restarted.tick(clock.at(3610))
    assert sent.fires() == [10, 3600, 3610]


def test_crontab_catch_up_runs_once() -> None:
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'m': {'task': 'm', 'schedule': crontab()}}), clock, sent)
    s.tick(clock.at(0))
    assert s.tick(clock.at(5 * 3600 + 30)) == 30.0
    assert sent.fires() == [5 * 3600]


def test_missed_runs_inside_the_catchup_window_are_each_sent() -> None:
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 1}}), clock, sent)
    s.catchup_window = 12.0
    s.tick(clock.at(0))
    s.tick(clock.at(1))
    s.tick(clock.at(7.5))                                # 2..7 were missed: replayed one by one
    assert sent.fires() == [1, 2, 3, 4, 5, 6, 7]
    s.tick(clock.at(60))                                 # 8..60 is longer than the window: once
    assert sent.fires()[-1] == 60 and len(sent) == 8


def test_cron_starting_deadline_drops_stale_runs() -> None:
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'h': {'task': 'h', 'schedule': crontab(minute=0)}}, beat_cron_starting_deadline=60),
                  clock, sent, max_interval=10_000)
    s.tick(clock.at(0))
    assert s.tick(clock.at(3600 + 600)) == 3000.0        # 13:00 is 10 min old: skipped, wait for 14:00
    assert sent == [] and s.schedule['h'].last_run_at == T0 + timedelta(hours=1)
    s.tick(clock.at(7200 + 30))
    assert sent.fires() == [7200]


# --- persistence ---------------------------------------------------------------------------------
def test_restart_neither_loses_nor_doubles_a_run(tmp_path: Path) -> None:
    app, path = make_app({'a': {'task': 'a', 'schedule': 10}}), str(tmp_path / 'state')
    clock, sent = Clock(), Sent()
    s = scheduler(app, clock, sent, PersistentScheduler, schedule_filename=path)
    for t in (0, 10, 20, 30, 35):
        s.tick(clock.at(t))
    s.close()
    s = scheduler(app, clock, sent, PersistentScheduler, schedule_filename=path)
    assert s.tick(clock.at(39)) == 1.0
    s.tick(clock.at(40))
    # a crash right after the send: the state was saved with it (beat_sync_every=0)
    s = scheduler(app, clock, sent, PersistentScheduler, schedule_filename=path)
    assert s.tick(clock.at(40.5)) == 9.5
    assert sent.fires() == [10, 20, 30, 40]
    assert s.schedule['a'].total_run_count == 4


def test_state_file_round_trip(tmp_path: Path) -> None:
    app, path = make_app({'a': {'task': 'a', 'schedule': 10}, 'c': {'task': 'c', 'schedule': crontab()}}), \
        tmp_path / 'state'
    clock, sent = Clock(), Sent()
    s = scheduler(app, clock, sent, PersistentScheduler, schedule_filename=str(path))
    s.tick(clock.at(60))
    s.close()
    data = json.loads(path.read_text())
    assert data['version'] == 1
    assert data['entries']['a'] == {'identity': 'a|a|<freq: 10.00 seconds>',
                                    'last_run_at': '2024-01-01T12:01:00+00:00', 'total_run_count': 1}
    assert data['entries']['c']['last_run_at'] == '2024-01-01T12:01:00+00:00'
    assert [p.name for p in tmp_path.iterdir()] == ['state']  # no temporary file left behind
    again = scheduler(app, clock, Sent(), PersistentScheduler, schedule_filename=str(path))
    assert again.records() == s.records()


def test_sync_every_batches_writes(tmp_path: Path) -> None:
    path = tmp_path / 'state'
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 1}}, beat_sync_every=3), clock, sent,
                  PersistentScheduler, schedule_filename=str(path))
    s.tick(clock.at(1))
    s.tick(clock.at(2))
    assert not path.exists()
    s.tick(clock.at(3))
    assert json.loads(path.read_text())['entries']['a']['total_run_count'] == 3


def test_changed_schedule_in_config_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / 'state')
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 10}}), clock, sent, PersistentScheduler,
                  schedule_filename=path)
    s.tick(clock.at(10))
    s.close()
    caplog.set_level('INFO', logger='taskflow.beat')
    clock.at(15)
    changed = scheduler(make_app({'a': {'task': 'a', 'schedule': 20}}), clock, sent, PersistentScheduler,
                        schedule_filename=path)
    assert changed.schedule['a'].total_run_count == 0      # the stored state was for another schedule
    assert changed.tick(clock.at(15)) == 20.0             # counts from now, not from the stored run
    assert 'changed since' in caplog.text


def test_unchanged_entry_keeps_its_state_and_takes_new_arguments(tmp_path: Path) -> None:
    path = str(tmp_path / 'state')
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 10, 'args': (1,)}, 'gone': {'task': 'g', 'schedule': 5}}),
                  clock, sent, PersistentScheduler, schedule_filename=path)
    s.tick(clock.at(10))
    s.close()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 10, 'args': (2,)}}), clock, sent, PersistentScheduler,
                  schedule_filename=path)
    assert set(s.schedule) == {'a'} and s.schedule['a'].total_run_count == 1
    s.tick(clock.at(20))
    assert [m['args'] for m in sent if m['entry'] == 'a'] == [(1,), (2,)]
    s.close()
    assert set(json.loads(Path(path).read_text())['entries']) == {'a'}


def test_unreadable_state_file_starts_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'state'
    path.write_bytes(b'\x00\x01 a Celery shelve, perhaps')
    clock, sent = Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 10}}), clock, sent, PersistentScheduler,
                  schedule_filename=str(path))
    assert 'not a taskflow beat state file' in caplog.text
    s.tick(clock.at(10))
    assert json.loads(path.read_text())['entries']['a']['total_run_count'] == 1


def test_merge_inplace_and_add() -> None:
    clock = Clock()
    s = Scheduler(make_app({'a': {'task': 'a', 'schedule': 10}}), nowfun=clock)
    s.schedule['a'].total_run_count = 5
    s.merge_inplace({'a': {'task': 'a', 'schedule': 10, 'kwargs': {'k': 1}}, 'b': {'task': 'b', 'schedule': 1}})
    assert s.schedule['a'].total_run_count == 5 and s.schedule['a'].kwargs == {'k': 1}
    s.merge_inplace({'a': {'task': 'a', 'schedule': crontab()}})
    assert set(s.schedule) == {'a'} and s.schedule['a'].total_run_count == 0
    entry = s.add(name='c', task='c', schedule=timedelta(seconds=1), relative=True)
    assert entry.schedule.relative and s.schedule['c'] is entry


@pytest.mark.parametrize('fields, message', [
    ({'schedule': 1}, 'needs a "task"'), ({'task': 't'}, 'needs a "task" and a "schedule"'),
    ({'task': 't', 'schedule': 1, 'every': 2}, 'unknown key'), ('not a dict', 'must be a dict'),
])
def test_bad_entries_are_reported(fields: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        Scheduler(make_app({'bad': fields}))


def test_schedule_entry_api() -> None:
    app = make_app()
    entry = ScheduleEntry('e', 't', T0, 3, 10, args=[1], kwargs={'a': 1}, options={'queue': 'q'}, app=app)
    assert isinstance(entry.schedule, schedule) and entry.args == (1,)
    assert entry.identity == 'e|t|<freq: 10.00 seconds>'
    later = next(entry)
    assert later.total_run_count == 4 and later.last_run_at > T0 and later.name == 'e'
    assert entry.editable_fields_equal(ScheduleEntry('e', 't', None, 0, 10, [1], {'a': 1}, {'queue': 'q'}, app=app))
    assert 'e t(*[1]' in repr(entry)
    naive = ScheduleEntry('n', 't', datetime(2024, 1, 1, 12), schedule=1, app=app)
    assert naive.last_run_at == T0


def test_backend_cleanup_entry_only_for_backends_that_do_not_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(result_backend='memory://')
    assert 'celery.backend_cleanup' not in Scheduler(app).schedule
    monkeypatch.setattr(type(app.backend), 'supports_autoexpire', False, raising=False)
    entry = Scheduler(app).schedule['celery.backend_cleanup']
    assert entry.schedule == crontab(minute=0, hour=4)


# --- the lock and the claims (on an in-memory Redis stand-in) -----------------------------------
class FakeRedis:
    """The few Redis commands beat uses, with key expiry, and the two Lua scripts as Python."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.expires: dict[str, float] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.lock = threading.Lock()

    def _expire_old(self) -> None:
        now = time.monotonic()
        for key in [k for k, at in self.expires.items() if at <= now]:
            self.values.pop(key, None)
            self.expires.pop(key, None)

    def set(self, key: str, value: str, nx: bool = False, px: int | None = None, ex: int | None = None) -> bool | None:
        with self.lock:
            self._expire_old()
            if nx and key in self.values:
                return None
            self.values[key] = value.encode()
            ttl = px / 1000 if px is not None else ex if ex is not None else None
            if ttl is not None:
                self.expires[key] = time.monotonic() + ttl
            return True

    def get(self, key: str) -> bytes | None:
        with self.lock:
            self._expire_old()
            return self.values.get(key)

    def pttl(self, key: str) -> int:
        with self.lock:
            self._expire_old()
            if key not in self.values:
                return -2
            return int((self.expires[key] - time.monotonic()) * 1000) if key in self.expires else -1

    def register_script(self, lua: str) -> Callable[..., int]:
        renew = 'PEXPIRE' in lua

        def script(keys: list[str], args: list[Any]) -> int:
            with self.lock:
                self._expire_old()
                if self.values.get(keys[0]) != str(args[0]).encode():
                    return 0
                if renew:
                    self.expires[keys[0]] = time.monotonic() + int(args[1]) / 1000
                else:
                    self.values.pop(keys[0])
                    self.expires.pop(keys[0], None)
                return 1
        return script

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    def pipeline(self) -> Any:
        redis = self

        class Pipe:
            def hset(self, key: str, field: str, value: str) -> None:
                redis.hashes.setdefault(key, {})[field.encode()] = value.encode()

            def expire(self, key: str, seconds: int) -> None:
                pass

            def execute(self) -> None:
                pass
        return Pipe()


def test_lock_is_exclusive_renewable_and_released_only_by_its_holder() -> None:
    redis = FakeRedis()
    a, b = RedisCoordinator(redis, 'app', ttl=6), RedisCoordinator(redis, 'app', ttl=6)
    assert a.lock_key == 'taskflow:beat-lock:app'
    assert a.acquire() and a.holds()
    assert not b.acquire() and not b.holds()
    assert 5.0 < b.remaining() <= 6.0
    assert a.renew() and not b.renew()
    b.release()                                   # not b's: a keeps it
    assert redis.get(a.lock_key) == a.token.encode()
    a.release()
    assert not a.holds() and b.remaining() == 0.0
    assert b.acquire()


def test_lease_runs_out_without_renewal() -> None:
    redis = FakeRedis()
    a, b = RedisCoordinator(redis, 'app', ttl=0.3), RedisCoordinator(redis, 'app', ttl=0.3)
    assert a.acquire()
    time.sleep(0.26)                              # more than TTL - TTL/6: a must stop sending already
    assert not a.holds()
    deadline = time.monotonic() + 5
    while not b.acquire():
        assert time.monotonic() < deadline, 'the lock never expired'
        time.sleep(0.01)
    assert not a.renew()


def test_two_leaders_cannot_send_one_fire_time_twice() -> None:
    redis, clock, sent = FakeRedis(), Clock(), Sent()
    app = make_app({'a': {'task': 'a', 'schedule': 10}})
    first, second = (scheduler(app, clock, sent, coordinator=RedisCoordinator(redis, 'app')) for _ in range(2))
    for s in (first, second):
        s.coordinator._lease_until = time.monotonic() + 60   # both believe they lead (split brain)
        s.tick(clock.at(0))
    for t in (10, 20, 30):
        first.tick(clock.at(t))
        second.tick(clock.at(t + 0.5))
    assert sent.fires() == [10, 20, 30]
    assert first.schedule['a'].total_run_count == 3 and second.schedule['a'].total_run_count == 0
    assert second.schedule['a'].last_run_at == T0 + timedelta(seconds=30)   # it moved on all the same


def test_no_send_without_a_valid_lease() -> None:
    redis, clock, sent = FakeRedis(), Clock(), Sent()
    s = scheduler(make_app({'a': {'task': 'a', 'schedule': 10}}), clock, sent,
                  coordinator=RedisCoordinator(redis, 'app'))
    s.tick(clock.at(0))
    with pytest.raises(_LeaseLost):
        s.tick(clock.at(10))
    assert sent == [] and s.schedule['a'].last_run_at == T0


def test_a_new_leader_adopts_the_shared_state_and_replays_the_gap() -> None:
    redis, clock, sent = FakeRedis(), Clock(), Sent()
    app = make_app({'a': {'task': 'a', 'schedule': 1}, 'new': {'task': 'n', 'schedule': 100}})
    leader = scheduler(app, clock, sent, coordinator=RedisCoordinator(redis, 'app'))
    leader.coordinator.acquire()
    standby = scheduler(app, clock, sent, coordinator=RedisCoordinator(redis, 'app'))
    for t in range(0, 6):
        leader.tick(clock.at(t))
    leader.coordinator._lease_until = 0.0                 # the leader dies at 5.2
    redis.values.clear()
    clock.at(11.3)
    assert standby.coordinator.acquire()
    standby.catchup_window = 12.0
    standby.resume(standby.coordinator.load())
    assert standby.schedule['a'].last_run_at == T0 + timedelta(seconds=5)
    assert standby.schedule['new'].last_run_at == clock.now    # never ran: starts now, not at 0
    standby.tick(clock.now)
    assert sent.fires('a') == list(range(1, 12))                # 6..11 replayed: none lost, none doubled


# --- the service ---------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, message: str = 'condition') -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout}s waiting for {message}')
        time.sleep(0.01)


def test_redis_url_is_the_broker_else_the_backend() -> None:
    assert _redis_url(make_app()) is None
    assert _redis_url(Taskflow('x', broker='redis://h:1/2;redis://h2', backend='redis://b/3',
                               set_as_current=False)) == 'redis://h:1/2'
    assert _redis_url(Taskflow('x', broker='amqp://g@h//', backend='rediss://b/3', set_as_current=False)) == \
        'rediss://b/3'
    assert _redis_url(Taskflow('x', broker='amqp://g@h//', backend='db+sqlite:///x', set_as_current=False)) is None
    assert Beat(make_app()).make_coordinator(Scheduler) is None


def test_scheduler_class_by_path() -> None:
    assert Beat(make_app(), scheduler_cls='taskflow.beat:Scheduler').scheduler_cls is Scheduler
    assert Beat(make_app(), scheduler_cls='celery.beat:PersistentScheduler').scheduler_cls is PersistentScheduler
    assert Beat(make_app()).scheduler_cls is PersistentScheduler           # beat_scheduler's default
    with pytest.raises(ImproperlyConfigured, match='Cannot import scheduler'):
        Beat(make_app(), scheduler_cls='no.such.module:Nope')


class FakeRedisBeat(Beat):
    redis: FakeRedis

    def make_coordinator(self, scheduler: Any) -> RedisCoordinator:
        return RedisCoordinator(self.redis, 'fake', ttl=scheduler.lock_ttl)


def run_in_thread(beat: Beat) -> threading.Thread:
    thread = threading.Thread(target=beat.run, daemon=True)
    thread.start()
    return thread


def test_standby_takes_over_without_losing_or_doubling_a_fire_time(tmp_path: Path) -> None:
    """Two beats on one (fake) Redis, real time: the leader crashes (no release, no goodbye);
    the standby takes over within a TTL and sends every fire time exactly once."""
    redis, sent, lock = FakeRedis(), Sent(), threading.Lock()

    class Quick(PersistentScheduler):
        lock_ttl = 0.6

        def send_task(self, name: str | None, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            with lock:
                sent.append({'fire': datetime.fromisoformat(options['headers'][FIRE_TIME_HEADER]),
                             'by': self.schedule_filename})

    app = make_app({'tick': {'task': 'tick', 'schedule': 0.1}})
    beats = []
    for name in ('a', 'b'):
        beat = FakeRedisBeat(app, scheduler_cls=Quick, schedule_filename=str(tmp_path / name), import_modules=False)
        beat.redis = redis
        beats.append(beat)
    first, second = beats
    threads = [run_in_thread(first)]
    try:
        wait_until(lambda: len(sent) >= 3, message='the first beat to send')
        threads.append(run_in_thread(second))
        wait_until(lambda: second.started.is_set(), message='the standby to start')
        time.sleep(0.3)  # the standby must stay quiet while the leader lives
        assert {s['by'] for s in sent} == {str(tmp_path / 'a')}
        # crash the leader: it stops ticking and never releases its lock
        first.coordinator.release = lambda: None  # type: ignore[union-attr, method-assign]
        first.scheduler.close = lambda: None  # type: ignore[union-attr, method-assign]
        first.stop()
        threads[0].join(5)
        crashed_at = datetime.now(UTC)
        wait_until(lambda: any(s['by'] == str(tmp_path / 'b') for s in sent), timeout=5, message='a takeover')
        assert datetime.now(UTC) - crashed_at < timedelta(seconds=2)
        count = len(sent)
        wait_until(lambda: len(sent) >= count + 5, message='the new leader to keep sending')
    finally:
        for beat in beats:
            beat.stop()
        for thread in threads:
            thread.join(5)
    fires = sorted(s['fire'] for s in sent)
    assert len(fires) == len(set(fires)), 'a fire time was sent twice'
    assert {b - a for a, b in zip(fires, fires[1:])} == {timedelta(seconds=0.1)}, 'a fire time was missed'


def test_beat_without_redis_sends_hooks_once_and_stops_cleanly() -> None:
    app = make_app()
    sent: list[tuple[str, Any]] = []
    inits: list[Any] = []

    @app.task(name='beat-test-ping')
    def ping(word: str) -> str:
        return word

    @app.on_after_configure.connect
    def setup(sender: Any, **kwargs: Any) -> None:
        assert kwargs['source'] is sender.conf
        sender.add_periodic_task(0.05, ping.s('hi'), name='ping-often')

    finalized: list[Any] = []
    app.on_after_finalize.connect(lambda sender, **kw: finalized.append(sender))
    signals.beat_init.connect(lambda sender, **kw: inits.append(sender), dispatch_uid='test-beat-init')

    class Recording(Scheduler):
        def send_task(self, name: str | None, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            sent.append((name, args))

    try:
        for _ in range(2):
            beat = Beat(app, scheduler_cls=Recording, import_modules=False)
            thread = run_in_thread(beat)
            wait_until(lambda: len(sent) >= 2, message='beat to send')
            beat.stop()
            thread.join(5)
            assert not thread.is_alive()
            assert beat.coordinator is None
            sent.clear()
    finally:
        signals.beat_init.disconnect(dispatch_uid='test-beat-init')
    assert len(setup_calls := [r for r in app.on_after_configure.receivers]) == 1 and setup_calls
    assert finalized == [app]                    # once per app, not once per Beat
    assert len(inits) == 2


def test_embedded_beat_waits_for_the_worker() -> None:
    app = make_app({'a': {'task': 'a', 'schedule': 0.05}})
    sent: list[Any] = []

    class Recording(Scheduler):
        def send_task(self, name: str | None, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            sent.append(name)

    embedded = EmbeddedBeat(app, scheduler_cls=Recording, wait_for_worker=True)
    embedded.start()
    try:
        time.sleep(0.3)
        assert sent == [] and not embedded.beat.started.is_set()
        signals.worker_ready.send(sender=object())
        wait_until(lambda: len(sent) >= 2, message='the embedded beat to send')
    finally:
        embedded.stop()
        embedded.join(5)
    assert not embedded.is_alive()


# --- add_periodic_task ---------------------------------------------------------------------------
def test_add_periodic_task() -> None:
    app = make_app({'kept': {'task': 'k', 'schedule': 1}})

    @app.task(name='proj.add')
    def add(x: int, y: int) -> int:
        return x + y

    default = dict(app.conf.beat_schedule)
    key = app.add_periodic_task(10.0, add.s(2, 3), name='add every 10')
    assert key == 'add every 10'
    assert app.conf.beat_schedule['add every 10'] == {'task': 'proj.add', 'schedule': 10.0, 'args': (2, 3),
                                                      'kwargs': {}, 'options': {}}
    key = app.add_periodic_task(crontab(minute=0), add.s(1), args=(5,), queue='hourly', expires=30)
    assert key == 'proj.add(5, 1)'                     # the signature's repr (call args first, as Celery)
    assert app.conf.beat_schedule[key]['args'] == (5, 1)
    assert app.conf.beat_schedule[key]['options'] == {'queue': 'hourly', 'expires': 30}
    app.add_periodic_task(crontab(minute=0), add.s(1), args=(5,))
    assert len(app.conf.beat_schedule) == 3            # the same call keeps one entry
    key = app.add_periodic_task(60, 'proj.add', args=(1, 2), kwargs={}, relative=True)
    assert key == 'proj.add(1, 2)' and app.conf.beat_schedule[key]['relative'] is True
    key = app.add_periodic_task(timedelta(hours=1), add.s(1, 1).set(priority=3), options={'queue': 'q'})
    assert app.conf.beat_schedule[key]['options'] == {'priority': 3, 'queue': 'q'}
    assert default == {'kept': {'task': 'k', 'schedule': 1}} and make_app().conf.beat_schedule == {}
    entries = Scheduler(app).schedule
    assert set(entries) == set(app.conf.beat_schedule)
    assert entries['proj.add(1, 2)'].schedule.relative


def test_on_after_configure_is_per_app() -> None:
    one, two = make_app(), make_app()
    assert one.on_after_configure is one.on_after_configure
    assert one.on_after_configure is not two.on_after_configure
    assert one.on_after_finalize is not one.on_after_configure


# --- the command line ----------------------------------------------------------------------------
def test_beat_and_worker_options_are_listed() -> None:
    runner = CliRunner()
    beat_help = runner.invoke(cli, ['beat', '--help']).output
    for option in ('-s, --schedule', '-S, --scheduler', '--max-interval', '-l, --loglevel', '--logfile',
                   '--pidfile'):
        assert option in beat_help
    worker_help = runner.invoke(cli, ['worker', '--help']).output
    for option in ('-B, --beat', '-s, --schedule', '-S, --scheduler'):
        assert option in worker_help


def test_beat_command_reports_a_bad_scheduler() -> None:
    result = CliRunner().invoke(cli, ['-A', 't.unit.cli_app', 'beat', '-S', 'no.such:Scheduler'])
    assert result.exit_code != 0
    assert 'Cannot import scheduler' in result.output


def test_beat_command_runs_until_sigterm(tmp_path: Path) -> None:
    state, pidfile = tmp_path / 'state', tmp_path / 'beat.pid'
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = threading.Event()
    signals.beat_init.connect(lambda sender, **kw: started.set(), dispatch_uid='test-cli-beat')

    def terminate() -> None:
        if started.wait(10):
            assert pidfile.read_text().strip() == str(os.getpid())
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    try:
        result = CliRunner().invoke(cli, ['-A', 't.unit.cli_app', 'beat', '-s', str(state), '--pidfile', str(pidfile),
                                          '--max-interval', '1', '-l', 'CRITICAL'])
    finally:
        signals.beat_init.disconnect(dispatch_uid='test-cli-beat')
        for sig, handler in old.items():
            signal.signal(sig, handler)
        killer.join(5)
    assert started.is_set()
    assert result.exit_code == 0, result.output
    assert 'beat: app cli_app' in result.output
    assert not pidfile.exists()
