"""``taskflow.schedules``: crontab parsing, next fire times (month ends, leap years, DST in
Europe/Berlin, America/New_York and Australia/Lord_Howe), interval and solar schedules,
``is_due``; compared with Celery 5.7's crontab where Celery is right, and property-tested
against a brute-force minute scan."""
from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from taskflow.app import Taskflow
from taskflow.schedules import (
    ParseException, crontab, crontab_parser, maybe_schedule, schedstate, schedule, solar, solar_event,
)

UTC = timezone.utc
BERLIN = ZoneInfo('Europe/Berlin')
NEW_YORK = ZoneInfo('America/New_York')
LORD_HOWE = ZoneInfo('Australia/Lord_Howe')  # DST moves the clock by 30 minutes


def zone_app(zone: str | None = None, **conf: Any) -> Taskflow:
    return Taskflow('sched-test', broker='memory://', set_as_current=False, timezone=zone, **conf)


def at(tz: Any, *fields: int, fold: int = 0) -> datetime:
    return datetime(*fields, tzinfo=tz, fold=fold)


def fires(sched: Any, after: datetime, count: int) -> list[datetime]:
    found, t = [], after
    for _ in range(count):
        t = sched.next_fire(t)
        found.append(t)
    return found


def local(instants: list[datetime], tz: Any) -> list[str]:
    return [t.astimezone(tz).strftime('%Y-%m-%d %H:%M %z') for t in instants]


# --- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize('max_, min_, spec, expected', [
    (60, 0, '*', set(range(60))),
    (60, 0, '*/15', {0, 15, 30, 45}),
    (60, 0, '*/7', {0, 7, 14, 21, 28, 35, 42, 49, 56}),
    (60, 0, '5', {5}),
    (60, 0, ' 5 ', {5}),
    (60, 0, '1-5', {1, 2, 3, 4, 5}),
    (60, 0, '1-10/2', {1, 3, 5, 7, 9}),
    (60, 0, '1-5/2,30', {1, 3, 5, 30}),
    (60, 0, '58-2', {58, 59, 0, 1, 2}),            # a range wraps round
    (60, 0, '50-10/5', {50, 55, 0, 5, 10}),       # and steps along the wrapped range
    (24, 0, '*/25', {0}),
    (24, 0, '22-2', {22, 23, 0, 1, 2}),
    (7, 0, 'mon-fri', {1, 2, 3, 4, 5}),
    (7, 0, 'sun', {0}),
    (7, 0, 'MON', {1}),
    (7, 0, 'monday,friday', {1, 5}),
    (7, 0, 'fri-mon', {5, 6, 0, 1}),
    (7, 0, 'sat-sun', {6, 0}),
    (31, 1, '*/10', {1, 11, 21, 31}),
    (31, 1, '1,15,31', {1, 15, 31}),
    (12, 1, 'jan', {1}),
    (12, 1, 'jan-mar', {1, 2, 3}),
    (12, 1, 'dec-feb', {12, 1, 2}),
    (12, 1, 'June,Aug', {6, 8}),
])
def test_parser_selects(max_: int, min_: int, spec: str, expected: set[int]) -> None:
    assert crontab_parser(max_, min_).parse(spec) == expected


@pytest.mark.parametrize('max_, min_, spec', [
    (60, 0, 'foo'), (60, 0, '60'), (60, 0, '-1'), (60, 0, '1-70'), (60, 0, '5-'), (60, 0, ''),
    (60, 0, '1,,2'), (60, 0, '*/0'), (60, 0, '3/5'), (60, 0, '*/x'), (60, 0, 'mon'),
    (7, 0, '7'), (7, 0, '8'), (7, 0, 'xyz'), (7, 0, 'sun,7'),
    (31, 1, '0'), (31, 1, '32'), (12, 1, '13'), (12, 1, 'foo'), (24, 0, '1-2-3'),
])
def test_parser_rejects(max_: int, min_: int, spec: str) -> None:
    with pytest.raises(ValueError):
        crontab_parser(max_, min_).parse(spec)


def test_parse_exception_is_a_value_error_and_celery_name() -> None:
    assert crontab_parser.ParseException is ParseException
    with pytest.raises(crontab_parser.ParseException):
        crontab_parser(60).parse('1,,2')


@pytest.mark.parametrize('fields', [
    {'hour': 25}, {'minute': 70}, {'minute': 'foo'}, {'day_of_week': 'xyz'}, {'day_of_month': 0},
    {'month_of_year': 13}, {'minute': '*/0'}, {'day_of_week': '7'},
    {'day_of_month': '31', 'month_of_year': '2'},      # never occurs
    {'day_of_month': '30,31', 'month_of_year': 'feb'},
    {'day_of_month': '31', 'month_of_year': 'apr,jun,sep,nov'},
])
def test_crontab_rejects_what_celery_rejects(fields: dict[str, Any]) -> None:
    from celery.schedules import crontab as celery_crontab
    with pytest.raises(ValueError):
        celery_crontab(**fields)
    with pytest.raises(ValueError):
        crontab(**fields)


