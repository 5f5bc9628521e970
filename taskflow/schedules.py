"""Periodic schedules for beat: ``schedule`` (every N seconds), ``crontab`` and ``solar``.

Every schedule answers two questions about an entry that last ran at ``last_run_at``:

- ``next_fire(after)``: the first fire time strictly after ``after`` (aware, in UTC). Pure: it
  depends on the schedule's fields and time zone only, never on the clock.
- ``is_due(last_run_at) -> schedstate(is_due, next)`` and ``remaining_estimate(last_run_at)``,
  Celery's interface, which compare ``next_fire(last_run_at)`` with ``now()``; ``next`` is the
  number of seconds until the schedule should be checked again.

All arithmetic is done on UTC instants. (Python compares and subtracts two datetimes that share
one ``tzinfo`` by their wall-clock fields, which is wrong across a DST change; a good part of
Celery's DST bugs come from that.) Naive datetimes are taken as UTC, as Celery does.

Time zones
    ``crontab`` fields and ``relative`` interval rounding are read on the wall clock of the
    app's time zone: ``app.timezone`` (UTC when ``timezone`` is unset), or the machine's local
    zone when ``timezone`` is unset and ``enable_utc`` is False. A schedule without an app
    uses UTC. ``now()`` is ``nowfun()`` when given, else ``app.now()``, else the UTC clock.

DST policy (crontab)
    A crontab whose hour field is every hour (``hour='*'``: "every 15 minutes", "hourly at
    :30") follows the clock as it is shown: a wall-clock time skipped by a spring-forward
    change does not fire (that minute never existed), and a wall-clock time shown twice in a
    fall-back change fires both times. Such a job keeps its real-time spacing through the
    change: an hourly job stays hourly.

    A crontab with specific hours is a time-of-day job ("02:30 every day"); each matching
    (date, time) fires exactly once:

    - a time that does not exist (spring forward, e.g. 02:30 in Europe/Berlin on the last
      Sunday of March) fires at the first valid instant after it, the moment the clock jumps
      (03:00 CEST); several such times fall on that one instant and fire once;
    - an ambiguous time (fall back, e.g. 02:30 on the last Sunday of October) fires once, at
      its first occurrence (02:30 CEST).

    Interval schedules measure elapsed time and are not affected by DST; solar events are
    instants and are not affected either. The crontab engine assumes a zone's UTC offset
    changes by at most four hours at a time and not twice within eight hours, which holds for
    every zone in the tz database today.

Solar events are computed with the NOAA solar equations (about a minute of accuracy away from
the poles); ``solar`` does not need the ``ephem`` library.
"""
from __future__ import annotations

import functools
import math
import os
import re
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any, Callable, Iterable, NamedTuple

__all__ = ['schedstate', 'BaseSchedule', 'schedule', 'crontab', 'crontab_parser', 'solar',
           'maybe_schedule', 'ParseException']

UTC = timezone.utc
_MINUTE = timedelta(minutes=1)
# Widest UTC-offset change the crontab engine allows for (see the module docstring).
_SHIFT_MARGIN = timedelta(hours=4)


class schedstate(NamedTuple):
    """What ``is_due`` returns: run now?, and seconds until the next check."""

    is_due: bool
    next: float


class ParseException(ValueError):
    """A crontab field that cannot be parsed (also ``crontab_parser.ParseException``)."""


def _as_utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _wall(instant: datetime, tz: tzinfo) -> datetime:
    """The naive wall-clock time shown in ``tz`` at ``instant``."""
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


def _local_zone() -> tzinfo:
    """The machine's time zone, with its DST rules when they can be found (``TZ``, then
    ``/etc/localtime``); the current fixed offset otherwise."""
    return _local_zone_for(os.environ.get('TZ', ''))


@functools.lru_cache(maxsize=8)
def _local_zone_for(tz_variable: str) -> tzinfo:
    from zoneinfo import ZoneInfo  # noqa: PLC0415 - only for enable_utc=False without timezone
    name = tz_variable.lstrip(':')
    if name:
        try:
            return ZoneInfo(name)
        except Exception:  # noqa: BLE001 - a TZ value zoneinfo cannot read: try the next source
            pass
    try:
        with open('/etc/localtime', 'rb') as fh:
            return ZoneInfo.from_file(fh, key='localtime')
    except OSError:
        pass
    return datetime.now().astimezone().tzinfo or UTC


