"""Work-hours calendar: decides whether a host's ``wday`` or ``max`` limit applies.

The default is Mon-Fri 08:00-20:00.  A span whose start is after its end
(``20:00-08:00``) wraps past midnight: the shift belongs to the day it starts
on, so with Fri as a workday Fri 20:00 - Sat 08:00 is work time, and
Mon 00:00-08:00 is work time only if Sun is a workday.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pbq.errors import PbqError

__all__ = [
    "DAY_NAMES",
    "DEFAULT_CALENDAR",
    "Calendar",
    "parse_calendar",
    "parse_workdays",
    "parse_workhours",
]

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_INDEX = {name.lower(): i for i, name in enumerate(DAY_NAMES)} | {
    name: i for i, name in enumerate(_FULL_NAMES)
}
# ASCII digits only, so exotic Unicode digits are rejected rather than parsed.
_HOURS_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})-([0-9]{1,2}):([0-9]{2})")
_DAY = 24 * 60


def _fmt_minutes(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Calendar:
    """Which days are workdays and which minutes of a day are work time.

    ``start``/``end`` are minutes after midnight; the interval is
    ``[start, end)``, and ``end == 1440`` means midnight at the end of the day.
    """

    workdays: frozenset[int]
    start: int
    end: int

    def __post_init__(self) -> None:
        # Programming errors (user input goes through parse_calendar).
        if not all(isinstance(d, int) and 0 <= d <= 6 for d in self.workdays):
            raise ValueError(f"workdays must be 0..6, got {sorted(self.workdays)}")
        if not 0 <= self.start < _DAY or not 0 < self.end <= _DAY or self.start == self.end:
            raise ValueError(f"bad work hours {self.start}-{self.end}")

    @property
    def wraps(self) -> bool:
        """True when the shift runs past midnight into the next day."""
        return self.start > self.end

    def is_work_time(self, when: datetime) -> bool:
        """Whether ``when`` (local wall-clock time) falls in work hours."""
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        if not self.wraps:
            return day in self.workdays and self.start <= minute < self.end
        if minute >= self.start:
            return day in self.workdays
        # Before ``end``: the tail of the shift that began yesterday evening.
        return minute < self.end and (day - 1) % 7 in self.workdays

    def next_start(self, when: datetime) -> datetime | None:
        """The first moment after ``when`` at which a shift begins (local wall-clock time),
        or None when there are no workdays.  Seen from outside work time, it is the moment
        the ``wday`` limit comes into force."""
        if not self.workdays:
            return None
        midnight = when.replace(hour=0, minute=0, second=0, microsecond=0)
        for days in range(8):
            day = midnight + timedelta(days=days)
            start = day + timedelta(minutes=self.start)
            if start > when and day.weekday() in self.workdays:
                return start
        return None  # unreachable: some workday is within 8 days

    def describe(self) -> str:
        """Human-readable form, e.g. ``Mon-Fri 08:00-20:00``."""
        days = _describe_days(self.workdays)
        hours = f"{_fmt_minutes(self.start)}-{_fmt_minutes(self.end)}"
        if self.wraps:
            hours += " (overnight)"
        return f"{days} {hours}"


def _describe_days(workdays: Iterable[int]) -> str:
    days = sorted(set(workdays))
    if not days:
        return "no workdays"
    runs: list[list[int]] = []
    for d in days:
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    parts: list[str] = []
    for run in runs:
        # Ranges only for 3+ days: "Sat,Sun" reads better than "Sat-Sun".
        if len(run) >= 3:
            parts.append(f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}")
        else:
            parts.extend(DAY_NAMES[d] for d in run)
    return ",".join(parts)


DEFAULT_CALENDAR = Calendar(frozenset(range(5)), 8 * 60, 20 * 60)


def _day_index(name: str, source: str) -> int:
    index = _DAY_INDEX.get(name.strip().lower())
    if index is None:
        raise PbqError(
            f"[schedule] workdays: unknown day {_show(name)}; "
            f"expected one of {', '.join(DAY_NAMES)}"
            " (or full names, or a range like Mon-Fri)",
            source,
        )
    return index


def parse_workdays(workdays: Sequence[str] | str, source: str = "config") -> frozenset[int]:
    """Day names (``Mon``, ``monday``, ranges ``Mon-Fri``) to 0=Mon..6=Sun.

    A single string is split on commas, as in ``PBQ_SCHEDULE_WORKDAYS=Mon,Tue``;
    an empty list means no day is a workday.
    """
    if isinstance(workdays, str):
        items: list[object] = [p for p in workdays.split(",") if p.strip()]
    elif isinstance(workdays, (list, tuple)):
        items = list(workdays)
    else:
        raise PbqError(
            f"[schedule] workdays: expected a list of day names, got {_show(workdays)}", source
        )
    days: set[int] = set()
    for item in items:
        if not isinstance(item, str):
            raise PbqError(f"[schedule] workdays: expected a day name, got {_show(item)}", source)
        first, dash, last = item.partition("-")
        if dash:
            a, b = _day_index(first, source), _day_index(last, source)
            # A range may wrap the weekend: Fri-Mon is Fri,Sat,Sun,Mon.
            days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
        else:
            days.add(_day_index(item, source))
    return frozenset(days)


def parse_workhours(workhours: str, source: str = "config") -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` to (start, end) minutes; ``24:00`` is allowed only as the end."""
    bad = f"[schedule] workhours: expected 'HH:MM-HH:MM', got {_show(workhours)}"
    if not isinstance(workhours, str):
        raise PbqError(bad, source)
    m = _HOURS_RE.fullmatch(workhours.strip())
    if m is None:
        raise PbqError(bad, source)
    sh, sm, eh, em = (int(g) for g in m.groups())
    if sm > 59 or em > 59 or sh > 23 or eh > 24 or (eh == 24 and em != 0):
        raise PbqError(f"[schedule] workhours: no such time of day in {_show(workhours)}", source)
    start, end = sh * 60 + sm, eh * 60 + em
    if start == end:
        raise PbqError(
            f"[schedule] workhours: start and end are the same ({_show(workhours)});"
            " use '00:00-24:00' for all day or an empty workdays list for never",
            source,
        )
    if end == 0:  # "20:00-00:00" means until midnight, not a wrap to 00:00 next day
        end = _DAY
    return start, end


def parse_calendar(workdays: Sequence[str], workhours: str, source: str = "config") -> Calendar:
    """Build a Calendar from config values; errors are PbqErrors naming ``source``."""
    days = parse_workdays(workdays, source)
    start, end = parse_workhours(workhours, source)
    return Calendar(days, start, end)