def test_crontab_field_types() -> None:
    assert crontab(minute=[1, 2], hour=range(3)).minute == {1, 2}
    assert crontab(minute=[1, 2], hour=range(3)).hour == {0, 1, 2}
    assert crontab(minute=5).minute == {5}
    with pytest.raises(TypeError):
        crontab(minute=None)
    with pytest.raises(TypeError):
        crontab(minute=1.5)
    with pytest.raises(TypeError):
        crontab(bogus=1)


@pytest.mark.parametrize('fields', [
    {}, {'minute': '*/15'}, {'minute': 0, 'hour': '*/3'}, {'minute': 30, 'hour': 7, 'day_of_week': 'mon-fri'},
    {'minute': '5,35', 'hour': '1-10/2', 'month_of_year': 'jan,jun-aug'}, {'day_of_week': 'fri-mon'},
    {'minute': 0, 'hour': 0, 'day_of_month': '*/10'}, {'minute': '50-10/5'}, {'minute': [1, 2]},
])
def test_fields_and_repr_match_celery(fields: dict[str, Any]) -> None:
    from celery.schedules import crontab as celery_crontab
    ours, theirs = crontab(**fields), celery_crontab(**fields)
    for name in ('minute', 'hour', 'day_of_week', 'day_of_month', 'month_of_year'):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert repr(ours) == repr(theirs)


def test_from_string() -> None:
    c = crontab.from_string('*/15 9-17 1,15 * mon-fri')
    assert c == crontab(minute='*/15', hour='9-17', day_of_month='1,15', day_of_week='mon-fri')
    assert c != crontab(minute='*/15', hour='9-17')
    with pytest.raises(ValueError):
        crontab.from_string('* * * *')


def test_equality_and_hash() -> None:
    assert crontab(minute='*/15') == crontab(minute='0,15,30,45')
    assert hash(crontab(minute='*/15')) == hash(crontab(minute='0,15,30,45'))
    assert schedule(10) == schedule(timedelta(seconds=10))
    assert schedule(10) != schedule(10, relative=True)
    assert solar('sunset', 1, 2) == solar('sunset', 1, 2) != solar('sunrise', 1, 2)


# --- crontab next fire times (UTC) -----------------------------------------------------------
@pytest.mark.parametrize('fields, after, expected', [
    ({}, (2024, 1, 1, 12, 0, 0), ['2024-01-01 12:01', '2024-01-01 12:02']),
    ({}, (2024, 1, 1, 12, 0, 30), ['2024-01-01 12:01', '2024-01-01 12:02']),
    ({'minute': '*/15'}, (2024, 1, 1, 12, 7), ['2024-01-01 12:15', '2024-01-01 12:30', '2024-01-01 12:45',
                                               '2024-01-01 13:00']),
    ({'minute': '*/15'}, (2024, 12, 31, 23, 50), ['2025-01-01 00:00', '2025-01-01 00:15']),
    # mon-fri: 2024-01-05 is a Friday
    ({'minute': 0, 'hour': 9, 'day_of_week': 'mon-fri'}, (2024, 1, 5, 9, 0),
     ['2024-01-08 09:00', '2024-01-09 09:00']),
    ({'minute': 0, 'hour': 9, 'day_of_week': 'sat,sun'}, (2024, 1, 1, 0, 0),
     ['2024-01-06 09:00', '2024-01-07 09:00', '2024-01-13 09:00']),
    # month ends
    ({'minute': 0, 'hour': 0, 'day_of_month': 31}, (2024, 1, 31, 0, 0),
     ['2024-03-31 00:00', '2024-05-31 00:00', '2024-07-31 00:00', '2024-08-31 00:00']),
    ({'minute': 0, 'hour': 0, 'day_of_month': 30}, (2024, 1, 30, 0, 0), ['2024-03-30 00:00', '2024-04-30 00:00']),
    ({'minute': 59, 'hour': 23, 'day_of_month': '28-31'}, (2023, 2, 27, 0, 0),
     ['2023-02-28 23:59', '2023-03-28 23:59', '2023-03-29 23:59']),
    # leap years and Feb 29
    ({'minute': 0, 'hour': 0, 'day_of_month': 29, 'month_of_year': 2}, (2024, 3, 1, 0, 0),
     ['2028-02-29 00:00', '2032-02-29 00:00']),
    ({'minute': 0, 'hour': 0, 'day_of_month': 29, 'month_of_year': 2}, (2096, 3, 1, 0, 0),
     ['2104-02-29 00:00']),                              # 2100 is not a leap year
    ({'minute': 0, 'hour': 0, 'day_of_month': 29, 'month_of_year': 2, 'day_of_week': 'mon'}, (2016, 3, 1),
     ['2044-02-29 00:00']),                              # a Monday Feb 29 comes every 28 years
    ({'minute': 0, 'hour': 0, 'day_of_month': '29-31', 'month_of_year': 2}, (2023, 1, 1),
     ['2024-02-29 00:00', '2028-02-29 00:00']),
    # day of month AND day of week (Celery's rule, not Vixie cron's OR)
    ({'minute': 0, 'hour': 0, 'day_of_month': 1, 'day_of_week': 'mon'}, (2024, 1, 2),
     ['2024-04-01 00:00', '2024-07-01 00:00']),
    ({'minute': '*/7', 'hour': '22-2'}, (2024, 1, 1, 2, 56), ['2024-01-01 22:00', '2024-01-01 22:07']),
])
def test_next_fire_utc(fields: dict[str, Any], after: tuple[int, ...], expected: list[str]) -> None:
    found = fires(crontab(**fields), datetime(*after, tzinfo=UTC), len(expected))
    assert [t.strftime('%Y-%m-%d %H:%M') for t in found] == expected
    assert all(t.tzinfo is UTC for t in found)


