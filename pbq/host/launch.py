"""Starting a batch of claimed jobs, in the write-ahead order: ``starting`` on the journal
before the executor may have run them, ``started`` (pids or cluster ids) after it did;
a job that cannot start is a failed job (127/126), or goes back (out of processes, a DRM
that did not take it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PbqError
from ..statefiles import line_to_text
from .executor import Answer, EnvFor, Executor, NotStarted, Revoked, Started
from .jobs import Job, JobBook, JobState
from .ledger import Ledger, Log
from .outcomes import Outcomes


@dataclass
class Launched:
    refused: list[bool] = field(default_factory=list)  # ok flags of jobs that could not start
    put_back: bool = False  # some line goes back to the jobfile, or an outcome waits
    not_started: list[int] = field(default_factory=list)  # seqs of jobs that did not start
    revoked: int = 0  # starts queued ahead, given back (their lines are CLAIMED again)


def launch(batch: list[Job], now: float, executor: Executor, env_for: EnvFor, book: JobBook,
           ledger: Ledger, outcomes: Outcomes, log: Log, ahead: bool = False) -> Launched | None:
    """Start requests for the batch, and what is answered at once (a cluster's submission;
    a local start is answered in a later pass).  None when not even the ``starting``
    record could be written (nothing started).  ``ahead``: the runner is to start each
    when one of the jobs ends (QUEUED until then)."""
    for job in batch:
        if ahead:
            book.queue(job)  # CLAIMED -> QUEUED: from now on it may have run
        else:
            book.starting(job)  # CLAIMED -> STARTING: from now on it may have run
    try:
        ledger.journal({"starting": [j.seq for j in batch]})
    except PbqError as err:
        for job in batch:
            book.unstart(job)
        ledger.disk_problem(err)
        return None
    answers = executor.start(batch, env_for, now, wait=False, ahead=ahead)
    return apply_answers(answers, now, executor, book, ledger, outcomes, log)


def apply_answers(answers: list[Answer], now: float, executor: Executor,
                  book: JobBook, ledger: Ledger, outcomes: Outcomes, log: Log) -> Launched:
    """What the executor said of start requests: pids (or cluster ids) on the journal, jobs
    that could not start recorded as failed or put back.  A job `term` reached while it was
    being started is signalled now that it has a pid."""
    done = Launched()
    started, submitted = [], []
    for r in answers:
        job = r.job
        jid = book.job_id(job)
        terminating = job.state is JobState.TERMINATING
        if isinstance(r, Revoked):
            if terminating:
                book.terminated(job)  # nothing ran: TERMINATING -> TERMINATED (the line goes back)
            else:
                book.unqueue(job)  # QUEUED -> CLAIMED: started later as any line taken ahead
                done.revoked += 1
            continue
        if isinstance(r, Started):
            when = r.when or now
            if terminating:  # its end puts the line back
                book.started_while_terminating(job, when, r.pid, r.pid_start, r.cluster_id)
                executor.term(job)
            else:
                book.started(job, when, r.pid, r.pid_start, r.cluster_id)  # STARTING -> RUNNING
            if r.pid is not None:
                started.append([job.seq, r.pid, r.pid_start, when])
                log(f"started {jid} pid {r.pid}: {line_to_text(job.line)}")
            else:
                submitted.append([job.seq, r.cluster_id, when])
                log(f"submitted {jid} {r.note}: {line_to_text(job.line)}")
            continue
        done.not_started.append(job.seq)
        if terminating:
            book.terminated(job)  # nothing ran: TERMINATING -> TERMINATED (the line goes back)
            continue
        done.put_back = True
        if isinstance(r, NotStarted) and r.outcome is not None:
            job.started = now
            log(f"could not start {jid}: {r.message}")
            outcomes.finish(job, r.outcome, when=now)
            done.refused.append(r.outcome.ok)
        else:
            # Out of processes/memory, or a DRM that did not take it: the job goes back.
            log(f"{r.message}: putting {jid} back")
            book.requeue(job, front=True)
    if started or submitted:
        try:
            # A pid may wait for the pass's next write (a restart finds the process by its
            # job number); a cluster id goes on record at once.
            ledger.journal({"started": started, "submitted": submitted}, defer=not submitted)
        except PbqError as err:
            ledger.disk_problem(err)
    return done
