"""Answers to start requests that come in a later pass (the job runner answers while the
scheduler goes on): what they do to the jobs, including jobs `term` reached meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

from test_ledger import ListLog

from pbq.config import load_config
from pbq.host.executor import NotStarted, Revoked, Started
from pbq.host.jobs import Job, JobBook, JobState, Outcome
from pbq.host.launch import apply_answers, launch
from pbq.host.ledger import Ledger
from pbq.host.outcomes import Outcomes
from pbq.statefiles import HostFiles

S = JobState


class AnswersLater:
    """An executor whose start requests are answered only by ``start_answers``."""

    def __init__(self) -> None:
        self.requested: list[int] = []
        self.termed: list[int] = []

    def start(self, jobs: list[Job], env_for: object, now: float,
              wait: bool = True, ahead: bool = False) -> list[Started | NotStarted]:
        self.requested += [j.seq for j in jobs]
        return []

    def revoke(self) -> None:
        pass

    def start_queued(self, n: int) -> None:
        pass

    def term(self, job: Job) -> None:
        self.termed.append(job.seq)


def parts(tmp_path: Path) -> tuple[JobBook, Ledger, Outcomes, ListLog]:
    log = ListLog()
    book = JobBook("h1")
    files = HostFiles(tmp_path / "jobfile", "h1")
    ledger = Ledger(files, book, log, False, time.monotonic)
    outcomes = Outcomes(book, ledger, log, load_config(environ={}), tmp_path / "usage",
                        time.time)
    return book, ledger, outcomes, log


def test_a_start_answered_later_moves_the_job_on_then(tmp_path: Path) -> None:
    book, ledger, outcomes, log = parts(tmp_path)
    ex = AnswersLater()
    jobs = [book.claim(b"true", op=1), book.claim(b"nope", op=1)]
    done = launch(jobs, 1.0, ex, lambda j: {}, book, ledger, outcomes, log)  # type: ignore[arg-type]
    assert done is not None and not done.not_started and ex.requested == [1, 2]
    assert [j.state for j in jobs] == [S.STARTING, S.STARTING], "nothing answered yet"
    done = apply_answers([Started(jobs[0], pid=4242, pid_start=5.0, when=2.0),
                          NotStarted(jobs[1], Outcome(127, note="not found"), "not found")],
                         3.0, ex, book, ledger, outcomes, log)  # type: ignore[arg-type]
    assert jobs[0].state is S.RUNNING and jobs[0].pid == 4242 and jobs[0].started == 2.0
    assert done.not_started == [2] and done.refused == [False]
    assert book.get(2) is None, "a job that could not start is a failed job"
    assert b'"started"' not in ledger.files.journal.read_bytes(), "a pid waits for the pass"
    ledger.flush_journal()
    assert b'"started":[[1,4242,5.0,2.0]]' in ledger.files.journal.read_bytes()


def test_a_start_queued_ahead_and_given_back_is_a_line_taken_ahead_again(
    tmp_path: Path,
) -> None:
    book, ledger, outcomes, log = parts(tmp_path)
    ex = AnswersLater()
    jobs = [book.claim(b"true", op=1), book.claim(b"true", op=1)]
    done = launch(jobs, 1.0, ex, lambda j: {}, book, ledger, outcomes, log,  # type: ignore[arg-type]
                  ahead=True)
    assert done is not None and ex.requested == [1, 2]
    assert [j.state for j in jobs] == [S.QUEUED, S.QUEUED]
    assert b'"starting":[1,2]' in ledger.files.journal.read_bytes(), "written ahead at once"
    assert book.running_count() == 0, "a queued start holds no slot until it is made"
    book.terminating(jobs[1])  # `term` came while it was queued
    done = apply_answers([Revoked(jobs[0]), Revoked(jobs[1])], 2.0, ex, book, ledger, outcomes,
                         log)  # type: ignore[arg-type]
    assert jobs[0].state is S.CLAIMED and done.revoked == 1 and not done.not_started
    assert jobs[1].state is S.TERMINATED, "nothing ran: its line goes back"


def test_term_reached_a_job_being_started(tmp_path: Path) -> None:
    """`term` came between the request and its answer: a job that started is signalled at
    once, with its pid on record; one that did not is simply terminated (nothing ran)."""
    book, ledger, outcomes, log = parts(tmp_path)
    ex = AnswersLater()
    jobs = [book.claim(b"sleep 9", op=1), book.claim(b"sleep 8", op=1)]
    launch(jobs, 1.0, ex, lambda j: {}, book, ledger, outcomes, log)  # type: ignore[arg-type]
    for job in jobs:
        book.terminating(job)  # STARTING -> TERMINATING (what Modes does on term)
    done = apply_answers([Started(jobs[0], pid=77, pid_start=6.0),
                          NotStarted(jobs[1], None, "cannot start processes")],
                         3.0, ex, book, ledger, outcomes, log)  # type: ignore[arg-type]
    assert jobs[0].state is S.TERMINATING and jobs[0].pid == 77 and ex.termed == [1]
    assert jobs[1].state is S.TERMINATED
    assert done.not_started == [2] and not done.put_back
    # A restart reading the ledger knows the pid of the job being terminated (the snapshot
    # says TERMINATING without one; the journal's "started" record adds it).
    jobs[0].pid = None
    ledger.save()
    jobs[0].pid = 77
    ledger.journal({"started": [[1, 77, 6.0, 3.0]], "submitted": []})
    again = Ledger(ledger.files, JobBook("h1"), log, False, time.monotonic)
    again.load()
    assert again.book.get(1) is not None and again.book.get(1).pid == 77  # type: ignore[union-attr]


def test_a_job_whose_pid_never_reached_the_ledger_is_known_by_the_runners_record(
    tmp_path: Path,
) -> None:
    """The scheduler died after asking for a start and before the answer was on its ledger;
    the job ran and ended, and the runner wrote its end to ``.exits`` with the job number:
    the restart records that end instead of running the line again."""
    from pbq.host.local import LocalExecutor
    from pbq.host.recovery import Action, plan_recovery
    from pbq.sensors import Sensors
    from pbq.sidefiles import ExitRecord, append_exit_records

    jf = tmp_path / "jobfile"
    jf.touch()
    exits = tmp_path / "jobfile.h1.exits"
    append_exit_records(exits, [ExitRecord(99999, 5.0, 3 << 8, 7.0, 0.1, 1024, job=3)])
    ex = LocalExecutor("h1", jf, exits, 19, None, ListLog(), Sensors())
    job = Job(seq=3, line=b"sh -c 'exit 3'", op=1, state=S.STARTING)
    other = Job(seq=4, line=b"true", op=1, state=S.STARTING)  # no record: truly unknown
    probes = ex.probe([job, other])
    ex.close()
    steps = plan_recovery([job, other], 1, probes, "h1", None)
    assert [s.action for s in steps] == [Action.FINISH, Action.BACK_FRONT]
    exit_of = steps[0].probe.exit
    assert exit_of is not None and exit_of.exit_code == 3 and steps[0].probe.pid == 99999


def test_a_slot_of_a_job_that_did_not_start_is_released_and_free(tmp_path: Path) -> None:
    from pbq.host.joboutput import JobOutput

    out = JobOutput(HostFiles(tmp_path / "jobfile", "h1"), None, False, False, ListLog())
    (tmp_path / "jobfile").touch()
    out.open(set())
    first = out.paths(1)
    out.requested([(1, 1, 1.0)])
    out.not_started([1])
    out.pack(None)
    assert b"#released 1" in (tmp_path / "jobfile.h1.jobids").read_bytes()
    assert out.paths(2) == first, "its slot serves the next job"
