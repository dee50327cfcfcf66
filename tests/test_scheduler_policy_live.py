"""A real scheduler driving real jobs, with fake sensors and a fake clock.

The load, the logged-in users and the free memory are what the test says; the jobs, the
signals and the files are real.  The scheduler is driven one pass at a time
(``pass_once(now)``), so each decision is checked exactly, without timing luck.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from pbqtest import hostfile, jobfile, lines_of, proc_state, wait_for

from pbq.config import load_config
from pbq.host.loop import Scheduler, SchedulerOptions
from pbq.sensors import Sensors

pytestmark = pytest.mark.timeout(60)

MONDAY_10 = datetime(2026, 11, 23, 10, 0).timestamp()  # a work hour
SATURDAY_10 = datetime(2026, 11, 28, 10, 0).timestamp()


class FakeSensors:
    def __init__(self) -> None:
        self.foreign = 0.0
        self.users = 0
        self.mem = 64 << 30
        self.real = Sensors()

    def foreign_load(self, own_cpu_seconds: float, now_mono: float) -> float:
        return self.foreign

    def sessions(self, sids):  # the own-process scan stays real
        return self.real.sessions(sids)

    def active_users(self, idle_seconds: float, now: float) -> int:
        return self.users

    def mem_available(self) -> int:
        return self.mem


class Clock:
    def __init__(self, wall: float) -> None:
        self.wall = wall
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def make(tmp_path: Path, hosts: str, jobs: list[str], when: float = SATURDAY_10, **flags: object):
    hf = hostfile(tmp_path, hosts)
    jf = jobfile(tmp_path, jobs)
    cfg = load_config(jf, flags={("scheduler", k): v for k, v in flags.items()})
    clock = Clock(when)
    sensors = FakeSensors()
    s = Scheduler(
        SchedulerOptions(hostfile=hf, jobfile=jf, host="h1", config=cfg),
        sensors=sensors,  # type: ignore[arg-type]
        clock=lambda: clock.wall,
        monotonic=lambda: clock.mono,
    )
    s.startup()
    return s, sensors, clock, jf


def tick(s: Scheduler, clock: Clock, seconds: float = 1.0) -> None:
    """One pass, then the job runner's answers to the starts it asked for (they come in
    the next pass of a running scheduler)."""
    clock.advance(seconds)
    s.pass_once(clock.wall)
    s.settle_starts()


def states(s: Scheduler) -> dict[int, str]:
    return {j.seq: j.state.value for j in list(s.book)}


def finish(s: Scheduler, clock: Clock) -> None:
    s._command("term", "test")
    for _ in range(200):
        if s.pass_once(clock.wall):
            break
        wait_for(lambda: True, timeout=0.1)
        clock.advance(0.05)
    s._shutdown()


def test_foreign_load_stops_newest_first_and_continues_after_settle(tmp_path: Path) -> None:
    s, sensors, clock, jf = make(tmp_path, "* linux 2 2 0\n", ["sleep 60", "sleep 61", "sleep 62"])
    try:
        tick(s, clock)
        assert states(s) == {1: "running", 2: "running"}
        pids = {j.seq: j.pid for j in list(s.book)}
        sensors.foreign = 1.0  # load 3.0 > 2 + 0.5: stop one, the newest
        tick(s, clock)
        assert states(s) == {1: "running", 2: "stopped"}
        wait_for(lambda: proc_state(pids[2]) == "T", what="newest job stopped")
        assert proc_state(pids[1]) in ("S", "R")
        assert lines_of(jf.with_name("jobfile.h1.stopped")) == ["sleep 61"]
        sensors.foreign = 1.7  # load 2.7: stop the other one too
        tick(s, clock)
        assert states(s) == {1: "stopped", 2: "stopped"}
        sensors.foreign = 0.1  # low again, but only just: wait `settle` seconds before continuing
        tick(s, clock, 1.0)
        assert states(s) == {1: "stopped", 2: "stopped"}
        tick(s, clock, 1.0)
        tick(s, clock, 1.0)
        assert states(s) == {
            1: "running",
            2: "running",
        }  # oldest stopped continued first, then the next
        wait_for(
            lambda: proc_state(pids[1]) != "T" and proc_state(pids[2]) != "T", what="both continued"
        )
        assert "sleep 62" in lines_of(jf)  # nothing new was started meanwhile
    finally:
        finish(s, clock)


def test_steady_foreign_load_does_not_flap(tmp_path: Path) -> None:
    s, sensors, clock, _ = make(tmp_path, "* linux 2 2 0\n", ["sleep 60", "sleep 61"])
    try:
        tick(s, clock)
        sensors.foreign = 1.0
        events = 0
        last = states(s)
        for i in range(60):
            sensors.foreign = 1.0 + (0.04 if i % 2 else -0.04)  # a busy loop's measurement noise
            tick(s, clock)
            now = states(s)
            events += sum(1 for k in now if now[k] != last.get(k))
            last = now
        assert events == 1  # one stop, then steady
    finally:
        finish(s, clock)


def test_active_users_and_work_hours_lower_the_limit(tmp_path: Path) -> None:
    s, sensors, clock, _ = make(
        tmp_path, "* linux 3 1 1\n", ["sleep 60", "sleep 61", "sleep 62"], when=MONDAY_10
    )
    try:
        tick(s, clock)
        assert s.m.limit == 1 and s.m.work_time
        assert list(states(s).values()) == ["running"]
        sensors.users = 2  # limit = max(0, 1 - min(1, 2)) = 0
        tick(s, clock)
        assert s.m.limit == 0
        assert list(states(s).values()) == ["stopped"]
        sensors.users = 0
        clock.advance(5 * 86400)  # Saturday: limit = max = 3
        for _ in range(4):
            tick(s, clock)
        assert s.m.limit == 3 and not s.m.work_time
        assert sorted(states(s).values()) == ["running"] * 3
    finally:
        finish(s, clock)


def test_memfree_starts_nothing_when_low_and_evicts_when_very_low(tmp_path: Path) -> None:
    s, sensors, clock, jf = make(
        tmp_path, "* linux 2 2 0\n", ["sleep 60", "sleep 61", "sleep 62"], memfree="1G"
    )
    try:
        sensors.mem = 900 << 20  # below memfree: start nothing
        tick(s, clock)
        assert states(s) == {}
        sensors.mem = 2 << 30
        tick(s, clock)
        assert states(s) == {1: "running", 2: "running"}
        victim = next(j.pid for j in list(s.book) if j.seq == 2)
        sensors.mem = 400 << 20  # below half: kill the newest, put its line back in front
        tick(s, clock)
        # Reaped, not just a zombie: the runner reports an end before it reaps, so the
        # next pass reads it (a zombie's end may still be on its way).
        wait_for(lambda: proc_state(victim) is None, what="evicted job killed and reaped")
        tick(s, clock, 0.1)
        assert states(s) == {1: "running"}
        # back at the front, after the comment that keeps its joblog number
        assert [ln for ln in lines_of(jf) if not ln.startswith("#")][0] == "sleep 61"
        assert "killed to free memory" in jf.with_name("jobfile.h1.log").read_text()
        assert lines_of(jf.with_name("jobfile.h1.error")) == []
    finally:
        finish(s, clock)


def test_stop_command_stops_everything_and_cont_resumes(tmp_path: Path) -> None:
    s, sensors, clock, _ = make(tmp_path, "* linux 2 2 0\n", ["sleep 60", "sleep 61", "sleep 62"])
    try:
        tick(s, clock)
        s._command("stop", "test")
        tick(s, clock)
        assert states(s) == {1: "stopped", 2: "stopped"}
        assert s.status(clock.wall).state == "stopped"
        tick(s, clock, 5)
        assert len(list(s.book)) == 2  # nothing starts while stopped
        s._command("cont", "test")
        tick(s, clock)
        assert states(s) == {1: "running", 2: "running"}
    finally:
        finish(s, clock)
