"""Tests for pbq.host.jobs: the job states, the guarded transitions of JobBook, and the
saved form of jobs (this release's and the first release's)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pbq.host.jobs import IllegalTransition, Job, JobBook, JobState
from pbq.host.ledger import Ledger
from pbq.statefiles import HostFiles

V1 = Path(__file__).parent / "data" / "v1"

S = JobState

# Each transition method of JobBook, called the way the loop calls it.
Transition = Callable[[JobBook, Job], None]
METHODS: dict[str, Transition] = {
    "unclaim": lambda b, j: b.unclaim([j]),
    "starting": lambda b, j: b.starting(j),
    "unstart": lambda b, j: b.unstart(j),
    "queue": lambda b, j: b.queue(j),
    "unqueue": lambda b, j: b.unqueue(j),
    "started": lambda b, j: b.started(j, 100.0, pid=4242, pid_start=1.5),
    "adopt-running": lambda b, j: b.adopt(j, stopped=False),
    "adopt-stopped": lambda b, j: b.adopt(j, stopped=True),
    "stop": lambda b, j: b.stop(j, "load"),
    "cont": lambda b, j: b.cont(j),
    "evicting": lambda b, j: b.evicting(j),
    "timing-out": lambda b, j: b.timing_out(j, kill_at=0.0),
    "cancelling": lambda b, j: b.cancelling(j, kill_at=0.0),
    "terminating": lambda b, j: b.terminating(j),
    "terminated": lambda b, j: b.terminated(j),
    "started-while-terminating": lambda b, j: b.started_while_terminating(j, 1.0, 7, 2.0, None),
    "requeue-front": lambda b, j: b.requeue(j, front=True),
    "requeue-end": lambda b, j: b.requeue(j, front=False),
    "settling": lambda b, j: b.settling(j),
    "drop": lambda b, j: b.drop(j),
}

GONE = None  # the job has left the book

# The diagram's edges: (from-state, method, to-state).
ALLOWED: list[tuple[JobState, str, JobState | None]] = [
    (S.CLAIMED, "unclaim", GONE),
    (S.CLAIMED, "starting", S.STARTING),
    (S.STARTING, "unstart", S.CLAIMED),
    (S.CLAIMED, "queue", S.QUEUED),
    (S.QUEUED, "unqueue", S.CLAIMED),
    (S.QUEUED, "starting", S.STARTING),
    (S.QUEUED, "unstart", S.CLAIMED),
    (S.QUEUED, "started", S.RUNNING),
    (S.QUEUED, "terminating", S.TERMINATING),
    (S.QUEUED, "requeue-front", S.REQUEUE_FRONT),
    (S.QUEUED, "requeue-end", S.REQUEUE_END),
    (S.QUEUED, "settling", S.SETTLING),
    (S.STARTING, "started", S.RUNNING),
    (S.STARTING, "adopt-running", S.RUNNING),
    (S.RUNNING, "adopt-running", S.RUNNING),
    (S.STOPPED, "adopt-running", S.RUNNING),
    (S.STARTING, "adopt-stopped", S.STOPPED),
    (S.RUNNING, "adopt-stopped", S.STOPPED),
    (S.STOPPED, "adopt-stopped", S.STOPPED),
    (S.RUNNING, "stop", S.STOPPED),
    (S.STOPPED, "cont", S.RUNNING),
    (S.RUNNING, "evicting", S.EVICTING),
    (S.STOPPED, "evicting", S.EVICTING),
    (S.RUNNING, "timing-out", S.TIMING_OUT),
    (S.STOPPED, "timing-out", S.TIMING_OUT),
    (S.TIMING_OUT, "requeue-front", S.REQUEUE_FRONT),
    (S.TIMING_OUT, "settling", S.SETTLING),
    (S.RUNNING, "cancelling", S.CANCELLING),
    (S.STOPPED, "cancelling", S.CANCELLING),
    (S.EVICTING, "cancelling", S.CANCELLING),
    (S.TIMING_OUT, "cancelling", S.CANCELLING),
    (S.TERMINATING, "cancelling", S.CANCELLING),
    (S.CANCELLING, "settling", S.SETTLING),
    (S.CANCELLING, "requeue-front", S.REQUEUE_FRONT),
    (S.CLAIMED, "settling", S.SETTLING),
    (S.RUNNING, "terminating", S.TERMINATING),
    (S.STOPPED, "terminating", S.TERMINATING),
    (S.STARTING, "terminating", S.TERMINATING),
    (S.TERMINATING, "terminated", S.TERMINATED),
    (S.TERMINATING, "started-while-terminating", S.TERMINATING),
    (S.CLAIMED, "requeue-front", S.REQUEUE_FRONT),
    (S.STARTING, "requeue-front", S.REQUEUE_FRONT),
    (S.RUNNING, "requeue-front", S.REQUEUE_FRONT),
    (S.STOPPED, "requeue-front", S.REQUEUE_FRONT),
    (S.EVICTING, "requeue-front", S.REQUEUE_FRONT),
    (S.TERMINATING, "requeue-front", S.REQUEUE_FRONT),
    (S.TERMINATED, "requeue-front", S.REQUEUE_FRONT),
    (S.STARTING, "requeue-end", S.REQUEUE_END),
    (S.RUNNING, "requeue-end", S.REQUEUE_END),
    (S.STOPPED, "requeue-end", S.REQUEUE_END),
    (S.STARTING, "settling", S.SETTLING),
    (S.RUNNING, "settling", S.SETTLING),
    (S.STOPPED, "settling", S.SETTLING),
    *[(state, "drop", GONE) for state in S],
]

# Adopting a job that is being evicted or terminated leaves it alone (its end decides).
ADOPT_NO_OP = (S.EVICTING, S.TIMING_OUT, S.TERMINATING, S.CANCELLING)

ILLEGAL: list[tuple[str, JobState]] = [
    (method, state)
    for method in METHODS
    for state in S
    if not any(f == state and m == method for f, m, _ in ALLOWED)
    and not (method.startswith("adopt") and state in ADOPT_NO_OP)
]

# How to bring a fresh CLAIMED job to each state, along allowed edges only.
PATHS: dict[JobState, list[str]] = {
    S.CLAIMED: [],
    S.STARTING: ["starting"],
    S.QUEUED: ["queue"],
    S.RUNNING: ["starting", "started"],
    S.STOPPED: ["starting", "started", "stop"],
    S.EVICTING: ["starting", "started", "evicting"],
    S.TIMING_OUT: ["starting", "started", "timing-out"],
    S.TERMINATING: ["starting", "started", "terminating"],
    S.CANCELLING: ["starting", "started", "cancelling"],
    S.TERMINATED: ["starting", "started", "terminating", "terminated"],
    S.SETTLING: ["starting", "started", "settling"],
    S.REQUEUE_FRONT: ["requeue-front"],
    S.REQUEUE_END: ["starting", "started", "requeue-end"],
}


def walk(book: JobBook, job: Job, to: JobState) -> Job:
    for method in PATHS[to]:
        METHODS[method](book, job)
    assert job.state is to
    return job


def book_with(state: JobState, host: str = "h1") -> tuple[JobBook, Job]:
    """A book holding one job in ``state``, with ``changed`` cleared."""
    book = JobBook(host)
    job = walk(book, book.claim(b"echo hi", op=1), state)
    book.changed = False
    return book, job


def test_paths_cover_every_state() -> None:
    assert set(PATHS) == set(S)


def test_illegal_table_is_not_empty_for_guarded_methods() -> None:
    guarded = {m for m, _ in ILLEGAL}
    assert guarded == set(METHODS) - {"drop"}  # drop takes any job of the book


# ---------------------------------------------------------------------- transitions


@pytest.mark.parametrize(
    ("source", "method", "target"),
    [pytest.param(f, m, t, id=f"{f.value}-{m}") for f, m, t in ALLOWED],
)
def test_allowed_transition(source: JobState, method: str, target: JobState | None) -> None:
    book, job = book_with(source)
    METHODS[method](book, job)
    assert book.changed, "every transition marks the book changed"
    if target is GONE:
        assert book.get(job.seq) is None
        assert len(book) == 0
    else:
        assert job.state is target
        assert book.get(job.seq) is job


@pytest.mark.parametrize(
    ("method", "source"),
    [pytest.param(m, s, id=f"{s.value}-{m}") for m, s in ILLEGAL],
)
def test_illegal_transition_raises_and_changes_nothing(method: str, source: JobState) -> None:
    book, job = book_with(source)
    before = job.to_json()
    with pytest.raises(IllegalTransition, match=r"h1\.1"):
        METHODS[method](book, job)
    assert job.to_json() == before
    assert book.get(job.seq) is job
    assert not book.changed


@pytest.mark.parametrize("source", ADOPT_NO_OP, ids=lambda s: s.value)
@pytest.mark.parametrize("stopped", [False, True])
def test_adopt_leaves_evicting_and_terminating_alone(source: JobState, stopped: bool) -> None:
    book, job = book_with(source)
    book.adopt(job, stopped=stopped)
    assert job.state is source


@pytest.mark.parametrize("method", [m for m in METHODS if m != "unclaim"])
def test_transition_of_a_job_not_in_the_book_raises(method: str) -> None:
    book, _ = book_with(S.RUNNING)
    stranger = Job(seq=1, line=b"echo hi", op=1, state=S.RUNNING)  # same seq, another object
    with pytest.raises(IllegalTransition):
        METHODS[method](book, stranger)
    assert not book.changed


def test_drop_of_a_job_not_in_the_book_raises() -> None:
    book = JobBook("h1")
    job = book.claim(b"a", op=1)
    book.drop(job)
    with pytest.raises(IllegalTransition, match="not in the book"):
        book.drop(job)
    with pytest.raises(IllegalTransition, match="not in the book"):
        JobBook("h1").drop(Job(seq=7, line=b"b", op=1))


def test_claim_numbers_seqs_and_unclaim_removes() -> None:
    book = JobBook("h1")
    jobs = [book.claim(line, op=5, tries=t) for t, line in enumerate([b"a", b"b", b"c"])]
    assert [j.seq for j in jobs] == [1, 2, 3]
    assert [j.state for j in jobs] == [S.CLAIMED] * 3
    assert [j.op for j in jobs] == [5, 5, 5]
    assert [j.tries for j in jobs] == [0, 1, 2]
    assert [book.job_id(j) for j in jobs] == ["h1.1", "h1.2", "h1.3"]
    assert book.changed
    book.changed = False
    book.unclaim(jobs[:2])
    assert [j.seq for j in book] == [3]
    assert book.changed
    # Seqs are never reused, even after an unclaim.
    assert book.claim(b"d", op=6).seq == 4
    assert book.counters.next_seq == 5


def test_new_op_counts_up() -> None:
    book = JobBook("h1")
    assert [book.new_op(), book.new_op(), book.new_op()] == [1, 2, 3]
    assert book.counters.next_op == 4


def test_started_records_the_process() -> None:
    book, job = book_with(S.STARTING)
    book.started(job, 123.5, pid=77, pid_start=9.25, cluster_id="c1")
    assert (job.pid, job.pid_start, job.cluster_id, job.started) == (77, 9.25, "c1", 123.5)


def test_stop_and_cont_keep_stopped_by() -> None:
    book, job = book_with(S.RUNNING)
    book.stop(job, "user")
    assert job.stopped_by == "user"
    book.cont(job)
    assert job.stopped_by is None


@pytest.mark.parametrize(
    ("stopped_by", "stopped", "after"),
    [
        pytest.param(None, True, "load", id="stopped-unknown-becomes-load"),
        pytest.param("user", True, "user", id="user-stop-kept"),
        pytest.param("user", False, None, id="running-clears"),
    ],
)
def test_adopt_sets_stopped_by(stopped_by: str | None, stopped: bool, after: str | None) -> None:
    book, job = book_with(S.STARTING)
    job.stopped_by = stopped_by
    book.adopt(job, stopped=stopped)
    assert job.stopped_by == after


def test_terminated_forgets_the_pid() -> None:
    book, job = book_with(S.TERMINATING)
    assert job.pid == 4242
    book.terminated(job)
    assert job.pid is None


@pytest.mark.parametrize("front", [True, False])
def test_requeue_clears_putback_op(front: bool) -> None:
    book, job = book_with(S.RUNNING)
    job.putback_op = 9  # a stale number must never survive a new put-back
    book.requeue(job, front=front)
    assert job.putback_op is None


def test_running_count_counts_running_and_starting() -> None:
    book = JobBook("h1")
    for state in S:
        walk(book, book.claim(state.value.encode(), op=1), state)
    assert book.running_count() == 2
    assert {j.state for j in book.live()} == {S.RUNNING, S.STOPPED, S.EVICTING, S.TIMING_OUT,
                                              S.CANCELLING,
                                             S.TERMINATING}
    assert [j.state for j in book.in_state(S.CLAIMED, S.SETTLING)] == [S.CLAIMED, S.SETTLING]


def test_release_user_stops() -> None:
    book = JobBook("h1")
    by_user = walk(book, book.claim(b"u", op=1), S.RUNNING)
    by_load = walk(book, book.claim(b"l", op=1), S.RUNNING)
    book.stop(by_user, "user")
    book.stop(by_load, "load")
    book.changed = False
    book.release_user_stops()
    assert (by_user.stopped_by, by_load.stopped_by) == ("load", "load")
    assert (by_user.state, by_load.state) == (S.STOPPED, S.STOPPED)
    assert book.changed
    book.changed = False
    book.release_user_stops()  # nothing left to release
    assert not book.changed


# ---------------------------------------------------------------------- saved form


def full_book() -> JobBook:
    """A book with one job in each state, with every saved field used somewhere."""
    book = JobBook("h1")
    for state in S:
        job = book.claim(b"job \xff " + state.value.encode(), op=3, tries=2)  # not UTF-8
        walk(book, job, state)
    stopped = book.in_state(S.STOPPED)[0]
    stopped.stopped_by = "user"
    book.in_state(S.RUNNING)[0].cluster_id = "4711"
    book.in_state(S.REQUEUE_FRONT)[0].putback_op = 8
    book.counters.done, book.counters.failed = 12, 3
    book.new_op()
    return book


def test_book_round_trip() -> None:
    book = full_book()
    doc = json.loads(json.dumps(book.to_json()))  # through real JSON text
    again = JobBook.from_json("h1", doc)
    # A start queued ahead is, to whoever reads it after a crash, a start in flight.
    for job in book.in_state(S.QUEUED):
        job.state = S.STARTING
    assert [(j.seq, j.state) for j in again] == [(j.seq, j.state) for j in book]
    assert list(again) == list(book)  # every saved field, byte lines included
    assert again.counters == book.counters
    assert again.to_json() == doc
    assert not again.changed


def test_job_to_json_leaves_out_unset_fields() -> None:
    d = Job(seq=1, line=b"x", op=2).to_json()
    assert d == {"seq": 1, "line": "x", "op": 2, "state": "claimed"}


@pytest.mark.parametrize("doc", [None, [], "garbage"])
def test_book_from_non_dict_is_empty(doc: object) -> None:
    book = JobBook.from_json("h1", doc)
    assert len(book) == 0
    assert book.counters.next_seq == 1


def v1_record(**fields: Any) -> dict[str, Any]:
    """A job as the first release saved it."""
    rec: dict[str, Any] = {
        "seq": 4, "line": "sleep 2", "op": 6, "state": "running", "pid": 20555,
        "pid_start": 1796034465.07, "started": 1796034465.46, "stopped_by": None, "tries": 0,
        "evicting": False, "requeue_front": True, "cluster_id": None,
    }
    rec.update(fields)
    return rec


@pytest.mark.parametrize(
    ("fields", "state", "putback_op"),
    [
        pytest.param({}, S.RUNNING, None, id="running"),
        pytest.param({"state": "stopped", "stopped_by": "load"}, S.STOPPED, None, id="stopped"),
        pytest.param({"state": "claimed", "pid": None}, S.CLAIMED, None, id="claimed"),
        pytest.param({"state": "requeue"}, S.REQUEUE_FRONT, 6, id="requeue-front"),
        pytest.param({"state": "requeue", "requeue_front": False}, S.REQUEUE_END, 6,
                     id="requeue-end"),
        pytest.param({"state": "requeue", "requeue_front": None}, S.REQUEUE_END, 6,
                     id="requeue-front-null-is-end"),
        pytest.param({"extra": {"terminated": True}}, S.TERMINATING, None, id="terminated"),
        pytest.param({"state": "stopped", "extra": {"terminated": True}}, S.TERMINATING, None,
                     id="stopped-terminated"),
        pytest.param({"extra": {"terminated": True, "reaped": True}}, S.TERMINATED, None,
                     id="terminated-reaped"),
        pytest.param({"state": "starting", "extra": {"terminated": True}}, S.TERMINATING, None,
                     id="starting-terminated"),
        pytest.param({"extra": {"done_only": True}}, S.SETTLING, None, id="done-only"),
        pytest.param({"state": "stopped", "extra": {"done_only": True}}, S.SETTLING, None,
                     id="stopped-done-only"),
        pytest.param({"evicting": True}, S.EVICTING, None, id="running-evicting"),
        pytest.param({"state": "stopped", "evicting": True}, S.EVICTING, None,
                     id="stopped-evicting"),
        pytest.param({"state": "claimed", "evicting": True}, S.CLAIMED, None,
                     id="claimed-evicting-ignored"),
        pytest.param({"evicting": True, "extra": {"terminated": True}}, S.TERMINATING, None,
                     id="terminated-wins-over-evicting"),
        pytest.param({"state": "claimed", "extra": {"terminated": True}}, S.CLAIMED, None,
                     id="claimed-terminated-ignored"),
        pytest.param({"extra": None}, S.RUNNING, None, id="extra-null"),
    ],
)
def test_job_from_first_release(fields: dict[str, Any], state: JobState,
                                putback_op: int | None) -> None:
    job = Job.from_json(v1_record(**fields))
    assert job.state is state
    assert job.putback_op == putback_op
    assert (job.seq, job.line, job.op) == (4, b"sleep 2", 6)


def test_job_from_first_release_keeps_process_fields() -> None:
    job = Job.from_json(v1_record(state="stopped", stopped_by="load"))
    assert (job.pid, job.pid_start, job.started) == (20555, 1796034465.07, 1796034465.46)
    assert job.stopped_by == "load"
    assert job.cluster_id is None
    assert job.tries == 0


def v1_copy(tmp_path: Path) -> Path:
    """The first release's state and journal of host h1, copied; returns the jobfile."""
    for name in ("jobfile", "jobfile.h1.state", "jobfile.h1.journal"):
        shutil.copy(V1 / name, tmp_path / name)
    return tmp_path / "jobfile"


