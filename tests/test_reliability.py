"""Reliability: exactly once under concurrency, no loss under SIGKILL, restart recovery.

Real ``pbq-single`` processes, real signals, real files.  Jobs record their id by
appending it to a file (``echo 17 >> /abs/rec``), so a test can count how often each job
really ran.  A duplicate is allowed only where pbq admits it: a job whose line the
``.log`` names as a possible duplicate or as put back after its process was found gone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pbqtest import (
    FAST_CONFIG,
    alive,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    kill_all,
    lines_of,
    proc_state,
    processes_mentioning,
    run_cmd,
    runner_of,
    start_scheduler,
    status,
    wait_exit,
    wait_for,
)

from pbq.sidefiles import read_pidfile, write_pidfile

pytestmark = pytest.mark.timeout(240)

# Lines the .log uses when a job may run (or may have run) more than once.
DUPLICATE_NOTES = ("POSSIBLE DUPLICATE", "putting it back", "back at the front")
ID_RE = re.compile(rb"echo (\d+) >> ")


# ------------------------------------------------------------------ helpers


def rec_line(tmp: Path, i: int, rec: str = "rec") -> str:
    return f"echo {i} >> {tmp / rec}"


def recorded(path: Path) -> Counter[int]:
    return Counter(int(x) for x in lines_of(path))


def sched_pid(jf: Path, host: str) -> int | None:
    """The scheduler's pid (first line of ``.pid``), if the file is there."""
    try:
        return int(hostfile_path(jf, host, "pid").read_text().split("\n")[0])
    except (OSError, ValueError):
        return None


def scheduler_of(p: subprocess.Popen) -> int | None:
    """The scheduler: the process started as pbq-single, while it runs."""
    return p.pid if p.poll() is None else None


def log_bytes(jf: Path, host: str) -> bytes:
    out = b""
    path = hostfile_path(jf, host, "log")
    for p in sorted(path.parent.glob(path.name + ".*"), reverse=True) + [path]:
        if p.name == path.name or p.name[len(path.name) + 1 :].isdigit():
            try:
                out += p.read_bytes()
            except FileNotFoundError:
                pass
    return out


def admitted_duplicates(jf: Path, hosts: list[str]) -> Counter[int]:
    """How often the .logs say each recorder job may run again."""
    out: Counter[int] = Counter()
    for host in hosts:
        for line in log_bytes(jf, host).split(b"\n"):
            if any(note.encode() in line for note in DUPLICATE_NOTES):
                for m in ID_RE.finditer(line):
                    out[int(m.group(1))] += 1
    return out


def joblog_commands(jf: Path, host: str) -> list[bytes]:
    try:
        raw = hostfile_path(jf, host, "joblog").read_bytes()
    except FileNotFoundError:
        return []
    rows = [r for r in raw.split(b"\n")[1:] if r]
    return [r.split(b"\t", 8)[8] for r in rows]


def pending_job_lines(jf: Path) -> list[bytes]:
    """Job lines of JOBFILE after the consumed offset of ``JOBFILE.queue``."""
    try:
        offset = int(json.loads((jf.parent / f"{jf.name}.queue").read_text()).get("offset", 0))
    except (OSError, ValueError):
        offset = 0
    data = jf.read_bytes()[offset:]
    return [ln for ln in data.split(b"\n") if ln.strip() and not ln.strip().startswith(b"#")]


def host_jobs(jf: Path, host: str) -> list[dict]:
    try:
        return json.loads(hostfile_path(jf, host, "state").read_text()).get("jobs", [])
    except (OSError, ValueError):
        return []


def running_jobs(jf: Path) -> dict[str, int]:
    """Job id -> pid of the live jobs of JOBFILE (session leaders with its PBQ_JOBFILE)."""
    out = {}
    for p in psutil.process_iter(["pid"]):
        try:
            env = p.environ()
            if (
                env.get("PBQ_JOBFILE") == str(jf)
                and os.getsid(p.pid) == p.pid
                and p.status() != psutil.STATUS_ZOMBIE
            ):
                out[env["PBQ_JOB_ID"]] = p.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, KeyError, OSError):
            continue
    return out


def kill_quietly(pid: int | None, sig: int = signal.SIGKILL) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def drain(hf: Path, jf: Path, hosts: list[str], timeout: float = 60) -> None:
    """Restart each host with --exit-when-empty, one after the other, until all is done."""
    for host in hosts:
        p = start_scheduler(hf, jf, "--exit-when-empty", host=host)
        assert wait_exit(p, timeout) == 0, (jf.parent / f"sched-{host}.out").read_text(
            errors="replace"
        )


