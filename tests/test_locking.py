"""Tests for pbq.locking: the flock and soft jobfile locks, across real processes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from pbq.errors import PbqError
from pbq.locking import FlockLock, SoftLock, make_lock
from pbq.sensors import boot_id, process_start

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

pytestmark = pytest.mark.timeout(60)


def wait_for(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def child(code: str, *args: object) -> Iterator[subprocess.Popen]:
    """A Python child process running ``code`` (stdin a pipe); killed and reaped at the end."""
    p = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE, env=ENV, cwd=ROOT
    )
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        if p.stdin:
            p.stdin.close()


HOLD = """
import sys
from pathlib import Path
from pbq.locking import make_lock
kind, jobfile, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
lock = make_lock(jobfile, kind, stale_after=float(sys.argv[4]))
if len(sys.argv) > 5:
    lock._me["machine"] = sys.argv[5]  # pretend to be a holder on another machine
lock.acquire(10)
ready.write_text("held")
sys.stdin.read()  # hold until stdin is closed
assert lock.still_held()
lock.release()
"""


def soft_body(**kw) -> bytes:
    info = {
        "machine": socket.gethostname(),
        "boot": boot_id(),
        "pid": os.getpid(),
        "start": process_start(os.getpid()),
        "token": "someone-else",
    }
    info.update(kw)
    return json.dumps(info).encode()


# ---------------------------------------------------------------------- flock


def test_flock_excludes_across_processes(tmp_path: Path) -> None:
    jobfile = tmp_path / "jobs"
    ready = tmp_path / "ready"
    with child(HOLD, "flock", jobfile, ready, 30) as p:
        wait_for(ready.exists, what="the child to hold the lock")
        lock = make_lock(jobfile, "flock")
        assert isinstance(lock, FlockLock)
        with pytest.raises(PbqError, match="timed out after 0.3 s"):
            lock.acquire(timeout=0.3)
        p.stdin.close()  # the child releases and exits
        lock.acquire(timeout=10)
        lock.release()
        assert p.wait(timeout=10) == 0


def test_flock_released_when_holder_dies(tmp_path: Path) -> None:
    jobfile = tmp_path / "jobs"
    ready = tmp_path / "ready"
    with child(HOLD, "flock", jobfile, ready, 30) as p:
        wait_for(ready.exists, what="the child to hold the lock")
        lock = make_lock(jobfile, "flock")
        with pytest.raises(PbqError):
            lock.acquire(timeout=0.1)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        lock.acquire(timeout=10)  # the kernel dropped the dead holder's lock
        assert lock.still_held()
        lock.release()


def test_flock_excludes_within_a_process(tmp_path: Path) -> None:
    a, b = make_lock(tmp_path / "jobs", "flock"), make_lock(tmp_path / "jobs", "flock")
    with a, pytest.raises(PbqError):
        b.acquire(timeout=0.05)
    b.acquire(timeout=1)
    b.release()


COUNT = """
import os, sys
from pathlib import Path
from pbq.locking import make_lock
kind, jobfile, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
counter, inside, bad = (jobfile.with_name(n) for n in ("counter", "inside", "overlaps"))
lock = make_lock(jobfile, kind, stale_after=30.0)
for _ in range(rounds):
    lock.acquire(30)
    try:
        fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with open(bad, "a") as f:
            f.write(f"{os.getpid()}\\n")
    else:
        os.close(fd)
    n = int(counter.read_text() or 0)
    counter.write_text(str(n + 1))
    try:
        os.unlink(inside)
    except FileNotFoundError:
        pass
    lock.release()