def test_naive_datetimes_are_utc() -> None:
    c = crontab(minute=0, app=zone_app('Europe/Berlin'))
    assert c.next_fire(datetime(2024, 1, 1, 12, 30)) == datetime(2024, 1, 1, 13, 0, tzinfo=UTC)


# --- DST --------------------------------------------------------------------------------------
# Europe/Berlin: 2024-03-31 02:00 CET -> 03:00 CEST; 2024-10-27 03:00 CEST -> 02:00 CET.
# America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
DST_CASES = [
    # every-hour jobs follow the clock: the skipped hour does not fire, the repeated one fires twice
    ('Europe/Berlin', {'minute': '*/30'}, (2024, 3, 31, 1, 0), 4,
     ['2024-03-31 01:30 +0100', '2024-03-31 03:00 +0200', '2024-03-31 03:30 +0200', '2024-03-31 04:00 +0200']),
    ('Europe/Berlin', {'minute': 30}, (2024, 3, 31, 0, 30), 3,
     ['2024-03-31 01:30 +0100', '2024-03-31 03:30 +0200', '2024-03-31 04:30 +0200']),
    ('Europe/Berlin', {'minute': '*/30'}, (2024, 10, 27, 1, 45), 6,
     ['2024-10-27 02:00 +0200', '2024-10-27 02:30 +0200', '2024-10-27 02:00 +0100', '2024-10-27 02:30 +0100',
      '2024-10-27 03:00 +0100', '2024-10-27 03:30 +0100']),
    ('Europe/Berlin', {'minute': 0}, (2024, 10, 27, 0, 30), 4,
     ['2024-10-27 01:00 +0200', '2024-10-27 02:00 +0200', '2024-10-27 02:00 +0100', '2024-10-27 03:00 +0100']),
    # time-of-day jobs fire once per day: shifted out of the gap, first occurrence in the fold
    ('Europe/Berlin', {'minute': 30, 'hour': 2}, (2024, 3, 30, 12, 0), 3,
     ['2024-03-31 03:00 +0200', '2024-04-01 02:30 +0200', '2024-04-02 02:30 +0200']),
    ('Europe/Berlin', {'minute': '0,30', 'hour': '1-3'}, (2024, 3, 31, 0, 0), 5,
     ['2024-03-31 01:00 +0100', '2024-03-31 01:30 +0100', '2024-03-31 03:00 +0200', '2024-03-31 03:30 +0200',
      '2024-04-01 01:00 +0200']),
    ('Europe/Berlin', {'minute': 30, 'hour': 2}, (2024, 10, 26, 12, 0), 3,
     ['2024-10-27 02:30 +0200', '2024-10-28 02:30 +0100', '2024-10-29 02:30 +0100']),
    ('Europe/Berlin', {'minute': 0, 'hour': '*/2'}, (2024, 10, 27, 0, 30), 3,
     ['2024-10-27 02:00 +0200', '2024-10-27 04:00 +0100', '2024-10-27 06:00 +0100']),
    ('America/New_York', {'minute': 30, 'hour': 2}, (2024, 3, 9, 12, 0), 3,
     ['2024-03-10 03:00 -0400', '2024-03-11 02:30 -0400', '2024-03-12 02:30 -0400']),
    ('America/New_York', {'minute': 30, 'hour': 1}, (2024, 11, 2, 12, 0), 3,
     ['2024-11-03 01:30 -0400', '2024-11-04 01:30 -0500', '2024-11-05 01:30 -0500']),
    ('America/New_York', {'minute': '*/20'}, (2024, 11, 3, 0, 50), 7,
     ['2024-11-03 01:00 -0400', '2024-11-03 01:20 -0400', '2024-11-03 01:40 -0400', '2024-11-03 01:00 -0500',
      '2024-11-03 01:20 -0500', '2024-11-03 01:40 -0500', '2024-11-03 02:00 -0500']),
    ('America/New_York', {'minute': 0}, (2024, 3, 10, 0, 30), 3,
     ['2024-03-10 01:00 -0500', '2024-03-10 03:00 -0400', '2024-03-10 04:00 -0400']),
    # Lord Howe moves its clock by half an hour (02:00 -> 02:30 in October, 02:00 -> 01:30 in April)
    ('Australia/Lord_Howe', {'minute': 15, 'hour': 2}, (2024, 10, 5, 12, 0), 2,
     ['2024-10-06 02:30 +1100', '2024-10-07 02:15 +1100']),
    ('Australia/Lord_Howe', {'minute': 45}, (2024, 4, 7, 0, 50), 3,
     ['2024-04-07 01:45 +1100', '2024-04-07 01:45 +1030', '2024-04-07 02:45 +1030']),
]