# ------------------------------------------------------------------ exactly once


def test_four_schedulers_and_two_appenders_run_every_job_exactly_once(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, FAST_CONFIG.replace("compact_after = 0.5", "compact_after = 0.05"))
    rec = tmp_path / "rec"
    first, per_appender, batches = 1000, 600, 12
    total = first + 2 * per_appender
    jf = jobfile(tmp_path, [rec_line(tmp_path, i) for i in range(first)])
    hosts = ["h1", "h2", "h3", "h4"]
    procs = [start_scheduler(hf, jf, host=h) for h in hosts]

    errors: list[str] = []

    def appender(base: int) -> None:
        size = per_appender // batches
        for b in range(batches):
            ids = range(base + b * size, base + (b + 1) * size)
            data = "".join(rec_line(tmp_path, i) + "\n" for i in ids).encode()
            r = run_cmd("jobfile-append", jf, "-", input=data)
            if r.returncode != 0:
                errors.append(r.stderr.decode(errors="replace"))

    threads = [
        threading.Thread(target=appender, args=(first + k * per_appender,)) for k in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    wait_for(
        lambda: sum(recorded(rec).values()) >= total, timeout=90, what=f"{total} jobs recorded"
    )
    r = run_cmd("pbq", "control", hf, jf, "quit", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for p in procs:
        assert wait_exit(p, 60) == 0
    # Nothing may be left over to run a second time: a fresh host finds nothing to do.
    drain(hf, jf, ["h5"])
    got = recorded(rec)
    assert got == Counter(range(total)), {i: n for i, n in got.items() if n != 1}
    rows = [c for h in [*hosts, "h5"] for c in joblog_commands(jf, h)]
    assert len(rows) == total
    assert sum(status(jf, h).get("done", 0) for h in hosts) == total
    assert all(len(status(jf, h)) and status(jf, h)["done"] > 0 for h in hosts), (
        "every scheduler took part"
    )
    assert pending_job_lines(jf) == []
    assert not any(
        hostfile_path(jf, h, "error").exists() and lines_of(hostfile_path(jf, h, "error"))
        for h in hosts
    )


# ------------------------------------------------------------------ SIGKILL rounds


def _kill_round_jobs(tmp: Path, ids: range) -> list[str]:
    """Tiny jobs (lots of claiming and compaction) mixed with some that are in flight longer."""
    rec = tmp / "rec"
    out = []
    for i in ids:
        kind = i % 6
        if kind == 0:
            out.append(f"sh -c 'echo {i} >> {rec}; sleep 0.2'")  # records first, then runs on
        elif kind == 1:
            out.append(f"sh -c 'sleep 0.1; echo {i} >> {rec}'")  # records at its end
        else:
            out.append(f"echo {i} >> {rec}")
        if i % 2:
            out.append("true")
    return out


def test_sigkill_rounds_lose_nothing_and_admit_every_duplicate(tmp_path: Path) -> None:
    rnd = random.Random(int(os.environ.get("PBQ_TEST_SEED", "0")) or None)
    seed = rnd.randrange(1 << 30)
    rnd.seed(seed)
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, FAST_CONFIG.replace("compact_after = 0.5", "compact_after = 0.03"))
    rec = tmp_path / "rec"
    next_id = 300
    jf = jobfile(tmp_path, _kill_round_jobs(tmp_path, range(next_id)))
    hosts = ["ka", "kb"]
    scheds: dict[str, subprocess.Popen] = {h: start_scheduler(hf, jf, host=h) for h in hosts}
    old_runners: list[int] = []
    stop = threading.Event()
    append_errors: list[str] = []

    def appender() -> None:
        nonlocal next_id
        while not stop.is_set():
            if len(pending_job_lines(jf)) > 200:
                time.sleep(0.05)  # keep the queue short: the rounds are about claiming, not volume
                continue
            ids = range(next_id, next_id + 40)
            next_id += 40
            data = "".join(line + "\n" for line in _kill_round_jobs(tmp_path, ids)).encode()
            r = run_cmd("jobfile-append", jf, "-", input=data)
            if r.returncode != 0:
                append_errors.append(r.stderr.decode(errors="replace"))
                return

    t = threading.Thread(target=appender)
    t.start()
    rounds = 24
    both_rounds = 0
    try:
        for rnd_no in range(rounds):
            host = rnd.choice(hosts)
            sched = scheds[host]
            pid = sched.pid
            # Kill at a random instant: while jobs run, lines are claimed, the jobfile is
            # compacted -- or while a restarted scheduler is still recovering.
            time.sleep(rnd.uniform(0.0, 0.6))
            runner = runner_of(pid)
            kill_both = rnd_no % 4 == 3  # a crash of the whole machine's pbq: orphan exits are lost
            if kill_both:
                both_rounds += 1
                if runner is not None:
                    kill_quietly(runner)
            kill_quietly(pid)
            sched.wait(timeout=10)
            if runner is not None and not kill_both:
                old_runners.append(runner)  # it lives on until its jobs are reaped
            scheds[host] = start_scheduler(hf, jf, host=host)
    finally:
        stop.set()
        t.join(timeout=60)
    assert not append_errors, append_errors
    assert both_rounds >= 4
    # Let the last schedulers finish what they have, then drain what is left.
    for host in hosts:
        wait_for(
            lambda h=host: status(jf, h).get("pid") == scheduler_of(scheds[h]) == sched_pid(jf, h),
            timeout=20,
            what=f"scheduler of {host} up",
        )
    r = run_cmd("pbq", "control", hf, jf, "quit", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for host in hosts:
        wait_exit(scheds[host], 60)
    drain(hf, jf, hosts)
    drain(hf, jf, hosts)  # a put-back by the second host's recovery is run by itself; check again
    for runner in old_runners:
        # each old runner leaves once its jobs are reaped
        wait_for(lambda r=runner: not alive(r), timeout=30, what=f"old runner {runner} gone")

    total = range(next_id)
    got = recorded(rec)
    missing = [i for i in total if got[i] == 0]
    assert not missing, f"seed {seed}: jobs lost: {missing[:20]}"
    admitted = admitted_duplicates(jf, hosts)
    extra = {i: n for i, n in got.items() if n > 1 + admitted[i]}
    assert not extra, (
        f"seed {seed}: duplicates not named in the .log: {extra}\n"
        + _log_lines_about(jf, hosts, extra)
    )
    assert pending_job_lines(jf) == []
    for host in hosts:
        assert host_jobs(jf, host) == []
        # Only a job whose outcome could not be known (its runner was killed too) may be in
        # .error here, and the .log must say so.
        log = hostfile_path(jf, host, "log").read_text(errors="replace")
        unknown = {ln.split(": ", 1)[1] for ln in log.splitlines() if "outcome UNKNOWN" in ln}
        errors = lines_of(hostfile_path(jf, host, "error"))
        assert set(errors) <= unknown, (
            f"seed {seed}: failed without reason: {set(errors) - unknown}"
        )
        if errors:
            assert both_rounds > 0, f"seed {seed}: unknown outcomes although no runner was killed"


def _log_lines_about(jf: Path, hosts: list[str], ids: dict[int, int]) -> str:
    out = []
    for host in hosts:
        for line in log_bytes(jf, host).decode(errors="replace").split("\n"):
            if any(f"echo {i} >> " in line for i in ids) or "scheduler for host" in line:
                out.append(f"{host}: {line}")
    return "\n".join(out[-60:])


# ------------------------------------------------------------------ kill, then adopt


def test_kill_then_restart_adopts_stops_continues_and_records_exits(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 50 50 0\n")  # no stops by load: this test stops jobs itself
    config(tmp_path, FAST_CONFIG)
    rec = tmp_path / "rec"
    flags = [tmp_path / f"go{i}" for i in range(3)]

    def waiter(i: int, tail: str) -> str:
        return (
            f"sh -c 'echo start{i} >> {rec}; while [ ! -e {flags[i]} ]; do sleep 0.1; done; {tail}'"
        )

    lines = [waiter(0, "exit 3"), waiter(1, "exit 0"), waiter(2, "kill -TERM $$")]
    jf = jobfile(tmp_path, lines)
    p = start_scheduler(hf, jf)
    wait_for(lambda: status(jf, "h1").get("running") == 3, what="three jobs running")
    wait_for(
        lambda: len(lines_of(rec)) == 3 and len(running_jobs(jf)) == 3, what="three jobs started"
    )
    old = sched_pid(jf, "h1")
    by_id = running_jobs(jf)
    pids = {lines[i]: by_id[f"h1.{i + 1}"] for i in range(3)}
    runner = runner_of(p.pid)
    assert runner is not None
    r = run_cmd("pbq", "control", hf, jf, "kill", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_exit(p, 30)  # the process started as pbq-single is the scheduler: it is gone
    assert old == p.pid
    assert all(alive(pid) for pid in pids.values()), "kill must leave the jobs running"
    assert alive(runner), "the job runner stays while its jobs run"
    # Job 1 ends while no scheduler runs: only the runner sees its exit status.
    flags[1].write_text("")
    wait_for(lambda: not alive(pids[lines[1]]), what="job 1 ended")
    p2 = start_scheduler(hf, jf)
    wait_for(
        lambda: (
            sched_pid(jf, "h1") not in (None, old)
            and status(jf, "h1").get("pid") == sched_pid(jf, "h1")
        ),
        what="restarted",
    )
    log = hostfile_path(jf, "h1", "log")
    wait_for(lambda: log.read_text().count("adopted job") == 2, what="two jobs adopted")
    rows = wait_for(
        lambda: [r.split("\t") for r in lines_of(hostfile_path(jf, "h1", "joblog"))[1:]],
        what="job 1 in the joblog",
    )
    assert [(r[6], r[7], r[8]) for r in rows] == [("0", "0", lines[1])]
    # The adopted jobs obey stop and cont (they are not this scheduler's children).
    r = run_cmd("pbq", "control", hf, jf, "stop", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    for i in (0, 2):
        wait_for(lambda i=i: proc_state(pids[lines[i]]) == "T", what=f"adopted job {i} stopped")
    wait_for(
        lambda: (
            sorted(lines_of(hostfile_path(jf, "h1", "stopped"))) == sorted([lines[0], lines[2]])
        ),
        what=".stopped lists the two",
    )
    r = run_cmd("pbq", "control", hf, jf, "cont", timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    for i in (0, 2):
        wait_for(
            lambda i=i: proc_state(pids[lines[i]]) in ("S", "R"), what=f"adopted job {i} continued"
        )
    # Their real exit statuses reach the joblog: exit 3, and death by SIGTERM.
    flags[0].write_text("")
    flags[2].write_text("")
    wait_for(
        lambda: len(lines_of(hostfile_path(jf, "h1", "joblog"))) == 4,
        what="joblog rows of the adopted jobs",
    )
    rows = {
        r.split("\t")[8]: r.split("\t") for r in lines_of(hostfile_path(jf, "h1", "joblog"))[1:]
    }
    assert (rows[lines[0]][6], rows[lines[0]][7]) == ("3", "0")
    assert rows[lines[2]][7] == str(int(signal.SIGTERM))
    # .error is appended right after the joblog, the status at the next tick: poll for them.
    wait_for(
        lambda: len(lines_of(hostfile_path(jf, "h1", "error"))) >= 2, what=".error of the two"
    )
    assert sorted(lines_of(hostfile_path(jf, "h1", "error"))) == sorted([lines[0], lines[2]])
    st = wait_for(
        lambda: (s := status(jf, "h1")).get("done", 0) + s.get("failed", 0) >= 3 and s,
        what="the status counting the three ends",
    )
    assert (st["done"], st["failed"]) == (1, 2)
    r = run_cmd("pbq", "control", hf, jf, "quit", timeout=40)
    assert wait_exit(p2) == 0
    wait_for(
        lambda: not alive(runner), timeout=30, what="the old runner leaves once its jobs are reaped"
    )
    assert sorted(lines_of(rec)) == ["start0", "start1", "start2"], "no job ran twice"


# ------------------------------------------------------------------ simulated reboot


@pytest.mark.parametrize("boot", ["same-boot", "new-boot"])
def test_simulated_reboot_requeues_gone_jobs_once(tmp_path: Path, boot: str) -> None:
    """Power loss: scheduler, runner and jobs all die; on restart the ``.pid`` names a pid
    that now belongs to an unrelated process, and a job's pid was reused too."""
    hf = hostfile(tmp_path, "* linux 50 50 0\n")
    config(tmp_path, FAST_CONFIG)
    rec = tmp_path / "rec"
    flag = tmp_path / "go"
    lines = [
        f"sh -c 'while [ ! -e {flag} ]; do sleep 0.1; done; echo {i} >> {rec}'" for i in range(3)
    ]
    lines.append(f"echo 3 >> {rec}")
    jf = jobfile(tmp_path, lines)
    p = start_scheduler(hf, jf)
    wait_for(
        lambda: len(running_jobs(jf)) == 3 and lines_of(rec) == ["3"],
        what="three jobs running, one done",
    )
    running_view = hostfile_path(jf, "h1", "running")
    wait_for(
        lambda: sorted(lines_of(running_view)) == sorted(lines[:3]), what=".running lists the three"
    )
    jobs = running_jobs(jf)
    sched = sched_pid(jf, "h1")
    # The crash: everything dies at once.
    runner = runner_of(p.pid)
    assert sched == p.pid and runner is not None
    kill_quietly(runner)
    kill_quietly(p.pid)
    for pid in jobs.values():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=10)
    for pid in [sched, runner, *jobs.values()]:
        wait_for(lambda pid=pid: not alive(pid), timeout=30, what=f"pid {pid} gone")
    # After the "reboot" the pids are someone else's: unrelated processes that must not
    # be mistaken for the scheduler or for a job (and must not be signalled).
    impostors = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2)]
    try:
        pidfile = hostfile_path(jf, "h1", "pid")
        info = read_pidfile(pidfile)
        assert info is not None
        info = dataclasses.replace(info, pid=impostors[0].pid)
        if boot == "new-boot":
            # written during an earlier boot, an hour ago, with its last heartbeat then
            info = dataclasses.replace(
                info, boot="00000000-0000-4000-8000-000000000000", start=time.time() - 3600
            )
            st = status(jf, "h1")
            st["time"] = time.time() - 3600
            (jf.parent / f"{jf.name}.h1.status").write_text(json.dumps(st))
        write_pidfile(pidfile, info, fsync=False)
        state_path = hostfile_path(jf, "h1", "state")
        state = json.loads(state_path.read_text())
        first = next(j for j in state["jobs"] if j["line"] == lines[0])
        first["pid"] = impostors[1].pid  # pid reused, start time differs
        first["pid_start"] = first.get("pid_start") or 1.0
        state_path.write_text(json.dumps(state))
        flag.write_text("")
        p2 = start_scheduler(hf, jf, "--exit-when-empty")
        assert wait_exit(p2, 60) == 0, (tmp_path / "sched-h1.out").read_text()
        assert all(i.poll() is None and proc_state(i.pid) in ("S", "R") for i in impostors), (
            "impostors untouched"
        )
    finally:
        for i in impostors:
            i.kill()
            i.wait()
    assert recorded(rec) == Counter(range(4)), "each job ran exactly once"
    log = hostfile_path(jf, "h1", "log").read_text()
    assert "stale" in log or "old heartbeat" in log
    for line in lines[:3]:
        assert log.count(f"putting it back at the front: {line}") == 1, log
    assert lines_of(hostfile_path(jf, "h1", "running")) == []
    assert host_jobs(jf, "h1") == []
    assert sorted(joblog_commands(jf, "h1")) == sorted(ln.encode() for ln in lines)
    assert pending_job_lines(jf) == []


# ------------------------------------------------------------------ random jobfiles, end to end


_line = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"",
            b"#x",
            b"  # c",
            b"\r",
            b"true",
            b"false",
            b"\t true\t",
            b"echo 'a",
            b"\x00",
            b"\xff\xfe",
        ]
    ),
)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.one_of(st.binary(max_size=400), st.lists(_line, max_size=12).map(b"\n".join)))
def test_random_jobfile_end_to_end(tmp_path_factory: pytest.TempPathFactory, body: bytes) -> None:
    tmp = tmp_path_factory.mktemp("rnd")
    try:
        hf = hostfile(tmp, "* linux 4 4 0\n")
        config(tmp, FAST_CONFIG)
        jf = jobfile(tmp, body)
        empty_bin = tmp / "bin"
        empty_bin.mkdir()
        # Jobs find no programs through PATH: random bytes cannot start anything real.
        env = {"PATH": str(empty_bin), "LC_ALL": "C"}
        r = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve().parent.parent / "bin" / "pbq-single"),
                "--host",
                "h1",
                "--exit-when-empty",
                "--output-dir",
                str(tmp / "out"),
                str(hf),
                str(jf),
            ],
            capture_output=True,
            timeout=90,
            env=env,
            cwd=tmp,
        )
        assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
        assert r.returncode in (0, 2), r.stderr
        if r.returncode == 2:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert r.stderr.startswith(b"pbq-single: ")
            return
        *complete, tail = body.split(b"\n")  # an unterminated last line is never run
        taken = [
            ln.rstrip(b"\r") for ln in complete if ln.strip() and not ln.strip().startswith(b"#")
        ]
        assert sorted(joblog_commands(jf, "h1")) == sorted(ln.replace(b"\t", b" ") for ln in taken)
        assert (
            pending_job_lines(jf)
            == [tail][: bool(tail.strip() and not tail.strip().startswith(b"#"))]
        )
        assert host_jobs(jf, "h1") == []
    finally:
        kill_all(processes_mentioning(str(tmp)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
