"""Rules a host keeps whatever users do: a job stopped by someone else is continued, a
user's stop outlives a restart, a job killed by a signal is written as GNU Parallel writes
it, and a load limit of 0 says why nothing starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    alive,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    proc_state,
    run_cmd,
    start_scheduler,
    status,
    text_of,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
ROOMY = "* linux 8 8 0\n"


def joblog(jf: Path, host: str = "h1") -> list[list[str]]:
    return [r.split("\t") for r in lines_of(hostfile_path(jf, host, "joblog"))[1:]]


def test_a_job_that_stops_itself_is_continued_and_exit_when_empty_ends(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    rec = tmp_path / "rec"
    jf = jobfile(tmp_path, [f"sh -c 'kill -STOP $$; echo continued >> {rec}'"])
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 30) == 0
    assert lines_of(rec) == ["continued"]
    assert "was stopped by someone else: continued it" in hostfile_path(jf, "h1", "log").read_text()
    assert [(r[6], r[7]) for r in joblog(jf)] == [("0", "0")]


def test_a_users_stop_outlives_a_kill_and_restart(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 60", "sleep 61"])
    p = start_scheduler(hf, jf)
    try:
        wait_for(lambda: status(jf, "h1").get("running") == 2, what="two jobs running")
        r = run_cmd("pbq", "control", hf, jf, "stop", timeout=40)
        assert r.returncode == 0, r.stdout + r.stderr
        r = run_cmd("pbq", "control", hf, jf, "kill", timeout=40)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_exit(p, 30)
        p = start_scheduler(hf, jf)
        wait_for(lambda: status(jf, "h1").get("pid") == p.pid, what="restarted")
        st = wait_for(
            lambda: (s := status(jf, "h1")).get("stopped") == 2 and s, what="both still stopped"
        )
        assert st["state"] == "stopped" and st["running"] == 0
        log = hostfile_path(jf, "h1", "log").read_text()
        assert "stopped by the user before this restart" in log
        r = run_cmd("pbq", "control", hf, jf, "cont", timeout=40)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: status(jf, "h1").get("running") == 2, what="continued after cont")
    finally:
        p.send_signal(signal.SIGTERM)
        wait_exit(p, 30)


def test_a_job_killed_by_a_signal_is_written_as_gnu_parallel_writes_it(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sh -c 'kill -KILL $$'", "sh -c 'exit 4'"])
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 30) == 0
    rows = {r[8]: (r[6], r[7]) for r in joblog(jf)}
    # Exitval -1 means "unknown" only: a signal death is Exitval 0, Signal 9.
    assert rows == {"sh -c 'kill -KILL $$'": ("0", "9"), "sh -c 'exit 4'": ("4", "0")}
    assert sorted(lines_of(hostfile_path(jf, "h1", "error"))) == sorted(rows)


def test_a_zero_limit_says_why_nothing_starts(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 0 2 0\n")  # max 0: nothing outside work hours
    config(tmp_path, FAST_CONFIG + "\n[schedule]\nworkdays = []\n")
    jf = jobfile(tmp_path, ["true"])
    p = start_scheduler(hf, jf)
    try:
        wait_for(
            lambda: (
                "the load limit is 0 now (max is 0 outside work hours)"
                in text_of(hostfile_path(jf, "h1", "log"))
            ),
            what="the reason in the log",
        )
        assert status(jf, "h1").get("running") == 0
    finally:
        p.send_signal(signal.SIGTERM)
        wait_exit(p, 30)


def test_sigkill_of_a_job_that_ignores_nothing_leaves_no_process(tmp_path: Path) -> None:
    """The job runner starts every job in a session of its own: term reaches all of it."""
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sh -c 'sleep 70 & sleep 71; wait'"])
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("running") == 1, what="job running")
    pid = int(hostfile_path(jf, "h1", "pid").read_text().split()[0])
    assert pid == p.pid
    job = wait_for(lambda: [q for q in _children_of_runner(p.pid)], what="the job's process")[0]
    assert os.getsid(job) == job and proc_state(job) in ("S", "R")
    p.send_signal(signal.SIGTERM)
    assert wait_exit(p, 30) == 0
    assert not alive(job)


def _children_of_runner(scheduler: int) -> list[int]:
    import psutil

    try:
        runners = [
            c
            for c in psutil.Process(scheduler).children()
            if "#pbq-runner" in " ".join(c.cmdline())
        ]
        return [c.pid for r in runners for c in r.children()]
    except psutil.Error:
        return []


if __name__ == "__main__":  # pragma: no cover
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__, "-v"]))
