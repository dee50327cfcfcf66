"""A take's write-ahead: the lines a host takes are on disk as its own (one synced journal
record) before the jobfile's record gives them away, the snapshot that record follows is on
disk before the lock is taken, and the commit's rename is made durable after the lock is
free but before any job of the take can start.  Checked by tracing the real syncs and
renames, and by bringing back what a machine crash could leave on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbqtest import BIN, FAST_CONFIG, config, hostfile, lines_of
from test_ledger import ListLog

from pbq.host import ledger as ledger_module
from pbq.host.intake import Intake
from pbq.host.jobs import JobBook, JobState
from pbq.host.ledger import CLAIM_FORMAT, Ledger
from pbq.host.recovery import Action, plan_recovery
from pbq.jobfile import JobQueue
from pbq.statefiles import HostFiles

pytestmark = pytest.mark.timeout(120)


def make_intake(tmp_path: Path, lines: list[str], fsync: bool = True) -> Intake:
    jf = tmp_path / "jobfile"
    jf.write_text("".join(f"{line}\n" for line in lines))
    jf.chmod(0o644)
    book = JobBook("h1")
    ledger = Ledger(HostFiles(jf, "h1"), book, ListLog(), fsync, time.monotonic)
    queue = JobQueue(jf, fsync=fsync, compact_after=60.0)
    return Intake(queue, book, ledger, ListLog(), False, 0)


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every sync and rename the process makes, in order, as (call, file name)."""
    events: list[tuple[str, str]] = []
    real = {name: getattr(os, name) for name in ("fsync", "fdatasync", "replace")}

    def syncer(name: str):  # type: ignore[no-untyped-def]
        def call(fd: int) -> None:
            events.append((name, Path(fd_path(fd)).name))
            real[name](fd)
        return call

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", Path(dst).name))
        real["replace"](src, dst)

    monkeypatch.setattr(os, "fsync", syncer("fsync"))
    monkeypatch.setattr(os, "fdatasync", syncer("fdatasync"))
    monkeypatch.setattr(os, "replace", replace)
    yield events


def traced_lock(it: Intake, events: list[tuple[str, str]]) -> None:
    lock = it.queue.lock
    acquire, release = lock.acquire, lock.release

    def traced_acquire(timeout: float | None = None) -> None:
        acquire(timeout)
        events.append(("lock", ""))

    def traced_release() -> None:
        events.append(("unlock", ""))
        release()

    lock.acquire = traced_acquire  # type: ignore[method-assign]
    lock.release = traced_release  # type: ignore[method-assign]


def between(events: list[tuple[str, str]], start: str, end: str) -> list[tuple[str, str]]:
    i = events.index((start, ""))
    return events[i + 1 : events.index((end, ""), i)]


def test_a_take_syncs_two_files_while_the_lock_is_held(
    tmp_path: Path, trace: list[tuple[str, str]]
) -> None:
    it = make_intake(tmp_path, [f"echo {i}" for i in range(10)])
    it.ledger.save(fsync=True)  # as at start-up
    it.ledger.make_durable()
    traced_lock(it, trace)
    trace.clear()
    jobs = it.take(4)
    assert [j.line for j in jobs] == [f"echo {i}".encode() for i in range(4)]
    held = between(trace, "lock", "unlock")
    syncs = [e for e in held if e[0] != "rename"]
    assert syncs[0] == ("fdatasync", "jobfile.h1.journal"), held
    assert len(syncs) == 2 and syncs[1][0] == "fsync" and syncs[1][1].startswith(".jobfile.queue")
    assert held.index(syncs[0]) < held.index(("rename", "jobfile.queue")) and held[-1] == (
        "rename",
        "jobfile.queue",
    ), "the take is on record before the commit's rename"
    after = trace[trace.index(("unlock", "")) + 1 :]
    assert after == [("fsync", tmp_path.name)], "the rename made durable once unlocked"
    assert not it.ledger.book.changed or it.ledger.durable_gen == it.ledger.gen


def test_a_snapshot_not_on_disk_yet_is_synced_before_the_lock(
    tmp_path: Path, trace: list[tuple[str, str]]
) -> None:
    it = make_intake(tmp_path, [f"echo {i}" for i in range(10)])
    it.ledger.save(fsync=True)
    it.take(2)
    it.ledger.save()  # a snapshot between takes: not synced
    traced_lock(it, trace)
    trace.clear()
    it.take(2)
    before = trace[: trace.index(("lock", ""))]
    assert before == [("fsync", "jobfile.h1.state"), ("fsync", tmp_path.name)], before
    trace.clear()
    it.take(2)
    assert trace[0] == ("lock", ""), "nothing to sync: that snapshot is on disk"


