"""The edges of the work day: before work hours, a job in a slot above wday starts only
if its expected run time ends before the limit drops.  Pure decisions with a fake clock,
then a real scheduler driven pass by pass."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from pbqtest import hostfile_path, lines_of, proc_state, text_of, wait_for
from test_scheduler_policy_live import Clock, FakeSensors, finish, states, tick

from pbq.config import load_config
from pbq.host.edges import RETRY_AFTER
from pbq.host.loop import Scheduler, SchedulerOptions
from pbq.policy import may_start_before_work
from pbq.predict import ResourceStore, Run
from pbq.workhours import parse_calendar

pytestmark = pytest.mark.timeout(60)

OFFICE = parse_calendar(("Mon", "Tue", "Wed", "Thu", "Fri"), "08:00-20:00")
NIGHTS = parse_calendar(("Mon", "Tue", "Wed", "Thu", "Fri"), "20:00-08:00")
FRIDAY_2030 = datetime(2026, 11, 27, 20, 30)
MONDAY_0730 = datetime(2026, 11, 30, 7, 30)


@pytest.mark.parametrize(
    ("calendar", "when", "start"),
    [
        pytest.param(OFFICE, FRIDAY_2030, datetime(2026, 11, 30, 8, 0),
                     id="friday-evening-to-monday"),
        pytest.param(OFFICE, MONDAY_0730, datetime(2026, 11, 30, 8, 0), id="monday-morning"),
        pytest.param(OFFICE, datetime(2026, 11, 30, 8, 0), datetime(2026, 12, 1, 8, 0),
                     id="at-the-start-the-next-one"),
        pytest.param(NIGHTS, datetime(2026, 11, 27, 19, 0), datetime(2026, 11, 27, 20, 0),
                     id="wrapping-friday-before-the-night"),
        pytest.param(NIGHTS, datetime(2026, 11, 28, 9, 0), datetime(2026, 11, 30, 20, 0),
                     id="wrapping-saturday-after-the-friday-night"),
        pytest.param(parse_calendar(("Sat",), "22:00-06:00"), datetime(2026, 11, 30, 12, 0),
                     datetime(2026, 12, 5, 22, 0), id="wrapping-once-a-week"),
    ],
)
def test_next_start_of_work(calendar, when: datetime, start: datetime) -> None:
    assert calendar.next_start(when) == start


def test_no_workdays_means_no_edge() -> None:
    assert parse_calendar((), "08:00-20:00").next_start(FRIDAY_2030) is None


HOUR = 3600.0


@pytest.mark.parametrize(
    ("slot", "wday", "max_load", "until", "expected", "margin", "ok"),
    [
        pytest.param(2, 1, 2, 0.5 * HOUR, 1 * HOUR, 0, False, id="monday-0730-long-job-above-wday"),
        pytest.param(2, 1, 2, 0.5 * HOUR, 600, 0, True, id="monday-0730-short-job"),
        pytest.param(2, 1, 2, 0.5 * HOUR, 600, 1500, False, id="margin-makes-it-too-long"),
        pytest.param(1, 1, 2, 0.5 * HOUR, 10 * HOUR, 0, True, id="wday-slot-starts-anything"),
        pytest.param(1, 0, 2, 0.5 * HOUR, 10 * HOUR, 0, False, id="wday-0-has-no-such-slot"),
        pytest.param(2, 1.5, 4, 0.5 * HOUR, 10 * HOUR, 0, False, id="fractional-wday"),
        pytest.param(3, 1, 4, 59.5 * HOUR, 10 * HOUR, 0, True, id="friday-evening-fits-weekend"),
        pytest.param(3, 1, 4, 59.5 * HOUR, 70 * HOUR, 0, False, id="friday-evening-too-long"),
        pytest.param(3, 1, 4, 0.5 * HOUR, None, 0, True, id="no-history-starts"),
        pytest.param(3, 4, 4, 0.5 * HOUR, 10 * HOUR, 0, True, id="wday-equals-max-no-edge"),
        pytest.param(3, 1, 4, None, 10 * HOUR, 0, True, id="work-time-no-edge"),
    ],
)
def test_may_start_before_work(slot, wday, max_load, until, expected, margin, ok) -> None:
    assert may_start_before_work(slot, wday, max_load, until, expected, margin) is ok


# ---------------------------------------------------------------------- a driven scheduler


def make(tmp_path: Path, jobs: list[str], when: datetime, hosts: str = "* linux 2 1 0\n"):
    (tmp_path / "hostfile").write_text(hosts)
    jf = tmp_path / "jobfile"
    jf.write_text("".join(j + "\n" for j in jobs))
    jf.chmod(0o644)
    ResourceStore(tmp_path / "jobfile.usage").record_many(
        [Run("sleep", None, 1.0, 2 * HOUR, 0.0, True), Run("true", None, 0.0, 1.0, 0.0, True)])
    cfg = load_config(jf, environ={})
    clock = Clock(when.timestamp())
    sensors = FakeSensors()
    opts = SchedulerOptions(hostfile=tmp_path / "hostfile", jobfile=jf, host="h1", config=cfg)
    s = Scheduler(opts, sensors=sensors,  # type: ignore[arg-type]
                  clock=lambda: clock.wall, monotonic=lambda: clock.mono)
    s.startup()
    return s, clock, jf


def pending(jf: Path) -> list[str]:
    from pbq.jobfile import JobQueue

    with JobQueue(jf).transaction() as txn:
        return [pl.line.decode() for pl in txn.take(100)[0]]


def test_monday_morning_long_jobs_wait_above_wday_and_do_not_block_short_ones(
    tmp_path: Path,
) -> None:
    jobs = ["sleep 60", "sleep 61", "sleep 62", "true", "sleep 63"]
    s, clock, jf = make(tmp_path, jobs, MONDAY_0730)
    try:
        tick(s, clock)
        # slot 1 (<= wday 1) starts anything; slot 2 takes only what ends before 08:00: the
        # two-hour sleeps are held back, `true` (1 s) starts past them.
        s.log.flush()  # (`true` may have ended already: the log, not the book, says what started)
        log = text_of(hostfile_path(jf, "h1", "log")).splitlines()
        started = {ln.split(": ", 1)[1] for ln in log if " started h1." in ln}
        assert started == {"sleep 60", "true"}
        assert "work hours begin in" in text_of(hostfile_path(jf, "h1", "log"))
        claimed = [j for j in list(s.book) if j.state.value == "claimed"]
        assert not claimed, "held-back lines went back"
        assert pending(jf)[:2] == ["sleep 61", "sleep 62"], "in their order, at the front"
        # `true` ends; slot 2 is free again, but only long lines are left: nothing starts,
        # and the slot takes no lines until RETRY_AFTER has passed.  (Reaped by the runner,
        # it was reported to the scheduler: the passes below, which take no real time, see
        # its end whatever the machine's load.)
        true_pid = next(int(ln.split(" pid ")[1].split(":")[0]) for ln in log
                        if " started h1." in ln and ln.endswith(": true"))
        wait_for(lambda: proc_state(true_pid) is None, what="`true` ended and reaped")
        for _ in range(5):
            tick(s, clock)
        assert set(states(s).values()) == {"running"} and len(states(s)) == 1
        log_lines = text_of(hostfile_path(jf, "h1", "log")).count("work hours begin in")
        tick(s, clock, RETRY_AFTER / 3)
        assert text_of(hostfile_path(jf, "h1", "log")).count("work hours begin in") == log_lines
    finally:
        finish(s, clock)


def test_friday_evening_long_jobs_fill_every_slot(tmp_path: Path) -> None:
    s, clock, jf = make(tmp_path, ["sleep 60", "sleep 61"], FRIDAY_2030)
    try:
        tick(s, clock)
        assert states(s) == {1: "running", 2: "running"}  # 2 h fit into the weekend
    finally:
        finish(s, clock)


def test_a_job_without_history_starts_as_before(tmp_path: Path) -> None:
    s, clock, jf = make(tmp_path, ["sleep 60", "cat /dev/null"], MONDAY_0730)
    try:
        tick(s, clock)
        s.log.flush()
        assert text_of(hostfile_path(jf, "h1", "log")).count("started h1.") == 2, "both started"
        assert lines_of(hostfile_path(jf, "h1", "error")) == []
    finally:
        finish(s, clock)