class QuietLog:
    """A log that drops everything (the ledger only logs on disk problems)."""

    def __call__(self, message: str, when: float | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


def test_first_release_files_load(tmp_path: Path) -> None:
    files = HostFiles(v1_copy(tmp_path), "h1")
    ledger = Ledger(files, JobBook("h1"), QuietLog(), False, time.monotonic)
    book = ledger.load()
    assert ledger.gen == 5  # the journal's records (generations 2 and 3) are obsolete
    assert {j.seq: j.state for j in book} == {
        4: S.RUNNING, 5: S.STOPPED, 6: S.STOPPED, 7: S.CLAIMED, 8: S.CLAIMED,
    }
    assert {j.seq: j.line for j in book} == {
        4: b"sleep 2", 5: b"sleep 60", 6: b"sleep 60", 7: b"echo pending-1", 8: b"echo pending-2",
    }
    assert [j.pid for j in book] == [20555, 20556, 20557, None, None]
    assert [j.stopped_by for j in book] == [None, "load", "load", None, None]
    assert all(j.putback_op is None and j.cluster_id is None for j in book)
    c = book.counters
    assert (c.next_seq, c.next_op, c.done, c.failed) == (9, 3, 1, 2)


def test_first_release_files_are_rewritten_in_this_format(tmp_path: Path) -> None:
    files = HostFiles(v1_copy(tmp_path), "h1")
    ledger = Ledger(files, JobBook("h1"), QuietLog(), False, time.monotonic)
    states = {j.seq: j.state for j in ledger.load()}
    ledger.save()
    doc = json.loads(files.state.read_text())
    assert doc["format"] == 2
    assert doc["gen"] == 6
    assert not any({"evicting", "requeue_front", "extra"} & set(j) for j in doc["jobs"])
    again = Ledger(files, JobBook("h1"), QuietLog(), False, time.monotonic)
    assert {j.seq: j.state for j in again.load()} == states


def test_jobs_of_a_state_come_in_the_order_taken_whatever_order_they_entered_it() -> None:
    book = JobBook("h1")
    a, b, c = (book.claim(x, op=1) for x in (b"a", b"b", b"c"))
    book.queue(a)
    book.starting(b)
    book.unqueue(a)  # back among the lines taken ahead, after c
    assert book.in_state(S.CLAIMED) == [a, c]
    book.unstart(b)
    assert book.in_state(S.CLAIMED) == [a, b, c]
    book.starting(c)
    book.started(c, 1.0, pid=9)
    assert book.in_state(S.RUNNING, S.CLAIMED) == [a, b, c]
    assert book.running_count() == 1
    book.drop(a)
    assert book.in_state(S.CLAIMED) == [b] and len(book) == 2
