"""Tests for pbq.host.ledger: the host's snapshot + journal, the format check, outcomes
written in order, put-backs written ahead, and a full disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from pbq.errors import PbqError
from pbq.host import ledger as ledger_module
from pbq.host.jobs import Job, JobBook, JobState
from pbq.host.ledger import STATE_FORMAT, Ledger, check_format
from pbq.host.recovery import Action, plan_recovery
from pbq.jobfile import JobQueue, Txn
from pbq.sidefiles import JOBLOG_HEADER, joblog_row
from pbq.statefiles import HostFiles

S = JobState


class ListLog:
    """A scheduler log that keeps its messages, and counts flushes."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.flushes = 0

    def __call__(self, message: str, when: float | None = None) -> None:
        self.messages.append(message)

    def flush(self) -> None:
        self.flushes += 1


class SimulatedCrash(Exception):
    """The scheduler dies here (not a PbqError: nothing catches it)."""


def make_ledger(tmp_path: Path, book: JobBook | None = None) -> tuple[Ledger, ListLog]:
    log = ListLog()
    files = HostFiles(tmp_path / "jobfile", "h1")
    return Ledger(files, book or JobBook("h1"), log, False, time.monotonic), log


def reload(tmp_path: Path) -> Ledger:
    """A new ledger reading what the last one left on disk (a restart)."""
    ledger, _ = make_ledger(tmp_path)
    ledger.load()
    return ledger


def make_queue(tmp_path: Path, content: bytes = b"") -> JobQueue:
    jobfile = tmp_path / "jobfile"
    jobfile.write_bytes(content)
    return JobQueue(jobfile, fsync=False)


def pending_lines(queue: JobQueue) -> list[bytes]:
    with queue.transaction(timeout=10) as txn:
        return [pl.line for pl in txn.take(10**6)[0]]


def running(book: JobBook, line: bytes, tries: int = 0, pid: int = 100) -> Job:
    job = book.claim(line, op=book.new_op(), tries=tries)
    book.starting(job)
    book.started(job, 50.0, pid=pid, pid_start=1.0)
    return job


def fail_append(path: Path, data: bytes, **kw: Any) -> None:
    raise PbqError("disk full")


# ---------------------------------------------------------------------- check_format


@pytest.mark.parametrize(
    "doc",
    [{"format": 2}, {"format": 1}, {}, {"format": "3"}, None, [], "text", {"version": 9}],
    ids=["current", "first", "unmarked", "not-int", "none", "list", "str", "version-ignored"],
)
def test_check_format_accepts(doc: object, tmp_path: Path) -> None:
    check_format(doc, tmp_path / "x.state", STATE_FORMAT)


def test_check_format_refuses_newer(tmp_path: Path) -> None:
    path = tmp_path / "jobfile.h1.state"
    with pytest.raises(PbqError) as info:
        check_format({"format": 3}, path, STATE_FORMAT)
    assert "newer" in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)


def test_load_refuses_a_newer_state(tmp_path: Path) -> None:
    ledger, _ = make_ledger(tmp_path)
    state = ledger.files.state
    state.write_text(json.dumps({"format": 3, "gen": 1, "jobs": []}))
    with pytest.raises(PbqError, match="newer") as info:
        ledger.load()
    assert str(state) in str(info.value)
    assert json.loads(state.read_text())["format"] == 3, "left as it was"


def test_load_refuses_a_newer_journal_record(tmp_path: Path) -> None:
    ledger, _ = make_ledger(tmp_path)
    ledger.save()
    ledger.files.journal.write_text(json.dumps({"format": 4, "g": 1, "ended": [1]}) + "\n")
    with pytest.raises(PbqError, match="newer") as info:
        reload(tmp_path)
    assert str(ledger.files.journal) in str(info.value)


# ---------------------------------------------------------------------- snapshot and journal


def test_load_without_files_is_empty(tmp_path: Path) -> None:
    ledger, _ = make_ledger(tmp_path)
    book = ledger.load()
    assert len(book) == 0
    assert ledger.gen == 0


def test_save_load_round_trip(tmp_path: Path) -> None:
    book = JobBook("h1")
    running(book, b"sleep 1", tries=2)
    book.claim(b"echo \xff", op=book.new_op())
    book.counters.done, book.counters.failed = 4, 1
    ledger, _ = make_ledger(tmp_path, book)
    ledger.save()
    assert ledger.gen == 1
    assert not book.changed
    ledger.save()
    assert ledger.gen == 2
    doc = json.loads(ledger.files.state.read_text())
    assert (doc["format"], doc["host"], doc["gen"]) == (2, "h1", 2)
    again = reload(tmp_path)
    assert again.gen == 2
    assert again.book.to_json() == book.to_json()
    assert list(again.book) == list(book)


