"""Faults: crash states, SIGKILL at exact points, retries, recover, requeue-errors, full
disk, and who may steer a scheduler.

Crash states are built by hand (``JOBFILE.queue`` with a pending change, ``JOBFILE.HOST.state``
with committed and uncommitted operations) and handed to a real ``pbq-single``.  Exact
kill points use a real scheduler process whose code kills itself with SIGKILL when it
reaches a named function (installed before pbq-single forks its keeper, so the keeper is
the same as always and only the scheduler dies).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from pbqtest import (
    BIN,
    FAST_CONFIG,
    ROOT,
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

pytestmark = pytest.mark.timeout(180)

IS_ROOT = os.geteuid() == 0
MARK_BYTES = 32  # JOBFILE.queue keeps this many bytes before the offset as a fingerprint
DUPLICATE_NOTES = ("POSSIBLE DUPLICATE", "putting it back", "back at the front")


# ------------------------------------------------------------------ helpers


def rec_line(tmp: Path, i: int) -> str:
    return f"echo {i} >> {tmp / 'rec'}"


def recorded(tmp: Path) -> Counter[int]:
    return Counter(int(x) for x in lines_of(tmp / "rec"))


def joblog_rows(jf: Path, host: str) -> list[list[str]]:
    return [r.split("\t") for r in lines_of(hostfile_path(jf, host, "joblog"))[1:]]


def pending_job_lines(jf: Path) -> list[str]:
    try:
        offset = int(json.loads((jf.parent / f"{jf.name}.queue").read_text()).get("offset", 0))
    except (OSError, ValueError):
        offset = 0
    data = jf.read_bytes()[offset:].decode(errors="surrogateescape")
    return [ln for ln in data.split("\n") if ln.strip() and not ln.strip().startswith("#")]


def state_jobs(jf: Path, host: str) -> list[dict]:
    try:
        return json.loads(hostfile_path(jf, host, "state").read_text()).get("jobs", [])
    except (OSError, ValueError):
        return []


def log_text(jf: Path, host: str) -> str:
    try:
        return hostfile_path(jf, host, "log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def admitted(jf: Path, host: str, line: str) -> int:
    """How often the .log says ``line`` was put back / may run twice."""
    return sum(
        1
        for ln in log_text(jf, host).split("\n")
        if line in ln and any(n in ln for n in DUPLICATE_NOTES)
    )


def live_jobs(jf: Path, host: str | None = None) -> dict[str, int]:
    """Job id -> pid of the live jobs of JOBFILE (found by their environment)."""
    out = {}
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError, KeyError):
            env = p.environ()
            if (
                env.get("PBQ_JOBFILE") == str(jf)
                and os.getsid(p.pid) == p.pid
                and p.status() != psutil.STATUS_ZOMBIE
                and host in (None, env["PBQ_HOST"])
            ):
                out[env["PBQ_JOB_ID"]] = p.pid
    return out


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def write_queue(
    jf: Path,
    *,
    offset: int,
    ops: dict[str, int],
    content: bytes | None = None,
    pending: dict | None = None,
) -> None:
    """``JOBFILE.queue`` as pbq commits it; ``content`` is the JOBFILE the record describes
    (default: the current one)."""
    data = jf.read_bytes() if content is None else content
    rec = {
        "version": 1,
        "offset": offset,
        "size": len(data),
        "mark": data[max(0, offset - MARK_BYTES) : offset].hex(),
        "ops": ops,
        "taken_since": time.time() if offset else None,
        "pending": pending,
    }
    (jf.parent / f"{jf.name}.queue").write_text(json.dumps(rec))


def job(
    seq: int,
    line: str,
    op: int,
    state: str,
    pid: int | None = None,
    start: float | None = None,
    front: bool = True,
) -> dict:
    return {
        "seq": seq,
        "line": line,
        "op": op,
        "state": state,
        "pid": pid,
        "pid_start": start,
        "started": time.time() - 5 if pid else None,
        "stopped_by": None,
        "tries": 0,
        "evicting": False,
        "requeue_front": front,
        "cluster_id": None,
    }


def write_state(jf: Path, host: str, jobs: list[dict], next_op: int) -> None:
    seqs = [j["seq"] for j in jobs] or [0]
    st = {
        "version": 1,
        "host": host,
        "next_seq": max(seqs) + 1,
        "next_op": next_op,
        "done": 0,
        "failed": 0,
        "jobs": jobs,
    }
    hostfile_path(jf, host, "state").write_text(json.dumps(st))


def run_single(
    hf: Path, jf: Path, *args: str, host: str = "h1", timeout: float = 60
) -> subprocess.CompletedProcess:
    return run_cmd(
        "pbq-single",
        "--host",
        host,
        "--exit-when-empty",
        *args,
        hf,
        jf,
        timeout=timeout,
        cwd=jf.parent,
    )


# ------------------------------------------------------------------ crash states, built by hand

FAKE_START = 12345.67  # a process start time no live process has


def _scenario(name: str, tmp: Path) -> tuple[Path, Counter[int], list[str]]:
    """Build crash state ``name``; return (jobfile, expected run counts, lines the .log must
    name as put back)."""
    jf = tmp / "jobfile"
    done = [rec_line(tmp, 100), rec_line(tmp, 101)]  # taken and finished long ago by h2
    rest = [rec_line(tmp, i) for i in range(5)]
    back = rec_line(tmp, 9)  # a line h1 holds and must give back
    P = "".join(x + "\n" for x in done).encode()
    R = "".join(x + "\n" for x in rest).encode()
    B = (back + "\n").encode()
    expect = Counter(range(5))
    must_log: list[str] = []
    tmpfile = tmp / ".jobfile.compact.tmp"
    if name == "uncommitted-take":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P), ops={"h1": 4, "h2": 3})
        write_state(jf, "h1", [job(1, rest[0], 5, "starting")], 6)
    elif name == "uncommitted-claim":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P), ops={"h1": 4, "h2": 3})
        write_state(jf, "h1", [job(1, rest[0], 5, "claimed"), job(2, rest[1], 5, "claimed")], 6)
    elif name == "committed-claim":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P) + len(rest[0]) + 1, ops={"h1": 5, "h2": 3})
        write_state(jf, "h1", [job(1, rest[0], 5, "claimed")], 6)
    elif name == "committed-start-unknown":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P) + len(rest[0]) + 1, ops={"h1": 5, "h2": 3})
        write_state(jf, "h1", [job(1, rest[0], 5, "starting")], 6)
        must_log = [rest[0]]
    elif name == "running-gone":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P) + len(rest[0]) + 1, ops={"h1": 5, "h2": 3})
        write_state(jf, "h1", [job(1, rest[0], 5, "running", dead_pid(), FAKE_START)], 6)
        must_log = [rest[0]]
    elif name == "exit-recorded-by-runner":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P) + len(rest[0]) + 1, ops={"h1": 5, "h2": 3})
        pid = dead_pid()
        write_state(jf, "h1", [job(1, rest[0], 5, "running", pid, FAKE_START)], 6)
        hostfile_path(jf, "h1", "exits").write_text(
            json.dumps(
                {
                    "pid": pid,
                    "start": FAKE_START,
                    "status": 0,
                    "time": time.time(),
                    "cpu": 0,
                    "maxrss": 0,
                }
            )
            + "\n"
        )
        expect[0] = 0  # it ran before the crash; its outcome is known: not again
    elif name == "compaction-decided":
        jobfile(tmp, P + R)
        write_queue(
            jf,
            offset=len(P),
            ops={"h2": 3},
            pending={"kind": "replace", "size": len(R), "host": None, "op": None},
        )
        tmpfile.write_bytes(R)
    elif name == "compaction-renamed":
        jobfile(tmp, R)  # renamed already; the record still describes the old file
        write_queue(
            jf,
            offset=len(P),
            ops={"h2": 3},
            content=P + R,
            pending={"kind": "replace", "size": len(R), "host": None, "op": None},
        )
    elif name == "compaction-undecided":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P), ops={"h2": 3})
        tmpfile.write_bytes((rec_line(tmp, 77) + "\n").encode())  # written, never decided on
    elif name == "putback-decided":
        jobfile(tmp, P + R)
        write_queue(
            jf,
            offset=len(P),
            ops={"h1": 4, "h2": 3},
            pending={"kind": "replace", "size": len(B + R), "host": "h1", "op": 5},
        )
        tmpfile.write_bytes(B + R)
        write_state(jf, "h1", [job(1, back, 5, "requeue", dead_pid(), FAKE_START)], 6)
        expect[9] = 1
    elif name == "putback-renamed":
        jobfile(tmp, B + R)
        write_queue(
            jf,
            offset=len(P),
            ops={"h1": 4, "h2": 3},
            content=P + R,
            pending={"kind": "replace", "size": len(B + R), "host": "h1", "op": 5},
        )
        write_state(jf, "h1", [job(1, back, 5, "requeue", dead_pid(), FAKE_START)], 6)
        expect[9] = 1
    elif name == "putback-on-record-only":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P), ops={"h1": 4, "h2": 3})
        write_state(jf, "h1", [job(1, back, 5, "requeue", dead_pid(), FAKE_START)], 6)
        expect[9] = 1
    elif name == "putback-committed":
        jobfile(tmp, B + R)
        write_queue(jf, offset=0, ops={"h1": 5, "h2": 3})
        write_state(jf, "h1", [job(1, back, 5, "requeue", dead_pid(), FAKE_START)], 6)
        expect[9] = 1
    elif name == "retry-append-torn":
        torn = (back + "\n").encode()[:9]
        jobfile(tmp, P + R + torn)
        write_queue(
            jf,
            offset=len(P),
            ops={"h1": 4, "h2": 3},
            content=P + R,
            pending={"kind": "append", "size": len(P + R), "length": len(B), "host": "h1", "op": 5},
        )
        write_state(jf, "h1", [job(1, back, 5, "requeue", dead_pid(), FAKE_START, front=False)], 6)
        expect[9] = 1
    elif name == "retry-append-complete":
        jobfile(tmp, P + R + B)
        write_queue(
            jf,
            offset=len(P),
            ops={"h1": 4, "h2": 3},
            content=P + R,
            pending={"kind": "append", "size": len(P + R), "length": len(B), "host": "h1", "op": 5},
        )
        write_state(jf, "h1", [job(1, back, 5, "requeue", dead_pid(), FAKE_START, front=False)], 6)
        expect[9] = 1
    elif name == "appender-torn":
        torn = (rec_line(tmp, 77) + "\n").encode()[:-6]
        jobfile(tmp, P + R + torn)
        write_queue(
            jf,
            offset=len(P),
            ops={"h2": 3},
            content=P + R,
            pending={
                "kind": "append",
                "size": len(P + R),
                "length": len(torn) + 6,
                "host": None,
                "op": None,
            },
        )
    elif name == "soft-lock-of-dead-holder":
        jobfile(tmp, P + R)
        write_queue(jf, offset=len(P), ops={"h2": 3})
        from pbq.sensors import boot_id

        holder = {
            "machine": socket.gethostname(),
            "boot": boot_id(),
            "pid": dead_pid(),
            "start": FAKE_START,
            "token": "x",
        }
        (tmp / "jobfile.lock.soft").write_text(json.dumps(holder))
    else:
        raise AssertionError(name)
    return jf, expect, must_log


SCENARIOS = [
    "uncommitted-take",
    "uncommitted-claim",
    "committed-claim",
    "committed-start-unknown",
    "running-gone",
    "exit-recorded-by-runner",
    "compaction-decided",
    "compaction-renamed",
    "compaction-undecided",
    "putback-decided",
    "putback-renamed",
    "putback-on-record-only",
    "putback-committed",
    "retry-append-torn",
    "retry-append-complete",
    "appender-torn",
    "soft-lock-of-dead-holder",
]


def _needs_claimed(name: str) -> None:
    if "claim" in name:
        from pbq.host.jobs import JobState

        if not any(s.value == "claimed" for s in JobState):
            pytest.skip("this pbq has no 'claimed' job state")


@pytest.mark.parametrize("name", SCENARIOS)
def test_crash_state_runs_every_line_exactly_once(tmp_path: Path, name: str) -> None:
    _needs_claimed(name)
    hf = hostfile(tmp_path, "* linux 50 50 0\n")
    config(tmp_path, FAST_CONFIG)
    jf, expect, must_log = _scenario(name, tmp_path)
    args = ("--lock", "soft") if "soft" in name else ()
    r = run_single(hf, jf, *args)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"Traceback" not in r.stderr
    got = recorded(tmp_path)
    assert got == +expect, f"{name}: ran {dict(got)}, expected {dict(+expect)}"
    seqs = {r[8]: int(r[0]) for r in joblog_rows(jf, "h1")}
    for line in must_log:
        assert admitted(jf, "h1", line) == 1, log_text(jf, "h1")
        assert seqs[line] == min(seqs.values()), (
            "put back at the FRONT: taken before the other lines"
        )
    lines_run = Counter(r[8] for r in joblog_rows(jf, "h1"))
    for i, n in expect.items():
        assert lines_run[rec_line(tmp_path, i)] == (
            n or (1 if name == "exit-recorded-by-runner" else 0)
        )
    assert lines_of(hostfile_path(jf, "h1", "error")) == []
    assert not (tmp_path / "rec").exists() or 77 not in got  # a torn/undecided line never runs
    assert not (tmp_path / ".jobfile.compact.tmp").exists()
    queue = json.loads((tmp_path / "jobfile.queue").read_text())
    assert queue["pending"] is None
    assert pending_job_lines(jf) == []
    assert state_jobs(jf, "h1") == []


def test_crash_state_interrupted_putback_is_logged(tmp_path: Path) -> None:
    """A put-back that was on record but not committed (the previous scheduler died between
    writing its state and rewriting the jobfile) is finished by the next one -- and, like
    every put-back of a job that may have run, named in the .log."""
    hf = hostfile(tmp_path, "* linux 50 50 0\n")
    config(tmp_path, FAST_CONFIG)
    jf, expect, _ = _scenario("putback-on-record-only", tmp_path)
    r = run_single(hf, jf)
    assert r.returncode == 0, r.stderr
    assert recorded(tmp_path) == expect
    assert admitted(jf, "h1", rec_line(tmp_path, 9)) >= 1, log_text(jf, "h1")


# ------------------------------------------------------------------ SIGKILL at exact points

# Runs pbq-single with functions patched to act when they are called for the nth time
# (counting only calls where COND holds; ``times`` calls from there on): SIGKILL the process
# before or after the call, or fail the call as a full disk would.  Actions are armed one
# after the other: the second counts calls only once the first has acted.
INJECTOR = r"""
import importlib, json, os, signal, sys
sys.path.insert(0, sys.argv[1])
from pbq.errors import PbqError
actions = json.loads(sys.argv[2])
state = {"armed": 0}

