"""The scheduler's mode and the commands that change it (`stop`, `cont`, `quit`, `term`,
`kill`, from a signal or a control file).  The mode is derived, never stored::

    RUN --stop--> PAUSED --cont--> RUN          (a user's stop is on the ledger: it outlives
    RUN/PAUSED --quit--> QUIT                    a restart until `cont`)
    any --term--> TERM: SIGTERM to every job now, SIGKILL after `term_grace`; the lines go
                  back to the front of the jobfile before the scheduler exits
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from ..errors import PbqError
from ..jobfile import JobQueue
from ..policy import Mode
from ..quarantine import HostHealth
from ..statefiles import line_to_text
from .executor import Executor
from .intake import Intake
from .jobs import ASKED, JobBook, JobState
from .ledger import Ledger, Log

KILL_WAIT = 5.0  # seconds after SIGKILL before giving up on processes that won't die


class Modes:
    def __init__(self, book: JobBook, ledger: Ledger, intake: Intake, health: HostHealth,
                 log: Log, term_grace: float, mono: Callable[[], float]) -> None:
        self.book = book
        self.ledger = ledger
        self.intake = intake
        self.health = health
        self.log = log
        self.term_grace = term_grace
        self.mono = mono
        self.executor: Executor | None = None  # set at start-up
        self.paused = False  # `stop` in force
        self.quitting = False
        self.term_deadline: float | None = None  # TERM: SIGKILL at (then give up at) this time
        self.killed_hard = False

    @property
    def mode(self) -> Mode:
        if self.term_deadline is not None:
            return Mode.TERM
        if self.paused:
            return Mode.PAUSED
        return Mode.QUIT if self.quitting else Mode.RUN

    def restore_pause(self) -> None:
        """At start: a user's stop before the restart is still in force."""
        if self.ledger.paused:
            self.paused = True  # -> PAUSED
            self.log("stopped by the user before this restart: starting nothing until cont")

    def command(self, command: str, source: str) -> None:
        """Mode transitions requested by a signal or a control file."""
        if command == "stop":
            if not self.paused:
                self.log(f"{source}: stopping all jobs; starting nothing until cont")
            self.paused = True  # RUN/QUIT -> PAUSED: the policy stops every job
            self._save_paused()
        elif command == "cont":
            if self.paused:
                self.log(f"{source}: continuing")
            self.paused = False  # PAUSED -> RUN (or QUIT): jobs continue under the load policy
            self.book.release_user_stops()
            self._save_paused()
            if self.health.lift():
                self.log(f"{source}: quarantine lifted; taking jobs again")
        elif command == "quit":
            if not self.quitting:
                self.log(f"{source}: quitting: starting nothing new; exiting when jobs are done")
            self.quitting = True  # -> QUIT
            self.intake.give_back_claimed()
        elif command == "term":
            if self.term_deadline is None:
                self._terminate(source)  # -> TERM
        elif command == "kill":
            self.log(f"{source}: killed (jobs keep running)")
            self.log.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def _save_paused(self) -> None:
        """A user's stop is on record at once: a restart keeps it until `cont`."""
        if self.ledger.paused == self.paused:
            return
        self.ledger.paused = self.paused
        try:
            self.ledger.save(fsync=True)
        except PbqError as err:
            self.ledger.disk_problem(err)

    def _terminate(self, source: str) -> None:
        """SIGTERM to every job now (or cancel in the DRM).  A crash before the lines go back
        leaves the jobs TERMINATING on the ledger, and the restart puts them back."""
        assert self.executor is not None
        jobs = self.book.in_state(JobState.RUNNING, JobState.STOPPED, *ASKED)
        self.log(f"{source}: terminating {len(jobs)} job(s) (SIGKILL after {self.term_grace:g} s)")
        self.term_deadline = self.mono() + self.term_grace
        self.intake.give_back_claimed()
        said = self.executor.terminate(jobs)
        if said:
            self.log(said)
        for job in jobs:
            self.book.terminating(job)  # -> TERMINATING
        try:
            self.ledger.save(fsync=True)
        except PbqError as err:
            self.ledger.disk_problem(err)

    def term_done(self) -> bool:
        """TERM: done when nothing of the jobs runs any more; SIGKILL at the deadline, and
        after KILL_WAIT more seconds give up on processes that won't die (D state)."""
        assert self.executor is not None and self.term_deadline is not None
        hard = self.mono() >= self.term_deadline and not self.killed_hard
        finished = self.executor.term_finished(
            self.book.in_state(JobState.TERMINATING, JobState.EVICTING, JobState.CANCELLING), hard
        )
        if hard:
            self.killed_hard = True
            self.term_deadline = self.mono() + KILL_WAIT
        return finished or (self.killed_hard and self.mono() >= self.term_deadline)

    def put_back_terminated(self, queue: JobQueue) -> None:
        """`term`'s jobs go back to the front of the jobfile at once, and ``.running`` /
        ``.stopped`` are left empty (so PBQ's ``cat *.running *.stopped >> JOBFILE`` idiom
        cannot run them twice)."""
        jobs = self.book.in_state(JobState.TERMINATING, JobState.TERMINATED)
        for job in jobs:
            still = (
                job.state is JobState.TERMINATING
                and self.executor is not None
                and not self.executor.term_finished([job], hard=False)
            )
            note = " (still running after SIGKILL: POSSIBLE DUPLICATE)" if still else ""
            self.log(
                f"term: putting {self.book.job_id(job)} back at the front of the jobfile{note}: "
                f"{line_to_text(job.line)}"
            )
            self.book.requeue(job, front=True)
        if jobs and self.ledger.flush(queue):
            self.intake.changed()
