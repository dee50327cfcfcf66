"""Lines in: taking them from the shared jobfile (write-ahead, then commit), noticing
that it grew, giving lines taken ahead back, and cutting the taken part off."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable

from ..errors import PbqError
from ..jobfile import JobQueue, Txn
from ..safety import check_input_file
from .jobs import ASKED, Job, JobBook, JobState
from .ledger import Ledger, Log

PREFETCH_MAX = 64  # most lines a host takes ahead of its free slots (a lock, two fsyncs each)
PREFETCH_HORIZON_MAX = 5.0  # seconds of work a host takes ahead at most


class Intake:
    def __init__(self, queue: JobQueue, book: JobBook, ledger: Ledger, log: Log,
                 allow_group_write: bool, retries: int) -> None:
        self.queue = queue
        self.book = book
        self.ledger = ledger
        self.log = log
        self.allow_group_write = allow_group_write
        self.retries = retries
        self.empty_sig: tuple[int | float, ...] | None = None  # signature when found empty
        self.input_error: str | None = None  # the jobfile became unsafe (e.g. world-writable)
        self.fence: Callable[[Txn | None], None] | None = None  # raises when no longer the owner
        self.take_cost = 0.0  # seconds a take costs lately (lock wait + hold), smoothed

    def signature(self) -> tuple[int | float, ...]:
        """Changes whenever the jobfile, a replaced one, or the commit record does (also
        before JOBFILE.queue exists)."""
        return self.queue.signature()

    def may_have_lines(self) -> bool:
        return bool(self.book.in_state(JobState.CLAIMED)) or self.empty_sig != self.signature()

    def drained(self) -> bool:
        return self.empty_sig is not None and self.empty_sig == self.signature()

    def nothing_left(self) -> bool:
        """No job held, nothing pending, no outcome unwritten (the ``drained`` event)."""
        held = self.book.live() or self.book.in_state(*ASKED, JobState.CLAIMED)
        return not held and self.drained() and not self.ledger.pending()

    def changed(self) -> None:
        """Lines went back into the jobfile: look again."""
        self.empty_sig = None

    def prefetch(self, avg_runtime: float | None, limit: float) -> int:
        """How many lines to take ahead when jobs are short: about half a second of work, or
        twice what a take has lately cost (waiting for the lock and holding it), so that a
        lock round trip and its fsyncs are shared by many jobs -- and the busier the lock
        (many hosts on one jobfile), the fewer times each host needs it."""
        if avg_runtime is None or avg_runtime >= 0.5:
            return 0
        slots = max(1, math.ceil(limit))
        horizon = min(PREFETCH_HORIZON_MAX, max(0.5, 2.0 * self.take_cost))
        return min(PREFETCH_MAX, math.ceil(slots * horizon / max(avg_runtime, 0.001)))

    def _safe(self) -> bool:
        try:
            # Its mode may have changed since start-up: whoever can write it runs commands as us.
            check_input_file(self.queue.jobfile, "jobfile", self.allow_group_write)
        except PbqError as err:
            if self.input_error != str(err):
                self.log(f"ERROR: {err}; taking no jobs from it until that is fixed")
                sys.stderr.write(f"pbq-single: {err}\n")
            self.input_error = str(err)
            return False
        if self.input_error is not None:
            self.log("the jobfile is safe again: taking jobs")
            self.input_error = None
        return True

    def take(self, n: int, wait: bool = True) -> list[Job]:
        """Take up to ``n`` lines: write-ahead record (fsync), then commit in the jobfile.
        Without ``wait``, nothing if another holds the lock now (jobs still run here: the
        next pass tries again, and this host does not join the queue for the lock)."""
        if not self._safe():
            return []
        self.ledger.make_durable()  # what the take's record follows, synced outside the lock
        asked = time.monotonic()
        with (self.queue.transaction() if wait else self.queue.try_transaction()) as txn:
            if txn is None:
                return []
            jobs = self._take(txn, n)
        self.take_cost = 0.7 * self.take_cost + 0.3 * (time.monotonic() - asked)
        return jobs

    def _take(self, txn: Txn, n: int) -> list[Job]:
        host = self.book.host
        if self.fence is not None:
            self.fence(txn)  # a replaced owner takes nothing
        lines, end = txn.take(n)
        if not lines:
            if end > txn.state.offset:
                txn.commit_take(end, host, self.book.new_op())  # only comments
            txn.maybe_compact()
            self.empty_sig = self.signature()
            return []
        op = self.book.new_op()
        with_retries = self.retries > 0 and self.queue.retries_path.exists()
        jobs = [self.book.claim(pl.line, op, txn.retries_of(pl.line) if with_retries else 0,
                                line_seq=pl.seq)
                for pl in lines]
        try:
            self.ledger.journal_claims(jobs)  # write-ahead: ours on record before we commit
            txn.commit_take(end, host, op)
        except PbqError:
            self.book.unclaim(jobs)
            with contextlib.suppress(PbqError):
                self.ledger.save()
            raise
        txn.maybe_compact()
        if len(lines) < n:
            self.empty_sig = self.signature()
        return jobs

    def give_back_claimed(self) -> None:
        """Lines taken ahead go back to the front of the jobfile (quit, term)."""
        claimed = self.book.in_state(JobState.CLAIMED)
        for job in claimed:
            self.book.requeue(job, front=True)  # CLAIMED -> REQUEUE_FRONT
        if claimed and self.ledger.flush(self.queue):
            self.changed()

    def compact_if_due(self, now: float, force: bool = False) -> None:
        """Cut the taken lines off the jobfile once they are ``compact_after`` old, even
        when no scheduler is taking jobs, so ``cat JOBFILE`` soon shows only what is pending."""
        q = self.queue.peek_state()
        if q.offset <= 0 or (not force and now - (q.taken_since or now) < self.queue.compact_after):
            return
        try:
            # Housekeeping never queues for the lock (at exit it does): when another host holds
            # it, that host compacts, or this one tries again at its next tick.  With many
            # hosts, every tick that found compaction due made a convoy on the lock.
            with (self.queue.transaction() if force else self.queue.try_transaction()) as txn:
                if txn is not None:
                    txn.maybe_compact(force=force)
        except PbqError as err:
            self.ledger.disk_problem(err)