def install(i, act):
    modname, _, attr = act["target"].partition(":")
    owner = importlib.import_module(modname)
    parts = attr.split(".")
    for p in parts[:-1]:
        owner = getattr(owner, p)
    orig = getattr(owner, parts[-1])
    calls = [0]

    def wrapper(*a, **k):
        hit = False
        if state["armed"] >= i and (not act.get("cond") or eval(act["cond"], {"a": a, "k": k})):
            calls[0] += 1
            first = act.get("nth", 1)
            hit = first <= calls[0] < first + act.get("times", 1)
            if calls[0] == first:
                state["armed"] += 1
        if hit:
            if act["when"] == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            if act["when"] == "fail":
                raise PbqError(
                    "cannot write: the disk is full (injected)", path=str(a[0]) if a else None
                )
        r = orig(*a, **k)
        if hit and act["when"] == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return r

    setattr(owner, parts[-1], wrapper)

for i, act in enumerate(actions):
    install(i, act)
sys.argv = ["pbq-single", *sys.argv[3:]]
from pbq.cli import single_main
single_main()
"""


def run_injected(
    hf: Path, jf: Path, actions: list[dict], host: str = "h1", timeout: float = 60
) -> subprocess.CompletedProcess:
    argv = [
        sys.executable,
        "-c",
        INJECTOR,
        str(ROOT),
        json.dumps(actions),
        "--host",
        host,
        "--exit-when-empty",
        str(hf),
        str(jf),
    ]
    # Output to a file, not a pipe: the killed scheduler's job runner (and its jobs, which the
    # load policy may have stopped on a busy machine) keep the inherited descriptors open
    # until their jobs end; waiting for a pipe's end would wait for them.
    out_path = jf.parent / "injected.out"
    with open(out_path, "wb") as out:
        p = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                           cwd=jf.parent)
    return subprocess.CompletedProcess(argv, p.returncode, b"", out_path.read_bytes())


def run_with_kill(
    hf: Path,
    jf: Path,
    target: str,
    when: str,
    nth: int,
    cond: str = "",
    host: str = "h1",
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    return run_injected(
        hf, jf, [{"target": target, "when": when, "nth": nth, "cond": cond}], host, timeout
    )


def _kill_point_jobs(tmp: Path) -> list[str]:
    out = []
    for i in range(16):
        if i % 4 == 1:
            out.append(f"sh -c 'echo {i} >> {tmp / 'rec'}; sleep 0.3'")
        else:
            out.append(rec_line(tmp, i))
        if i % 3 == 0:
            out.append("true")
    return out


KILL_POINTS = [
    # (id, target, when, nth, cond)
    ("take-being-written-ahead", "pbq.host.ledger:Ledger.journal_claims", "before", 2, ""),
    ("take-written-ahead", "pbq.jobfile:Txn.commit_take", "before", 2, ""),
    ("take-committed", "pbq.jobfile:Txn.commit_take", "after", 2, ""),
    ("take-committed-not-synced", "pbq.jobfile:fsync_dir", "before", 1, ""),
    ("before-spawn", "pbq.host.local:LocalExecutor.start", "before", 3, ""),
    ("after-spawn", "pbq.host.local:LocalExecutor.start", "after", 3, ""),
    ("compaction-decided", "pbq.rewrite:Rewrite.finish", "before", 1, ""),
    ("compaction-renamed", "pbq.rewrite:fsync_dir", "before", 1, ""),
    ("joblog-written", "pbq.host.ledger:append_joblog_rows", "after", 2, ""),
    ("error-written", "pbq.host.ledger:append_bytes", "after", 1, "str(a[0]).endswith('.error')"),
]


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_sigkill_after_an_outcome_is_written_runs_nothing_again(tmp_path: Path, nth: int) -> None:
    """Ended jobs are reaped only after their outcome is on record: a scheduler killed right
    after writing a joblog row leaves the zombies to its keeper, and the restart runs every
    job exactly once.  The only put-backs are of starts queued ahead, which the runner drops
    when its scheduler is gone (they never ran); no ended job is put back."""
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, [f"sh -c 'sleep 0.1; {rec_line(tmp_path, i)}'" for i in range(8)])
    r = run_with_kill(hf, jf, "pbq.host.ledger:append_joblog_rows", "after", nth)
    assert r.returncode == -signal.SIGKILL, f"kill point not reached: {r.returncode} {r.stderr!r}"
    r = run_single(hf, jf)
    assert r.returncode == 0, r.stderr
    assert recorded(tmp_path) == Counter(range(8))
    text = log_text(jf, "h1")
    backs = [ln for ln in text.splitlines() if "putting it back" in ln]
    assert all("was being started when the scheduler died" in ln for ln in backs), backs


@pytest.mark.parametrize(
    ("target", "when", "nth", "cond"), [p[1:] for p in KILL_POINTS], ids=[p[0] for p in KILL_POINTS]
)
def test_sigkill_at_exact_point_loses_nothing(
    tmp_path: Path, target: str, when: str, nth: int, cond: str
) -> None:
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, FAST_CONFIG.replace("compact_after = 0.5", "compact_after = 0.0"))
    lines = _kill_point_jobs(tmp_path)
    if "error" in cond:
        lines.insert(3, "sh -c 'exit 7'")
    jf = jobfile(tmp_path, lines)
    r = run_with_kill(hf, jf, target, when, nth, cond)
    assert r.returncode == -signal.SIGKILL, f"kill point not reached: {r.returncode} {r.stderr!r}"
    r = run_single(hf, jf)
    assert r.returncode == 0, r.stderr
    got = recorded(tmp_path)
    missing = [i for i in range(16) if got[i] == 0]
    assert not missing, f"lost: {missing}"
    for i, n in got.items():
        if n > 1:
            line = next(ln for ln in lines if f"echo {i} >>" in ln)
            assert n <= 1 + admitted(jf, "h1", line), (
                f"job {i} ran {n} times, not named in the .log"
            )
    assert pending_job_lines(jf) == []
    assert state_jobs(jf, "h1") == []
    if "error" in cond:
        assert lines_of(hostfile_path(jf, "h1", "error")).count("sh -c 'exit 7'") >= 1


def test_failed_snapshot_then_sigkill_keeps_every_start_on_record(tmp_path: Path) -> None:
    """The state snapshot cannot be written (disk full) a few times while lines taken ahead
    are held; the scheduler starts nothing until it can write again, then starts them and is
    killed.  The restart must know those jobs were started (run each once, or name it as a
    possible duplicate), not start them again silently."""
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG)
    # jobs of ~50 ms, so the run lasts several snapshot periods with lines taken ahead
    lines = [f"sh -c 'sleep 0.05; {rec_line(tmp_path, i)}'" for i in range(40)]
    jf = jobfile(tmp_path, lines)
    actions = [
        # snapshots written while lines taken ahead are held fail for a while, as on a full disk
        {
            "target": "pbq.host.ledger:atomic_write_json",
            "when": "fail",
            "nth": 1,
            "times": 3,
            "cond": (
                "str(a[0]).endswith('.state') and not k.get('fsync') "
                "and any(j['state'] == 'claimed' for j in a[1]['jobs'])"
            ),
        },
        # ... and the scheduler dies right after it has journaled the start of more jobs
        {
            "target": "pbq.host.ledger:append_bytes",
            "when": "after",
            "nth": 1,
            "cond": "str(a[0]).endswith('.journal') and b'started' in a[1]",
        },
    ]
    r = run_injected(hf, jf, actions)
    assert r.returncode == -signal.SIGKILL, f"kill point not reached: {r.returncode} {r.stderr!r}"
    r = run_single(hf, jf)
    assert r.returncode == 0, r.stderr
    got = recorded(tmp_path)
    assert not [i for i in range(40) if got[i] == 0], "lost"
    twice = {i: n for i, n in got.items() if n > 1 + admitted(jf, "h1", lines[i])}
    assert not twice, f"ran again without a word in the .log: {twice}\n{log_text(jf, 'h1')}"


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_during_recovery_putback_still_logs_it(tmp_path: Path, when: str) -> None:
    """The scheduler dies while putting a gone job back (before or after the jobfile commit);
    the next run must still leave a .log line naming the job."""
    hf = hostfile(tmp_path, "* linux 50 50 0\n")
    config(tmp_path, FAST_CONFIG)
    jf, expect, must_log = _scenario("running-gone", tmp_path)
    r = run_with_kill(hf, jf, "pbq.jobfile:Txn.prepend", when, 1)
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = run_single(hf, jf)
    assert r.returncode == 0, r.stderr
    assert recorded(tmp_path) == expect
    assert admitted(jf, "h1", must_log[0]) >= 1, log_text(jf, "h1")


# ------------------------------------------------------------------ retries


def test_retries_go_to_the_end_and_are_counted_per_line(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG.replace("[scheduler]\n", "[scheduler]\nretries = 2\n"))
    marker = tmp_path / "failed-once"
    flaky = (
        f"sh -c 'if [ -e {marker} ]; then echo flaky >> {tmp_path / 'flaky'}; "
        f"else touch {marker}; exit 3; fi'"
    )
    hopeless = "sh -c 'exit 4'"
    fillers = [rec_line(tmp_path, i) for i in range(6)]
    jf = jobfile(tmp_path, [flaky, hopeless, *fillers])
    r = run_single(hf, jf)
    assert r.returncode == 0, r.stderr
    rows = joblog_rows(jf, "h1")
    by_line = Counter(r[8] for r in rows)
    assert by_line[flaky] == 2 and by_line[hopeless] == 3, by_line
    assert [r[6] for r in rows if r[8] == hopeless] == ["4", "4", "4"]
    assert [r[6] for r in rows if r[8] == flaky] == ["3", "0"]
    # Each retry was taken after every line that was behind it: it went to the END.  (Seq
    # is the line's number, the same for every attempt: the order is the start time.)
    starts = {r[8]: float(r[2]) for r in rows if r[8] in fillers}
    retried = sorted(float(r[2]) for r in rows if r[8] in (flaky, hopeless))[2:]
    assert min(retried) >= max(starts.values()), rows
    assert {r[0] for r in rows if r[8] == hopeless} == {"2"}, "every attempt keeps its Seq"
    assert lines_of(hostfile_path(jf, "h1", "error")) == [hopeless]
    assert lines_of(tmp_path / "flaky") == ["flaky"]
    log = log_text(jf, "h1")
    assert log.count("retry 1/2 of") == 2 and log.count("retry 2/2 of") == 1, log
    with contextlib.suppress(FileNotFoundError):
        assert json.loads((tmp_path / "jobfile.retries").read_text()) == {}, (
            "retry counts are cleared"
        )
    assert recorded(tmp_path) == Counter(range(6))
    assert status(jf, "h1")["done"] == 7 and status(jf, "h1")["failed"] == 1


# ------------------------------------------------------------------ recover, requeue-errors


def _kill_host(jf: Path, keeper: subprocess.Popen, host: str) -> None:
    """The machine dies: scheduler, job runner and every job (the runner first: a dying
    machine leaves no record of its jobs' ends)."""
    sched = int(hostfile_path(jf, host, "pid").read_text().split("\n")[0])
    runner = runner_of(sched)
    if runner is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(runner, signal.SIGKILL)
    keeper.kill()
    with contextlib.suppress(ProcessLookupError):
        os.kill(sched, signal.SIGKILL)
    keeper.wait(timeout=10)
    for pid in live_jobs(jf, host).values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not alive(sched), what="scheduler gone")


