"""Appends without the lock while schedulers run: nothing lost, nothing run twice, no half
line run; a fresh queue notices a plain append; compaction costs what was consumed.

Real ``pbq-single`` processes; jobs record their number (``echo 17 >> /abs/rec``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    run_cmd,
    start_scheduler,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

# Compaction as often as the rules allow: every time the file is consumed whole.
CONFIG = FAST_CONFIG.replace("compact_after = 0.5", "compact_after = 0.05")

WRITER = """
import sys, time
path, rec, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "ab", buffering=0) as f:  # ONE descriptor for the whole run
    for i in range(n):
        f.write(f"echo {i} >> {rec}\\n".encode())
        time.sleep(0.01)
"""


def recorded(path: Path) -> Counter[int]:
    return Counter(int(x) for x in lines_of(path))


def log_text(jf: Path, host: str) -> str:
    try:
        return hostfile_path(jf, host, "log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def two_schedulers_on_empty_jobfile(tmp: Path) -> tuple[Path, Path, list[subprocess.Popen]]:
    """An empty jobfile, schedulers for hosts a and b on it; returns (jobfile, rec, them)."""
    hf = hostfile(tmp, "* linux 4 4 0\n")
    config(tmp, CONFIG)
    jf = jobfile(tmp, "")
    return jf, tmp / "rec", [start_scheduler(hf, jf, host=h) for h in ("a", "b")]


def quit_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGUSR2)  # quit: exit once the jobs are done
    for p in procs:
        try:
            wait_exit(p, 60)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def all_ran_once(rec: Path, n: int, procs: list[subprocess.Popen], jf: Path) -> None:
    try:
        wait_for(lambda: len(recorded(rec)) >= n, timeout=120, what=f"{n} jobs to run")
    finally:
        quit_all(procs)
    got = recorded(rec)
    assert [i for i in range(n) if got[i] == 0] == [], "lines lost"
    assert {i: c for i, c in got.items() if c != 1} == {}, "lines run twice"
    assert "Traceback" not in log_text(jf, "a") + log_text(jf, "b")


def test_one_long_running_writer_loses_nothing(tmp_path: Path) -> None:
    jf, rec, procs = two_schedulers_on_empty_jobfile(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(jf), str(rec), "1000"])
    try:
        assert writer.wait(120) == 0
        all_ran_once(rec, 1000, procs, jf)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()


def test_thousands_of_separate_echos_lose_nothing(tmp_path: Path) -> None:
    jf, rec, procs = two_schedulers_on_empty_jobfile(tmp_path)
    for host in ("a", "b"):
        wait_for(lambda h=host: "started, pid" in log_text(jf, h), what=f"{host} to start")
    # About 2 s of appends (a pause every 20 lines): the schedulers take and compact meanwhile.
    loop = (f'for i in $(seq 0 1999); do echo "echo $i >> {rec}" >> "{jf}"; '
            'if [ $((i % 20)) -eq 0 ]; then sleep 0.02; fi; done')
    assert subprocess.run(["sh", "-c", loop], timeout=120).returncode == 0
    all_ran_once(rec, 2000, procs, jf)


def test_writes_into_a_replaced_jobfile_are_taken_after_a_restart(tmp_path: Path) -> None:
    """A writer that opened JOBFILE before a compaction keeps writing into the old file; a
    scheduler started later (no memory of the rename) still runs those lines, once, and
    removes the old file once it is consumed and nobody holds it open."""
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, CONFIG)
    rec = tmp_path / "rec"
    jf = jobfile(tmp_path, [f"echo {i} >> {rec}" for i in range(3)])
    with open(jf, "ab", buffering=0) as late:
        # Compacted while `late` is open: force the rename the way a put-back would.
        from pbq.jobfile import JobQueue

        q = JobQueue(jf, fsync=False)
        with q.transaction(10) as txn:
            txn.prepend([f"echo 3 >> {rec}".encode()], "test", 1)
        late.write(f"echo 4 >> {rec}\n".encode())
        assert [o.name for o in q.peek_state().olds] == [".jobfile.old-1"]
        r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf, cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        assert recorded(rec) == Counter(range(5))
        late.write(f"echo 5 >> {rec}\n".encode())  # still open: the old file is kept
        assert (tmp_path / ".jobfile.old-1").exists()
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert recorded(rec) == Counter(range(6))

    def old_removed() -> bool:
        with q.transaction(10):  # any lock holder tends the replaced files
            pass
        return not (tmp_path / ".jobfile.old-1").exists()

    q.compact_after = 0.05
    wait_for(old_removed, what="the drained, closed old file to be removed")
    assert json.loads((tmp_path / "jobfile.queue").read_text()).get("olds") is None


def test_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, CONFIG)
    rec = tmp_path / "rec"
    jf = jobfile(tmp_path, f"echo 0 >> {rec}\n")
    p = start_scheduler(hf, jf, host="h1")
    try:
        wait_for(lambda: recorded(rec) == Counter([0]), what="the first job")
        with open(jf, "ab", buffering=0) as w:
            w.write(f"echo 1 >> {rec}; echo 2".encode())  # paused in mid-line
            wait_for(lambda: "no newline yet" in log_text(jf, "h1"), what="the partial line logged")
            jobfile_append = run_cmd("jobfile-append", jf, "-", input=f"echo 3 >> {rec}\n".encode())
            assert jobfile_append.returncode == 0
            # A locked append meanwhile goes in before the unfinished line: it would not
            # end it while this machine's kernel says someone holds the file open to write.
            w.write(f" >> {rec}\n".encode())
        wait_for(lambda: len(recorded(rec)) >= 4, what="the completed line to run")
    finally:
        quit_all([p])
    assert recorded(rec) == Counter(range(4))
    log = log_text(jf, "h1")
    assert log.count("no newline yet") == 1, log


def test_partial_last_line_is_never_run_and_an_exit_says_so(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, CONFIG)
    rec = tmp_path / "rec"
    danger = tmp_path / "scratch"
    danger.mkdir()
    jf = jobfile(tmp_path, f"echo 0 >> {rec}\nrm -rf {danger}")  # ".../scratch/tmp" unwritten
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert danger.exists(), "an unterminated last line never runs"
    assert recorded(rec) == Counter([0])
    log = log_text(jf, "h1")
    assert log.count("no newline yet") == 1, log
    assert "exiting with an unterminated last line still pending" in log
    assert jf.read_bytes().endswith(f"rm -rf {danger}".encode()), "still in the jobfile"


def test_fresh_empty_queue_notices_a_plain_append(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, CONFIG)
    rec = tmp_path / "rec"
    jf = jobfile(tmp_path, "")
    p = start_scheduler(hf, jf, host="h1")
    try:
        wait_for(lambda: "started, pid" in log_text(jf, "h1"), what="the scheduler to start")
        with open(jf, "a") as f:
            f.write(f"echo 1 >> {rec}\n")
        wait_for(lambda: recorded(rec) == Counter([1]), timeout=30, what="the appended line to run")
    finally:
        quit_all([p])


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


def test_compaction_costs_what_was_consumed(tmp_path: Path) -> None:
    """A 50 MB jobfile, 70% of it taken: the scheduler has written less than the file."""
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, CONFIG)
    rec = tmp_path / "rec"
    pad = "#" + "x" * 49_998  # comment lines: consumed by takes, cost the ledger nothing
    jf = jobfile(tmp_path, [x for i in range(1000) for x in (f"echo {i} >> {rec}", pad)])
    size = jf.stat().st_size
    assert size > 50_000_000
    p = start_scheduler(hf, jf, host="h1")
    try:
        wait_for(lambda: len(recorded(rec)) >= 700, timeout=180, what="700 jobs")
        written = _write_bytes(p.pid)
    finally:
        quit_all([p])
    # Each compaction copies at most what it cuts off, so all of them together copy less
    # than was consumed (70%); pbq used to copy the rest every compact_after seconds
    # (430 MB here).
    assert written < size, f"wrote {written} bytes for a {size}-byte jobfile"


# ------------------------------------------------------------------ crash states of replaced files


def _old_crash_state(name: str, tmp: Path) -> tuple[Path, Counter[int]]:
    """A jobfile whose replaced file ``.jobfile.old-1`` got lines after the rename (10, 11),
    left by a holder that died at ``name``; returns the jobfile and the expected runs."""
    from test_faults import job, write_state

    from pbq.jobfile import MARK_BYTES

    jf = tmp / "jobfile"
    old = tmp / ".jobfile.old-1"
    tmpfile = tmp / ".jobfile.compact.tmp"
    line = lambda i: f"echo {i} >> {tmp / 'rec'}\n"  # noqa: E731
    P = (line(100) + line(101)).encode()  # taken long ago
    R = "".join(line(i) for i in range(5)).encode()
    L = (line(10) + line(11)).encode()  # written into the old file after the copy
    expect = Counter([0, 1, 2, 3, 4, 10, 11])

    def queue(offset: int, content: bytes, ops: dict, olds: list | None = None,
              pending: dict | None = None) -> None:
        rec = {"format": 3 if olds or pending else 2, "offset": offset, "size": len(content),
               "mark": content[max(0, offset - MARK_BYTES):offset].hex(), "ops": ops,
               "taken_since": None, "pending": pending, "olds": olds or []}
        (tmp / "jobfile.queue").write_text(json.dumps(rec))

    seen = 0.0  # long quiet: removable once consumed
    if name in ("old-take-uncommitted", "old-take-committed"):
        jobfile(tmp, R)
        old.write_bytes(P + R + L)
        done = len(P + R) + (len(line(10)) if name == "old-take-committed" else 0)
        ops = {"h1": 5 if name == "old-take-committed" else 4, "h2": 3}
        queue(0, R, ops, [{"name": old.name, "done": done, "size": len(P + R + L), "seen": seen}])
        write_state(jf, "h1", [job(1, line(10).strip(), 5, "claimed")], 6)
    elif name == "replace-decided-link-made":
        jobfile(tmp, P + R)
        os.link(jf, old)
        tmpfile.write_bytes(R)
        queue(len(P), P + R, {"h2": 3}, pending={"kind": "replace", "size": len(R), "host": None,
                                                   "op": None, "old": old.name, "done": len(P + R)})
        with open(jf, "ab") as f:
            f.write(L)  # a writer that opened JOBFILE before the rename
    elif name == "replace-decided-no-link-yet":
        jobfile(tmp, P + R)
        tmpfile.write_bytes(R)
        queue(len(P), P + R, {"h2": 3}, pending={"kind": "replace", "size": len(R), "host": None,
                                                   "op": None, "old": old.name, "done": len(P + R)})
        expect = Counter(range(5))  # linked by the holder that finishes it: nothing written
    elif name == "replace-renamed":
        jobfile(tmp, R)
        old.write_bytes(P + R + L)
        queue(len(P), P + R, {"h2": 3}, pending={"kind": "replace", "size": len(R), "host": None,
                                                   "op": None, "old": old.name, "done": len(P + R)})
    elif name == "linked-never-decided":
        jobfile(tmp, P + R)
        os.link(jf, old)
        tmpfile.write_bytes(R)
        queue(len(P), P + R, {"h2": 3})
        expect = Counter(range(5))
    else:
        raise AssertionError(name)
    return jf, expect


@pytest.mark.parametrize("name", ["old-take-uncommitted", "old-take-committed",
                                  "replace-decided-link-made", "replace-decided-no-link-yet",
                                  "replace-renamed", "linked-never-decided"])
def test_crash_state_of_a_replaced_file_runs_every_line_once(tmp_path: Path, name: str) -> None:
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    config(tmp_path, CONFIG)
    jf, expect = _old_crash_state(name, tmp_path)
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert b"Traceback" not in r.stderr
    assert recorded(tmp_path / "rec") == expect
    queue = json.loads((tmp_path / "jobfile.queue").read_text())
    assert queue["pending"] is None
    assert not (tmp_path / ".jobfile.compact.tmp").exists()
    for old in queue.get("olds", []):  # whatever is kept holds nothing pending
        data = (tmp_path / old["name"]).read_bytes()[old["done"]:]
        assert not data.strip(), data
