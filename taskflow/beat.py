"""Beat: sends periodic tasks when they fall due (``taskflow beat``, ``worker -B``).

- ``ScheduleEntry``: one periodic task (name, task, schedule, args, kwargs, options) and its
  run state (``last_run_at``, ``total_run_count``).
- ``Scheduler``: ``tick(now) -> seconds to sleep``; sends what is due through the app's normal
  send path and sleeps exactly until the next fire time (at most ``max_interval``).
- ``PersistentScheduler`` (the default): keeps the run state in a JSON file (``-s``,
  ``beat_schedule_filename``) written atomically, so a restart neither loses nor repeats runs.
- ``Beat``: the service loop (``beat_init``, SIGTERM/SIGINT stop it cleanly); ``EmbeddedBeat``
  runs it in a thread of a worker.

Fire times
    Each entry's ``last_run_at`` is the *scheduled* time of its last run (for interval
    schedules the first run is one interval after beat first sees the entry, as in Celery), so
    interval schedules keep a fixed grid instead of drifting by the loop's latency. Every message
    carries its fire time in the ``beat_fire_time`` header (ISO 8601, UTC); a task reads it as
    ``self.request.beat_fire_time``.

Catch-up
    Fire times that passed while no beat ran the entry are coalesced into one run, sent at once
    for the latest of them (Celery's behaviour: a restart after an outage runs a task once, not
    N times). With a Redis lock (below), fire times missed for less than ``catchup_window``
    (twice the lock TTL) are instead sent one by one: that is what a standby's takeover misses,
    so a takeover loses no fire time. ``beat_cron_starting_deadline`` drops missed crontab runs
    older than it.

One beat (beyond Celery)
    When the broker or the result backend is Redis, beats of one app elect a leader: a lock
    ``taskflow:beat-lock:<app main, or the schedule file's name>`` taken with ``SET NX PX``
    and a random token, renewed every third of its TTL (``Scheduler.lock_ttl``, 6 s) with a
    compare-and-expire script and released with compare-and-delete. Another beat stands by
    and takes over within about one TTL after the leader dies. The leader only sends while its
    lease is valid, and mirrors the run state in the hash ``taskflow:beat-state:<name>``, which
    a new leader adopts. Every send first claims ``taskflow:beat-fired:<name>:<entry>:<fire
    time>`` with ``SET NX`` (10 minutes): even two leaders (a paused process waking after its
    lease ran out) cannot send one fire time twice. The claim comes before the send, so a beat
    killed between the two loses that one fire time rather than doubling it. While that Redis
    cannot be reached no beat sends (none can know whether another one does). Without Redis
    there is no lock: run exactly one beat.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import taskflow.signals as signals
from .backends.redis import redis_client
from .exceptions import ImproperlyConfigured, TaskflowError
from .schedules import crontab, maybe_schedule, schedule

if TYPE_CHECKING:
    from .app import Taskflow

__all__ = ['SchedulingError', 'ScheduleEntry', 'Scheduler', 'PersistentScheduler', 'RedisCoordinator',
           'Beat', 'EmbeddedBeat', 'DEFAULT_MAX_INTERVAL']

logger = logging.getLogger(__name__)

UTC = timezone.utc
DEFAULT_MAX_INTERVAL = 300.0
#: Header holding the scheduled fire time of a beat message.
FIRE_TIME_HEADER = 'beat_fire_time'
_ENTRY_FIELDS = {'task', 'schedule', 'args', 'kwargs', 'options', 'relative'}
# Celery's scheduler paths, accepted so a Celery configuration keeps working.
_SCHEDULER_ALIASES = {
    'celery.beat:PersistentScheduler': 'taskflow.beat:PersistentScheduler',
    'celery.beat.PersistentScheduler': 'taskflow.beat:PersistentScheduler',
    'celery.beat:Scheduler': 'taskflow.beat:Scheduler',
    'celery.beat.Scheduler': 'taskflow.beat:Scheduler',
}


class SchedulingError(TaskflowError):
    """A periodic task could not be sent."""


class _LeaseLost(Exception):
    """The single-beat lease ran out in the middle of a tick: stop sending."""


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        return dt.replace(tzinfo=UTC)  # naive: UTC, as Celery reads them
    return dt.astimezone(UTC)


def _iso(dt: datetime) -> str:
    return _utc(dt).isoformat()


class ScheduleEntry:
    """One periodic task and its run state. ``last_run_at`` is aware (UTC) and defaults to now."""

    def __init__(self, name: str | None = None, task: str | None = None, last_run_at: datetime | None = None,
                 total_run_count: int | None = None, schedule: Any = None, args: Any = (),
                 kwargs: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                 relative: bool = False, app: Taskflow | None = None) -> None:
        self.app = app
        self.name = name
        self.task = task
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.schedule = maybe_schedule(schedule, relative, app=app)
        #: True while the run state is not from a store (it may be replaced by a stored one).
        self.fresh = last_run_at is None
        self.last_run_at = _utc(last_run_at) if last_run_at is not None else self.default_now()
        self.total_run_count = total_run_count or 0

    def default_now(self) -> datetime:
        now = getattr(self.schedule, 'now', None)
        if callable(now):
            return _utc(now())
        return _utc(self.app.now()) if self.app is not None else datetime.now(UTC)

    @property
    def identity(self) -> str:
        """Name, task and schedule: stored run state applies only to an entry with the same one."""
        return f'{self.name}|{self.task}|{self.schedule!r}'

    def _next_instance(self, last_run_at: datetime | None = None) -> 'ScheduleEntry':
        """A copy that has run once more, at ``last_run_at`` (default now)."""
        entry = ScheduleEntry(self.name, self.task, last_run_at or self.default_now(), self.total_run_count + 1,
                              self.schedule, self.args, self.kwargs, self.options, app=self.app)
        return entry

    __next__ = next = _next_instance

    def is_due(self) -> Any:
        """``schedstate(is_due, seconds to next check)`` for the schedule's clock."""
        return self.schedule.is_due(self.last_run_at)

    def update(self, other: 'ScheduleEntry') -> None:
        """Take the definition (not the run state) of ``other``."""
        self.task, self.schedule = other.task, other.schedule
        self.args, self.kwargs, self.options = other.args, other.kwargs, other.options

    def editable_fields_equal(self, other: 'ScheduleEntry') -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in ('task', 'args', 'kwargs', 'options', 'schedule'))

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(vars(self).items())

    def __repr__(self) -> str:
        return f'<ScheduleEntry: {self.name} {self.task}(*{list(self.args)!r}, **{self.kwargs!r}) {self.schedule!r}>'


