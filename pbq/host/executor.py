"""What the loop asks of whatever runs the jobs: processes here, or a resource manager.

The loop owns the :class:`~pbq.host.jobs.JobBook` and changes states; an executor only acts
and reports.  ``LocalExecutor`` (``local.py``) runs jobs through the job runner;
``DrmExecutor`` (``drm.py``) submits them to Slurm, Grid Engine, Torque, HTCondor or LSF.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .jobs import Job, Outcome
from .recovery import Probe


@dataclass
class Started:
    job: Job
    pid: int | None = None
    pid_start: float | None = None
    cluster_id: str | None = None
    note: str = ""  # for the log line
    when: float | None = None  # when it started, if not now


@dataclass
class NotStarted:
    job: Job
    outcome: Outcome | None  # a failed job (command not found...), or None: try again later
    message: str


@dataclass
class Revoked:
    """A start asked for ahead (``start(..., ahead=True)``), given back unmade."""

    job: Job


Answer = Started | NotStarted | Revoked


@dataclass
class Ended:
    job: Job
    outcome: Outcome
    when: float


EnvFor = Callable[[Job], dict[str, str]]


class Executor(Protocol):
    name: str

    @property
    def drm_name(self) -> str | None:
        """The resource manager's name on a cluster head node, else None."""
    # Slack between policy and executor: a DRM host counts its own jobs in its limit only.
    counts_foreign_load: bool
    # Starts may be asked for ahead: made, without the loop, when one of the jobs ends.
    queues_ahead: bool

    @property
    def revoking(self) -> bool:
        """Starts asked for ahead were taken back and not all are answered yet."""

    def fileno(self) -> int | None:
        """A descriptor that becomes readable when something happened, or None."""

    def running_for_real(self) -> None:
        """Called once when ``pbq-single`` itself runs (not a test driving passes)."""

    def has_news(self) -> bool:
        """Something already read waits for ``events``: do not sleep."""

    def ends_in_flight(self) -> int:
        """Jobs the book counts as running that have ended already, their ends not read
        yet (the load policy must not count them: a start queued ahead took their slot)."""

    def accepting(self, mono: float) -> bool:
        """False while starts are held back (a DRM that refused a submission)."""

    def start(self, jobs: list[Job], env_for: EnvFor, now: float,
              wait: bool = True, ahead: bool = False) -> list[Answer]:
        """Start (or submit) these jobs; the answers known now, one a job with ``wait``.
        Without it, the answers not known yet come later from ``start_answers``.  With
        ``ahead`` (only where ``queues_ahead``), each starts when one of the jobs ends."""

    def revoke(self) -> None:
        """Take back the starts asked for ahead and not made yet (answered ``Revoked``)."""

    def start_queued(self, n: int) -> None:
        """Make the next ``n`` starts asked for ahead now (free slots go to them first: they
        were taken before any line still waiting here)."""

    def start_answers(self) -> list[Answer]:
        """Answers to earlier start requests, as they came in (after ``events``)."""

    def events(self, now: float) -> list[Ended]:
        """Jobs that ended since the last call (cheap: no polling of the machine)."""

    def settle(self, timeout: float = 1.0) -> None:
        """Before exit: wait briefly for what is about to be reported (usage of ended jobs)."""

    def usage(self) -> list[tuple[Job, float, int]]:
        """(job, CPU seconds, peak RSS bytes) of jobs that ended, once known."""

    def recorded(self, ended: list[Ended]) -> None:
        """These ends are on the ledger now: whoever kept them may forget them."""

    def poll(self, live: list[Job], now: float, mono: float) -> list[Ended]:
        """Once per tick: ends that only polling finds (adopted jobs, cluster jobs)."""

    def stop(self, job: Job) -> str | None:
        """Stop the job; a note for the log, or None when it could not be stopped."""

    def cont(self, job: Job) -> str | None: ...

    def term(self, job: Job) -> None:
        """Ask one job to end, whole: SIGTERM (and SIGCONT, so a stopped one can), or cancel."""

    def kill(self, job: Job) -> bool:
        """End it now, whole (eviction): SIGKILL here, cancel in a DRM."""

    def terminate(self, jobs: list[Job]) -> str:
        """`term`: SIGTERM (SIGKILL after the grace period, see ``term_finished``), or
        cancel; a line for the log, or "" when there is nothing to add."""

    def term_finished(self, jobs: list[Job], hard: bool) -> bool:
        """True when nothing of these jobs runs any more; ``hard``: SIGKILL what is left."""

    def stopped_by_others(self, running: list[Job]) -> list[Job]:
        """Jobs pbq believes running whose processes someone else stopped."""

    def own_cpu_seconds(self, live: list[Job]) -> float:
        """CPU seconds used so far by the scheduler, its helpers and its jobs (continuous)."""

    def probe(self, jobs: list[Job]) -> dict[int, Probe]:
        """Before recovery, outside the jobfile lock: what became of each saved job."""

    def adopt(self, jobs: list[Job]) -> None:
        """Jobs of an earlier run to be watched from now on."""

    def close(self) -> None: ...
