"""Tests for pbq.workhours: calendar parsing and work-time decisions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbq.errors import PbqError
from pbq.workhours import (
    DEFAULT_CALENDAR,
    Calendar,
    parse_calendar,
    parse_workdays,
    parse_workhours,
)

# 2024-01-01 is a Monday, so day offsets are weekdays: 0=Mon .. 6=Sun, 7=next Mon.
_MONDAY = datetime(2024, 1, 1)
DAYS = {"Mon": 0, "Tue": 1, "Wed": 2, "Thu": 3, "Fri": 4, "Sat": 5, "Sun": 6, "Mon+1": 7}


def at(day: str, hhmm: str, second: int = 0) -> datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return _MONDAY + timedelta(days=DAYS[day], hours=h, minutes=m, seconds=second)


WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri"]


@pytest.mark.parametrize(
    ("day", "hhmm", "work"),
    [
        ("Mon", "07:59", False),
        ("Mon", "08:00", True),
        ("Wed", "12:00", True),
        ("Fri", "19:59", True),
        ("Fri", "20:00", False),
        ("Tue", "00:00", False),
        ("Thu", "23:59", False),
        ("Sat", "12:00", False),
        ("Sun", "08:00", False),
    ],
)
def test_default_calendar(day: str, hhmm: str, work: bool) -> None:
    assert DEFAULT_CALENDAR.is_work_time(at(day, hhmm)) is work
    assert parse_calendar(WEEKDAYS, "08:00-20:00") == DEFAULT_CALENDAR


def test_seconds_do_not_leak_past_the_boundary() -> None:
    assert DEFAULT_CALENDAR.is_work_time(at("Mon", "19:59", 59))
    assert not DEFAULT_CALENDAR.is_work_time(at("Mon", "07:59", 59))


def test_aware_datetimes_use_their_wall_clock() -> None:
    when = datetime(2024, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert DEFAULT_CALENDAR.is_work_time(when)


@pytest.mark.parametrize(("day", "hhmm"), [("Mon", "00:00"), ("Wed", "12:34"), ("Sun", "23:59")])
def test_all_day_every_day(day: str, hhmm: str) -> None:
    cal = parse_calendar(
        ["Mon", "tue", "WED", "Thursday", "friday", "Sat", "SUNDAY"], "00:00-24:00"
    )
    assert (cal.start, cal.end) == (0, 1440)
    assert cal.is_work_time(at(day, hhmm))
    assert cal.describe() == "Mon-Sun 00:00-24:00"


@pytest.mark.parametrize(("day", "hhmm"), [("Mon", "12:00"), ("Sat", "12:00"), ("Sun", "23:59")])
def test_no_workdays_is_never_work_time(day: str, hhmm: str) -> None:
    cal = parse_calendar([], "00:00-24:00")
    assert not cal.is_work_time(at(day, hhmm))
    assert cal.describe() == "no workdays 00:00-24:00"


# Night shift starting on weekdays: the shift belongs to the day it starts on.
NIGHT = parse_calendar(WEEKDAYS, "20:00-08:00")


@pytest.mark.parametrize(
    ("day", "hhmm", "work"),
    [
        ("Mon", "00:00", False),  # Sun evening is not a shift start
        ("Mon", "07:59", False),
        ("Mon", "12:00", False),
        ("Mon", "19:59", False),
        ("Mon", "20:00", True),
        ("Tue", "07:59", True),  # tail of Monday's shift
        ("Tue", "08:00", False),
        ("Fri", "20:00", True),
        ("Fri", "23:59", True),
        ("Sat", "00:00", True),  # tail of Friday's shift
        ("Sat", "07:59", True),
        ("Sat", "08:00", False),
        ("Sat", "20:00", False),
        ("Sun", "03:00", False),
        ("Sun", "20:00", False),
        ("Mon+1", "03:00", False),
    ],
)
def test_wrap_around(day: str, hhmm: str, work: bool) -> None:
    assert NIGHT.is_work_time(at(day, hhmm)) is work


def test_wrap_around_sunday_shift_reaches_monday_morning() -> None:
    cal = parse_calendar(["Sun"], "22:00-06:00")
    assert cal.is_work_time(at("Sun", "22:00"))
    assert cal.is_work_time(at("Mon+1", "05:59"))
    assert not cal.is_work_time(at("Mon+1", "06:00"))
    assert not cal.is_work_time(at("Sun", "05:00"))  # Saturday is no workday
    assert not cal.is_work_time(at("Tue", "05:00"))


def test_until_midnight() -> None:
    cal = parse_calendar(["Mon"], "20:00-00:00")
    assert (cal.start, cal.end) == (1200, 1440)
    assert cal.is_work_time(at("Mon", "23:59"))
    assert not cal.is_work_time(at("Tue", "00:00"))


@pytest.mark.parametrize(
    ("workdays", "workhours", "text"),
    [
        (WEEKDAYS, "08:00-20:00", "Mon-Fri 08:00-20:00"),
        (["Sat", "Sun"], "9:30-17:00", "Sat,Sun 09:30-17:00"),
        (["Mon", "Wed", "Fri"], "08:00-20:00", "Mon,Wed,Fri 08:00-20:00"),
        (["Mon-Wed", "Sat"], "08:00-20:00", "Mon-Wed,Sat 08:00-20:00"),
        (WEEKDAYS, "20:00-08:00", "Mon-Fri 20:00-08:00 (overnight)"),
    ],
)
def test_describe(workdays: list[str], workhours: str, text: str) -> None:
    assert parse_calendar(workdays, workhours).describe() == text


@pytest.mark.parametrize(
    ("workdays", "expected"),
    [
        (["Mon-Fri"], {0, 1, 2, 3, 4}),
        (["Fri-Mon"], {4, 5, 6, 0}),
        (["sat", "Saturday", "SAT"], {5}),
        ([" Tue "], {1}),
        ("Mon, Tue", {0, 1}),
        ("", set()),
        ((), set()),
    ],
)
def test_parse_workdays(workdays: list[str] | str, expected: set[int]) -> None:
    assert parse_workdays(workdays) == frozenset(expected)


@pytest.mark.parametrize(
    ("workdays", "workhours", "message"),
    [
        (WEEKDAYS, "8-20", "pbq.toml: [schedule] workhours: expected 'HH:MM-HH:MM', got '8-20'"),
        (WEEKDAYS, "", "expected 'HH:MM-HH:MM', got ''"),
        (WEEKDAYS, "08:00", "expected 'HH:MM-HH:MM'"),
        (WEEKDAYS, "08:00-20:00-22:00", "expected 'HH:MM-HH:MM'"),
        (WEEKDAYS, "08:60-20:00", "no such time of day"),
        (WEEKDAYS, "24:00-08:00", "no such time of day"),
        (WEEKDAYS, "08:00-24:01", "no such time of day"),
        (WEEKDAYS, "08:00-25:00", "no such time of day"),
        (WEEKDAYS, "\u06608:00-20:00", "expected 'HH:MM-HH:MM'"),
        (WEEKDAYS, "08:00-08:00", "start and end are the same"),
        (WEEKDAYS, "00:00-00:00", "start and end are the same"),
        (WEEKDAYS, 800, "expected 'HH:MM-HH:MM', got 800"),
        (
            ["Mon", "Funday"],
            "08:00-20:00",
            "[schedule] workdays: unknown day 'Funday'; expected one of Mon,",
        ),
        (["Mo"], "08:00-20:00", "unknown day 'Mo'"),
        (["Mon-"], "08:00-20:00", "unknown day ''"),
        (["Mon", 3], "08:00-20:00", "[schedule] workdays: expected a day name, got 3"),
        (5, "08:00-20:00", "[schedule] workdays: expected a list of day names, got 5"),
    ],
)
def test_parse_calendar_errors(workdays: object, workhours: object, message: str) -> None:
    with pytest.raises(PbqError) as info:
        parse_calendar(workdays, workhours, "pbq.toml")  # type: ignore[arg-type]
    assert str(info.value).startswith("pbq.toml: [schedule] ")
    assert message in str(info.value)


def test_parse_workhours_values() -> None:
    assert parse_workhours(" 7:05-19:30 ") == (425, 1170)


@pytest.mark.parametrize(
    ("workdays", "start", "end"),
    [({7}, 0, 60), ({0}, -1, 60), ({0}, 0, 0), ({0}, 60, 60), ({0}, 1440, 60), ({0}, 0, 1441)],
)
def test_calendar_rejects_nonsense(workdays: set[int], start: int, end: int) -> None:
    with pytest.raises(ValueError):
        Calendar(frozenset(workdays), start, end)


# --- properties ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=5), st.text(max_size=20))
def test_fuzz_parse_calendar(workdays: list[str], workhours: str) -> None:
    try:
        cal = parse_calendar(workdays, workhours, "fuzz")
    except PbqError as e:
        assert str(e).startswith("fuzz: [schedule] ")
        return
    assert 0 <= cal.start < 1440 and 0 < cal.end <= 1440


_HOURS = st.builds(
    "{:02d}:{:02d}-{:02d}:{:02d}".format,
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 25),
    st.integers(0, 61),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["Mon", "tue", "Wednesday", "Sun", "Fri-Mon", "x", ""]), max_size=4),
    _HOURS,
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_fuzz_is_work_time_matches_definition(
    workdays: list[str], hours: str, when: datetime
) -> None:
    try:
        cal = parse_calendar(workdays, hours, "fuzz")
    except PbqError as e:
        assert str(e).startswith("fuzz: [schedule] ")
        return
    # Reference: work time iff some shift [day start, day start + length) contains `when`.
    minute = when.hour * 60 + when.minute
    length = (cal.end - cal.start) % 1440 or 1440
    expected = False
    for back in (0, 1):
        day = (when.weekday() - back) % 7
        offset = minute + back * 1440 - cal.start
        if day in cal.workdays and 0 <= offset < length:
            expected = True
    assert cal.is_work_time(when) is expected
