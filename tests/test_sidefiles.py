"""Tests for pbq.sidefiles: the JOBFILE.HOST.* record formats, upgrades from format 1,
and the one liveness rule."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from pbqtest import hostfile_path, lines_of, start_scheduler, wait_exit, wait_for

from pbq import sidefiles
from pbq.config import load_config
from pbq.errors import PbqError
from pbq.host.jobs import JobBook, JobState
from pbq.host.ledger import Ledger
from pbq.jobfile import JobQueue
from pbq.recovery import recover_hosts
from pbq.sensors import boot_id, process_start
from pbq.sidefiles import (
    FORMAT_VERSION,
    JOBLOG_HEADER,
    ExitRecord,
    FormatError,
    HostStatus,
    JoblogRow,
    Liveness,
    PidRecord,
    Probe,
    append_exit_records,
    append_joblog_rows,
    joblog_row,
    liveness,
    read_exit_records,
    read_joblog,
    read_pidfile,
    read_status,
    stale_after,
    write_pidfile,
    write_status,
)
from pbq.statefiles import HostFiles

V1 = Path(__file__).parent / "data" / "v1"
V1_BOOT = "e2a41410-a377-4b2d-8578-008f03bd2089"


def v1_copy(tmp_path: Path) -> Path:
    """A copy of the format-1 queue; returns its jobfile."""
    d = tmp_path / "v1"
    shutil.copytree(V1, d)
    return d / "jobfile"


# ---------------------------------------------------------------------- format 1 files


def test_v1_pidfile_reads() -> None:
    rec = read_pidfile(V1 / "jobfile.h1.pid")
    # The fifth line was the keeper: the process that runs the scheduler, now "runner".
    assert rec == PidRecord(20551, 1796034465.05, "vm", V1_BOOT, None, 20501, 0)


def test_v1_status_reads() -> None:
    st = read_status(V1 / "jobfile.h1.status")
    assert st is not None
    # format 1 named the keeper (keeper_pid); there is no job runner to name in it
    assert (st.host, st.machine, st.pid, st.start, st.runner_pid) == (
        "h1",
        "vm",
        20551,
        1796034465.05,
        None,
    )
    assert (st.state, st.time, st.interval, st.boot_id) == (
        "running",
        1796034466.459715,
        0.2,
        V1_BOOT,
    )
    assert (st.running, st.stopped, st.claimed, st.done, st.failed) == (1, 2, 2, 1, 2)
    assert (st.limit, st.work_time, st.mem_available, st.drm, st.pidns) == (
        3.0,
        True,
        None,
        None,
        None,
    )
    assert (st.format, st.final) == (1, False)


def test_v1_exits_read() -> None:
    recs = read_exit_records(V1 / "jobfile.h1.exits")
    assert sorted(recs) == [(20555, 1796034465.07), (20556, 1796034465.07), (20557, 1796034465.07)]
    assert [(r.exit_code, r.signal) for _, r in sorted(recs.items())] == [
        (0, 0),
        (None, 15),
        (None, 9),
    ]
    assert recs[(20555, 1796034465.07)].maxrss == 22167552


def test_v1_joblog_reads() -> None:
    rows = read_joblog(V1 / "jobfile.h1.joblog")
    assert [(r.seq, r.host, r.exitval, r.signal, r.command) for r in rows] == [
        (1, "h1", 0, 0, "true"),
        (2, "h1", 1, 0, "false"),
        (3, "h1", 3, 0, 'sh -c "exit 3"'),
    ]
    assert [r.failed for r in rows] == [False, True, True]


def test_v1_state_journal_and_queue_read() -> None:
    ledger = Ledger(
        HostFiles(V1 / "jobfile", "h1"), JobBook("h1"), lambda *a: None, False, time.monotonic
    )  # type: ignore[arg-type]
    book = ledger.load()
    assert {j.seq: j.state for j in book} == {
        4: JobState.RUNNING,
        5: JobState.STOPPED,
        6: JobState.STOPPED,
        7: JobState.CLAIMED,
        8: JobState.CLAIMED,
    }
    assert JobQueue(V1 / "jobfile").peek_state().ops == {"h1": 2}


def test_v1_queue_recovers_by_hand(tmp_path: Path) -> None:
    jf = v1_copy(tmp_path)
    # Its heartbeat is old, wherever the test runs: recover need not wait for it.
    out = recover_hosts(jf, ["h1"], load_config(jf), stale_after=0)
    # Three of the five had ended while no scheduler ran, and the keeper recorded how: those
    # are recorded now, not run again; only the two never started go back.
    assert out == ["h1: put 2 job(s) back at the front of the jobfile"]
    assert lines_of(jf) == ["echo pending-1", "echo pending-2"]
    rows = [r.split("\t") for r in lines_of(hostfile_path(jf, "h1", "joblog"))[1:]]
    assert sorted((r[6], r[7], r[8]) for r in rows[-3:]) == [
        ("0", "0", "sleep 2"),
        ("0", "15", "sleep 60"),
        ("0", "9", "sleep 60"),
    ]
    assert not hostfile_path(jf, "h1", "pid").exists()


def test_v1_queue_restarts_under_this_pbq(tmp_path: Path) -> None:
    """A scheduler of today takes over a host of format 1 killed mid-run: the keeper's exit
    records finish the orphans, the claimed lines run, and the files it writes are format 2."""
    jf = v1_copy(tmp_path)
    status_path = hostfile_path(jf, "h1", "status")
    st = json.loads(status_path.read_text())
    st["time"] = time.time() - 3600  # a heartbeat an hour old, whatever this machine's clock says
    status_path.write_text(json.dumps(st))
    p = start_scheduler(jf.parent / "hostfile", jf, "--exit-when-empty")
    assert wait_exit(p, 60) == 0, (jf.parent / "sched-h1.out").read_text()
    rows = {r.seq: r for r in read_joblog(hostfile_path(jf, "h1", "joblog"))}
    assert (rows[4].command, rows[4].exitval, rows[4].signal) == ("sleep 2", 0, 0)
    assert {(rows[s].signal) for s in (5, 6)} == {9, 15}
    assert sorted(r.command for r in rows.values() if r.seq > 6) == [
        "echo pending-1",
        "echo pending-2",
    ]
    final = read_status(status_path)
    assert final is not None and (final.state, final.format) == ("exited", FORMAT_VERSION)
    assert not hostfile_path(jf, "h1", "pid").exists()


# ---------------------------------------------------------------------- newer formats


def test_newer_pidfile_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.h1.pid"
    path.write_text("123\nstart=5.0\nmachine=m\nboot=b\nformat=3\n")
    with pytest.raises(FormatError) as err:
        read_pidfile(path)
    assert str(path) in str(err.value) and "format 3" in str(err.value)
    assert isinstance(err.value, PbqError)


def test_newer_status_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.h1.status"
    path.write_text(json.dumps({"host": "h1", "pid": 1, "time": 1.0, "format": 3}))
    with pytest.raises(FormatError, match=r"format 3 by a newer pbq") as err:
        read_status(path)
    assert str(err.value).startswith(f"{path}: ")


def test_newer_exit_record_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.h1.exits"
    ok = {"pid": 1, "start": 1.0, "status": 0, "time": 2.0, "cpu": 0, "maxrss": 0}
    path.write_text(json.dumps(ok) + "\n" + json.dumps({**ok, "pid": 2, "format": 3}) + "\n")
    with pytest.raises(FormatError, match="format 3") as err:
        read_exit_records(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "rec",
    [
        PidRecord(4242, 1796034465.05, "node1.example", "boot-id", "pid:[4026531836]", 4241, 7),
        PidRecord(1, None, "", "", None, None),
    ],
    ids=["full", "unknowns"],
)
def test_pidfile_round_trip(tmp_path: Path, rec: PidRecord) -> None:
    path = tmp_path / "jobs.h1.pid"
    write_pidfile(path, rec, fsync=True)
    assert path.read_text().split("\n")[0] == str(rec.pid)  # the bare pid first, as every daemon
    assert f"format={FORMAT_VERSION}" in path.read_text().split("\n")
    assert read_pidfile(path) == rec


def test_pidfile_of_this_process() -> None:
    rec = PidRecord.current(runner=os.getppid(), epoch=3)
    assert (rec.pid, rec.machine, rec.boot, rec.runner, rec.epoch) == (
        os.getpid(),
        socket.gethostname(),
        boot_id(),
        os.getppid(),
        3,
    )
    assert rec.start == process_start(os.getpid())
    assert sidefiles.is_local(rec)


@pytest.mark.parametrize("text", ["", "\n", "not a pid\n", "12x\nstart=1\n"])
def test_pidfile_without_pid_reads_as_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p"
    path.write_text(text)
    assert read_pidfile(path) is None
    assert read_pidfile(tmp_path / "missing") is None


def test_exit_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "jobs.h1.exits"
    exited = ExitRecord(10, 100.004, 3 << 8, 200.5, 0.25, 1 << 20)
    killed = ExitRecord(11, None, signal.SIGKILL, 201.0, 0.0, 0)
    append_exit_records(path, [exited, killed])
    append_exit_records(path, [])
    assert path.read_text().count("\n") == 2
    assert all(json.loads(ln)["format"] == FORMAT_VERSION for ln in path.read_text().splitlines())
    recs = read_exit_records(path)
    assert recs == {(10, 100.0): exited, (11, None): killed}
    assert (exited.exit_code, exited.signal, killed.exit_code, killed.signal) == (
        3,
        0,
        None,
        signal.SIGKILL,
    )


def test_exit_records_skip_torn_and_garbage_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs.h1.exits"
    good = {"pid": 5, "start": 9.0, "status": 0, "time": 1.0, "cpu": 0.1, "maxrss": 10}
    path.write_bytes(
        b"garbage\n[1, 2]\n\xff\xfe\n"
        + json.dumps({"pid": "x", "status": 0}).encode()
        + b"\n"
        + json.dumps(good).encode()
        + b"\n"
        + json.dumps({**good, "status": 256}).encode()
        + b"\n"  # later record of the same process wins
        + json.dumps({**good, "pid": 6})[:20].encode()  # torn by a crash
    )
    recs = read_exit_records(path)
    assert list(recs) == [(5, 9.0)] and recs[(5, 9.0)].exit_code == 1
    assert read_exit_records(tmp_path / "missing") == {}


def full_status(**over: object) -> HostStatus:
    values: dict = dict(
        host="h1",
        machine="m1",
        pid=77,
        state="running",
        time=1000.5,
        boot_id="b",
        start=900.25,
        runner_pid=76,
        pidns="pid:[1]",
        jobfile="jobs",
        interval=0.5,
        load=1.5,
        foreign=0.5,
        limit=2.0,
        work_time=False,
        active_users=1,
        running=1,
        stopped=2,
        stopped_by_user=1,
        claimed=3,
        done=4,
        failed=5,
        mem_available=1 << 30,
        control_ack="abc",
        error="disk full",
        started=900.5,
        drm="slurm",
        lock_wait=(0, 3, 1),
        lock_wait_start=(0, 0, 1),
        lock_hold=(5,),
    )
    values.update(over)
    return HostStatus(**values)


def test_status_round_trip_keeps_the_json_keys(tmp_path: Path) -> None:
    path = tmp_path / "jobs.h1.status"
    st = full_status()
    write_status(path, st)
    raw = json.loads(path.read_text())
    v1_keys = set(json.loads((V1 / "jobfile.h1.status").read_text()))
    new_keys = {
        "format",
        "pidns",
        "runner_pid",
        "quitting",
        "timed_out",
        "suspend_ended",
        "local_users",
        "remote_users",
        "sources",
        "last_success",
        "last_failure",
        "quick_failures",
        "quarantined",
        "quarantined_until",
        "quarantines",
        "epoch",
        "lock_wait",
        "lock_wait_start",
        "lock_hold",
    }
    assert set(raw) == (v1_keys - {"keeper_pid"}) | new_keys
    assert raw["format"] == FORMAT_VERSION
    assert read_status(path) == st
    assert st.to_json() == dataclasses.asdict(st), "the shallow copy is the deep one"


def test_status_of_this_process() -> None:
    st = HostStatus.of_this_process(host="h1", state="running", time=5.0)
    assert (st.pid, st.machine, st.runner_pid, st.pidns) == (
        os.getpid(),
        socket.gethostname(),
        None,
        sidefiles.this_pidns(),
    )


@pytest.mark.parametrize("text", ["", "{", "[1]", "null", '"x"'])
def test_status_unreadable_is_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s"
    path.write_text(text)
    assert read_status(path) is None


def test_status_with_wrong_types_reads_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text(
        json.dumps({"pid": "x", "time": "soon", "running": None, "work_time": 1, "limit": "nan"})
    )
    st = read_status(path)
    assert st is not None and (st.pid, st.time, st.running, st.work_time, st.limit) == (
        None,
        None,
        0,
        None,
        None,
    )


def test_joblog_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "jobs.h1.joblog"
    append_joblog_rows(path, [joblog_row(1, "h1", 100.0, 2.5, 0, 0, b"echo a\tb\nc")])
    append_joblog_rows(path, [joblog_row(2, "h1:77", 101.25, 0.0, -1, 9, b"caf\xe9 \xff")])
    append_joblog_rows(path, [])
    text = path.read_text("utf-8", "surrogateescape")
    assert text.startswith(JOBLOG_HEADER) and text.count(JOBLOG_HEADER) == 1
    rows = read_joblog(path)
    assert rows[0] == JoblogRow(1, "h1", 100.0, 2.5, 0, 0, "echo a b c")
    assert (rows[1].seq, rows[1].host, rows[1].exitval, rows[1].signal, rows[1].end) == (
        2,
        "h1:77",
        -1,
        9,
        101.25,
    )
    assert rows[1].command.startswith("caf")


def test_joblog_skips_torn_and_garbage_lines(tmp_path: Path) -> None:
    path = tmp_path / "j"
    row = joblog_row(3, "h1", 1.0, 1.0, 0, 0, b"true")
    path.write_text(JOBLOG_HEADER + "garbage\n" + "x\th\t1\t1\t0\t0\t0\t0\tcmd\n" + row + row[:12])
    assert [r.seq for r in read_joblog(path)] == [3]
    assert read_joblog(tmp_path / "missing") == []


# ---------------------------------------------------------------------- liveness

JOBFILE = Path("/queue/jobs")
HERE = ("m1", "boot1", "pid:[1]")
NOW = 10_000.0
SCHED_PID, SCHED_START = 500, 9_000.0


def fake_probe(procs: dict[int, tuple[float, str]]) -> Probe:
    """This machine is m1, boot1, namespace pid:[1]; ``procs`` maps live pids to
    (start time, command line)."""

    def alive(pid: int, start: float | None) -> bool:
        return pid in procs and start is not None and abs(procs[pid][0] - start) <= 0.05

    def cmdline(pid: int) -> Sequence[str]:
        return procs[pid][1].split() if pid in procs else []

    return Probe(*HERE, same_process=alive, cmdline=cmdline)


SCHEDULER = {SCHED_PID: (SCHED_START, "python3 /usr/bin/pbq-single --host h1 hostfile jobs")}


def pid_rec(
    machine: str = "m1",
    boot: str = "boot1",
    pidns: str | None = "pid:[1]",
    start: float | None = SCHED_START,
) -> PidRecord:
    return PidRecord(SCHED_PID, start, machine, boot, pidns, 499)


def heartbeat(
    age: float | None,
    state: str = "running",
    interval: float = 1.0,
    machine: str = "m1",
    pid: int = SCHED_PID,
) -> HostStatus:
    return HostStatus(
        host="h1",
        machine=machine,
        pid=pid,
        state=state,
        start=SCHED_START,
        time=None if age is None else NOW - age,
        interval=interval,
    )


ELSEWHERE = pid_rec(machine="m2", boot="boot2", pidns="pid:[9]")

LIVENESS_CASES = [
    # (id, pid record, status, processes on this machine, expected state, exact, reason contains)
    ("here-alive", pid_rec(), heartbeat(500), SCHEDULER, Liveness.ALIVE, True, "is running"),
    ("here-alive-no-heartbeat", pid_rec(), None, SCHEDULER, Liveness.ALIVE, True, "is running"),
    ("here-dead-pid", pid_rec(), heartbeat(0.1), {}, Liveness.DEAD, True, "is gone"),
    (
        "here-reused-pid",
        pid_rec(),
        heartbeat(0.1),
        {SCHED_PID: (9_500.0, "pbq-single jobs")},
        Liveness.DEAD,
        True,
        "is gone",
    ),
    (
        "here-pid-not-a-scheduler",
        pid_rec(),
        heartbeat(0.1),
        {SCHED_PID: (SCHED_START, "sleep 300")},
        Liveness.DEAD,
        True,
        "not a pbq scheduler for jobs",
    ),
    (
        "here-other-jobfile",
        pid_rec(),
        heartbeat(0.1),
        {SCHED_PID: (SCHED_START, "pbq-single other")},
        Liveness.DEAD,
        True,
        "not a pbq scheduler",
    ),
    (
        "here-format-1-record",
        pid_rec(pidns=None),
        heartbeat(0.1),
        {},
        Liveness.DEAD,
        True,
        "is gone",
    ),
    (
        "other-machine-fresh",
        ELSEWHERE,
        heartbeat(30, machine="m2"),
        {},
        Liveness.ALIVE,
        False,
        "heartbeat 30 s ago",
    ),
    (
        "other-machine-stale",
        ELSEWHERE,
        heartbeat(61, machine="m2"),
        {},
        Liveness.STALE,
        False,
        "heartbeat 61 s ago",
    ),
    (
        "other-machine-slow-ticks",
        ELSEWHERE,
        heartbeat(90, machine="m2", interval=10),
        {},
        Liveness.ALIVE,
        False,
        "heartbeat",
    ),
    (
        "other-machine-exited",
        ELSEWHERE,
        heartbeat(1, "exited", machine="m2"),
        {},
        Liveness.DEAD,
        False,
        "said it exited",
    ),
    (
        "other-machine-terminated",
        ELSEWHERE,
        heartbeat(1, "terminated", machine="m2"),
        {},
        Liveness.DEAD,
        False,
        "said it terminated",
    ),
    (
        "other-boot",
        pid_rec(boot="boot0"),
        heartbeat(5),
        SCHEDULER,
        Liveness.ALIVE,
        False,
        "heartbeat",
    ),
    (
        "other-boot-stale",
        pid_rec(boot="boot0"),
        heartbeat(3600),
        SCHEDULER,
        Liveness.STALE,
        False,
        "heartbeat",
    ),
    (
        "other-pid-namespace",
        pid_rec(pidns="pid:[2]"),
        heartbeat(5),
        {},
        Liveness.ALIVE,
        False,
        "heartbeat 5 s ago",
    ),
    (
        "other-pid-namespace-stale",
        pid_rec(pidns="pid:[2]"),
        heartbeat(100),
        {},
        Liveness.STALE,
        False,
        "heartbeat 100 s ago",
    ),
    ("no-pidfile", None, heartbeat(1), SCHEDULER, Liveness.DEAD, False, "no .pid file"),
    (
        "elsewhere-starting",
        pid_rec("m2", "boot2", start=NOW - 2),
        None,
        {},
        Liveness.ALIVE,
        False,
        "no heartbeat yet, started 2 s ago",
    ),
    (
        "elsewhere-never-beat",
        pid_rec("m2", "boot2", start=NOW - 600),
        None,
        {},
        Liveness.STALE,
        False,
        "no heartbeat yet",
    ),
    (
        "elsewhere-no-start",
        pid_rec("m2", "boot2", start=None),
        None,
        {},
        Liveness.STALE,
        False,
        "no heartbeat",
    ),
    # The status of an earlier run says exited; the new run has not written one yet.
    (
        "elsewhere-earlier-run-exited",
        pid_rec("m2", "boot2", start=NOW - 1),
        heartbeat(100, "exited", machine="m2", pid=SCHED_PID - 1),
        {},
        Liveness.ALIVE,
        False,
        "started",
    ),
]


@pytest.mark.parametrize(
    ("rec", "status", "procs", "state", "exact", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in LIVENESS_CASES],
)
def test_liveness(
    rec: PidRecord | None,
    status: HostStatus | None,
    procs: dict[int, tuple[float, str]],
    state: Liveness,
    exact: bool,
    reason: str,
) -> None:
    got = liveness(rec, status, NOW, JOBFILE, probe=fake_probe(procs))
    assert (got.state, got.exact) == (state, exact), got.reason
    assert reason in got.reason


def test_liveness_threshold_overrides_stale_after() -> None:
    probe = fake_probe({})
    hb = heartbeat(100, machine="m2")
    assert liveness(ELSEWHERE, hb, NOW, JOBFILE, probe=probe).state is Liveness.STALE
    assert liveness(ELSEWHERE, hb, NOW, JOBFILE, probe=probe, threshold=600).state is Liveness.ALIVE
    assert (
        liveness(
            ELSEWHERE, heartbeat(0, machine="m2"), NOW, JOBFILE, probe=probe, threshold=0
        ).state
        is Liveness.STALE
    )


def test_stale_after() -> None:
    assert [stale_after(i) for i in (None, 0.2, 1.0, 6.0, 30.0)] == [60.0, 60.0, 60.0, 60.0, 300.0]


def test_liveness_of_a_real_process_killed_with_sigkill(tmp_path: Path) -> None:
    """On this machine the verdict is exact: dead as soon as the process is, no waiting for
    a heartbeat to age (a restart right after kill -9 is not refused)."""
    jf = tmp_path / "jobs"
    fake = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(120)", "pbq-single", str(jf)],
        start_new_session=True,
    )
    try:
        start = wait_for(lambda: process_start(fake.pid), what="the process to start")
        rec = PidRecord(
            fake.pid, start, socket.gethostname(), boot_id(), sidefiles.this_pidns(), None
        )
        fresh = HostStatus(
            host="h1",
            machine=rec.machine,
            pid=rec.pid,
            state="running",
            start=start,
            time=time.time(),
        )
        assert liveness(rec, fresh, time.time(), jf).state is Liveness.ALIVE
        assert liveness(rec, fresh, time.time(), tmp_path / "other-jobs").state is Liveness.DEAD
    finally:
        fake.send_signal(signal.SIGKILL)
        fake.wait()
    verdict = liveness(rec, fresh, time.time(), jf)
    assert (verdict.state, verdict.exact) == (Liveness.DEAD, True)


# ------------------------------------------------------------------ .cancel


def test_cancel_requests_are_read_whole_then_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "jobfile.h1.cancel"
    said: list[str] = []
    inbox = sidefiles.CancelInbox(path, allow_group_write=False)
    assert inbox.take(said.append) == set()
    sidefiles.request_cancel(path, 7, allow_group_write=False)
    sidefiles.request_cancel(path, 9, allow_group_write=False)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert inbox.take(said.append) == {7, 9}
    assert inbox.take(said.append) == set(), "unchanged: not read again"
    with open(path, "ab") as f:
        f.write(b"11")  # a request being written: its line is not whole yet
    assert inbox.take(said.append) == {7, 9}
    with open(path, "ab") as f:
        f.write(b"\nnot-a-number\n")
    assert inbox.take(said.append) == {7, 9, 11}
    assert said == []


def test_cancel_requests_in_a_file_others_may_write_are_ignored_and_said_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobfile.h1.cancel"
    path.write_text("3\n")
    os.chmod(path, 0o666)
    said: list[str] = []
    inbox = sidefiles.CancelInbox(path, allow_group_write=False)
    assert inbox.take(said.append) == set()
    assert inbox.take(said.append) == set()
    assert len(said) == 1 and "ignoring cancel requests" in said[0]
