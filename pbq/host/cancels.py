"""``pbq cancel`` for the jobs this host holds: the requests come as job numbers in
``JOBFILE.HOST.cancel`` (from this machine or any other that shares the file system), and
are applied at every tick, so a cancel needs no signal and no remote shell.

A job being started is cancelled once it has started; a request for a number this host
does not hold stays wanted, since the line may still come back here (a retry, a put-back).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import PbqError
from ..sidefiles import CancelInbox
from .executor import Executor
from .jobs import UNKNOWN_EXIT, JobBook, JobState, Outcome
from .ledger import Ledger
from .outcomes import Outcomes

# The states a cancel ends a job from; CANCELLING jobs are ended already, STARTING (and
# QUEUED) ones once started, and jobs that have ended wait only for their record.
SIGNALLED = (JobState.RUNNING, JobState.STOPPED, JobState.EVICTING, JobState.TIMING_OUT,
             JobState.TERMINATING)


class Cancels:
    def __init__(self, inbox: CancelInbox, book: JobBook, ledger: Ledger, outcomes: Outcomes,
                 log: Callable[[str], None]) -> None:
        self.inbox = inbox
        self.book = book
        self.ledger = ledger
        self.outcomes = outcomes
        self.log = log
        self.wanted: set[int] = set()  # job numbers (Seq) asked for, ever

    def apply(self, executor: Executor, now: float, grace: float) -> None:
        """SIGTERM (or the DRM's cancel) to each wanted job now, SIGKILL after ``grace``
        (the limits' kill loop); a line taken ahead and not started is simply recorded."""
        self.wanted |= self.inbox.take(self.log)
        if not self.wanted:
            return
        acted = False
        for job in list(self.book):
            if job.number not in self.wanted:
                continue
            jid = self.book.job_id(job)
            if job.state in SIGNALLED:
                executor.term(job)
                self.book.cancelling(job, kill_at=now + grace)  # -> CANCELLING
                self.log(f"job {jid} cancelled: SIGTERM to it whole (SIGKILL after {grace:g} s)")
                acted = True
            elif job.state is JobState.CLAIMED:
                self.log(f"job {jid} cancelled before it started")
                self.outcomes.finish(job, Outcome(UNKNOWN_EXIT, note="never started"), when=now)
                acted = True
        if acted:
            try:
                self.ledger.save(fsync=True)  # on record before it ends: a restart knows why
            except PbqError as err:
                self.ledger.disk_problem(err)
