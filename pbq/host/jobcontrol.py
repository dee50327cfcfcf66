"""What the policy's choice does to one job: stop it, continue it, or evict it (memory).
Each is the executor's act first, then the JobBook's transition, then a line in the log."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import PbqError
from .executor import Executor
from .jobs import Job, JobBook
from .ledger import Ledger, Log
from .sensing import Measurements


class JobControl:
    def __init__(self, book: JobBook, ledger: Ledger, log: Log, clock: Callable[[], float],
                 mono: Callable[[], float]) -> None:
        self.book = book
        self.ledger = ledger
        self.log = log
        self.clock = clock
        self.mono = mono
        self.last_evict = -float("inf")  # monotonic time of the last eviction

    def stop(self, executor: Executor, job: Job, by: str, m: Measurements) -> None:
        said = executor.stop(job)
        if said is None:
            return
        self.book.stop(job, by, now=self.clock())  # RUNNING -> STOPPED
        jid = self.book.job_id(job)
        if executor.counts_foreign_load:
            load = m.foreign + self.book.running_count() + 1
            self.log(f"stopped {jid} {said} ({by}: load {load:.2f}, limit {m.limit:g})")
        else:
            self.log(f"stopped {jid} ({by}): {said}")

    def cont(self, executor: Executor, job: Job) -> None:
        said = executor.cont(job)
        if said is None:
            return
        self.book.cont(job, now=self.clock())  # STOPPED -> RUNNING
        self.log(f"continued {self.book.job_id(job)} {said}")

    def evict(self, executor: Executor, job: Job, m: Measurements) -> None:
        self.book.evicting(job)  # RUNNING/STOPPED -> EVICTING
        try:
            self.ledger.save(fsync=True)  # on record before the kill: a restart requeues it
        except PbqError as err:
            self.ledger.disk_problem(err)
        executor.kill(job)
        self.last_evict = self.mono()
        self.log(
            f"available memory {(m.mem_available or 0) >> 20} MiB is below half of memfree: "
            f"killing {self.book.job_id(job)}"
        )