def test_recover_requeues_running_and_stopped_jobs_of_a_dead_host(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 50 50 0\n")  # no stops by load on a busy test machine
    config(tmp_path, FAST_CONFIG)
    flag = tmp_path / "go"

    def waiter(i: int) -> str:
        return f"sh -c 'while [ ! -e {flag} ]; do sleep 0.1; done; echo {i} >> {tmp_path / 'rec'}'"

    jf = jobfile(tmp_path, [waiter(0), waiter(1)])
    ra = start_scheduler(hf, jf, host="ra")
    wait_for(lambda: len(live_jobs(jf, "ra")) == 2, what="ra runs two jobs")
    r = run_cmd(
        "pbq", "control", hf, jf, "stop", "ra", timeout=40
    )  # ra's jobs: stopped; ra takes nothing
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(
        lambda: len(lines_of(hostfile_path(jf, "ra", "stopped"))) == 2, what="ra's jobs in .stopped"
    )
    r = run_cmd("jobfile-append", jf, "-", input=(waiter(2) + "\n" + waiter(3) + "\n").encode())
    assert r.returncode == 0
    rb = start_scheduler(hf, jf, host="rb")
    wait_for(lambda: len(live_jobs(jf, "rb")) == 2, what="rb runs two jobs")
    wait_for(
        lambda: len(lines_of(hostfile_path(jf, "rb", "running"))) == 2, what="rb's jobs in .running"
    )
    # refused while the host is alive
    r = run_cmd("pbq", "control", hf, jf, "recover", "ra")
    assert r.returncode == 2, r.stdout + r.stderr
    assert b"alive" in r.stderr and b"Traceback" not in r.stderr
    assert pending_job_lines(jf) == []
    _kill_host(jf, ra, "ra")
    _kill_host(jf, rb, "rb")
    r = run_cmd("jobfile-append", jf, "-", input=(rec_line(tmp_path, 4) + "\n").encode())
    assert r.returncode == 0
    r = run_cmd("pbq", "control", hf, jf, "recover", "ra", "rb")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "ra: put 2 job(s) back" in out and "rb: put 2 job(s) back" in out, out
    pending = pending_job_lines(jf)
    assert sorted(pending[:4]) == sorted(waiter(i) for i in range(4)), "at the front"
    assert pending[4:] == [rec_line(tmp_path, 4)]
    for h in ("ra", "rb"):
        assert (
            lines_of(hostfile_path(jf, h, "running"))
            == lines_of(hostfile_path(jf, h, "stopped"))
            == []
        )
        assert not hostfile_path(jf, h, "pid").exists()
    # recover is once: running it again puts nothing back
    r = run_cmd("pbq", "control", hf, jf, "recover", "ra", "rb")
    assert r.returncode == 0 and len(pending_job_lines(jf)) == 5
    flag.write_text("")
    r = run_single(hf, jf, host="rc")
    assert r.returncode == 0, r.stderr
    for h in ("ra", "rb"):  # the recovered hosts come back and run nothing twice
        r = run_single(hf, jf, host=h)
        assert r.returncode == 0, r.stderr
    assert recorded(tmp_path) == Counter(range(5))


def test_requeue_errors_appends_failed_lines_and_empties_error_files(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 50 50 0\n")
    config(tmp_path, FAST_CONFIG)
    flag = tmp_path / "fixed"

    def fragile(i: int) -> str:
        return f"sh -c '[ -e {flag} ] && echo {i} >> {tmp_path / 'rec'}'"

    jf = jobfile(tmp_path, [fragile(0), fragile(1)])
    assert run_single(hf, jf, host="ea").returncode == 0
    r = run_cmd("jobfile-append", jf, "-", input=(fragile(2) + "\n").encode())
    assert r.returncode == 0
    assert run_single(hf, jf, host="eb").returncode == 0
    assert sorted(lines_of(hostfile_path(jf, "ea", "error"))) == [fragile(0), fragile(1)]
    assert lines_of(hostfile_path(jf, "eb", "error")) == [fragile(2)]
    flag.write_text("")
    r = run_cmd("pbq", "control", hf, jf, "requeue-errors", "ea")
    assert r.returncode == 0, r.stderr
    assert "ea: appended 2" in r.stdout.decode()
    assert sorted(pending_job_lines(jf)) == [fragile(0), fragile(1)]
    assert lines_of(hostfile_path(jf, "ea", "error")) == []
    assert lines_of(hostfile_path(jf, "eb", "error")) == [fragile(2)], "only the hosts named"
    assert run_single(hf, jf, host="ea").returncode == 0
    assert recorded(tmp_path) == Counter([0, 1])
    r = run_cmd("pbq", "control", hf, jf, "requeue-errors")  # every host
    assert r.returncode == 0, r.stderr
    assert pending_job_lines(jf) == [fragile(2)]
    assert lines_of(hostfile_path(jf, "eb", "error")) == []
    r = run_cmd("pbq", "control", hf, jf, "requeue-errors")
    assert r.returncode == 0 and pending_job_lines(jf) == [fragile(2)], "nothing twice"
    assert run_single(hf, jf, host="eb").returncode == 0
    assert recorded(tmp_path) == Counter([0, 1, 2])


# ------------------------------------------------------------------ full disk


@contextlib.contextmanager
def small_disk(tmp: Path):
    """A directory on a file system that can be filled (root: a 1 MiB tmpfs)."""
    d = tmp / "disk"
    d.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(d)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        kill_all(processes_mentioning(str(tmp)))
        with contextlib.suppress(OSError):  # keep the files for a post-mortem
            shutil.copytree(d, tmp / "disk-copy", ignore=shutil.ignore_patterns("filler"))
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(d: Path) -> Path:
    """Fill the file system up to the last byte."""
    filler = d / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 512, 64, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_gives_a_clear_error_and_loses_no_job(tmp_path: Path) -> None:
    ctx = small_disk(tmp_path) if IS_ROOT else _readonly_dir(tmp_path)
    with ctx as d:
        hf = hostfile(d, "* linux 4 4 0\n")
        config(d, FAST_CONFIG)
        rec, flag = tmp_path / "rec", tmp_path / "go"
        pad = " #" + "x" * 2500  # long lines: two joblog rows or .error lines need a fresh page
        failing = {6, 7, 10, 15, 20, 25}
        blocked = range(6, 10)  # these end while the disk is full

        def line(i: int) -> str:
            wait = f"while [ ! -e {flag} ]; do sleep 0.05; done; " if i in blocked else ""
            return f"sh -c '{wait}echo {i} >> {rec}; exit {int(i in failing)}'{pad}"

        lines = [line(i) for i in range(30)]
        jf = jobfile(d, lines)
        # Not start_scheduler(): its output file would sit on the full disk too.
        out = open(tmp_path / "sched.out", "wb")  # noqa: SIM115 - closed below
        p = subprocess.Popen(
            [sys.executable, str(BIN / "pbq-single"), "--host", "h1", str(hf), str(jf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
        try:
            wait_for(
                lambda: len(lines_of(rec)) == 6 and len(live_jobs(jf)) == 4,
                timeout=30,
                what="six jobs done, four waiting",
            )
            filler = fill(d) if IS_ROOT else _make_readonly(d)
            flag.write_text("")
            wait_for(
                lambda: (
                    b"disk is full" in (tmp_path / "sched.out").read_bytes()
                    or b"permission denied" in (tmp_path / "sched.out").read_bytes()
                ),
                what="a clear error on standard error",
            )
            wait_for(
                lambda: set(blocked) <= set(recorded(tmp_path)) and not live_jobs(jf),
                what="the waiting jobs ended while the disk is full",
            )
            msg = (tmp_path / "sched.out").read_text(errors="replace")
            assert "Traceback" not in msg, msg
            assert p.poll() is None, msg
            filler.unlink() if IS_ROOT else os.chmod(d, 0o755)
            wait_for(
                lambda: len(lines_of(rec)) >= 30,
                timeout=60,
                what="the rest done after space came back",
            )
            r = run_cmd("pbq", "control", hf, jf, "quit", timeout=40)
            assert r.returncode == 0, r.stdout + r.stderr
            assert wait_exit(p, 30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
        assert recorded(tmp_path) == Counter(range(30))
        assert pending_job_lines(jf) == []
        assert "writable again" in log_text(jf, "h1")

        def ids(found: list[str]) -> list[int]:
            return sorted(lines.index(x) for x in found if x in lines)

        errors = ids(lines_of(hostfile_path(jf, "h1", "error")))
        assert errors == sorted(failing), (
            f"failed jobs lost (not in .error): {sorted(failing - set(errors))}"
        )
        rows = ids([r[8] for r in joblog_rows(jf, "h1")])
        assert rows == list(range(30)), f"joblog rows lost: {sorted(set(range(30)) - set(rows))}"


@contextlib.contextmanager
def _readonly_dir(tmp: Path):
    d = tmp / "disk"
    d.mkdir()
    try:
        yield d
    finally:
        os.chmod(d, 0o755)


def _make_readonly(d: Path) -> Path:
    os.chmod(d, 0o555)
    return d


# ------------------------------------------------------------------ who may steer


def test_world_writable_jobfile_is_refused_and_nothing_is_taken(tmp_path: Path) -> None:
    hf = hostfile(tmp_path)
    jf = jobfile(tmp_path, [rec_line(tmp_path, 1)])
    os.chmod(jf, 0o666)
    for prog in ("pbq-single",):
        r = run_cmd(prog, "--host", "h1", "--exit-when-empty", hf, jf)
        assert r.returncode == 2
        assert r.stderr.count(b"\n") == 1 and b"world-writable jobfile" in r.stderr, r.stderr
        assert b"Traceback" not in r.stderr
    assert not (tmp_path / "rec").exists()
    assert (
        not (tmp_path / "jobfile.queue").exists()
        or json.loads((tmp_path / "jobfile.queue").read_text())["offset"] == 0
    )
    assert jf.read_text() == rec_line(tmp_path, 1) + "\n"


def test_jobfile_made_world_writable_while_running_is_refused(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 50 50 0\n")
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, [rec_line(tmp_path, 1)])
    p = start_scheduler(hf, jf)
    try:
        wait_for(lambda: recorded(tmp_path) == Counter([1]), what="first job")
        os.chmod(jf, 0o666)
        with open(jf, "a") as f:  # anyone could do this now
            f.write(rec_line(tmp_path, 2) + "\n")
        wait_for(
            lambda: "world-writable" in log_text(jf, "h1") or 2 in recorded(tmp_path),
            timeout=30,
            what="the scheduler to notice",
        )
        assert 2 not in recorded(tmp_path), "ran a line from a world-writable jobfile"
    finally:
        os.chmod(jf, 0o644)
        run_cmd("pbq", "control", hf, jf, "term", timeout=40)
        wait_exit(p)


@contextlib.contextmanager
def other_user():
    if not IS_ROOT or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create another user")
    name = f"pbqt{secrets.token_hex(3)}"
    r = subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot create a user: {r.stderr.decode().strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_jobfile_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    hf = hostfile(tmp_path)
    jf = jobfile(tmp_path, [rec_line(tmp_path, 1)])
    with other_user() as pw:
        os.chown(jf, pw.pw_uid, pw.pw_gid)
        r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf)
    assert r.returncode == 2
    assert b"owned by another user" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
    assert not (tmp_path / "rec").exists()


def place_request(
    control: Path, req: dict, mode: int, owner: pwd.struct_passwd | None = None
) -> None:
    """Put a control request in place whole, with its mode and owner (as pbq writes one: a
    temp file, renamed): written in place, the scheduler could take it half written, or
    before its mode or owner is set."""
    tmp = control.parent / "request.tmp"
    tmp.write_text(json.dumps(req))
    os.chmod(tmp, mode)
    if owner is not None:
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
    os.replace(tmp, control)


def test_control_file_of_another_user_is_ignored(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 50 50 0\n")
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 60"])
    p = start_scheduler(hf, jf)
    control = hostfile_path(jf, "h1", "control")
    log = hostfile_path(jf, "h1", "log")
    try:
        job = wait_for(lambda: live_jobs(jf).get("h1.1"), what="job running")

        def request(command: str) -> dict:
            return {
                "id": secrets.token_hex(4),
                "command": command,
                "time": time.time(),
                "by": "mallory@elsewhere",
            }

        with other_user() as pw:
            place_request(control, request("stop"), 0o600, pw)
            wait_for(
                lambda: "ignoring control request" in log.read_text(),
                what="foreign request ignored",
            )
            assert f"owned by another user, {pw.pw_name} (uid {pw.pw_uid})" in log.read_text()
        # our own file, but writable by others: ignored as well
        place_request(control, request("quit"), 0o666)
        wait_for(
            lambda: "world-writable control request" in log.read_text(),
            what="world-writable request ignored",
        )
        assert not control.exists()
        assert proc_state(job) in ("S", "R"), "the job was not stopped"
        st = status(jf, "h1")
        assert st["state"] == "running" and st["running"] == 1
        # a proper request (ours, 0600) is obeyed: the mechanism itself works
        req = request("stop")
        place_request(control, req, 0o600)
        wait_for(
            lambda: proc_state(job) == "T" and status(jf, "h1").get("control_ack") == req["id"],
            what="own request obeyed",
        )
    finally:
        run_cmd("pbq", "control", hf, jf, "term", timeout=40)
        wait_exit(p)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