@pytest.mark.parametrize('zone, fields, after, count, expected', DST_CASES)
def test_dst(zone: str, fields: dict[str, Any], after: tuple[int, ...], count: int, expected: list[str]) -> None:
    tz = ZoneInfo(zone)
    c = crontab(**fields, app=zone_app(zone))
    found = fires(c, datetime(*after, tzinfo=tz), count)
    assert local(found, tz) == expected
    assert found == sorted(set(found)), 'fire times must strictly increase'


def test_dst_from_inside_the_fold() -> None:
    """Starting in the second occurrence of the repeated hour: a time-of-day job already had
    its run (in the first occurrence); an every-hour job still has the second one ahead."""
    app = zone_app('Europe/Berlin')
    second_0210 = at(BERLIN, 2024, 10, 27, 2, 10, fold=1)   # 01:10 UTC
    assert local([crontab(minute=30, hour=2, app=app).next_fire(second_0210)], BERLIN) == ['2024-10-28 02:30 +0100']
    assert local([crontab(minute=30, app=app).next_fire(second_0210)], BERLIN) == ['2024-10-27 02:30 +0100']
    first_0240 = at(BERLIN, 2024, 10, 27, 2, 40)             # 00:40 UTC
    assert local([crontab(minute=10, app=app).next_fire(first_0240)], BERLIN) == ['2024-10-27 02:10 +0100']


def test_hourly_job_keeps_its_spacing_through_both_changes() -> None:
    app = zone_app('Europe/Berlin')
    for start in (datetime(2024, 3, 30, 20, tzinfo=UTC), datetime(2024, 10, 26, 20, tzinfo=UTC)):
        found = fires(crontab(minute=0, app=app), start, 24)
        assert {b - a for a, b in zip(found, found[1:])} == {timedelta(hours=1)}


@pytest.mark.parametrize('zone', ['UTC', 'Europe/Berlin', 'America/New_York'])
@pytest.mark.parametrize('fields', [
    {}, {'minute': '*/15'}, {'minute': 0, 'hour': '*/3'}, {'minute': 30, 'hour': 7, 'day_of_week': 'mon-fri'},
    {'minute': 0, 'hour': 0, 'day_of_month': 1}, {'minute': 0, 'hour': 0, 'day_of_month': 31},
    {'minute': 0, 'hour': 12, 'day_of_month': 29, 'month_of_year': 2},
    {'minute': 59, 'hour': 23, 'day_of_month': '28-31'},
    {'minute': '5,35', 'hour': '1-10/2', 'month_of_year': 'jan,jun-aug'}, {'minute': '*/7', 'hour': '22-2'},
    {'minute': 0, 'hour': 0, 'day_of_week': 'sun', 'day_of_month': '1-7'},
])
def test_agrees_with_celery_away_from_dst_changes(zone: str, fields: dict[str, Any]) -> None:
    """Celery 5.7's crontab is right except near DST changes: compare on random instants at
    least a day away from one."""
    from celery import Celery
    from celery.schedules import crontab as celery_crontab
    tz = ZoneInfo(zone)
    capp = Celery(set_as_current=False)
    capp.conf.timezone = zone
    ours = crontab(**fields, app=zone_app(zone))
    rng = random.Random(f'{zone}{fields}')
    checked = 0
    while checked < 25:
        last = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(3 * 365 * 86400))
        expected = ours.next_fire(last)
        if any(_offset(t - timedelta(days=1), tz) != _offset(t + timedelta(days=1), tz) for t in (last, expected)):
            continue
        theirs = celery_crontab(**fields, app=capp, nowfun=lambda last=last: last.astimezone(tz))
        assert last + theirs.remaining_estimate(last.astimezone(tz)) == expected, (last, expected)
        checked += 1