"""


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_mutual_exclusion_across_processes(tmp_path: Path, kind: str) -> None:
    jobfile = tmp_path / "jobs"
    (tmp_path / "counter").write_text("0")
    procs, rounds = 4, 150
    with contextlib.ExitStack() as stack:
        ps = [stack.enter_context(child(COUNT, kind, jobfile, rounds)) for _ in range(procs)]
        for p in ps:
            p.stdin.close()
            assert p.wait(timeout=45) == 0
    assert not (tmp_path / "overlaps").exists(), "two processes held the lock at once"
    assert int((tmp_path / "counter").read_text()) == procs * rounds
    assert not (tmp_path / "jobs.lock.soft").exists()


# ---------------------------------------------------------------------- soft: basics


def test_soft_lock_file_and_still_held(tmp_path: Path) -> None:
    lock = make_lock(tmp_path / "jobs", "soft", stale_after=30)
    assert isinstance(lock, SoftLock)
    path = tmp_path / "jobs.lock.soft"
    assert not lock.still_held()
    lock.acquire(timeout=1)
    info = json.loads(path.read_bytes())
    assert info["pid"] == os.getpid() and info["machine"] == socket.gethostname()
    assert info["boot"] == boot_id() and info["start"] == process_start(os.getpid())
    assert lock.still_held()
    lock.release()
    assert not path.exists()
    assert not lock.still_held()


def test_soft_lock_is_not_reentrant_and_never_breaks_itself(tmp_path: Path) -> None:
    a = make_lock(tmp_path / "jobs", "soft", stale_after=0.1)
    b = make_lock(tmp_path / "jobs", "soft", stale_after=0.1)
    with a:
        with pytest.raises(PbqError, match="timed out"):
            b.acquire(timeout=0.3)  # the holder (this live process) is never broken
        assert a.still_held()


def test_soft_release_after_break_leaves_new_holder_alone(tmp_path: Path) -> None:
    lock = make_lock(tmp_path / "jobs", "soft")
    path = tmp_path / "jobs.lock.soft"
    lock.acquire(timeout=1)
    other = soft_body(token="the-new-holder")
    path.unlink()  # broken under us by a waiter ...
    path.write_bytes(other)  # ... which then took the lock
    assert not lock.still_held()
    lock.release()
    assert path.read_bytes() == other


def test_soft_lock_in_missing_directory(tmp_path: Path) -> None:
    lock = make_lock(tmp_path / "no-such-dir" / "jobs", "soft")
    with pytest.raises(PbqError, match="cannot create lock file"):
        lock.acquire(timeout=1)


def test_soft_lock_disk_full_leaves_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    lock = make_lock(tmp_path / "jobs", "soft")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(PbqError, match="cannot write lock file"):
        lock.acquire(timeout=1)
    monkeypatch.undo()
    assert not (tmp_path / "jobs.lock.soft").exists(), "an empty lock file would block everyone"
    lock.acquire(timeout=1)
    assert lock.still_held()
    lock.release()


def test_unknown_lock_kind(tmp_path: Path) -> None:
    with pytest.raises(PbqError, match="unknown lock kind"):
        make_lock(tmp_path / "jobs", "posix")


# ---------------------------------------------------------------------- soft: stale locks


def gone_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "pass"], check=True)
    del p
    q = subprocess.Popen([sys.executable, "-c", "pass"])
    q.wait(timeout=30)
    if psutil.pid_exists(q.pid):  # reused already: practically never
        pytest.skip("pid was reused at once")
    return q.pid


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: soft_body(pid=gone_pid(), start=1e9), id="dead-pid"),
        pytest.param(lambda: soft_body(pid=gone_pid(), start=None), id="dead-pid-no-start"),
        pytest.param(lambda: soft_body(start=process_start(os.getpid()) - 1000), id="pid-reused"),
    ],
)
def test_soft_dead_local_holder_broken_at_once(tmp_path: Path, body) -> None:
    path = tmp_path / "jobs.lock.soft"
    path.write_bytes(body())
    logged: list[str] = []
    lock = SoftLock(tmp_path / "jobs.lock", stale_after=3600, log=logged.append)
    t0 = time.monotonic()
    lock.acquire(timeout=5)
    try:
        assert time.monotonic() - t0 < 5
        assert lock.still_held()
        assert json.loads(path.read_bytes())["pid"] == os.getpid()
        assert logged and "broke stale lock" in logged[0]
    finally:
        lock.release()
    assert not (tmp_path / "jobs.lock.soft.break").exists()


def test_soft_live_local_holder_never_broken(tmp_path: Path) -> None:
    path = tmp_path / "jobs.lock.soft"
    with child("import sys; sys.stdin.read()") as p:
        wait_for(lambda: process_start(p.pid) is not None, what="the child to start")
        body = soft_body(pid=p.pid, start=process_start(p.pid))
        path.write_bytes(body)
        os.utime(path, (time.time() - 3600, time.time() - 3600))  # old, never refreshed
        lock = SoftLock(tmp_path / "jobs.lock", stale_after=0.1)
        with pytest.raises(PbqError, match="timed out after 1 s"):
            lock.acquire(timeout=1)
        assert path.read_bytes() == body, "a live holder's lock is still there"
        p.kill()
        p.wait(timeout=10)
        lock.acquire(timeout=5)  # now its holder is dead: broken at once
        assert lock.still_held()
        lock.release()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            soft_body(machine="elsewhere.invalid", boot="other-boot", pid=1), id="other-machine"
        ),
        pytest.param(soft_body(boot="an-earlier-boot", pid=1), id="earlier-boot"),
        pytest.param(b"", id="empty-holder-died-before-writing"),
        pytest.param(b"\xff garbage", id="garbage"),
    ],
)
def test_soft_remote_holder_broken_after_stale_after(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "jobs.lock.soft"
    path.write_bytes(body)
    stale = 0.3
    lock = SoftLock(tmp_path / "jobs.lock", stale_after=stale)
    with pytest.raises(PbqError, match="timed out"):
        lock.acquire(timeout=0.15)
    assert path.read_bytes() == body
    t0 = time.monotonic()
    lock.acquire(timeout=10)
    try:
        assert time.monotonic() - t0 >= stale, "watched unchanged for stale_after first"
        assert lock.still_held()
    finally:
        lock.release()


REFRESH = """
import json, os, sys, time
from pathlib import Path
path, mode = Path(sys.argv[1]), sys.argv[2]
body = {"machine": "elsewhere.invalid", "boot": "other-boot", "pid": 1, "start": 1.0, "token": "t"}
n = 0
while True:
    if mode == "touch":
        os.utime(path)
    else:
        n += 1
        path.write_text(json.dumps({**body, "n": n}))
    time.sleep(0.05)
