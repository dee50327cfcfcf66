"""One scheduler per host, for sure: a fencing epoch in the queue record, liveness across PID
namespaces, and one identity for a jobfile reached under two names."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pbqtest import (
    BIN,
    FAST_CONFIG,
    alive,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    proc_state,
    start_scheduler,
    status,
    text_of,
    wait_exit,
    wait_for,
)

from pbq.sidefiles import read_pidfile, write_pidfile

pytestmark = pytest.mark.timeout(120)
ROOMY = "* linux 8 8 0\n"


def queue_epoch(jf: Path, host: str) -> int:
    rec = json.loads((jf.parent / f"{jf.name}.queue").read_text())
    return int((rec.get("epochs") or {}).get(host, 0))


def test_a_frozen_scheduler_that_was_replaced_exits_without_touching_anything(
    tmp_path: Path,
) -> None:
    """A is frozen (SIGSTOP) while its heartbeat goes stale, as on a machine that hung; B
    takes the host over (a newer epoch) and adopts A's jobs; A, resumed, finds itself
    replaced and exits before it signals, reaps, records or takes anything."""
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    rec = tmp_path / "rec"
    gate = tmp_path / "go"
    lines = [
        f"sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; echo {i} >> {rec}'" for i in range(2)
    ]
    lines += [f"echo {i} >> {rec}" for i in range(2, 6)]
    jf = jobfile(tmp_path, lines[:2])
    a = start_scheduler(hf, jf)
    b = None
    try:
        wait_for(lambda: status(jf, "h1").get("running") == 2, what="A runs two jobs")
        epoch_a = queue_epoch(jf, "h1")
        os.kill(a.pid, signal.SIGSTOP)
        # kill() returns before A stops: it may finish a write (a status rename) meanwhile.
        wait_for(lambda: proc_state(a.pid) == "T", what="A frozen")
        # What B sees of a hung scheduler elsewhere: a pid file of another machine and a
        # heartbeat long silent.
        pidfile = hostfile_path(jf, "h1", "pid")
        info = read_pidfile(pidfile)
        assert info is not None and info.pid == a.pid
        write_pidfile(
            pidfile,
            dataclasses.replace(info, machine="elsewhere", start=time.time() - 3600),
            fsync=False,
        )
        st = status(jf, "h1")
        st["time"] = time.time() - 3600
        hostfile_path(jf, "h1", "status").write_text(json.dumps(st))
        b = start_scheduler(hf, jf)
        wait_for(lambda: status(jf, "h1").get("pid") == b.pid, what="B took over")
        assert queue_epoch(jf, "h1") == epoch_a + 1
        assert text_of(hostfile_path(jf, "h1", "log")).count("adopted job") == 2
        # A resumes while there is work it could take and ends it could record.
        with open(jf, "a") as f:
            f.write("".join(line + "\n" for line in lines[2:]))
        os.kill(a.pid, signal.SIGCONT)
        assert wait_exit(a, 20) == 3
        assert b"taken over by another scheduler" in (tmp_path / "sched-h1.out").read_bytes()
        saved = json.loads(hostfile_path(jf, "h1", "state").read_text())
        assert saved["epoch"] == epoch_a + 1, "the ledger is B's"
        gate.write_text("")
        wait_for(
            lambda: sorted(lines_of(rec)) == [str(i) for i in range(6)],
            timeout=30,
            what="every job ran",
        )
        assert Counter(lines_of(rec)) == Counter(str(i) for i in range(6)), "nothing twice"
        assert status(jf, "h1")["pid"] == b.pid and alive(b.pid)
        assert read_pidfile(pidfile) is not None and read_pidfile(pidfile).pid == b.pid  # type: ignore[union-attr]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
                wait_exit(p, 30)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a PID namespace",
)
def test_a_second_scheduler_in_another_pid_namespace_is_refused(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 60"])
    a = start_scheduler(hf, jf)
    try:
        wait_for(lambda: status(jf, "h1").get("running") == 1, what="A runs its job")
        probe = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip(f"no PID namespaces here: {probe.stderr.decode(errors='replace').strip()}")
        r = subprocess.run(
            [
                "unshare",
                "-p",
                "-f",
                "--mount-proc",
                sys.executable,
                str(BIN / "pbq-single"),
                "--host",
                "h1",
                "--exit-when-empty",
                str(hf),
                str(jf),
            ],
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert r.returncode == 2, r.stderr
        assert b"already running" in r.stderr and b"heartbeat" in r.stderr
        assert status(jf, "h1")["pid"] == a.pid and alive(a.pid)
    finally:
        a.send_signal(signal.SIGTERM)
        wait_exit(a, 30)


@pytest.mark.parametrize("how", ["file", "directory"])
def test_a_jobfile_under_two_names_is_one_queue(tmp_path: Path, how: str) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 60"])
    if how == "file":
        other = tmp_path / "same-jobs"
        other.symlink_to(jf.name)
    else:
        (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
        other = tmp_path / "alias" / jf.name
    a = start_scheduler(hf, jf)
    try:
        wait_for(lambda: status(jf, "h1").get("running") == 1, what="A runs its job")
        r = subprocess.run(
            [
                sys.executable,
                str(BIN / "pbq-single"),
                "--host",
                "h1",
                "--exit-when-empty",
                str(hf),
                str(other),
            ],
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert r.returncode == 2, r.stderr
        assert b"already running" in r.stderr
    finally:
        a.send_signal(signal.SIGTERM)
        wait_exit(a, 30)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__, "-v"]))
