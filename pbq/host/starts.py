"""Which lines start now, and which are queued ahead with the job runner.

``start_now``: the policy's free slots are filled from the lines taken ahead, then from the
jobfile (taking about half a second of short jobs at once), or -- near the start of work
hours -- only with jobs expected to end before it (``edges.py``).

``queue_ahead``: while the load policy would replace a job that ends by a new one, and do
nothing else (no stop, no continue, no eviction: ``policy.may_refill``), a few of the lines
taken ahead are sent to the job runner as "start this when one of your jobs ends" (and more
lines are taken while the jobs run, so that many hosts waiting for the jobfile's lock keep
their slots busy meanwhile).  The
runner then refills a short job's slot the moment it ends, without a round trip through the
scheduler, whose bookkeeping of the end runs beside the new job instead of before it.  The
moment the policy would do anything else, the loop takes the queued starts back
(``Executor.revoke``) before any job is stopped or killed.  A queued job is QUEUED in the
book: a start asked for (saved as STARTING), counted as running once the runner says so.

``linger``: while every running job has a queued successor, the loop lets the ends pile up
for a moment (at most 2 ms) before its next pass, so that one pass books several of them.
"""

from __future__ import annotations

import math

from ..errors import PbqError
from ..hostfile import Host
from ..policy import Mode, View, may_refill
from ..quarantine import HostHealth
from .edges import WorkdayEdge
from .executor import EnvFor, Executor
from .intake import Intake
from .jobs import Job, JobBook, JobState
from .launch import Launched, launch
from .ledger import Ledger, Log
from .notify import Notifier
from .outcomes import Outcomes
from .sensing import Measurements

AHEAD_MAX = 8  # most starts queued with the runner at once
LINGER_MAX = 0.002  # longest the loop lets ends pile up while queued starts fill the slots


def linger(queued: int, running: int, avg_runtime: float | None) -> float:
    """How long the loop may let the ends of short jobs pile up before its next pass: half
    the time the starts queued with the runner keep its slots busy, at most LINGER_MAX; 0
    unless every running job has a queued successor.  A pass then books several ends at
    once (the scheduler's CPU per ``true`` job: 0.36 -> 0.22 ms), and no slot idles
    meanwhile: the runner starts a queued job the moment one ends."""
    if avg_runtime is None or running < 1 or queued < running:
        return 0.0
    return min(LINGER_MAX, 0.5 * queued * avg_runtime / running)


class Starts:
    def __init__(self, book: JobBook, ledger: Ledger, intake: Intake, outcomes: Outcomes,
                 edge: WorkdayEdge, health: HostHealth, notifier: Notifier, env_for: EnvFor,
                 log: Log) -> None:
        self.book = book
        self.ledger = ledger
        self.intake = intake
        self.outcomes = outcomes
        self.edge = edge
        self.health = health
        self.notifier = notifier
        self.env_for = env_for
        self.log = log

    def start_now(self, n: int, now: float, ex: Executor, entry: Host, mode: Mode,
                  m: Measurements) -> Launched | None:
        """Start ``n`` jobs: those queued with the runner first (they are older), then those
        taken ahead, then fresh ones from the jobfile."""
        go = self.book.in_state(JobState.QUEUED)[:n]
        if go:
            for job in go:
                self.book.starting(job)  # QUEUED -> STARTING: it holds a slot from now on
            ex.start_queued(len(go))
            n -= len(go)
            if n == 0:
                return None
        claimed = self.book.in_state(JobState.CLAIMED)
        until = self.edge.until_work(entry, m.work_time, now)
        if until is not None:
            batch = self.edge.start_before_work(
                claimed, n, now, until, entry, self.book, self.ledger, self.intake, self.log)
        else:
            if len(claimed) < n:
                claimed += self._take(n - len(claimed), m if mode is Mode.RUN else None)
            batch = claimed[:n]
        if not batch:
            return None
        self.notifier.rearm()  # the next drain is news again
        return launch(batch, now, ex, self.env_for, self.book, self.ledger, self.outcomes,
                      self.log)

    def _take(self, n: int, m: Measurements | None, wait: bool = True) -> list[Job]:
        """``n`` lines from the jobfile, and the short jobs' prefetch more (``Intake.prefetch``;
        none without ``m``: a host that is quitting).  Without ``wait``, only if the lock is
        free."""
        ahead = 0 if m is None else self.intake.prefetch(self.outcomes.avg_runtime, m.limit)
        try:
            return self.intake.take(n + ahead, wait)
        except PbqError as err:
            self.ledger.disk_problem(err)
            return []

    def ahead_target(self, v: View, ex: Executor, now: float, mono: float, entry: Host,
                     m: Measurements) -> int:
        """How many starts to keep queued with the runner; 0: none (take back any)."""
        if not ex.queues_ahead or not may_refill(v):
            return 0
        if self.intake.prefetch(self.outcomes.avg_runtime, m.limit) == 0:
            return 0  # jobs are not short: a pass per end costs nothing worth saving
        steady = (ex.accepting(mono) and self.ledger.disk_error is None
                  and not self.health.quarantined(now)
                  and self.health.quick_failures == 0  # failing fast: let quarantine judge
                  and self.edge.until_work(entry, m.work_time, now) is None)
        if not steady:
            return 0
        # Enough to keep the slots busy through two lingers (see ``linger``).
        cover = math.ceil(2 * LINGER_MAX * v.running / max(self.outcomes.avg_runtime or 1, 1e-4))
        return min(AHEAD_MAX, max(v.running, cover))

    def linger(self, running: int) -> float:
        queued = len(self.book.in_state(JobState.QUEUED))
        return linger(queued, running, self.outcomes.avg_runtime)

    def queue_ahead(self, target: int, now: float, ex: Executor, m: Measurements
                    ) -> Launched | None:
        """Top the runner's queue up to ``target`` from the lines taken ahead, and take more
        lines once half of those are used, while the jobs still run: only if the lock is
        free (each end brings a pass that tries again), so that no slot idles meanwhile and
        this host does not join the queue for the lock."""
        want = max(0, target - len(self.book.in_state(JobState.QUEUED)))
        claimed = self.book.in_state(JobState.CLAIMED)
        low = self.intake.prefetch(self.outcomes.avg_runtime, m.limit) // 2
        if len(claimed) < max(want, low) and self.intake.may_have_lines():
            claimed += self._take(max(0, want - len(claimed)), m, wait=False)
        batch = claimed[:want]
        if not batch:
            return None
        self.notifier.rearm()  # the next drain is news again
        return launch(batch, now, ex, self.env_for, self.book, self.ledger, self.outcomes,
                      self.log, ahead=True)