"""


@pytest.mark.parametrize("mode", ["touch", "rewrite"])
def test_soft_remote_holder_refreshing_is_not_broken(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "jobs.lock.soft"
    path.write_bytes(soft_body(machine="elsewhere.invalid", boot="other-boot", pid=1))
    lock = SoftLock(tmp_path / "jobs.lock", stale_after=0.3)
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    with child(REFRESH, path, mode) as p:
        wait_for(lambda: (path.read_bytes(), os.stat(path).st_mtime_ns) != before, what="a refresh")
        with pytest.raises(PbqError, match="timed out"):
            lock.acquire(timeout=0.9)  # three times stale_after
        assert path.exists()
        p.kill()
        p.wait(timeout=10)
    lock.acquire(timeout=10)  # no longer refreshed: stale after 0.3 s
    assert lock.still_held()
    lock.release()


def test_soft_holders_own_refresher_keeps_remote_waiters_off(tmp_path: Path) -> None:
    """A holder on another machine refreshes often enough for any stale_after."""
    jobfile, ready = tmp_path / "jobs", tmp_path / "ready"
    stale = 0.4
    with child(HOLD, "soft", jobfile, ready, stale, "elsewhere.invalid") as p:
        wait_for(ready.exists, what="the child to hold the lock")
        body = (tmp_path / "jobs.lock.soft").read_bytes()
        assert json.loads(body)["machine"] == "elsewhere.invalid"
        lock = make_lock(jobfile, "soft", stale_after=stale)
        with pytest.raises(PbqError, match="timed out"):
            lock.acquire(timeout=0.9)
        assert (tmp_path / "jobs.lock.soft").read_bytes() == body
        p.stdin.close()
        assert p.wait(timeout=10) == 0, "the child still held its lock at the end"
    lock.acquire(timeout=5)
    lock.release()


def test_soft_dead_breaker_file_is_removed(tmp_path: Path) -> None:
    """A .break file left by a breaker that died does not block breaking for ever."""
    (tmp_path / "jobs.lock.soft").write_bytes(soft_body(pid=gone_pid()))
    brk = tmp_path / "jobs.lock.soft.break"
    brk.write_bytes(b"")
    old = time.time() - 600
    os.utime(brk, (old, old))
    lock = SoftLock(tmp_path / "jobs.lock", stale_after=1.0)
    lock.acquire(timeout=5)
    assert lock.still_held()
    lock.release()
    assert not brk.exists()


# ---------------------------------------------------------------------- try_acquire


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_try_acquire_does_not_wait_for_a_holder(tmp_path: Path, kind: str) -> None:
    """What a scheduler uses while its jobs still run (taking lines ahead, compaction at a
    tick): a busy lock is an answer, not a wait."""
    jobfile = tmp_path / "jobs"
    ready = tmp_path / "ready"
    lock = make_lock(jobfile, kind)
    assert lock.try_acquire(), "free: taken"
    lock.release()
    with child(HOLD, kind, jobfile, ready, 30) as p:
        wait_for(ready.exists, what="the child to hold the lock")
        assert not lock.try_acquire(), "held by another process"
        p.stdin.close()  # the child releases and exits
        assert p.wait(timeout=10) == 0
    assert lock.try_acquire()
    lock.release()


def test_a_transaction_tried_on_a_busy_jobfile_is_none_and_timed_as_no_wait(
    tmp_path: Path,
) -> None:
    from pbq.jobfile import JobQueue

    jobfile = tmp_path / "jobs"
    jobfile.write_text("true\n")
    ready = tmp_path / "ready"
    queue = JobQueue(jobfile)
    with child(HOLD, "flock", jobfile, ready, 30) as p:
        wait_for(ready.exists, what="the child to hold the lock")
        with queue.try_transaction() as txn:
            assert txn is None
        assert queue.lock_wait.total == 0, "nothing was waited for, nothing held"
        p.stdin.close()
        assert p.wait(timeout=10) == 0
    with queue.try_transaction() as txn:
        assert txn is not None
        lines, _ = txn.take(1)
        assert [pl.line for pl in lines] == [b"true"]
    assert queue.lock_wait.total == 1 and queue.lock_hold.total == 1


# ---------------------------------------------------------------------- soft: taking turns

WAIT_THEN_RECORD = """
import sys, time
from pathlib import Path
from pbq.locking import make_lock
jobfile, out, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
lock = make_lock(jobfile, "soft")
lock.acquire(30)
with open(out, "a") as f:
    f.write(name + "\\n")