def _offset(instant: datetime, tz: Any) -> Any:
    return instant.astimezone(tz).utcoffset()


# --- property tests against a brute-force minute scan --------------------------------------------
# DST changes per zone (UTC instants), so the properties are exercised where it matters.
TRANSITIONS = {
    'UTC': [datetime(2024, 3, 31, 1, tzinfo=UTC)],
    'Europe/Berlin': [datetime(2024, 3, 31, 1, tzinfo=UTC), datetime(2024, 10, 27, 1, tzinfo=UTC)],
    'America/New_York': [datetime(2024, 3, 10, 7, tzinfo=UTC), datetime(2024, 11, 3, 6, tzinfo=UTC)],
    'Australia/Lord_Howe': [datetime(2024, 10, 5, 15, 30, tzinfo=UTC), datetime(2024, 4, 6, 15, tzinfo=UTC)],
    'America/Sao_Paulo': [datetime(2018, 11, 4, 3, tzinfo=UTC), datetime(2019, 2, 17, 2, tzinfo=UTC)],  # at midnight
}
ZONES = sorted(TRANSITIONS)


def oracle_first_fire(c: crontab, tz: Any, after: datetime, window: timedelta) -> datetime | None:
    """The first fire time in ``(after, after + window]``, found by scanning every UTC minute:
    the module's DST policy restated instant by instant (independent of the engine)."""
    every_hour = len(c.hour) == 24
    t = after.replace(second=0, microsecond=0)
    end = after + window
    prev_wall = (t - timedelta(minutes=1)).astimezone(tz).replace(tzinfo=None)
    while t <= end:
        wall = t.astimezone(tz).replace(tzinfo=None, fold=0)
        fire = False
        if c.matches(wall):
            # a wall time shown twice fires twice for every-hour jobs, else at its first showing
            first_showing = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
            fire = every_hour or first_showing == t
        if not fire and not every_hour and wall - prev_wall > timedelta(minutes=1):
            # the clock jumped forward at t: skipped wall times that match fire now
            skipped = prev_wall + timedelta(minutes=1)
            while skipped < wall and not fire:
                fire = c.matches(skipped)
                skipped += timedelta(minutes=1)
        if fire and t > after:
            return t
        prev_wall = wall
        t += timedelta(minutes=1)
    return None


def field(lo: int, hi: int) -> st.SearchStrategy[set[int]]:
    return st.one_of(st.just(set(range(lo, hi + 1))),
                     st.sets(st.integers(lo, hi), min_size=1, max_size=6))


@st.composite
def dense_crontabs(draw: Any) -> crontab:
    """Crontabs that fire at least once a week (so an eight-day scan always finds the next)."""
    return crontab(minute=draw(field(0, 59)), hour=draw(field(0, 23)), day_of_week=draw(field(0, 6)))


@st.composite
def afters(draw: Any, zone: str = 'UTC') -> datetime:
    """Mostly instants within hours of one of ``zone``'s DST changes, else anywhere in 8 years."""
    if draw(st.integers(0, 3)):
        base = draw(st.sampled_from(TRANSITIONS[zone]))
        return base + timedelta(seconds=draw(st.integers(-5 * 3600, 5 * 3600)))
    return datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 8 * 365 * 86400)),
                                                          microseconds=draw(st.integers(0, 999999)))


@st.composite
def zone_and_after(draw: Any) -> tuple[str, datetime]:
    zone = draw(st.sampled_from(ZONES))
    return zone, draw(afters(zone))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=dense_crontabs(), where=zone_and_after())
def test_property_next_fire_is_the_first_oracle_fire(c: crontab, where: tuple[str, datetime]) -> None:
    """The next fire time is after ``after``, matches the fields (or is the end of a gap that
    swallowed a matching time), and no due minute is skipped: it equals the first fire a
    minute-by-minute scan finds."""
    zone, after = where
    tz = ZoneInfo(zone)
    c.app = SimpleNamespace(timezone=tz, conf={'timezone': zone})
    nxt = c.next_fire(after)
    assert nxt > after
    assert nxt.second == 0 and nxt.microsecond == 0
    expected = oracle_first_fire(c, tz, after, timedelta(days=8))
    assert expected is not None, 'a dense crontab fires within eight days'
    assert nxt == expected
    wall = nxt.astimezone(tz).replace(tzinfo=None)
    gap_end = _offset(nxt - timedelta(minutes=1), tz) != _offset(nxt, tz)
    assert c.matches(wall) or gap_end