def test_the_journal_is_emptied_only_after_a_snapshot_on_disk(
    tmp_path: Path, trace: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    it = make_intake(tmp_path, [f"echo {i}" for i in range(10)])
    it.ledger.save(fsync=True)
    it.take(3)
    monkeypatch.setattr(ledger_module, "JOURNAL_CUT", 10)
    trace.clear()
    it.ledger.save()  # asked for without a sync, but it empties a journal holding a take
    assert [e[0] for e in trace] == ["fsync", "rename", "fsync"], trace
    assert it.ledger.files.journal.read_bytes() == b""
    assert it.ledger.durable_gen == it.ledger.gen


def test_without_fsync_nothing_is_synced(tmp_path: Path, trace: list[tuple[str, str]]) -> None:
    it = make_intake(tmp_path, [f"echo {i}" for i in range(10)], fsync=False)
    it.ledger.save()
    it.take(3)
    it.take(3)
    assert [e for e in trace if e[0] != "rename"] == []


def test_a_take_on_the_journal_survives_a_restart(tmp_path: Path) -> None:
    it = make_intake(tmp_path, [f"echo {i}" for i in range(10)])
    it.ledger.save(fsync=True)
    first = it.take(2)
    second = it.take(3)
    records = [json.loads(r) for r in it.ledger.files.journal.read_text().splitlines()]
    assert [r["format"] for r in records] == [CLAIM_FORMAT, CLAIM_FORMAT]
    assert [len(r["claimed"]) for r in records] == [2, 3]

    book = JobBook("h1")
    ledger = Ledger(HostFiles(it.queue.jobfile, "h1"), book, ListLog(), True, time.monotonic)
    ledger.load()
    taken = first + second
    assert [(j.seq, j.line, j.op, j.line_seq) for j in book.in_state(JobState.CLAIMED)] == [
        (j.seq, j.line, j.op, j.line_seq) for j in taken
    ]
    assert book.counters.next_seq == it.book.counters.next_seq
    assert book.counters.next_op == it.book.counters.next_op
    committed = it.queue.peek_state().ops["h1"]
    steps = plan_recovery(book.in_state(JobState.CLAIMED), committed, {}, "h1", None)
    assert [s.action for s in steps] == [Action.KEEP] * 5


def test_a_commit_whose_rename_did_not_reach_the_disk_gives_the_lines_back(
    tmp_path: Path,
) -> None:
    """A machine crash before the directory sync may bring back the previous record: the
    take did not happen.  The journal still names the lines; recovery must leave them to
    the jobfile, not keep them (they would run twice, here and on the host that takes
    them next)."""
    it = make_intake(tmp_path, [f"echo {i}" for i in range(10)])
    it.ledger.save(fsync=True)
    it.take(2)
    record_before = it.queue.state_path.read_bytes()
    it.take(3)
    it.queue.state_path.write_bytes(record_before)  # the second commit never reached the disk

    book = JobBook("h1")
    ledger = Ledger(HostFiles(it.queue.jobfile, "h1"), book, ListLog(), True, time.monotonic)
    ledger.load()
    committed = it.queue.peek_state().ops["h1"]
    steps = plan_recovery(book.in_state(JobState.CLAIMED), committed, {}, "h1", None)
    assert [s.action for s in steps] == [Action.KEEP] * 2 + [Action.FORGET] * 3
    with it.queue.transaction() as txn:
        pending, _ = txn.take(100)
    assert [p.line for p in pending] == [f"echo {i}".encode() for i in range(2, 10)]


@pytest.mark.parametrize("reverted", [False, True], ids=["as-written", "rename-lost"])
def test_a_restarted_scheduler_runs_each_line_once(tmp_path: Path, reverted: bool) -> None:
    """The same with a real scheduler: takes left on the journal (the second one's commit
    brought back to before it, or not), then pbq-single runs the queue: each line once."""
    rec = tmp_path / "rec"
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG)
    it = make_intake(tmp_path, [f"echo {i} >> {rec}" for i in range(12)])
    it.ledger.save(fsync=True)
    it.take(2)
    record_before = it.queue.state_path.read_bytes()
    it.take(4)
    if reverted:
        it.queue.state_path.write_bytes(record_before)
    r = subprocess.run(
        [sys.executable, str(BIN / "pbq-single"), "--host", "h1", "--exit-when-empty",
         str(hf), str(it.queue.jobfile)],
        capture_output=True, timeout=90, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert Counter(int(x) for x in lines_of(rec)) == Counter(range(12))