def _humanize(seconds: float) -> str:
    for unit, size in (('day', 86400.0), ('hour', 3600.0), ('minute', 60.0), ('second', 1.0)):
        if seconds >= size:
            amount = seconds / size
            return f'{amount:.2f} {unit}{"" if amount == 1 else "s"}'
    return 'now'


class BaseSchedule:
    """What every schedule shares: the app (for its time zone, clock and settings) and ``now``."""

    def __init__(self, nowfun: Callable[[], datetime] | None = None, app: Any = None) -> None:
        self.nowfun = nowfun
        self._app = app

    @property
    def app(self) -> Any:
        return self._app

    @app.setter
    def app(self, app: Any) -> None:
        self._app = app

    @property
    def tz(self) -> tzinfo:
        """The zone crontab fields are read in (see the module docstring)."""
        app = self._app
        if app is None:
            return UTC
        conf = getattr(app, 'conf', None)
        if conf is not None and not _get(conf, 'timezone') and _get(conf, 'enable_utc', True) is False:
            return _local_zone()
        zone = getattr(app, 'timezone', None)
        if zone is None:
            return UTC
        if isinstance(zone, str):
            from zoneinfo import ZoneInfo  # noqa: PLC0415
            return ZoneInfo(zone)
        return zone

    @property
    def utc_enabled(self) -> bool:
        conf = getattr(self._app, 'conf', None)
        return bool(_get(conf, 'enable_utc', True)) if conf is not None else True

    def now(self) -> datetime:
        """The current time, aware (``nowfun``, else the app's clock, else UTC)."""
        if self.nowfun is not None:
            return self.nowfun()
        app_now = getattr(self._app, 'now', None)
        if callable(app_now):
            return app_now()
        return datetime.now(UTC)

    def maybe_make_aware(self, dt: datetime, naive_as_utc: bool = True) -> datetime:
        """``dt`` in the schedule's zone; naive datetimes are UTC (or local wall times when
        ``naive_as_utc`` is False)."""
        if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
            dt = dt.replace(tzinfo=UTC if naive_as_utc else self.tz)
        return dt.astimezone(self.tz)

    def to_local(self, dt: datetime) -> datetime:
        return self.maybe_make_aware(dt)

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``, aware, in UTC."""
        raise NotImplementedError

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now until the first fire after ``last_run_at`` (negative when overdue)."""
        return self.next_fire(last_run_at) - _as_utc(self.now())

    def is_due(self, last_run_at: datetime) -> schedstate:
        """``(True, seconds to the fire after now)`` when a fire time after ``last_run_at`` has
        come, else ``(False, seconds until it comes)``."""
        now = _as_utc(self.now())
        upcoming = self.next_fire(last_run_at)
        if upcoming > now:
            return schedstate(False, (upcoming - now).total_seconds())
        return schedstate(True, max((self.next_fire(now) - now).total_seconds(), 0.0))

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, BaseSchedule):
            return other.nowfun == self.nowfun
        return NotImplemented

    __hash__ = object.__hash__


def _get(conf: Any, name: str, default: Any = None) -> Any:
    """A setting from a ``Settings``, a dict or an object, by duck typing."""
    if isinstance(conf, dict):
        return conf.get(name, default)
    return getattr(conf, name, default)