@settings(max_examples=200, deadline=None)
@given(minute=field(0, 59), hour=field(0, 23), dow=field(0, 6), dom=field(1, 31), month=field(1, 12),
       after=st.datetimes(datetime(1990, 1, 1), datetime(2090, 1, 1)))
def test_property_any_crontab_in_utc(minute: set[int], hour: set[int], dow: set[int], dom: set[int],
                                     month: set[int], after: datetime) -> None:
    """Any crontab, in UTC: the next fire is the first matching minute after ``after`` (a
    day-by-day scan over up to 30 years)."""
    try:
        c = crontab(minute=minute, hour=hour, day_of_week=dow, day_of_month=dom, month_of_year=month)
    except ValueError:
        return  # a day that never occurs in those months
    after = after.replace(tzinfo=UTC)
    expected = None
    day = after.date()
    while expected is None and day.year <= after.year + 30:
        if day.month in month and day.day in dom and day.isoweekday() % 7 in dow:
            for h in sorted(hour):
                for m in sorted(minute):
                    candidate = datetime(day.year, day.month, day.day, h, m, tzinfo=UTC)
                    if candidate > after:
                        expected = candidate
                        break
                if expected:
                    break
        day += timedelta(days=1)
    if expected is None:
        with pytest.raises(ValueError):  # no such date for a long time: a Monday Feb 29 in 2100...
            c.next_fire(after + timedelta(days=400 * 366))
        return
    assert c.next_fire(after) == expected


@settings(max_examples=100, deadline=None)
@given(seconds=st.floats(0.001, 10 * 86400), where=zone_and_after())
def test_property_interval_is_elapsed_time(seconds: float, where: tuple[str, datetime]) -> None:
    zone, after = where
    s = schedule(timedelta(seconds=seconds), app=zone_app(zone))
    assert s.next_fire(after) - after == timedelta(seconds=seconds)
    assert s.next_fire(after.astimezone(ZoneInfo(zone))) == s.next_fire(after)


# --- is_due and remaining_estimate --------------------------------------------------------------
class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_crontab_is_due() -> None:
    clock = Clock(datetime(2024, 1, 1, 12, 14, 30, tzinfo=UTC))
    c = crontab(minute='*/15', nowfun=clock)
    last = datetime(2024, 1, 1, 12, 0, 0, 100, tzinfo=UTC)
    assert c.is_due(last) == schedstate(False, 30.0)
    assert c.remaining_estimate(last) == timedelta(seconds=30)
    clock.now = datetime(2024, 1, 1, 12, 15, 0, 500000, tzinfo=UTC)
    assert c.is_due(last) == schedstate(True, 899.5)
    assert c.remaining_estimate(last) == timedelta(seconds=-0.5)
    assert c.is_due(clock.now) == schedstate(False, 899.5)


def test_crontab_is_due_across_dst_in_app_zone() -> None:
    app = zone_app('Europe/Berlin')
    clock = Clock(at(BERLIN, 2024, 3, 31, 1, 59))
    c = crontab(minute=30, hour=2, nowfun=clock, app=app)
    last = at(BERLIN, 2024, 3, 30, 2, 30)
    assert c.is_due(last) == schedstate(False, 60.0)  # 03:00 CEST is one real minute after 01:59 CET
    clock.now = at(BERLIN, 2024, 3, 31, 3, 0)
    assert c.is_due(last).is_due


def test_cron_starting_deadline() -> None:
    app = zone_app(None, beat_cron_starting_deadline=120)
    clock = Clock(datetime(2024, 1, 1, 12, 1, 30, tzinfo=UTC))
    c = crontab(minute=0, nowfun=clock, app=app)
    last = datetime(2024, 1, 1, 11, 0, 0, tzinfo=UTC)
    assert c.is_due(last).is_due                       # 12:00 is 90 s old: inside the deadline
    clock.now = datetime(2024, 1, 1, 12, 5, 0, tzinfo=UTC)
    assert c.is_due(last) == schedstate(False, 3300.0)  # too old: wait for 13:00


def test_interval_is_due_and_repr_like_celery() -> None:
    from celery.schedules import schedule as celery_schedule
    clock = Clock(datetime(2024, 1, 1, 12, 0, 5, tzinfo=UTC))
    s = schedule(10, nowfun=clock)
    last = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert s.is_due(last) == schedstate(False, 5.0)
    clock.now = datetime(2024, 1, 1, 12, 0, 10, tzinfo=UTC)
    assert s.is_due(last) == schedstate(True, 10.0)
    for value in (10, 1, 3600, 0.5, 90061, timedelta(minutes=5)):
        assert repr(schedule(value)) == repr(celery_schedule(value))
    assert schedule(10).seconds == 10.0 and schedule(10).human_seconds == '10.00 seconds'


