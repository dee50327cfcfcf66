"""Integration tests: real pbq-single processes running real jobs, signals and files."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    alive,
    config,
    hostfile,
    hostfile_path,
    job_pids,
    jobfile,
    lines_of,
    pending_lines,
    proc_state,
    run_cmd,
    session_members,
    start_scheduler,
    status,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

# Where the load limit is not what a test is about, a roomy limit keeps other people's
# load (these tests use the real sensors) from holding the jobs back.
ROOMY = "* linux 8 8 0\n"


def recorder_jobs(tmp: Path, ids: range, rec: str = "rec") -> list[str]:
    return [f"echo {i} >> {tmp / rec}" for i in ids]


def test_example_queue_runs_to_completion(tmp_path: Path) -> None:
    ex = Path(__file__).resolve().parent.parent / "examples"
    hf = tmp_path / "hostfile"
    jf = tmp_path / "jobfile"
    hf.write_bytes((ex / "hostfile").read_bytes())
    jf.write_bytes((ex / "jobfile").read_bytes())
    os.chmod(hf, 0o644)
    os.chmod(jf, 0o644)
    r = run_cmd("pbq-single", "--exit-when-empty", "--output-dir", "-", hf, jf, timeout=60,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    host = next(p.name.split(".")[1] for p in tmp_path.glob("jobfile.*.joblog"))
    joblog = lines_of(hostfile_path(jf, host, "joblog"))
    assert joblog[0].split("\t") == [
        "Seq",
        "Host",
        "Starttime",
        "JobRuntime",
        "Send",
        "Receive",
        "Exitval",
        "Signal",
        "Command",
    ]
    assert len(joblog) == 1 + 7
    errors = lines_of(hostfile_path(jf, host, "error"))
    assert errors == ["ls /this/path/does/not/exist"]
    assert b"hello" in r.stdout
    assert not hostfile_path(jf, host, "pid").exists()
    assert [ln for ln in lines_of(jf) if not ln.startswith("#")] == []


def test_two_schedulers_drain_exactly_once(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, recorder_jobs(tmp_path, range(300)))
    a = start_scheduler(hf, jf, "--exit-when-empty", host="ha")
    b = start_scheduler(hf, jf, "--exit-when-empty", host="hb")
    assert wait_exit(a, 90) == 0
    assert wait_exit(b, 90) == 0
    got = Counter(lines_of(tmp_path / "rec"))
    assert got == Counter(str(i) for i in range(300))
    done = sum(status(jf, h)["done"] for h in ("ha", "hb"))
    assert done == 300


def test_never_more_than_limit_jobs(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG)
    log = tmp_path / "spans"
    jobs = [
        f"sh -c 'echo start $(date +%s.%N) >> {log}; sleep 0.3; echo end $(date +%s.%N) >> {log}'"
        for _ in range(12)
    ]
    jf = jobfile(tmp_path, jobs)
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 60) == 0
    events = sorted(
        (float(t), 1 if kind == "start" else -1) for kind, t in (ln.split() for ln in lines_of(log))
    )
    assert len(events) == 24
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    assert 1 <= peak <= 2


def test_stop_and_cont_reach_forked_children(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sh -c 'sleep 60 & sleep 60 & wait'"])
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("running") == 1, what="job running")
    sid = wait_for(lambda: job_pids(jf, "h1"), what="the job's pid on the ledger")[0]
    wait_for(lambda: len(session_members(sid)) >= 3, what="job and its two children")
    r = run_cmd("pbq", "control", hf, jf, "stop", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    assert b"h1: stopped" in r.stdout
    members = session_members(sid)
    assert len(members) >= 3
    wait_for(
        lambda: all(proc_state(m) == "T" for m in members),
        what="every process of the job stopped (T)",
    )
    assert lines_of(hostfile_path(jf, "h1", "stopped")) == ["sh -c 'sleep 60 & sleep 60 & wait'"]
    assert lines_of(hostfile_path(jf, "h1", "running")) == []
    r = run_cmd("pbq", "control", hf, jf, "cont", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(
        lambda: all(proc_state(m) in ("S", "R") for m in members), what="every process continued"
    )
    r = run_cmd("pbq", "control", hf, jf, "term", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_exit(p)


def test_quit_finishes_running_jobs_and_starts_no_more(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    flag = tmp_path / "go"
    jf = jobfile(
        tmp_path,
        [f"sh -c 'while [ ! -e {flag} ]; do sleep 0.05; done; echo first >> {tmp_path / 'rec'}'"],
    )
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("running") == 1, what="first job running")
    r = run_cmd("pbq", "control", hf, jf, "quit", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    assert status(jf, "h1")["state"] == "quitting"
    r = run_cmd("jobfile-append", jf, "-", input=b"echo second >> rec\n")
    assert r.returncode == 0
    flag.write_text("")
    assert wait_exit(p) == 0
    assert lines_of(tmp_path / "rec") == ["first"]
    assert "echo second >> rec" in lines_of(jf)
    assert not hostfile_path(jf, "h1", "pid").exists()


def test_term_kills_jobs_and_puts_their_lines_back(tmp_path: Path) -> None:
    """term ends every job (SIGKILL for one that ignores SIGTERM) and puts their lines back
    at the front of the jobfile at once: .running/.stopped are left empty, so PBQ's
    ``cat *.running *.stopped >> JOBFILE`` idiom cannot run them twice."""
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 61", "sh -c 'trap \"\" TERM; sleep 62'"])
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("running") == 2, what="two jobs running")
    pids = wait_for(
        lambda: len(found := job_pids(jf, "h1")) == 2 and found, what="both pids on the ledger"
    )
    r = run_cmd("pbq", "control", hf, jf, "term", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_exit(p) == 0
    assert not any(alive(pid) for pid in pids)
    on_machine = lines_of(hostfile_path(jf, "h1", "running")) + lines_of(
        hostfile_path(jf, "h1", "stopped")
    )
    assert on_machine == []
    assert sorted(pending_lines(jf)) == sorted(["sleep 61", "sh -c 'trap \"\" TERM; sleep 62'"])
    log = hostfile_path(jf, "h1", "log").read_text()
    assert log.count("term: putting h1.") == 2
    assert lines_of(hostfile_path(jf, "h1", "error")) == []
    assert not hostfile_path(jf, "h1", "pid").exists()


def test_kill_leaves_jobs_running_and_restart_adopts_them(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    flag = tmp_path / "go"
    jf = jobfile(tmp_path, [f"sh -c 'while [ ! -e {flag} ]; do sleep 0.05; done; exit 3'"])
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("running") == 1, what="job running")
    sched_pid = int(hostfile_path(jf, "h1", "pid").read_text().split()[0])
    job = wait_for(lambda: job_pids(jf, "h1"), what="the job's pid on the ledger")[0]
    r = run_cmd("pbq", "control", hf, jf, "kill", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: not alive(sched_pid), what="scheduler gone")
    assert alive(job)
    # restart: the job is adopted, can be stopped and continued, and its exit status recorded
    p2 = start_scheduler(hf, jf)
    wait_for(
        lambda: status(jf, "h1").get("running") == 1 and status(jf, "h1").get("pid") != sched_pid,
        what="restarted with the job adopted",
    )
    assert "adopted job h1.1" in hostfile_path(jf, "h1", "log").read_text()
    r = run_cmd("pbq", "control", hf, jf, "stop", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: proc_state(job) == "T", what="adopted job stopped")
    r = run_cmd("pbq", "control", hf, jf, "cont", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: proc_state(job) in ("S", "R"), what="adopted job continued")
    flag.write_text("")
    wait_for(
        lambda: len(lines_of(hostfile_path(jf, "h1", "joblog"))) == 2,
        what="joblog row of the adopted job",
    )
    row = lines_of(hostfile_path(jf, "h1", "joblog"))[1].split("\t")
    assert row[6] == "3"
    # .error is appended right after the joblog row
    wait_for(lambda: lines_of(hostfile_path(jf, "h1", "error")), what="the .error line")
    assert lines_of(hostfile_path(jf, "h1", "error")) == [
        f"sh -c 'while [ ! -e {flag} ]; do sleep 0.05; done; exit 3'"
    ]
    run_cmd("pbq", "control", hf, jf, "quit", timeout=40)
    assert wait_exit(p2) == 0
    p.wait(timeout=10)  # the old keeper leaves once its orphan is reaped


def test_failed_and_missing_commands_land_in_error_and_joblog(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    noexec = tmp_path / "noexec.sh"
    noexec.write_text("#!/bin/sh\necho hi\n")
    os.chmod(noexec, 0o644)
    jf = jobfile(
        tmp_path, ["false", "no-such-command-pbq --x", str(noexec), "sh -c 'kill -9 $$'", "true"]
    )
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p) == 0
    rows = {
        r.split("\t")[8]: r.split("\t") for r in lines_of(hostfile_path(jf, "h1", "joblog"))[1:]
    }
    assert rows["false"][6] == "1"
    assert rows["no-such-command-pbq --x"][6] == "127"
    assert rows[str(noexec)][6] == "126"
    assert rows["sh -c 'kill -9 $$'"][7] == "9"
    assert rows["true"][6] == "0"
    assert sorted(lines_of(hostfile_path(jf, "h1", "error"))) == sorted(
        ["false", "no-such-command-pbq --x", str(noexec), "sh -c 'kill -9 $$'"]
    )
    st = status(jf, "h1")
    assert (st["done"], st["failed"]) == (1, 4)


def test_environment_and_output_dir(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* sparc64 8 8 0\n")
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["env", "sh -c 'echo oops >&2; exit 0'"])
    p = start_scheduler(hf, jf, "--exit-when-empty", "--output-dir", tmp_path / "out", host="node7")
    assert wait_exit(p) == 0
    env = dict(
        ln.split("=", 1)
        for ln in (tmp_path / "out" / "node7.1.out").read_text().splitlines()
        if "=" in ln
    )
    assert env["PBQ_HOST"] == "node7"
    assert env["PBQ_ARCH"] == "sparc64"
    assert env["PBQ_JOB_ID"] == "node7.1"
    assert env["PBQ_JOBFILE"] == str(jf)
    assert (tmp_path / "out" / "node7.2.err").read_text() == "oops\n"
    # niceness 19 and its own session: checked on a live job
    jobfile(tmp_path, ["sleep 30"], name="jobfile2")
    jf2 = tmp_path / "jobfile2"
    p = start_scheduler(hf, jf2, host="node8")
    wait_for(lambda: status(jf2, "node8").get("running") == 1, what="job running")
    pid = wait_for(lambda: job_pids(jf2, "node8"), what="the job's pid on the ledger")[0]
    assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    autogroup = Path(f"/proc/{pid}/autogroup")
    if autogroup.exists():  # the job's session is a scheduling group: nice 19 as well
        assert autogroup.read_text().split()[-2:] == ["nice", "19"]
    assert os.getsid(pid) == pid
    assert os.getpriority(os.PRIO_PROCESS, p.pid) == 0  # the scheduler itself stays responsive
    run_cmd("pbq", "control", hf, jf2, "term", timeout=40)
    wait_exit(p)


def test_jobs_appended_while_running_are_picked_up(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, [])
    p = start_scheduler(hf, jf)
    more = tmp_path / "more"
    more.write_text("".join(f"echo {i} >> {tmp_path / 'rec'}\n" for i in range(20)))
    r = run_cmd("jobfile-append", jf, more)
    assert r.returncode == 0, r.stderr
    r = run_cmd("jobfile-append", jf, "-", input=f"echo 20 >> {tmp_path / 'rec'}\n".encode())
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(lines_of(tmp_path / "rec")) == 21, what="21 appended jobs run")
    assert sorted(map(int, lines_of(tmp_path / "rec"))) == list(range(21))
    wait_for(
        lambda: [ln for ln in lines_of(jf) if ln.strip()] == [],
        what="jobfile compacted to nothing pending",
    )
    run_cmd("pbq", "control", hf, jf, "quit", timeout=40)
    assert wait_exit(p) == 0


def test_control_check_and_load(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 60"])
    start_scheduler(hf, jf, host="alpha")
    wait_for(lambda: status(jf, "alpha").get("running") == 1, what="job running")
    r = run_cmd("pbq", "control", hf, jf, "check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith("alpha: alive")
    r = run_cmd("pbq", "control", hf, jf, "load")
    out = r.stdout.decode().splitlines()
    assert out[0].split()[:5] == ["HOST", "STATE", "LOAD", "FOREIGN", "LIMIT"]
    assert out[1].split()[0] == "alpha"
    r = run_cmd("pbq", "control", hf, jf, "load", "--json")
    rows = json.loads(r.stdout)
    assert rows[0]["host"] == "alpha" and rows[0]["running"] == 1 and rows[0]["limit"] == 8
    r = run_cmd("pbq", "control", hf, jf, "check", "--json")
    assert json.loads(r.stdout)[0]["condition"] == "alive"
    # kill: the .pid stays behind and check reports the host dead
    run_cmd("pbq", "control", hf, jf, "kill", timeout=40)
    r = run_cmd("pbq", "control", hf, jf, "check")
    assert r.returncode == 1
    assert r.stdout.decode().startswith("alpha: dead")
    r = run_cmd("pbq", "control", hf, jf, "recover", "alpha")
    assert r.returncode == 0, r.stderr
    assert "put 1 job(s) back" in r.stdout.decode()
    assert "sleep 60" in lines_of(jf)


def test_second_scheduler_for_same_host_is_refused(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, [])
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("state") == "running", what="first scheduler up")
    r = run_cmd("pbq-single", "--host", "h1", hf, jf)
    assert r.returncode == 2
    assert b"already running" in r.stderr
    assert b"Traceback" not in r.stderr
    run_cmd("pbq", "control", hf, jf, "quit", timeout=40)
    assert wait_exit(p) == 0


@pytest.mark.parametrize(
    ("hosttext", "jobtext", "mode", "expect"),
    [
        ("* linux two 2 0\n", "true\n", 0o644, b"hostfile:1: max must be a non-negative number"),
        ("other linux 2 2 0\n", "true\n", 0o644, b"known hosts: other"),
        ("* linux 2 2 0\n", None, 0o644, b"no such jobfile"),
        ("* linux 2 2 0\n", "true\n", 0o666, b"world-writable jobfile"),
        ("* linux 2 2 0\n", "true\n", 0o664, b"group-writable jobfile"),
    ],
    ids=["bad-number", "unknown-host", "missing-jobfile", "world-writable", "group-writable"],
)
def test_bad_input_is_one_clear_error(
    tmp_path: Path, hosttext: str, jobtext: str | None, mode: int, expect: bytes
) -> None:
    hf = hostfile(tmp_path, hosttext)
    jf = tmp_path / "jobfile"
    if jobtext is not None:
        jobfile(tmp_path, jobtext)
        os.chmod(jf, mode)
        if mode & 0o020 and os.stat(jf).st_gid == os.getgid():
            # The owner's own (private) group may write; another group may not.
            try:
                os.chown(jf, -1, 1 if os.getgid() != 1 else 2)
            except PermissionError:
                pytest.skip("needs root to put the jobfile in another group")
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf)
    assert r.returncode == 2
    assert expect in r.stderr
    assert b"Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    if jobtext is not None:
        assert jf.read_text() == jobtext  # nothing taken, nothing lost


def test_group_writable_allowed_with_flag(tmp_path: Path) -> None:
    hf = hostfile(tmp_path)
    jf = jobfile(tmp_path, ["true"])
    os.chmod(jf, 0o664)
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", "--allow-group-write", hf, jf)
    assert r.returncode == 0, r.stderr


def test_unknown_control_command_is_a_usage_error(tmp_path: Path) -> None:
    hf = hostfile(tmp_path)
    jf = jobfile(tmp_path, [])
    r = run_cmd("pbq", "control", hf, jf, "explode")
    assert r.returncode == 2
    assert b"unknown command 'explode'" in r.stderr


def test_strange_lines_are_run_not_crashed_on(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    long_arg = "x" * (1 << 20)
    data = (
        b"echo caf\xe9 \xff\xfe >> rec\n"
        + f"true {long_arg}\n".encode()
        + f"echo {long_arg} > /dev/null\n".encode()
        + b"echo end >> rec\n"
    )
    jf = jobfile(tmp_path, data)
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 60) == 0
    assert (tmp_path / "rec").read_bytes() == b"caf\xe9 \xff\xfe\nend\n"
    rows = lines_of(hostfile_path(jf, "h1", "joblog"))[1:]
    assert len(rows) == 4
    # a 1 MB single argument is too long for the kernel: a failed job (126), not a crash
    errors = hostfile_path(jf, "h1", "error").read_bytes().split(b"\n")
    assert f"echo {long_arg} > /dev/null".encode() in errors


def test_sigint_terminates_like_term(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 63"])
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("running") == 1, what="job running")
    pid = wait_for(lambda: job_pids(jf, "h1"), what="the job's pid on the ledger")[0]
    sched = int(hostfile_path(jf, "h1", "pid").read_text().split()[0])
    os.kill(sched, signal.SIGINT)
    assert wait_exit(p) == 0
    assert not alive(pid)
    assert lines_of(hostfile_path(jf, "h1", "running")) == []
    assert pending_lines(jf) == ["sleep 63"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