def test_first_save_empties_an_old_journal(tmp_path: Path) -> None:
    ledger, _ = make_ledger(tmp_path)
    ledger.files.journal.write_text('{"g":0,"starting":[1]}\n')
    ledger.save()
    assert ledger.files.journal.read_bytes() == b""


def test_journal_of_this_generation_is_replayed(tmp_path: Path) -> None:
    book = JobBook("h1")
    for line in (b"local", b"cluster", b"ended", b"untouched"):
        book.claim(line, op=book.new_op())
    ledger, _ = make_ledger(tmp_path, book)
    ledger.save()  # generation 1, every job CLAIMED
    ledger.journal({"starting": [1, 2, 3]})
    ledger.journal({"started": [[1, 4242, 12.5, 100.0]], "submitted": [[2, "c-77", 101.0]]})
    ledger.journal({"ended": [3], "done": 5, "failed": 2})
    with ledger.files.journal.open("a") as f:  # records of other generations are obsolete
        f.write(json.dumps({"g": 0, "format": 2, "starting": [4], "ended": [1]}) + "\n")
        f.write(json.dumps({"g": 2, "format": 2, "starting": [4], "done": 99, "failed": 99})
                + "\n")
        f.write('{"g": 1, "ended": [4')  # a torn last line is skipped

    again = reload(tmp_path)
    jobs = {j.seq: j for j in again.book}
    assert {seq: j.state for seq, j in jobs.items()} == {1: S.RUNNING, 2: S.RUNNING,
                                                         4: S.CLAIMED}
    assert (jobs[1].pid, jobs[1].pid_start, jobs[1].started) == (4242, 12.5, 100.0)
    assert (jobs[2].pid, jobs[2].cluster_id, jobs[2].started) == (None, "c-77", 101.0)
    c = again.book.counters
    assert (c.done, c.failed) == (5, 2)
    assert again.gen == 1


def test_journal_records_carry_generation_and_format(tmp_path: Path) -> None:
    ledger, _ = make_ledger(tmp_path)
    ledger.save()
    ledger.save()
    ledger.journal({"starting": [9]})
    (rec,) = [json.loads(line) for line in ledger.files.journal.read_text().splitlines()]
    assert rec == {"starting": [9], "g": 2, "format": STATE_FORMAT}


def test_replay_only_starts_claimed_and_only_runs_starting(tmp_path: Path) -> None:
    book = JobBook("h1")
    job = running(book, b"x", pid=1)  # already RUNNING when the snapshot was taken
    ledger, _ = make_ledger(tmp_path, book)
    ledger.save()
    ledger.journal({"starting": [1], "started": [[1, 2, 2.0, 2.0]]})
    again = reload(tmp_path).book.get(job.seq)
    assert again is not None
    assert (again.state, again.pid) == (S.RUNNING, 1)


def test_save_if_changed_journals_ended_jobs_between_snapshots(tmp_path: Path) -> None:
    book = JobBook("h1")
    first, second = running(book, b"a"), running(book, b"b")
    ledger, _ = make_ledger(tmp_path, book)
    ledger.save()  # the next snapshot is SNAPSHOT_EVERY away
    ledger.drop(first)
    book.counters.done = 1
    ledger.save_if_changed()
    assert ledger.gen == 1, "no new snapshot yet"
    assert [j.seq for j in reload(tmp_path).book] == [first.seq, second.seq], \
        "the end waits for the pass's one journal write"
    ledger.flush_journal()  # (the loop: before the end is acknowledged, and at the pass's end)
    again = reload(tmp_path)
    assert [j.seq for j in again.book] == [second.seq]
    assert again.book.counters.done == 1


# ---------------------------------------------------------------------- outcomes