@pytest.mark.parametrize('run_every, last, expected', [
    (timedelta(hours=1), (2024, 1, 1, 12, 20), (2024, 1, 1, 13, 0)),
    (timedelta(minutes=5), (2024, 1, 1, 12, 20, 40), (2024, 1, 1, 12, 25)),
    (timedelta(seconds=10), (2024, 1, 1, 12, 20, 40, 500), (2024, 1, 1, 12, 20, 50)),
    (timedelta(days=1), (2024, 1, 1, 12, 20), (2024, 1, 2, 0, 0)),
    (timedelta(days=2), (2024, 1, 31, 23, 0), (2024, 2, 2, 0, 0)),
])
def test_relative_interval_like_celery(run_every: timedelta, last: tuple[int, ...],
                                       expected: tuple[int, ...]) -> None:
    from celery import Celery
    from celery.schedules import schedule as celery_schedule
    start = datetime(*last, tzinfo=UTC)
    ours = schedule(run_every, relative=True, app=zone_app('UTC'))
    assert ours.next_fire(start) == datetime(*expected, tzinfo=UTC)
    capp = Celery(set_as_current=False)
    capp.conf.timezone = 'UTC'
    theirs = celery_schedule(run_every, relative=True, app=capp, nowfun=lambda: start)
    assert start + theirs.remaining_estimate(start) == datetime(*expected, tzinfo=UTC)


def test_relative_daily_interval_fires_at_local_midnight() -> None:
    s = schedule(timedelta(days=1), relative=True, app=zone_app('Europe/Berlin'))
    found = fires(s, at(BERLIN, 2024, 3, 30, 15, 0), 3)
    assert local(found, BERLIN) == ['2024-03-31 00:00 +0100', '2024-04-01 00:00 +0200', '2024-04-02 00:00 +0200']


def test_app_zone_and_enable_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    assert crontab().tz is UTC
    assert crontab(app=zone_app('Europe/Berlin')).tz == BERLIN
    assert crontab(app=zone_app(None)).tz == timezone.utc
    monkeypatch.setenv('TZ', 'America/New_York')
    local_app = zone_app(None, enable_utc=False)
    c = crontab(minute=0, hour=9, app=local_app)
    assert c.tz == NEW_YORK
    assert c.next_fire(datetime(2024, 7, 1, tzinfo=UTC)) == datetime(2024, 7, 1, 13, 0, tzinfo=UTC)
    assert not c.utc_enabled
    assert crontab(app=zone_app('Europe/Berlin', enable_utc=False)).tz == BERLIN


def test_now_comes_from_nowfun_then_app() -> None:
    fixed = datetime(2024, 1, 1, tzinfo=UTC)
    assert crontab(nowfun=lambda: fixed).now() == fixed
    app = SimpleNamespace(timezone=UTC, now=lambda: fixed)
    assert schedule(1, app=app).now() == fixed
    assert abs(schedule(1).now() - datetime.now(UTC)) < timedelta(seconds=5)


def test_maybe_schedule() -> None:
    app = zone_app('Europe/Berlin')
    assert maybe_schedule(None) is None
    s = maybe_schedule(30, app=app)
    assert isinstance(s, schedule) and s.run_every == timedelta(seconds=30) and s.app is app
    assert maybe_schedule(timedelta(minutes=1), relative=True).relative
    c = crontab()
    assert maybe_schedule(c, app=app) is c and c.app is app


def test_schedules_pickle() -> None:
    import pickle
    for s in (schedule(10, relative=True), crontab(minute='*/5', day_of_week='mon-fri'), solar('sunset', 52.5, 13.4)):
        assert pickle.loads(pickle.dumps(s)) == s