time.sleep(0.05)
lock.release()
"""


def test_soft_waiter_that_waited_longest_goes_first(tmp_path: Path) -> None:
    """A waiter that has waited a while is next: one that came later does not even try the
    lock until it had its turn (with back-off alone, newcomers' quick polls won)."""
    jf, ready, order = tmp_path / "jobfile", tmp_path / "ready", tmp_path / "order"
    turn = tmp_path / "jobfile.lock.soft.next"
    with child(HOLD, "soft", jf, ready, 30) as holder:
        wait_for(ready.exists, what="the holder")
        with child(WAIT_THEN_RECORD, jf, order, "first"):
            wait_for(turn.exists, what="the first waiter to be next")
            assert json.loads(turn.read_text())["pid"] != holder.pid
            with child(WAIT_THEN_RECORD, jf, order, "second") as second:
                lock = SoftLock(jf.with_name("jobfile.lock"))
                assert not lock.try_acquire(), "another is next"
                time.sleep(0.2)  # the second waiter polls meanwhile (it must not jump the queue)
                assert holder.stdin is not None
                holder.stdin.close()
                assert second.wait(timeout=30) == 0
    assert order.read_text().split() == ["first", "second"]
    assert not turn.exists(), "the turn is passed on"


def test_soft_turn_of_a_dead_local_waiter_is_removed(tmp_path: Path) -> None:
    jf = tmp_path / "jobfile"
    lock = SoftLock(jf.with_name("jobfile.lock"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    turn = tmp_path / "jobfile.lock.soft.next"
    turn.write_bytes(soft_body(pid=dead.pid))
    assert lock.try_acquire(), "a dead waiter's turn does not hold anyone back"
    assert not turn.exists()
    lock.release()


def test_soft_turn_of_a_live_remote_waiter_holds_others_back_until_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbq import locking

    monkeypatch.setattr(locking, "NEXT_STALE", 0.3)
    jf = tmp_path / "jobfile"
    lock = SoftLock(jf.with_name("jobfile.lock"))
    turn = tmp_path / "jobfile.lock.soft.next"
    turn.write_bytes(soft_body(machine="elsewhere"))
    t0 = time.monotonic()
    lock.acquire(10)  # the other machine's waiter never takes it: its turn goes stale
    assert time.monotonic() - t0 >= 0.3
    assert not turn.exists()
    lock.release()


def test_soft_waiter_that_times_out_gives_its_turn_up(tmp_path: Path) -> None:
    jf, ready = tmp_path / "jobfile", tmp_path / "ready"
    turn = tmp_path / "jobfile.lock.soft.next"
    with child(HOLD, "soft", jf, ready, 30) as holder:
        wait_for(ready.exists, what="the holder")
        lock = SoftLock(jf.with_name("jobfile.lock"))
        with pytest.raises(PbqError, match="timed out"):
            lock.acquire(0.3)
        assert not turn.exists()
        assert holder.stdin is not None
        holder.stdin.close()
