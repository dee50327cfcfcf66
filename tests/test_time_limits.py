"""Time limits and patience: ``[scheduler] timeout`` (absolute or a percentage of earlier
successful runs), ``max_suspend`` (a stopped job does not camp on a desktop) and
``stop_after`` (foreign load must last before jobs are stopped)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    pending_lines,
    start_scheduler,
    status,
    text_of,
    wait_exit,
    wait_for,
)

from pbq.config import load_config, parse_timeout
from pbq.errors import PbqError
from pbq.host.jobs import Job, JobState
from pbq.host.limits import TimeLimits
from pbq.policy import Decision, Mode, View, decide
from pbq.predict import ResourceStore, Run

pytestmark = pytest.mark.timeout(120)
ROOMY = "* linux 8 8 0\n"


def joblog(jf: Path) -> list[list[str]]:
    return [r.split("\t") for r in lines_of(hostfile_path(jf, "h1", "joblog"))[1:]]


# ---------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2h", (7200.0, None)),
        ("90m", (5400.0, None)),
        ("30", (30.0, None)),
        ("300%", (None, 3.0)),
        ("", (None, None)),
        ("1.5s", (1.5, None)),
    ],
)
def test_parse_timeout(text: str, want: tuple[float | None, float | None]) -> None:
    assert parse_timeout(text) == want


@pytest.mark.parametrize("bad", ["0", "-5s", "x%", "0%", "2 hours", "inf"])
def test_bad_timeouts_are_refused_with_the_key_named(tmp_path: Path, bad: str) -> None:
    (tmp_path / "jobfile").write_text("")
    (tmp_path / "pbq.toml").write_text(f'[scheduler]\ntimeout = "{bad}"\n')
    with pytest.raises(PbqError, match=r"\[scheduler\] timeout"):
        load_config(tmp_path / "jobfile")


def limits(tmp_path: Path, **scheduler: str) -> TimeLimits:
    (tmp_path / "jobfile").write_text("")
    body = "[scheduler]\n" + "".join(f'{k} = "{v}"\n' for k, v in scheduler.items())
    (tmp_path / "pbq.toml").write_text(body)
    return TimeLimits(load_config(tmp_path / "jobfile"), tmp_path / "jobfile.usage")


def running(seq: int, line: str, started: float, stopped_secs: float = 0.0) -> Job:
    return Job(
        seq=seq,
        line=line.encode(),
        op=1,
        state=JobState.RUNNING,
        started=started,
        stopped_secs=stopped_secs,
    )


def test_absolute_timeout_counts_running_time_only(tmp_path: Path) -> None:
    tl = limits(tmp_path, timeout="10s")
    jobs = [running(1, "a", 0.0), running(2, "b", 0.0, stopped_secs=5.0)]
    assert [j.seq for j, _ in tl.timed_out(jobs, now=12.0)] == [1]  # job 2 ran 7 s of 12
    assert [j.seq for j, _ in tl.timed_out(jobs, now=16.0)] == [1, 2]


def test_percentage_timeout_needs_three_successful_runs_and_keeps_the_floor(tmp_path: Path) -> None:
    tl = limits(tmp_path, timeout="300%", timeout_floor="1s")
    store = ResourceStore(tmp_path / "jobfile.usage")
    job = running(1, "sleep 30", 0.0)
    store.record_many(
        [Run("sleep", None, 0.0, 0.2, 1.0, True)] * 2 + [Run("sleep", None, 0.0, 9.0, 1.0, False)]
    )
    tl.refresh()
    assert tl.limit_for(job) is None, "two successful runs are not enough"
    store.record_many([Run("sleep", None, 0.0, 0.4, 2.0, True)])
    tl.refresh()
    assert tl.limit_for(job) == 1.0, "3 x median 0.2 s = 0.6 s, raised to the 1 s floor"
    store.record_many([Run("sleep", None, 0.0, 2.0, 3.0, True)] * 3)
    tl.refresh()
    assert tl.limit_for(job) == pytest.approx(3 * 1.2)  # median of 0.2 0.2 0.4 2 2 2


def test_max_suspend_picks_only_jobs_the_load_policy_stopped(tmp_path: Path) -> None:
    tl = limits(tmp_path, max_suspend="30m")
    by_load = Job(seq=1, line=b"a", op=1, state=JobState.STOPPED, stopped_by="load", stopped_at=0.0)
    by_user = Job(seq=2, line=b"b", op=1, state=JobState.STOPPED, stopped_by="user", stopped_at=0.0)
    assert tl.suspended_too_long([by_load, by_user], now=1799.0) == []
    assert tl.suspended_too_long([by_load, by_user], now=1801.0) == [by_load]


def test_stop_after_holds_still_until_the_load_has_lasted() -> None:
    base = View(
        mode=Mode.RUN,
        limit=2,
        foreign=2.0,
        foreign_recent=2.0,
        running=2,
        stopped_by_load=0,
        stopped_by_user=0,
        pending=True,
        stop_after=5.0,
    )
    assert decide(View(**{**base.__dict__, "over_for": 4.9})) == Decision()
    assert decide(View(**{**base.__dict__, "over_for": 5.0})) == Decision(stop=2)
    assert decide(View(**{**base.__dict__, "stop_after": 0.0, "over_for": 0.0})) == Decision(stop=2)
    assert math.isinf(View(**{**base.__dict__}).over_for)


def test_the_usage_file_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pbq.predict

    monkeypatch.setattr(pbq.predict, "MAX_BYTES", 4000)
    store = ResourceStore(tmp_path / "jobfile.usage")
    for i in range(500):
        store.record_many([Run(f"key{i % 3}", None, 0.1, 1.0, float(i), True)])
        assert (tmp_path / "jobfile.usage").stat().st_size <= 4000 + 200
    runs = store.runs()
    assert runs[-1].time == 499.0, "the newest runs are kept"
    assert {r.key for r in runs} == {"key0", "key1", "key2"}


# ---------------------------------------------------------------------- real processes


def test_a_job_past_an_absolute_timeout_is_ended_into_error(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG.replace("[scheduler]\n", '[scheduler]\ntimeout = "2s"\n', 1))
    jf = jobfile(tmp_path, ["sleep 30", "true"])
    t0 = time.monotonic()
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 30) == 0
    assert time.monotonic() - t0 < 25, "ended by its time limit, not by sleeping 30 s"
    assert lines_of(hostfile_path(jf, "h1", "error")) == ["sleep 30"]
    rows = {r[8]: r for r in joblog(jf)}
    assert rows["sleep 30"][7] == str(int(signal.SIGTERM))
    assert "timed out after 2.0s" in hostfile_path(jf, "h1", "log").read_text()
    assert status(jf, "h1")["timed_out"] == 1


def test_the_timeout_flag_sets_the_limit(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 30"])
    p = start_scheduler(hf, jf, "--exit-when-empty", "--timeout", "1s", "--max-suspend", "1h")
    assert wait_exit(p, 30) == 0
    assert lines_of(hostfile_path(jf, "h1", "error")) == ["sleep 30"]
    assert "timed out after 1.0s" in hostfile_path(jf, "h1", "log").read_text()


def test_a_percentage_timeout_uses_earlier_successful_runs(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(
        tmp_path,
        FAST_CONFIG.replace(
            "[scheduler]\n", '[scheduler]\ntimeout = "300%"\ntimeout_floor = "1s"\n', 1
        ),
    )
    jf = jobfile(tmp_path, ["sleep 0.2", "sleep 0.2", "sleep 0.2"])
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 30) == 0
    jobfile(tmp_path, ["sleep 30"])
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 30) == 0
    assert lines_of(hostfile_path(jf, "h1", "error")) == ["sleep 30"]
    assert "timed out after" in hostfile_path(jf, "h1", "log").read_text()


def test_max_suspend_ends_long_stopped_jobs_and_puts_them_back(tmp_path: Path) -> None:
    """Two foreign busy loops on a host with limit 2: the jobs are stopped, and after
    max_suspend they are ended and their lines go back to the front; once the loops end,
    every job runs to its end once, with nothing in .error."""
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG.replace("[scheduler]\n", '[scheduler]\nmax_suspend = "3s"\n', 1))
    rec = tmp_path / "rec"
    gate = tmp_path / "go"  # opened once the loops are gone: no job ends before it is stopped
    lines = [
        f"sh -c 'while [ ! -e {gate} ]; do sleep 0.1; done; echo {i} >> {rec}'" for i in range(2)
    ]
    jf = jobfile(tmp_path, lines)
    p = start_scheduler(hf, jf)
    loops: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: status(jf, "h1").get("running") == 2, what="two jobs running")
        loops = [
            subprocess.Popen(
                ["sh", "-c", f"while :; do :; done # {tmp_path}"], start_new_session=True
            )
            for _ in range(2)
        ]
        wait_for(
            lambda: status(jf, "h1").get("stopped", 0) >= 1, timeout=15, what="jobs stopped by load"
        )
        wait_for(
            lambda: "max_suspend" in text_of(hostfile_path(jf, "h1", "log")),
            timeout=15,
            what="a stopped job ended by max_suspend",
        )
        wait_for(lambda: status(jf, "h1").get("suspend_ended", 0) >= 1, timeout=15, what="counted")
        wait_for(
            lambda: set(pending_lines(jf)) & set(lines),
            timeout=15,
            what="a line back in the jobfile",
        )
    finally:
        for lp in loops:
            os.killpg(lp.pid, signal.SIGKILL)
            lp.wait()
        gate.write_text("")
    wait_for(lambda: sorted(lines_of(rec)) == ["0", "1"], timeout=60, what="every job finished")
    p.send_signal(signal.SIGTERM)
    wait_exit(p, 30)
    assert sorted(lines_of(rec)) == ["0", "1"], "each job ran to its end once"
    assert lines_of(hostfile_path(jf, "h1", "error")) == []


if __name__ == "__main__":  # pragma: no cover
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__, "-v"]))