# --- solar ---------------------------------------------------------------------------------------
# (event, lat, lon, after (UTC date), next event (UTC)): computed with Celery 5.7's solar on
# ephem 4.2.1 (kept here so the comparison runs without ephem installed).
EPHEM_REFERENCE = [
    ('sunrise', 52.52, 13.405, (2024, 6, 21), (2024, 6, 21, 2, 43, 14)),
    ('sunset', 52.52, 13.405, (2024, 6, 21), (2024, 6, 21, 19, 33, 19)),
    ('solar_noon', 52.52, 13.405, (2024, 6, 21), (2024, 6, 21, 11, 8, 17)),
    ('dawn_civil', 52.52, 13.405, (2024, 6, 21), (2024, 6, 21, 1, 52, 57)),
    ('dusk_nautical', 52.52, 13.405, (2024, 6, 21), (2024, 6, 21, 21, 47, 1)),
    ('sunrise', 40.7128, -74.006, (2024, 1, 1), (2024, 1, 1, 12, 19, 59)),
    ('sunset', 40.7128, -74.006, (2024, 1, 1), (2024, 1, 1, 21, 39, 0)),
    ('dawn_astronomical', -33.87, 151.21, (2024, 3, 15), (2024, 3, 15, 18, 31, 24)),
    ('dusk_astronomical', -33.87, 151.21, (2024, 3, 15), (2024, 3, 15, 9, 36, 49)),
    ('sunrise', 0.0, 0.0, (2024, 9, 22), (2024, 9, 22, 5, 49, 17)),
    ('dusk_civil', 64.13, -21.9, (2024, 12, 21), (2024, 12, 21, 16, 48, 54)),
    ('dawn_nautical', 35.68, 139.69, (2024, 8, 1), (2024, 8, 1, 18, 47, 57)),
    ('sunset', -54.8, -68.3, (2024, 12, 1), (2024, 12, 1, 0, 48, 25)),
]


@pytest.mark.parametrize('event, lat, lon, after, expected', EPHEM_REFERENCE)
def test_solar_matches_ephem(event: str, lat: float, lon: float, after: tuple[int, ...],
                             expected: tuple[int, ...]) -> None:
    found = solar(event, lat, lon).next_fire(datetime(*after, tzinfo=UTC))
    assert abs(found - datetime(*expected, tzinfo=UTC)) <= timedelta(seconds=60)


def test_solar_agrees_with_celery_and_ephem() -> None:
    """Live comparison with Celery's solar where ephem is installed: within a minute, away from
    the days an event starts or stops happening (near the poles those may differ by a day)."""
    pytest.importorskip('ephem')
    from celery import Celery
    from celery.schedules import solar as celery_solar
    capp = Celery(set_as_current=False)
    capp.conf.timezone = 'UTC'
    for lat, lon in ((52.52, 13.405), (40.7128, -74.006), (-33.87, 151.21), (0.0, 0.0), (35.68, 139.69)):
        for event in sorted(solar._all_events):
            for month in (1, 4, 7, 10):
                last = datetime(2024, month, 5, 7, 13, tzinfo=UTC)
                theirs = celery_solar(event, lat, lon, app=capp, nowfun=lambda last=last: last)
                expected = last + theirs.remaining_estimate(last)
                if lat > 50 and month == 7 and 'astronomical' in event:
                    continue  # no astronomical night in Berlin's summer
                assert abs(solar(event, lat, lon).next_fire(last) - expected) <= timedelta(seconds=60), \
                    (event, lat, lon, last)


def test_solar_event_none_when_it_does_not_happen() -> None:
    assert solar_event('dawn_astronomical', date(2024, 6, 21), 52.52, 13.405) is None
    assert solar_event('sunrise', date(2024, 6, 21), 78.2, 15.6) is None    # Svalbard, midnight sun
    assert solar_event('solar_noon', date(2024, 6, 21), 78.2, 15.6) is not None


def test_solar_next_fire_and_is_due() -> None:
    s = solar('sunrise', 40.7128, -74.0060)       # New York: 07:20 EST on 2024-01-01
    first = s.next_fire(datetime(2024, 1, 1, tzinfo=UTC))
    assert abs(first - at(NEW_YORK, 2024, 1, 1, 7, 20).astimezone(UTC)) <= timedelta(minutes=2)
    second = s.next_fire(first)
    assert timedelta(hours=23, minutes=58) < second - first < timedelta(hours=24, minutes=2)
    clock = Clock(first + timedelta(seconds=1))
    s.nowfun = clock
    assert s.is_due(first - timedelta(hours=1)).is_due
    assert not s.is_due(first).is_due


def test_solar_polar_day_skips_to_the_first_sunset() -> None:
    # Tromsø (69.65 N): midnight sun from about 20 May to 22 July
    s = solar('sunset', 69.65, 18.96)
    found = s.next_fire(datetime(2024, 6, 1, tzinfo=UTC))
    assert datetime(2024, 7, 20, tzinfo=UTC) < found < datetime(2024, 7, 26, tzinfo=UTC)


@pytest.mark.parametrize('args', [('noon', 0, 0), ('sunrise', 91, 0), ('sunrise', -90.5, 0), ('sunset', 0, 181)])
def test_solar_rejects(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        solar(*args)


def test_solar_repr() -> None:
    assert repr(solar('sunset', 52.5, 13.4)) == '<solar: sunset at latitude 52.5, longitude: 13.4>'