class Scheduler:
    """Sends the entries of ``beat_schedule`` (and ``add_periodic_task``) when they fall due.

    ``tick(now)`` sends every due entry and returns the seconds until the next fire time, capped
    by ``max_interval`` (``beat_max_loop_interval``, 300 s when unset). Override ``send_task`` to
    change how a message goes out, ``setup_schedule``/``sync`` to keep state elsewhere.
    """

    Entry = ScheduleEntry
    #: Longest sleep between ticks when nothing is due sooner.
    max_interval: float = DEFAULT_MAX_INTERVAL
    #: Seconds the single-beat Redis lock lives without renewal; renewed every third of it.
    lock_ttl: float = 6.0
    #: Names the lock and shared state (default: the app's ``main``, else the state file's name).
    lock_name: str | None = None
    #: Fire times missed for less than this are sent one by one, older ones coalesce (``Beat``
    #: sets it to twice the lock TTL when it holds a Redis lock; 0 without one).
    catchup_window: float = 0.0
    #: Seconds before a failed send is tried again.
    retry_delay: float = 5.0
    #: Most fire times replayed one by one for one entry in one tick.
    max_replay: int = 1000

    def __init__(self, app: Taskflow, schedule: Mapping[str, Any] | None = None, max_interval: float | None = None,
                 Producer: Any = None, lazy: bool = False, sync_every_tasks: int | None = None,
                 nowfun: Any = None, coordinator: RedisCoordinator | None = None, **kwargs: Any) -> None:
        self.app = app
        self.data: dict[str, ScheduleEntry] = {}
        self.max_interval = float(max_interval or app.conf.beat_max_loop_interval or self.max_interval)
        self.sync_every_tasks = app.conf.beat_sync_every if sync_every_tasks is None else sync_every_tasks
        self.nowfun = nowfun
        self.coordinator = coordinator
        self.Producer = Producer
        self._sends_since_sync = 0
        self._dirty = False
        self._retry_at: datetime | None = None
        self._next_check: dict[str, datetime] = {}  # for schedules without next_fire
        if not lazy:
            self.setup_schedule()
        if schedule:
            self.merge_inplace(schedule)

    # --- the schedule -----------------------------------------------------------------------
    @property
    def schedule(self) -> dict[str, ScheduleEntry]:
        return self.data

    def setup_schedule(self) -> None:
        """Build the entries from ``beat_schedule`` (plus default entries)."""
        self.merge_inplace(self.app.conf.beat_schedule or {})
        self.install_default_entries(self.data)

    def install_default_entries(self, data: dict[str, ScheduleEntry]) -> None:
        """``celery.backend_cleanup`` daily at 04:00 for backends that do not expire results."""
        conf = self.app.conf
        if not conf.result_expires or not conf.result_backend or 'celery.backend_cleanup' in data:
            return
        if getattr(self.app.backend, 'supports_autoexpire', True):
            return
        data['celery.backend_cleanup'] = self.Entry(
            name='celery.backend_cleanup', task='celery.backend_cleanup', schedule=crontab('0', '4', '*'),
            options={'expires': 12 * 3600}, app=self.app)

    def _make_entry(self, name: str, fields: Mapping[str, Any]) -> ScheduleEntry:
        if isinstance(fields, ScheduleEntry):
            return fields
        if not isinstance(fields, Mapping):
            raise ImproperlyConfigured(f'beat_schedule[{name!r}] must be a dict, not {type(fields).__name__}')
        unknown = set(fields) - _ENTRY_FIELDS - {'name', 'last_run_at', 'total_run_count'}
        if unknown:
            raise ImproperlyConfigured(f'beat_schedule[{name!r}] has unknown key(s) {", ".join(sorted(unknown))} '
                                       f'(known: {", ".join(sorted(_ENTRY_FIELDS))})')
        if not fields.get('task') or fields.get('schedule') is None:
            raise ImproperlyConfigured(f'beat_schedule[{name!r}] needs a "task" and a "schedule"')
        entry = self.Entry(**{'last_run_at': self.now(), **fields, 'name': name, 'app': self.app})  # type: ignore[arg-type]
        entry.fresh = fields.get('last_run_at') is None  # started from our clock, not from a store
        return entry

    def merge_inplace(self, b: Mapping[str, Any]) -> None:
        """Make the entries those of ``b``; an entry whose identity (name, task, schedule) did
        not change keeps its run state, a changed one starts afresh."""
        for name in set(self.data) - set(b):
            del self.data[name]
        for name, fields in b.items():
            entry = self._make_entry(name, fields)
            current = self.data.get(name)
            if current is not None and current.identity == entry.identity:
                current.update(entry)
            else:
                self.data[name] = entry

    def update_from_dict(self, dict_: Mapping[str, Any]) -> None:
        for name, fields in dict_.items():
            self.data[name] = self._make_entry(name, fields)

    def add(self, **kwargs: Any) -> ScheduleEntry:
        entry = self._make_entry(kwargs.pop('name'), kwargs)
        self.data[entry.name] = entry  # type: ignore[index]
        return entry

    def records(self) -> dict[str, dict[str, Any]]:
        """The run state to persist: ``{name: {identity, last_run_at, total_run_count}}``."""
        return {name: _record(entry) for name, entry in self.data.items()}

    def restore(self, records: Mapping[str, Any], only_newer: bool = False, source: str = 'store') -> int:
        """Adopt stored run state for entries with the same identity (``only_newer``: only when
        it is later than ours, or ours is fresh). Returns how many entries took it."""
        taken = 0
        for name, entry in self.data.items():
            record = records.get(name)
            if not isinstance(record, Mapping):
                continue
            if record.get('identity') != entry.identity:
                logger.info('beat: %s changed since the %s was written; it starts afresh', name, source)
                continue
            try:
                last = _utc(datetime.fromisoformat(record['last_run_at']))
                count = int(record.get('total_run_count') or 0)
            except (KeyError, TypeError, ValueError):
                logger.warning('beat: ignoring a malformed %s record for %s: %r', source, name, record)
                continue
            if only_newer and not entry.fresh and last <= entry.last_run_at:
                continue
            entry.last_run_at, entry.total_run_count, entry.fresh = last, count, False
            taken += 1
        return taken

    def resume(self, shared: Mapping[str, Any] | None = None, now: datetime | None = None) -> None:
        """Called when this beat becomes the one that sends: adopt the newer shared run state,
        and start entries with no recorded run from now (not from when this standby started)."""
        if shared:
            self.restore(shared, only_newer=True, source='shared beat state')
        now = _utc(now or self.now())
        for entry in self.data.values():
            if entry.fresh:
                entry.last_run_at = now

    # --- time -------------------------------------------------------------------------------
    def now(self) -> datetime:
        if self.nowfun is not None:
            return _utc(self.nowfun())
        return _utc(self.app.now())

    def _upcoming(self, entry: ScheduleEntry, now: datetime) -> datetime:
        """When ``entry`` next needs attention."""
        next_fire = getattr(entry.schedule, 'next_fire', None)
        if next_fire is not None:
            return _utc(next_fire(entry.last_run_at))
        return self._next_check.get(entry.name or '', now)

    def tick(self, now: datetime | None = None) -> float:
        """Send every entry that is due at ``now`` (default: the clock); return the seconds to
        sleep until the next fire time, at most ``max_interval``."""
        now = _utc(now or self.now())
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
        if self._retry_at is None:
            for entry in sorted(self.data.values(), key=lambda e: (self._upcoming(e, now), e.name or '')):
                if not self._run_entry(entry, now):
                    self._retry_at = now + timedelta(seconds=self.retry_delay)
                    break
        wake = min([self._upcoming(e, now) for e in self.data.values()] +
                   [now + timedelta(seconds=self.max_interval)])
        if self._retry_at is not None:  # nothing is sent before then
            wake = max(wake, self._retry_at)
        return min(max((wake - now).total_seconds(), 0.0), self.max_interval)

    def is_due(self, entry: ScheduleEntry) -> Any:
        return entry.is_due()

    def _run_entry(self, entry: ScheduleEntry, now: datetime) -> bool:
        """Send what ``entry`` owes at ``now``. False when a send failed (retry later)."""
        if entry.last_run_at > now + timedelta(seconds=1):
            logger.warning('beat: %s last ran at %s, in the future (did the clock go back?); '
                           'counting from now', entry.name, entry.last_run_at.isoformat())
            entry.last_run_at = now
        next_fire = getattr(entry.schedule, 'next_fire', None)
        if next_fire is None:
            return self._run_foreign(entry, now)
        first = _utc(next_fire(entry.last_run_at))
        if first > now:
            return True
        fires, skip_to = self._owed(entry, first, now)
        for fire_time in fires:
            outcome = self._dispatch(entry, fire_time)
            if outcome is None:
                return False
            entry.last_run_at = fire_time
            if outcome:
                entry.total_run_count += 1
            self._changed(entry)
        if skip_to is not None and skip_to > entry.last_run_at:
            entry.last_run_at = skip_to
            self._changed(entry, sent=False)
        return True

    def _owed(self, entry: ScheduleEntry, first: datetime, now: datetime) -> tuple[list[datetime], datetime | None]:
        """The fire times to send now (the first owed one is ``first``) and, when some are
        dropped, the time to advance ``last_run_at`` to."""
        schedule = entry.schedule
        step = _utc(schedule.next_fire(first))
        if step <= first:  # a zero interval: it is simply always due
            return [now], None
        if step > now:
            fires = [first]
        elif (now - first).total_seconds() <= self.catchup_window:
            fires = [first]
            while step <= now and len(fires) < self.max_replay:
                fires.append(step)
                step = _utc(schedule.next_fire(step))
        else:
            latest = _latest_fire(schedule, first, now)
            logger.info('beat: %s missed %s; sending it once for %s', entry.name,
                        'runs' if latest > first else 'a run', latest.isoformat())
            fires = [latest]
        deadline = self.app.conf.beat_cron_starting_deadline
        if deadline is not None and isinstance(schedule, crontab):
            oldest = now - timedelta(seconds=deadline)
            kept = [f for f in fires if f >= oldest]
            if len(kept) < len(fires):
                logger.info('beat: %s skips %d run(s) older than beat_cron_starting_deadline',
                            entry.name, len(fires) - len(kept))
                return kept, fires[-1]
        return fires, None

    def _run_foreign(self, entry: ScheduleEntry, now: datetime) -> bool:
        """A schedule object with only Celery's ``is_due``: ask it, as Celery's beat does."""
        if self._next_check.get(entry.name or '', now) > now:
            return True
        state = self.is_due(entry)
        if state[0]:
            outcome = self._dispatch(entry, now)
            if outcome is None:
                return False
            entry.last_run_at = now
            entry.total_run_count += 1 if outcome else 0
            self._changed(entry)
        self._next_check[entry.name or ''] = now + timedelta(seconds=max(float(state[1]), 0.0))
        return True

    def _dispatch(self, entry: ScheduleEntry, fire_time: datetime) -> bool | None:
        """Claim and send one fire time: True sent, False already sent by another beat, None
        failed (nothing was sent; try again later)."""
        coordinator = self.coordinator
        claimed = False
        if coordinator is not None:
            if not coordinator.holds():
                raise _LeaseLost()
            try:
                claimed = coordinator.claim(entry.name or '', fire_time)
            except Exception as exc:  # Redis unreachable: sending now could double a run
                logger.error('beat: cannot claim %s at %s (%r); will retry', entry.name, _iso(fire_time), exc)
                return None
            if not claimed:
                logger.info('beat: %s for %s was already sent by another beat', entry.name, _iso(fire_time))
                return False
        logger.info('Scheduler: Sending due task %s (%s) for %s', entry.name, entry.task, _iso(fire_time))
        try:
            self.apply_async(entry, fire_time=fire_time)
        except Exception as exc:
            logger.error('Message Error: could not send %s (%s): %r', entry.name, entry.task, exc, exc_info=True)
            if claimed and coordinator is not None:
                try:
                    coordinator.unclaim(entry.name or '', fire_time)
                except Exception:  # noqa: BLE001 - the claim then expires by itself
                    pass
            return None
        return True

    def _changed(self, entry: ScheduleEntry, sent: bool = True) -> None:
        entry.fresh = False
        self._dirty = True
        if self.coordinator is not None:
            try:
                self.coordinator.save(entry.name or '', _record(entry))
            except Exception as exc:  # noqa: BLE001 - the fire-time claims still prevent doubles
                logger.warning('beat: could not share the run state of %s: %r', entry.name, exc)
        if sent:
            self._sends_since_sync += 1
            if self._sends_since_sync >= max(self.sync_every_tasks or 0, 1):
                self.sync()
                self._sends_since_sync = 0

    # --- sending ----------------------------------------------------------------------------
    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> Any:
        """Send ``entry`` now (outside its schedule), Celery's manual trigger."""
        return self.apply_async(entry, producer=producer)

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True,
                    fire_time: datetime | None = None, **kwargs: Any) -> Any:
        """Send one run of ``entry``, with its options and the ``beat_fire_time`` header."""
        options = dict(entry.options, **kwargs)
        headers = dict(options.get('headers') or {})
        headers[FIRE_TIME_HEADER] = _iso(fire_time or self.now())
        options['headers'] = headers
        if producer is not None:
            options['producer'] = producer
        return self.send_task(entry.task, entry.args, entry.kwargs, **options)

    def send_task(self, name: str | None, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Send through the app: ``Task.apply_async`` when the task is registered here (so the
        task's own options apply), else ``app.send_task`` by name."""
        task = self.app.tasks.get(name) if name else None
        if task is not None:
            return task.apply_async(args, kwargs, **options)
        return self.app.send_task(name, args, kwargs, **options)  # type: ignore[arg-type]

    # --- state ------------------------------------------------------------------------------
    def sync(self) -> None:
        """Save the run state (nothing to do here: the base scheduler keeps it in memory)."""
        self._dirty = False

    def close(self) -> None:
        self.sync()

    @property
    def info(self) -> str:
        return ''


def _record(entry: ScheduleEntry) -> dict[str, Any]:
    return {'identity': entry.identity, 'last_run_at': _iso(entry.last_run_at),
            'total_run_count': entry.total_run_count}


def _latest_fire(sched: Any, first: datetime, now: datetime) -> datetime:
    """The last fire time at or before ``now``, given that ``first`` and the one after it are."""
    if isinstance(sched, schedule) and not sched.relative:
        # a fixed grid from ``first``: next_fire(t) = t + run_every is not a step function
        periods = (now - first) // sched.run_every
        return first + periods * sched.run_every
    # Calendar schedules (crontab, solar, relative intervals): next_fire(t) is a monotonic step
    # function of t, so bisect on its argument: O(log) calls for any length of outage.
    lo, hi = first, now  # invariant: next_fire(lo) <= now < next_fire(hi)
    while hi - lo > timedelta(microseconds=1):
        mid = lo + (hi - lo) / 2
        if _utc(sched.next_fire(mid)) <= now:
            lo = mid
        else:
            hi = mid
    return _utc(sched.next_fire(lo))


class PersistentScheduler(Scheduler):
    """A ``Scheduler`` that keeps each entry's run state in a JSON file (written to a temporary
    file and renamed, so a crash never leaves half a file)."""

    version = 1

    def __init__(self, *args: Any, schedule_filename: str | None = None, **kwargs: Any) -> None:
        app = kwargs.get('app') or (args[0] if args else None)
        self.schedule_filename = os.fspath(schedule_filename or app.conf.beat_schedule_filename)  # type: ignore[union-attr]
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        self.restore(self._read(), source=f'state file {self.schedule_filename}')

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.schedule_filename, encoding='utf-8') as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning('beat: %s is not a taskflow beat state file (%s); starting with fresh run '
                           'state and replacing it', self.schedule_filename, exc)
            return {}
        if not isinstance(data, dict) or not isinstance(data.get('entries'), dict):
            logger.warning('beat: %s has no entries; starting with fresh run state', self.schedule_filename)
            return {}
        return data['entries']

    def sync(self) -> None:
        """Write the run state if it changed: temporary file, fsync, rename."""
        if not self._dirty:
            return
        payload = {'version': self.version, 'written_at': _iso(datetime.now(UTC)), 'entries': self.records()}
        path = os.path.abspath(self.schedule_filename)
        tmp = f'{path}.tmp-{os.getpid()}-{threading.get_ident()}'
        try:
            with open(tmp, 'w', encoding='utf-8') as fh:
                json.dump(payload, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            logger.error('beat: could not write %s: %r', path, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        self._dirty = False

    @property
    def info(self) -> str:
        return f'state file {self.schedule_filename}'


# --- one beat: the Redis lock ------------------------------------------------------------------
# KEYS[1] the lock; ARGV[1] our token, ARGV[2] the TTL in ms. Extend only a lock we still hold.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] a lock or claim; ARGV[1] our token. Delete only what is ours.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisCoordinator:
    """The single-beat lock, the shared run state and the fire-time claims, in one Redis.

    ``acquire``/``renew``/``release`` manage the lock; ``holds()`` says whether our lease is
    still valid by our own monotonic clock (measured from *before* the command was sent, and
    minus a margin, so we stop sending before Redis can give the lock to someone else).
    """

    #: How long a fire-time claim is kept: far longer than any takeover or paused leader.
    claim_ttl = 600
    #: The shared run state outlives a beat that is down for a month.
    state_ttl = 30 * 86400

    def __init__(self, client: Any, name: str, ttl: float = 6.0) -> None:
        self.client = client
        self.name = name
        self.ttl = float(ttl)
        self.lock_key = f'taskflow:beat-lock:{name}'
        self.state_key = f'taskflow:beat-state:{name}'
        self.claim_prefix = f'taskflow:beat-fired:{name}:'
        self.token = uuid.uuid4().hex
        self._lease_until = 0.0
        self._renew = client.register_script(_RENEW_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def acquire(self) -> bool:
        """Take the lock if it is free (or already ours)."""
        started = time.monotonic()
        if self.client.set(self.lock_key, self.token, nx=True, px=self._ttl_ms):
            self._lease_until = started + self.ttl
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend our lock; False when it is no longer ours."""
        started = time.monotonic()
        if self._renew(keys=[self.lock_key], args=[self.token, self._ttl_ms]):
            self._lease_until = started + self.ttl
            return True
        self._lease_until = 0.0
        return False

    def release(self) -> None:
        self._lease_until = 0.0
        self._release(keys=[self.lock_key], args=[self.token])

    def holds(self) -> bool:
        """Whether we may send: our lease has more than a sixth of its TTL left."""
        return time.monotonic() < self._lease_until - self.ttl / 6

    def remaining(self) -> float:
        """Seconds until the current holder's lock expires (0 when there is none)."""
        pttl = self.client.pttl(self.lock_key)
        if pttl is None or pttl == -2:
            return 0.0
        return self.ttl if pttl < 0 else pttl / 1000.0

    def claim_key(self, entry_name: str, fire_time: datetime) -> str:
        return f'{self.claim_prefix}{entry_name}:{_iso(fire_time)}'

    def claim(self, entry_name: str, fire_time: datetime) -> bool:
        """Claim one fire time of one entry; False when another beat already did."""
        return bool(self.client.set(self.claim_key(entry_name, fire_time), self.token, nx=True, ex=self.claim_ttl))

    def unclaim(self, entry_name: str, fire_time: datetime) -> None:
        self._release(keys=[self.claim_key(entry_name, fire_time)], args=[self.token])

    def load(self) -> dict[str, Any]:
        """The shared run state: ``{entry name: record}``."""
        found = {}
        for name, raw in (self.client.hgetall(self.state_key) or {}).items():
            try:
                found[name.decode() if isinstance(name, bytes) else name] = json.loads(raw)
            except ValueError:
                continue
        return found

    def save(self, entry_name: str, record: Mapping[str, Any]) -> None:
        pipe = self.client.pipeline()
        pipe.hset(self.state_key, entry_name, json.dumps(record))
        pipe.expire(self.state_key, self.state_ttl)
        pipe.execute()


def _redis_url(app: Taskflow) -> str | None:
    """The broker URL when it is Redis, else the result backend's when that is Redis."""
    for url in (app.conf.broker_url, app.conf.result_backend):
        if isinstance(url, (list, tuple)):
            url = url[0] if url else None
        if not isinstance(url, str):
            continue
        first = url.split(';')[0].strip()
        if first.partition('://')[0] in ('redis', 'rediss', 'redis+socket'):
            return first
    return None


# --- the service -------------------------------------------------------------------------------
_announced: 'weakref.WeakSet[Any]' = weakref.WeakSet()
_announce_lock = threading.Lock()


def _announce(app: Taskflow) -> None:
    """Send ``app.on_after_configure`` and ``app.on_after_finalize`` once per app, before beat
    reads the schedule (receivers typically call ``add_periodic_task``)."""
    with _announce_lock:
        if app in _announced:
            return
        _announced.add(app)
    for name, named in (('on_after_configure', {'source': app.conf}), ('on_after_finalize', {})):
        hook = getattr(app, name, None)
        if hook is not None:
            hook.send(sender=app, **named)


def _import_scheduler(spec: str | type) -> type:
    if not isinstance(spec, str):
        return spec
    spec = _SCHEDULER_ALIASES.get(spec, spec)
    module_name, sep, attr = spec.partition(':')
    if not sep:
        module_name, _, attr = spec.rpartition('.')
    try:
        module = __import__(module_name, fromlist=[attr])
        return getattr(module, attr)  # type: ignore[no-any-return]
    except (ImportError, AttributeError, ValueError) as exc:
        raise ImproperlyConfigured(f'Cannot import scheduler class {spec!r}: {exc}') from exc


class Beat:
    """The beat service: make the scheduler, then tick until ``stop()`` (or SIGTERM/SIGINT when
    ``install_signal_handlers()`` was called in the main thread)."""

    def __init__(self, app: Taskflow, max_interval: float | None = None, scheduler_cls: str | type | None = None,
                 schedule_filename: str | None = None, embedded: bool = False, import_modules: bool = True) -> None:
        self.app = app
        self.max_interval = max_interval
        self.scheduler_cls = _import_scheduler(scheduler_cls or app.conf.beat_scheduler)
        self.schedule_filename = schedule_filename or app.conf.beat_schedule_filename
        self.embedded = embedded
        self.import_modules = import_modules
        self.scheduler: Scheduler | None = None
        self.coordinator: RedisCoordinator | None = None
        self._stop = threading.Event()
        #: Set once the scheduler is made (for tests and ``EmbeddedBeat`` users).
        self.started = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        def shutdown(signum: int, frame: Any) -> None:
            logger.info('beat: %s received, shutting down', signal.Signals(signum).name)
            self._stop.set()
        signal.signal(signal.SIGTERM, shutdown)
        signal.signal(signal.SIGINT, shutdown)

    def get_scheduler(self) -> Scheduler:
        return self.scheduler_cls(app=self.app, schedule_filename=self.schedule_filename,  # type: ignore[no-any-return]
                                  max_interval=self.max_interval, lazy=False)

    def make_coordinator(self, scheduler: Any) -> RedisCoordinator | None:
        """The Redis lock for this app, or None when neither broker nor backend is Redis."""
        url = _redis_url(self.app)
        if url is None:
            logger.info('beat: no Redis broker or backend, so no single-beat lock: run only one beat')
            return None
        name = (getattr(scheduler, 'lock_name', None) or self.app.main
                or os.path.basename(os.fspath(self.schedule_filename)))
        return RedisCoordinator(redis_client(url, self.app.conf), name,
                                ttl=float(getattr(scheduler, 'lock_ttl', Scheduler.lock_ttl)))

    def run(self) -> None:
        """Run until stopped; the run state is saved and the lock released on the way out."""
        app = self.app
        if self.import_modules:
            app.import_modules()
        _announce(app)
        scheduler = self.scheduler = self.get_scheduler()
        coordinator = self.coordinator = self.make_coordinator(scheduler)
        if coordinator is not None:
            scheduler.coordinator = coordinator
            scheduler.catchup_window = 2 * coordinator.ttl
        (signals.beat_embedded_init if self.embedded else signals.beat_init).send(sender=self)
        logger.info('beat: Starting (%s, %d entr%s%s%s).', type(scheduler).__name__,
                    len(scheduler.schedule), 'y' if len(scheduler.schedule) == 1 else 'ies',
                    f', {scheduler.info}' if scheduler.info else '',
                    f', lock {coordinator.lock_key}' if coordinator is not None else ', no lock')
        self.started.set()
        try:
            self._loop(scheduler, coordinator)
        finally:
            try:
                scheduler.close()
            finally:
                if coordinator is not None:
                    try:
                        coordinator.release()
                    except Exception as exc:  # noqa: BLE001 - it expires within a TTL anyway
                        logger.warning('beat: could not release the lock: %r', exc)
            logger.info('beat: stopped')

    def _loop(self, scheduler: Scheduler, coordinator: RedisCoordinator | None) -> None:
        leading = coordinator is None
        standing_by = False
        renew_at = 0.0
        while not self._stop.is_set():
            if coordinator is not None:
                try:
                    if leading and time.monotonic() >= renew_at:
                        if coordinator.renew():
                            renew_at = time.monotonic() + coordinator.ttl / 3
                        else:
                            leading = False
                            logger.warning('beat: lost the lock %s to another beat; standing by', coordinator.lock_key)
                            scheduler.sync()
                    if not leading:
                        if not coordinator.acquire():
                            if not standing_by:
                                logger.warning('beat: another beat holds the lock %s; standing by',
                                               coordinator.lock_key)
                                standing_by = True
                            # wake when the holder's lock would expire (at least every TTL/3)
                            self._stop.wait(min(max(coordinator.remaining(), 0.05), coordinator.ttl / 3))
                            continue
                        leading = True
                        renew_at = time.monotonic() + coordinator.ttl / 3
                        logger.warning('beat: %s the lock %s; sending periodic tasks',
                                       'took over' if standing_by else 'acquired', coordinator.lock_key)
                        standing_by = False
                        scheduler.resume(coordinator.load())
                except Exception as exc:  # Redis unreachable: keep sending only while the lease lasts
                    logger.warning('beat: lock %s: %r; retrying', coordinator.lock_key, exc)
                    if leading and not coordinator.holds():
                        leading = False
                        scheduler.sync()
                    if not leading:
                        self._stop.wait(1.0)
                        continue
            try:
                interval = scheduler.tick()
            except _LeaseLost:
                interval = 0.0
                renew_at = 0.0  # renew (or find out we lost it) right away
            except Exception:  # noqa: BLE001 - a broken entry must not stop the other entries
                logger.exception('beat: tick failed')
                interval = min(scheduler.retry_delay, scheduler.max_interval)
            if coordinator is not None:
                interval = min(interval, max(renew_at - time.monotonic(), 0.0))
            self._stop.wait(interval)


class EmbeddedBeat(threading.Thread):
    """Beat in a thread of this process (``worker -B``): ``start()``, then ``stop()`` and
    ``join(timeout)``. With ``wait_for_worker`` it starts sending once ``worker_ready`` fired,
    so the worker's pool children are not forked while beat holds locks of its own."""

    def __init__(self, app: Taskflow, max_interval: float | None = None, scheduler_cls: str | type | None = None,
                 schedule_filename: str | None = None, wait_for_worker: bool = False) -> None:
        super().__init__(name='Beat', daemon=True)
        self.app = app
        self.beat = Beat(app, max_interval=max_interval, scheduler_cls=scheduler_cls,
                         schedule_filename=schedule_filename, embedded=True, import_modules=not wait_for_worker)
        self._ready = threading.Event()
        if wait_for_worker:
            signals.worker_ready.connect(self._on_worker_ready, dispatch_uid=('taskflow.beat', id(self)))
        else:
            self._ready.set()

    def _on_worker_ready(self, sender: Any = None, **kwargs: Any) -> None:
        self._ready.set()

    def run(self) -> None:
        while not self._ready.wait(0.5):
            if self.beat.stopped:
                return
        try:
            self.beat.run()
        except Exception:  # noqa: BLE001 - the worker keeps running without its beat; say why
            logger.exception('beat: the embedded beat failed')

    def stop(self) -> None:
        self.beat.stop()
        signals.worker_ready.disconnect(dispatch_uid=('taskflow.beat', id(self)))
