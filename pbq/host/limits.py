"""How long a job may run, and how long it may stay stopped: ``[scheduler] timeout``,
``timeout_floor`` and ``max_suspend``.

A timeout is absolute (``"2h"``) or a share of the median run time of earlier successful
runs of the same command key (``"300%"``, as GNU Parallel's ``--timeout 300%``), used once
the key has at least ``MIN_RUNS`` of them and never below ``timeout_floor``.  Run time
excludes time stopped.  The medians come from ``JOBFILE.usage``, read again only when it
changed.  The deciding functions take the time and the jobs, and read no clock.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config, parse_timeout
from ..errors import PbqError
from ..predict import command_key
from ..statefiles import line_to_text
from .executor import Executor
from .jobs import Job, JobBook, JobState
from .ledger import Ledger, Log
from .medians import MedianRuntimes

MIN_RUNS = 3  # successful runs of a command key before a percentage timeout applies


class TimeLimits:
    def __init__(self, cfg: Config, usage_path: Path) -> None:
        self.absolute, self.share = parse_timeout(cfg.scheduler.timeout)
        self.floor = cfg.scheduler.timeout_floor
        self.max_suspend = cfg.scheduler.max_suspend
        self.medians = MedianRuntimes(usage_path, MIN_RUNS)
        self._keys: dict[int, str] = {}  # seq -> command key (computed once per job)

    @property
    def active(self) -> bool:
        return bool(self.absolute or self.share or self.max_suspend)

    def refresh(self) -> None:
        """Re-read the medians if the usage file changed (a stat per tick, not a read)."""
        if self.share:
            self.medians.refresh()

    def limit_for(self, job: Job) -> float | None:
        if self.absolute:
            return self.absolute
        if not self.share:
            return None
        key = self._keys.get(job.seq)
        if key is None:
            key = self._keys[job.seq] = command_key(line_to_text(job.line))
        median = self.medians.get(key)
        return None if median is None else max(self.floor, median * self.share)

    def timed_out(self, jobs: list[Job], now: float) -> list[tuple[Job, float]]:
        """Running or stopped jobs past their limit, with the limit."""
        out = []
        for job in jobs:
            if job.state not in (JobState.RUNNING, JobState.STOPPED) or job.started is None:
                continue
            limit = self.limit_for(job)
            if limit is not None and job.running_time(now) > limit:
                out.append((job, limit))
        return out

    def suspended_too_long(self, jobs: list[Job], now: float) -> list[Job]:
        """Jobs the load policy has kept stopped longer than ``max_suspend``."""
        if not self.max_suspend:
            return []
        return [
            j
            for j in jobs
            if j.state is JobState.STOPPED
            and j.stopped_by == "load"
            and j.stopped_at is not None
            and now - j.stopped_at > self.max_suspend
        ]

    def forget(self, seq: int) -> None:
        self._keys.pop(seq, None)


def enforce_limits(
    limits: TimeLimits,
    book: JobBook,
    executor: Executor,
    ledger: Ledger,
    log: Log,
    now: float,
    grace: float,
    decide: bool,
) -> None:
    """Act on what ``TimeLimits`` decided: SIGTERM to the whole job now, SIGKILL after
    ``grace``; a timed-out job's line goes to .error, a long-stopped one's back to the front
    of the jobfile.  ``decide``: False while the host is terminating anyway (only the
    SIGKILLs that are due still go out)."""
    ending = False
    if limits.active and decide:
        limits.refresh()
        for job, limit in limits.timed_out(book.in_state(JobState.RUNNING, JobState.STOPPED), now):
            executor.term(job)
            book.timing_out(job, kill_at=now + grace)  # RUNNING/STOPPED -> TIMING_OUT
            log(
                f"job {book.job_id(job)} timed out after {limit:.1f}s of running time: "
                f"SIGTERM (SIGKILL after {grace:g} s)"
            )
            ending = True
        for job in limits.suspended_too_long(book.in_state(JobState.STOPPED), now):
            stopped_for = now - (job.stopped_at or now)
            executor.term(job)
            book.evicting(job, kill_at=now + grace)  # STOPPED -> EVICTING
            book.counters.suspend_ended += 1
            log(
                f"job {book.job_id(job)} was stopped for {stopped_for:.0f}s (max_suspend "
                f"{limits.max_suspend:g}s): ending it; its line goes back to the front"
            )
            ending = True
    for job in book.in_state(JobState.EVICTING, JobState.TIMING_OUT, JobState.CANCELLING):
        if job.kill_at is not None and now >= job.kill_at:
            executor.kill(job)  # what SIGTERM did not end (repeated each tick until gone)
    if ending:
        try:
            ledger.save(fsync=True)  # on record before they end: a restart knows why
        except PbqError as err:
            ledger.disk_problem(err)