# --- schedule: every N seconds -----------------------------------------------------------------
class schedule(BaseSchedule):
    """Every ``run_every`` (a ``timedelta`` or seconds) of elapsed time after the last run.

    With ``relative=True`` the fire time is rounded down to the interval's resolution on the
    wall clock (whole hours for intervals of an hour or more, minutes, seconds); intervals of a
    day or more count calendar days and fire at local midnight.
    """

    def __init__(self, run_every: timedelta | float | None = None, relative: bool = False,
                 nowfun: Callable[[], datetime] | None = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.run_every = _timedelta(run_every if run_every is not None else 0)
        self.relative = relative

    @property
    def seconds(self) -> float:
        return self.run_every.total_seconds()

    @property
    def human_seconds(self) -> str:
        return _humanize(self.seconds)

    def next_fire(self, after: datetime) -> datetime:
        start = _as_utc(after)
        if not self.relative:
            return start + self.run_every
        if self.run_every >= timedelta(days=1):
            return self._next_local_midnight(start)
        end = start + self.run_every
        unit = (timedelta(hours=1) if self.run_every >= timedelta(hours=1)
                else _MINUTE if self.run_every >= _MINUTE else timedelta(seconds=1))
        for candidate in (end, end + unit):
            rounded = self._floor(candidate, unit)
            if rounded > start:
                return rounded
        return end

    def _floor(self, instant: datetime, unit: timedelta) -> datetime:
        local = instant.astimezone(self.tz)
        if unit >= timedelta(hours=1):
            local = local.replace(minute=0, second=0, microsecond=0)
        elif unit >= _MINUTE:
            local = local.replace(second=0, microsecond=0)
        else:
            local = local.replace(microsecond=0)
        return local.astimezone(UTC)  # replace() kept the fold: the same occurrence

    def _next_local_midnight(self, start: datetime) -> datetime:
        tz = self.tz
        wall = _wall(start, tz) + self.run_every  # calendar arithmetic, as Celery does
        day = wall.date()
        while True:
            midnight = _resolve_wall(datetime(day.year, day.month, day.day), tz)
            if midnight > start:
                return midnight
            day += timedelta(days=1)

    def __repr__(self) -> str:
        return f'<freq: {self.human_seconds}>'

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every and self.relative == other.relative
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.run_every, self.relative))

    def __reduce__(self) -> Any:
        return self.__class__, (self.run_every, self.relative, self.nowfun)


