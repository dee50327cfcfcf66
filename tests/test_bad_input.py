"""Bad input gets one clear answer, never a hang: files that are not regular files, huge job
lines, settings under which nothing could ever run, typos in variables, and what `pbq
control` says about dead, stopped and quitting schedulers.  Real processes throughout."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    run_cmd,
    start_scheduler,
    status,
    wait_exit,
    wait_for,
)


def one_line_refusal(r: object, *needles: str) -> str:
    assert r.returncode == 2, r  # type: ignore[attr-defined]
    err = r.stderr.decode()  # type: ignore[attr-defined]
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("which", ["jobfile", "hostfile"])
def test_fifo_is_refused_not_waited_on(tmp_path: Path, which: str) -> None:
    hf, jf = hostfile(tmp_path), jobfile(tmp_path, ["true"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = (hf, fifo) if which == "jobfile" else (fifo, jf)
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", *args, timeout=20)
    one_line_refusal(r, str(fifo), f"refusing the {which}: it is a FIFO, not a regular file")


def test_dev_null_jobfile_is_refused_without_chmod_advice(tmp_path: Path) -> None:
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hostfile(tmp_path), "/dev/null",
                timeout=20)
    err = one_line_refusal(r, "/dev/null", "a device, not a regular file")
    assert "chmod" not in err


def test_a_2mb_job_line_does_not_freeze_the_heartbeat(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, FAST_CONFIG)
    # One quoted 2 MB word: a line that needs no shell, split into words by the scheduler.
    # It is too long for the kernel (a failed start); the next job must run meanwhile.
    huge = 'true "' + "x" * 2_000_000 + '"'
    jf = jobfile(tmp_path, [huge, "sleep 3"])
    p = start_scheduler(hf, jf, "--exit-when-empty")
    worst = 0.0
    try:
        wait_for(lambda: status(jf, "h1").get("time"), what="first heartbeat")
        while p.poll() is None:
            st = status(jf, "h1")
            if st.get("state") == "exited":
                break
            if st.get("time"):
                worst = max(worst, time.time() - st["time"])
            assert worst < 3.0, f"heartbeat {worst:.1f} s old while a 2 MB line was handled"
            time.sleep(0.05)
        assert wait_exit(p) == 0
    finally:
        if p.poll() is None:
            p.kill()
    log = hostfile_path(jf, "h1", "log").read_text(errors="replace")
    assert "finished h1.2" in log and "exit 126" in log


def test_interval_below_the_floor_is_refused_with_file_and_line(tmp_path: Path) -> None:
    config(tmp_path, "[scheduler]\n\ninterval = 1e-9\n")
    hf, jf = hostfile(tmp_path), jobfile(tmp_path, ["true"])
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf)
    one_line_refusal(r, f"{tmp_path / 'pbq.toml'}:3:", "interval: must be >= 0.05")


def test_memfree_above_the_machines_memory_is_refused(tmp_path: Path) -> None:
    hf, jf = hostfile(tmp_path), jobfile(tmp_path, ["true"])
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", "--memfree", "1024T", hf, jf)
    one_line_refusal(r, "memfree 1024T is more than this machine's memory (")
    assert jf.read_text() == "true\n"


def test_max_0_and_wday_0_is_refused_not_waited_on(tmp_path: Path) -> None:
    hf, jf = hostfile(tmp_path, "other linux 4 4 0\n*   linux 0 0 0\n"), jobfile(tmp_path, ["true"])
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf, timeout=20)
    one_line_refusal(r, "max 0 and wday 0 (line 2)", "no job could ever run")


def test_unknown_key_in_a_config_variable_is_an_error(tmp_path: Path) -> None:
    hf, jf = hostfile(tmp_path), jobfile(tmp_path, ["true"])
    env = {**os.environ, "PBQ_SCHEDULER_INTERVALL": "0.5", "PBQ_JOB_ID": "x.1", "PBQ_SEQ": "1"}
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf, env=env)
    one_line_refusal(r, "environment PBQ_SCHEDULER_INTERVALL", "unknown key 'intervall'")
    env = {**os.environ, "PBQ_JOB_ID": "x.1", "PBQ_SEQ": "1", "PBQ_HOST": "x", "PBQ_ARCH": "y"}
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf, env=env)
    assert r.returncode == 0, r.stderr


def test_load_of_a_dead_scheduler_says_dead(tmp_path: Path) -> None:
    hf, jf = hostfile(tmp_path), jobfile(tmp_path, [])
    config(tmp_path, FAST_CONFIG)
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("state") == "running", what="scheduler running")
    os.kill(p.pid, signal.SIGKILL)
    wait_exit(p)
    r = run_cmd("pbq", "control", hf, jf, "load")
    assert r.returncode == 1, r
    assert "dead" in r.stdout.decode() and "running" not in r.stdout.decode(), r.stdout
    rows = json.loads(run_cmd("pbq", "control", hf, jf, "load", "--json").stdout)
    assert rows[0]["state"] == "dead" and rows[0]["alive"] is False and rows[0]["load"] is None


def test_quit_while_stopped_and_cont_after_it_confirm(tmp_path: Path) -> None:
    hf, jf = hostfile(tmp_path), jobfile(tmp_path, [])
    config(tmp_path, FAST_CONFIG)
    p = start_scheduler(hf, jf)
    try:
        wait_for(lambda: status(jf, "h1").get("state") == "running", what="scheduler running")
        assert run_cmd("pbq", "control", hf, jf, "stop").returncode == 0
        r = run_cmd("pbq", "control", hf, jf, "quit", "--timeout", "20")
        assert r.returncode == 0 and b"quitting once continued" in r.stdout, r
        assert p.poll() is None  # stopped: it waits for cont
        r = run_cmd("pbq", "control", hf, jf, "cont", "--timeout", "20")
        assert r.returncode == 0, r
        assert wait_exit(p) == 0
    finally:
        if p.poll() is None:
            p.kill()