def test_record_and_flush_write_joblog_and_error(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    ledger, _ = make_ledger(tmp_path)
    row1 = joblog_row(1, "h1", 10.0, 1.0, 0, 0, b"true")
    row2 = joblog_row(2, "h1", 11.0, 2.0, 1, 0, b"false")
    ledger.record(row1)
    ledger.record(row2, b"false")
    assert ledger.pending()
    assert ledger.flush(queue) == 0
    assert not ledger.pending()
    ledger.record(joblog_row(3, "h1", 12.0, 0.5, 0, 9, b"sleep 9"), b"sleep 9")
    ledger.flush(queue)
    joblog = ledger.files.joblog.read_text()
    assert joblog.count("Seq\t") == 1
    assert joblog.startswith(JOBLOG_HEADER)
    assert joblog == JOBLOG_HEADER + row1 + row2 + joblog_row(3, "h1", 12.0, 0.5, 0, 9,
                                                              b"sleep 9")
    assert ledger.files.error.read_bytes() == b"false\nsleep 9\n"
    assert (ledger.joblog_rows, ledger.error_lines) == ([], [])


def test_flush_of_nothing_writes_nothing(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    ledger, _ = make_ledger(tmp_path)
    assert ledger.flush(queue) == 0
    assert not ledger.files.joblog.exists()
    assert not ledger.files.error.exists()


def test_put_back_front_and_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = make_queue(tmp_path, b"pending-1\npending-2\n")
    book = JobBook("h1")
    front = running(book, b"evicted")
    end = running(book, b"retry", tries=2)
    keep = running(book, b"still running")
    book.requeue(front, front=True)
    book.requeue(end, front=False)
    ledger, log = make_ledger(tmp_path, book)

    # What the state file says at the moment each jobfile change is made.
    state_seen: dict[str, dict[str, Any]] = {}
    real_prepend, real_append = Txn.prepend, Txn.append

    def saved_jobs() -> dict[str, Any]:
        doc = json.loads(ledger.files.state.read_text())
        return {j["line"]: j for j in doc["jobs"]}

    def spy_prepend(txn: Txn, lines: list[bytes], host: str, op: int) -> None:
        state_seen["prepend"] = saved_jobs()
        assert log.flushes == 1, "the log names the put-back before it commits"
        real_prepend(txn, lines, host, op)

    def spy_append(txn: Txn, lines: list[bytes], host: str | None = None,
                   op: int | None = None) -> None:
        state_seen["append"] = saved_jobs()
        real_append(txn, lines, host, op)

    monkeypatch.setattr(Txn, "prepend", spy_prepend)
    monkeypatch.setattr(Txn, "append", spy_append)
    op = book.counters.next_op
    with queue.transaction(timeout=10) as txn:
        assert ledger.put_back(txn) == 2
        assert txn.retries_of(b"retry") == 2

    assert pending_lines(queue) == [b"evicted", b"pending-1", b"pending-2", b"retry"]
    for when in ("prepend", "append"):
        seen = state_seen[when]
        assert seen["evicted"]["state"] == "requeue_front"
        assert seen["retry"]["state"] == "requeue_end"
        # one operation per side, both on record before either commits
        assert (seen["evicted"]["putback_op"], seen["retry"]["putback_op"]) == (op, op + 1)
    assert queue.peek_state().ops["h1"] == op + 1
    assert [j.seq for j in book] == [keep.seq], "put back jobs leave the book"
    assert sorted(ledger.ended_seqs) == sorted([front.seq, end.seq])
    assert book.counters.next_op == op + 2
    assert not ledger.pending()


def test_put_back_through_flush_takes_the_lock(tmp_path: Path) -> None:
    queue = make_queue(tmp_path, b"pending\n")
    book = JobBook("h1")
    book.requeue(book.claim(b"claimed", op=book.new_op()), front=True)
    ledger, _ = make_ledger(tmp_path, book)
    assert ledger.flush(queue) == 1
    assert pending_lines(queue) == [b"claimed", b"pending"]
    assert len(book) == 0


def test_settling_jobs_clear_their_retry_count(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    with queue.transaction(timeout=10) as txn:
        txn.set_retries(b"flaky", 3)
    book = JobBook("h1")
    job = running(book, b"flaky", tries=3)
    book.settling(job)
    ledger, _ = make_ledger(tmp_path, book)
    assert ledger.pending()
    op = book.counters.next_op
    with queue.transaction(timeout=10) as txn:
        assert ledger.put_back(txn) == 0
        assert txn.retries_of(b"flaky") == 0
    assert len(book) == 0
    assert ledger.ended_seqs == [job.seq]
    assert book.counters.next_op == op, "no put-back, no operation"
    assert pending_lines(queue) == []
    assert not ledger.pending()


# ---------------------------------------------------------------------- a full disk


def test_full_disk_keeps_outcomes_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    queue = make_queue(tmp_path)
    ledger, log = make_ledger(tmp_path)
    row = joblog_row(1, "h1", 10.0, 1.0, 1, 0, b"false")
    ledger.record(row, b"false")
    # The joblog is appended through pbq.sidefiles, the .error file by the ledger itself.
    monkeypatch.setattr(ledger_module, "append_bytes", fail_append)
    monkeypatch.setattr("pbq.sidefiles.append_bytes", fail_append)
    for _ in range(3):  # every pass tries again
        assert ledger.flush(queue) == 0
    assert ledger.joblog_rows == [row]
    assert ledger.error_lines == [b"false"]
    assert ledger.pending()
    assert ledger.disk_error == "disk full"
    assert log.messages == ["ERROR: disk full; not taking new jobs until it is fixed"]
    assert capsys.readouterr().err.count("disk full") == 1
    assert not ledger.files.joblog.exists()
    assert not ledger.files.error.exists()

    monkeypatch.undo()
    ledger.flush(queue)
    assert ledger.files.joblog.read_text() == JOBLOG_HEADER + row
    assert ledger.files.error.read_bytes() == b"false\n"
    assert not ledger.pending()


def test_retry_disk_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = make_queue(tmp_path)
    ledger, log = make_ledger(tmp_path)
    ledger.record(None, b"false")
    monkeypatch.setattr(ledger_module, "append_bytes", fail_append)
    ledger.flush(queue)
    ledger.retry_disk(queue)  # still full: stays in error, says nothing more
    assert ledger.disk_error == "disk full"
    assert len(log.messages) == 1
    monkeypatch.undo()
    ledger.retry_disk(queue)
    assert ledger.disk_error is None
    assert log.messages[-1] == "file system writable again: resuming"
    assert ledger.files.error.read_bytes() == b"false\n"


def test_failed_snapshot_keeps_the_generation(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ledger, _ = make_ledger(tmp_path)
    ledger.save()

    def fail_write(path: Path, obj: Any, **kw: Any) -> None:
        raise PbqError("disk full")

    monkeypatch.setattr(ledger_module, "atomic_write_json", fail_write)
    with pytest.raises(PbqError):
        ledger.save()
    assert ledger.gen == 1, "the journal must keep following the snapshot on disk"


def test_put_back_is_retried_after_the_state_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk while the put-back is written ahead: the job stays in the book and the
    next pass puts its line back (as ``flush`` promises)."""
    queue = make_queue(tmp_path, b"pending\n")
    book = JobBook("h1")
    job = running(book, b"evicted")
    book.requeue(job, front=True)
    ledger, _ = make_ledger(tmp_path, book)

    def fail_write(path: Path, obj: Any, **kw: Any) -> None:
        raise PbqError("disk full")

    monkeypatch.setattr(ledger_module, "atomic_write_json", fail_write)
    assert ledger.flush(queue) == 0
    assert ledger.disk_error is not None
    assert book.get(job.seq) is job
    monkeypatch.undo()

    assert ledger.flush(queue) == 1, "the put-back is retried once the disk has room"
    assert pending_lines(queue) == [b"evicted", b"pending"]
    assert book.get(job.seq) is None
    assert not ledger.pending(), "else the host can never exit"


def test_put_back_at_the_end_survives_a_crash_after_the_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Front and end lines share one operation number; the prepend commits it.  If the
    scheduler dies before the append, the restart must still put the end line back."""
    queue = make_queue(tmp_path, b"pending\n")
    book = JobBook("h1")
    book.requeue(running(book, b"evicted"), front=True)
    book.requeue(running(book, b"retry", tries=1), front=False)
    ledger, _ = make_ledger(tmp_path, book)

    def die(txn: Txn, lines: list[bytes], host: str | None = None,
            op: int | None = None) -> None:
        raise SimulatedCrash

    monkeypatch.setattr(Txn, "append", die)
    with pytest.raises(SimulatedCrash):
        ledger.flush(queue)
    monkeypatch.undo()

    # The restart: what is on disk, and the plan made from it.
    after = reload(tmp_path)
    committed = queue.peek_state().ops.get("h1", 0)
    steps = plan_recovery(list(after.book), committed, {}, "h1", None)
    actions = {step.job.line: step.action for step in steps}
    assert pending_lines(queue) == [b"evicted", b"pending"]
    assert actions[b"evicted"] is Action.FORGET  # its line is back
    assert actions[b"retry"] is Action.BACK_END, "else the line 'retry' is lost"