def _timedelta(value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    raise TypeError(f'run_every must be a timedelta or a number of seconds, not {type(value).__name__}')


def _resolve_wall(wall: datetime, tz: tzinfo) -> datetime:
    """The instant of naive wall time ``wall`` in ``tz``: its first occurrence when it is
    ambiguous, the end of the gap (the moment the clock jumps) when it does not exist."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(first, tz) == wall:
        return first
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if _wall(second, tz) == wall:
        return second
    return _gap_end(min(first, second), max(first, second), tz)


def _gap_end(before: datetime, after: datetime, tz: tzinfo) -> datetime:
    """The transition instant in ``(before, after]``, where the UTC offset of ``tz`` changes
    (to the whole second: the tz database has no finer transitions)."""
    lo, hi = int(before.timestamp()), int(math.ceil(after.timestamp()))
    target = datetime.fromtimestamp(hi, UTC).astimezone(tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(tz).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


# --- crontab -------------------------------------------------------------------------------------
_WEEKDAYS = {name: i for i, name in enumerate(
    ('sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'))}
_WEEKDAYS.update({name[:3]: i for name, i in list(_WEEKDAYS.items())})
_MONTHS = {name: i + 1 for i, name in enumerate(
    ('january', 'february', 'march', 'april', 'may', 'june', 'july', 'august', 'september',
     'october', 'november', 'december'))}
_MONTHS.update({name[:3]: i for name, i in list(_MONTHS.items())})
_NUMBER = re.compile(r'[0-9]+')
# The longest each month can be (February in a leap year), for "day never occurs" checks.
_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class crontab_parser:
    """Parse one crontab field into the set of values it selects.

    ``crontab_parser(60).parse('*/15') == {0, 15, 30, 45}``; ``crontab_parser(7)`` is the day of
    week (0 = Sunday), ``crontab_parser(31, 1)`` the day of month, ``crontab_parser(12, 1)`` the
    month. Syntax: ``*``, ``*/step``, ``n``, ``a-b`` (wrapping round when ``b < a``),
    ``a-b/step``, and comma-separated lists of those; weekday and month names (``mon``,
    ``monday``, ``jan``, ``january``) in those two fields.
    """

    ParseException = ParseException

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        self.max_, self.min_ = max_, min_
        self.last = min_ + max_ - 1
        self.names, self.what = ((_WEEKDAYS, 'weekday') if (min_, max_) == (0, 7)
                                 else (_MONTHS, 'month') if (min_, max_) == (1, 12) else ({}, 'value'))

    def parse(self, spec: str) -> set[int]:
        """The values ``spec`` selects; ``ValueError`` (or ``ParseException``) when malformed."""
        values: set[int] = set()
        for part in spec.split(','):
            part = part.strip()
            if not part:
                raise ParseException(f'empty part in crontab field {spec!r}')
            values.update(self._part(part))
        return values

    def _part(self, part: str) -> list[int]:
        body, slash, step_text = part.partition('/')
        body = body.strip()
        values = list(range(self.min_, self.last + 1)) if body == '*' else self._range(body)
        if not slash:
            return values
        if body != '*' and '-' not in body:
            raise ParseException(f'a step needs * or a range before it: {part!r}')
        step_text = step_text.strip()
        if not _NUMBER.fullmatch(step_text):
            raise ParseException(f'invalid step {step_text!r} in {part!r}')
        step = int(step_text)
        if step == 0:
            raise ValueError(f'step cannot be zero: {part!r}')
        return values[::step]

    def _range(self, body: str) -> list[int]:
        if body.startswith('-'):
            raise ParseException(f'negative numbers are not supported: {body!r}')
        first_text, dash, last_text = body.partition('-')
        first = self._number(first_text)
        if not dash:
            return [first]
        last = self._number(last_text)
        if last < first:  # wraps round: fri-mon, 22-2
            return list(range(first, self.last + 1)) + list(range(self.min_, last + 1))
        return list(range(first, last + 1))

    def _number(self, token: str) -> int:
        token = token.strip()
        if _NUMBER.fullmatch(token):
            value = int(token)
        elif token.lower() in self.names:
            value = self.names[token.lower()]
        else:
            raise ValueError(f'Invalid {self.what} literal {token!r}.')
        if value < self.min_:
            raise ValueError(f'Invalid beginning range: {value} < {self.min_}.')
        if value > self.last:
            raise ValueError(f'Invalid end range: {value} > {self.last}.')
        return value


def _expand(spec: Any, max_: int, min_: int) -> set[int]:
    """A crontab field (int, str or iterable of those) as a set of values in range."""
    if isinstance(spec, bool):
        raise TypeError(f'crontab field must be an int, a str or an iterable, not {spec!r}')
    if isinstance(spec, int):
        values = {spec}
    elif isinstance(spec, str):
        values = crontab_parser(max_, min_).parse(spec)
    elif isinstance(spec, Iterable):
        values = set()
        for item in spec:
            values |= _expand(item, max_, min_)
    else:
        raise TypeError(f'crontab field must be an int, a str or an iterable, not {type(spec).__name__}')
    for value in values:
        if not min_ <= value < min_ + max_:
            raise ValueError(f'Invalid crontab pattern. Valid range is {min_}-{min_ + max_ - 1}. '
                             f'{str(value)!r} was found.')
    return values


class crontab(BaseSchedule):
    """Fire at the wall-clock minutes matching every field (Celery's crontab; day_of_week 0 is
    Sunday, and a day must match both ``day_of_month`` and ``day_of_week``).

    ``crontab()`` is every minute; ``crontab(minute=0, hour='*/3')`` every three hours;
    ``crontab(minute=30, hour=7, day_of_week='mon-fri')`` at 07:30 on weekdays. A field is an
    int, a string in cron syntax (see ``crontab_parser``) or an iterable of ints. DST handling is
    in the module docstring.
    """

    def __init__(self, minute: Any = '*', hour: Any = '*', day_of_week: Any = '*',
                 day_of_month: Any = '*', month_of_year: Any = '*', **kwargs: Any) -> None:
        super().__init__(nowfun=kwargs.pop('nowfun', None), app=kwargs.pop('app', None))
        if kwargs:
            raise TypeError(f'crontab() got unexpected arguments: {", ".join(sorted(kwargs))}')
        self._orig_minute, self._orig_hour = minute, hour
        self._orig_day_of_week, self._orig_day_of_month = day_of_week, day_of_month
        self._orig_month_of_year = month_of_year
        self.minute = _expand(minute, 60, 0)
        self.hour = _expand(hour, 24, 0)
        self.day_of_week = _expand(day_of_week, 7, 0)
        self.day_of_month = _expand(day_of_month, 31, 1)
        self.month_of_year = _expand(month_of_year, 12, 1)
        if not any(day <= _MONTH_DAYS[month] for day in self.day_of_month for month in self.month_of_year):
            raise ValueError(f'Invalid crontab: day_of_month {day_of_month!r} never occurs in '
                             f'month_of_year {month_of_year!r}.')
        self._minutes = sorted(self.minute)
        self._hours = sorted(self.hour)

    @classmethod
    def from_string(cls, crontab: str) -> 'crontab':
        """``crontab.from_string('*/15 9-17 * * mon-fri')``: minute hour day-of-month month
        day-of-week, as in a crontab file."""
        fields = crontab.split()
        if len(fields) != 5:
            raise ValueError(f'Invalid crontab string {crontab!r}: expected 5 fields, found {len(fields)}')
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute=minute, hour=hour, day_of_week=day_of_week, day_of_month=day_of_month,
                   month_of_year=month_of_year)

    # --- the engine -------------------------------------------------------------------------
    def matches(self, wall: datetime) -> bool:
        """Whether naive wall-clock time ``wall`` matches every field (seconds ignored)."""
        return (wall.minute in self.minute and wall.hour in self.hour and self._day_matches(wall)
                and wall.month in self.month_of_year)

    def _day_matches(self, wall: datetime) -> bool:
        return wall.day in self.day_of_month and wall.isoweekday() % 7 in self.day_of_week

    def _next_wall(self, wall: datetime) -> datetime:
        """The first whole wall-clock minute at or after naive ``wall`` matching every field."""
        # Four centuries repeat the Gregorian calendar, weekdays included: a date that matches
        # at all matches within that span.
        limit = wall.year + 400
        while wall.year <= limit:
            if wall.month not in self.month_of_year:
                year, month = (wall.year + 1, 1) if wall.month == 12 else (wall.year, wall.month + 1)
                wall = datetime(year, month, 1)
                continue
            if not self._day_matches(wall):
                wall = datetime(wall.year, wall.month, wall.day) + timedelta(days=1)
                continue
            if wall.hour not in self.hour:
                hour = next((h for h in self._hours if h > wall.hour), None)
                if hour is None:
                    wall = datetime(wall.year, wall.month, wall.day) + timedelta(days=1)
                    continue
                wall = wall.replace(hour=hour, minute=0)
            if wall.minute not in self.minute:
                minute = next((m for m in self._minutes if m > wall.minute), None)
                if minute is None:
                    wall = wall.replace(minute=0) + timedelta(hours=1)
                    continue
                wall = wall.replace(minute=minute)
            return wall
        raise ValueError(f'{self!r} never fires')

    @property
    def _every_hour(self) -> bool:
        return len(self.hour) == 24

    def _instants(self, wall: datetime, tz: tzinfo) -> list[datetime]:
        """The UTC instants at which matching wall time ``wall`` fires (the DST policy)."""
        first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        valid = [u for u in sorted((first, second)) if _wall(u, tz) == wall]
        if len(valid) == 2:  # shown twice (fall back)
            return valid if self._every_hour else valid[:1]
        if valid:
            return valid
        # never shown (spring forward)
        return [] if self._every_hour else [_gap_end(min(first, second), max(first, second), tz)]

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``, aware, in UTC (see the DST policy)."""
        after = _as_utc(after)
        tz = self.tz
        wall = _wall(after, tz).replace(second=0, microsecond=0)
        if _offset_changes_near(after, tz):
            wall -= _SHIFT_MARGIN  # a fall-back fold: earlier wall times may still lie ahead
        best: datetime | None = None
        stop: datetime | None = None
        while True:
            wall = self._next_wall(wall)
            if stop is not None and wall > stop:
                return best  # type: ignore[return-value]  # stop is set together with best
            for instant in self._instants(wall, tz):
                if instant > after and (best is None or instant < best):
                    best = instant
                    if stop is None:
                        # Wall order is instant order, except inside a fold near a change.
                        stop = wall + _SHIFT_MARGIN if _offset_changes_near(instant, tz) else wall
            wall += _MINUTE

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Celery's crontab ``is_due``; with ``beat_cron_starting_deadline`` set, a missed run
        older than the deadline is not due (the next one is awaited instead)."""
        state = super().is_due(last_run_at)
        deadline = _get(getattr(self._app, 'conf', None), 'beat_cron_starting_deadline') if self._app else None
        if state.is_due and deadline is not None:
            now = _as_utc(self.now())
            if self.next_fire(now - timedelta(seconds=deadline, microseconds=1)) > now:
                return schedstate(False, state.next)
        return state

    def __repr__(self) -> str:
        return (f'<crontab: {self._orig_minute} {self._orig_hour} {self._orig_day_of_month} '
                f'{self._orig_month_of_year} {self._orig_day_of_week} (m/h/dM/MY/d)>')

    def _key(self) -> tuple[frozenset[int], ...]:
        return (frozenset(self.minute), frozenset(self.hour), frozenset(self.day_of_week),
                frozenset(self.day_of_month), frozenset(self.month_of_year))

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, crontab):
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> Any:
        return self.__class__, (self._orig_minute, self._orig_hour, self._orig_day_of_week,
                                self._orig_day_of_month, self._orig_month_of_year)


def _offset_changes_near(instant: datetime, tz: tzinfo) -> bool:
    """Whether ``tz`` changes its UTC offset within the shift margin of ``instant``."""
    before = (instant - _SHIFT_MARGIN).astimezone(tz).utcoffset()
    return before != (instant + _SHIFT_MARGIN).astimezone(tz).utcoffset() or \
        before != instant.astimezone(tz).utcoffset()


# --- solar ---------------------------------------------------------------------------------------
# event -> (zenith angle in degrees, or None for the transit; -1 morning, +1 evening, 0 noon).
# 90.833 degrees: the upper limb on a refracted horizon (34' refraction, 16' solar radius),
# which is what ephem's sunrise with a -0:34 horizon gives; twilights use the centre.
_SOLAR_EVENTS: dict[str, tuple[float | None, int]] = {
    'dawn_astronomical': (108.0, -1),
    'dawn_nautical': (102.0, -1),
    'dawn_civil': (96.0, -1),
    'sunrise': (90.833, -1),
    'solar_noon': (None, 0),
    'sunset': (90.833, 1),
    'dusk_civil': (96.0, 1),
    'dusk_nautical': (102.0, 1),
    'dusk_astronomical': (108.0, 1),
}


def _sun_position(instant: datetime) -> tuple[float, float]:
    """The sun's declination (radians) and the equation of time (minutes) at ``instant``
    (NOAA's equations after Meeus)."""
    century = (instant.timestamp() / 86400.0 + 2440587.5 - 2451545.0) / 36525.0
    mean_long = math.radians((280.46646 + century * (36000.76983 + century * 0.0003032)) % 360)
    mean_anom = math.radians(357.52911 + century * (35999.05029 - 0.0001537 * century))
    ecc = 0.016708634 - century * (0.000042037 + 0.0000001267 * century)
    centre = (math.sin(mean_anom) * (1.914602 - century * (0.004817 + 0.000014 * century))
              + math.sin(2 * mean_anom) * (0.019993 - 0.000101 * century)
              + math.sin(3 * mean_anom) * 0.000289)
    omega = math.radians(125.04 - 1934.136 * century)
    apparent_long = math.radians(math.degrees(mean_long) + centre - 0.00569 - 0.00478 * math.sin(omega))
    mean_obliq = 23 + (26 + (21.448 - century * (46.815 + century * (0.00059 - century * 0.001813))) / 60) / 60
    obliq = math.radians(mean_obliq + 0.00256 * math.cos(omega))
    declination = math.asin(math.sin(obliq) * math.sin(apparent_long))
    y = math.tan(obliq / 2) ** 2
    eq_time = 4 * math.degrees(
        y * math.sin(2 * mean_long) - 2 * ecc * math.sin(mean_anom)
        + 4 * ecc * y * math.sin(mean_anom) * math.cos(2 * mean_long)
        - 0.5 * y * y * math.sin(4 * mean_long) - 1.25 * ecc * ecc * math.sin(2 * mean_anom))
    return declination, eq_time


def solar_event(event: str, day: date, lat: float, lon: float) -> datetime | None:
    """The UTC instant of ``event`` on local solar day ``day`` at (``lat``, ``lon``), to the
    second; None when it does not happen that day (polar day or night)."""
    zenith, direction = _SOLAR_EVENTS[event]
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    minutes = 720.0 - 4.0 * lon  # first guess: mean solar noon
    phi = math.radians(max(min(lat, 89.999), -89.999))
    for _ in range(3):  # re-evaluate the sun at the estimate: converges to well under a second
        declination, eq_time = _sun_position(midnight + timedelta(minutes=minutes))
        noon = 720.0 - 4.0 * lon - eq_time
        if zenith is None:
            minutes = noon
            continue
        cos_ha = (math.cos(math.radians(zenith)) / (math.cos(phi) * math.cos(declination))
                  - math.tan(phi) * math.tan(declination))
        if not -1.0 <= cos_ha <= 1.0:
            return None
        minutes = noon + direction * 4.0 * math.degrees(math.acos(cos_ha))
    return (midnight + timedelta(minutes=minutes)).replace(microsecond=0)


class solar(BaseSchedule):
    """Fire at a solar event at latitude ``lat`` and longitude ``lon`` (degrees, east and
    north positive). Events: dawn_astronomical, dawn_nautical, dawn_civil, sunrise,
    solar_noon, sunset, dusk_civil, dusk_nautical, dusk_astronomical. On days the event does
    not happen (polar day or night) nothing fires."""

    _all_events = frozenset(_SOLAR_EVENTS)

    def __init__(self, event: str, lat: float, lon: float, **kwargs: Any) -> None:
        super().__init__(nowfun=kwargs.pop('nowfun', None), app=kwargs.pop('app', None))
        if kwargs:
            raise TypeError(f'solar() got unexpected arguments: {", ".join(sorted(kwargs))}')
        if event not in _SOLAR_EVENTS:
            raise ValueError(f'Argument event {event!r} is invalid, must be one of: '
                             f'{", ".join(sorted(_SOLAR_EVENTS))}.')
        if not -90 <= lat <= 90:
            raise ValueError(f'Argument latitude {lat} is invalid, must be between -90 and 90.')
        if not -180 <= lon <= 180:
            raise ValueError(f'Argument longitude {lon} is invalid, must be between -180 and 180.')
        self.event, self.lat, self.lon = event, lat, lon

    def next_fire(self, after: datetime) -> datetime:
        """The first occurrence of the event strictly after ``after`` (UTC, to the second)."""
        after = _as_utc(after)
        start = after.date() - timedelta(days=2)
        # Two years: every event happens at least yearly everywhere short of the poles.
        for offset in range(2 * 366 + 4):
            found = solar_event(self.event, start + timedelta(days=offset), self.lat, self.lon)
            if found is not None and found > after:
                return found
        raise ValueError(f'{self!r} does not happen in the next two years')

    def __repr__(self) -> str:
        return f'<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>'

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, solar):
            return (self.event, self.lat, self.lon) == (other.event, other.lat, other.lon)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.event, self.lat, self.lon))

    def __reduce__(self) -> Any:
        return self.__class__, (self.event, self.lat, self.lon)


def maybe_schedule(s: Any, relative: bool = False, app: Any = None) -> Any:
    """A schedule for ``s``: numbers (seconds) and ``timedelta`` become ``schedule``; a schedule
    object is returned as is, bound to ``app``; None stays None."""
    if s is None:
        return None
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        s = timedelta(seconds=s)
    if isinstance(s, timedelta):
        return schedule(s, relative, app=app)
    if app is not None:
        try:
            s.app = app
        except AttributeError:  # a schedule object that does not take an app
            pass
    return s
