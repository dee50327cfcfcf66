"""What a restarted scheduler does with the jobs the last run left on record.

Two halves, so that nothing waits while the jobfile lock is held: the executor *probes*
every job before the lock is taken (is its process alive, stopped, did the old job runner
record its end, which cluster job is it), then, under the lock, the pure
:func:`plan_recovery` turns the saved jobs, the jobfile's committed operation number and
the probe results into a plan, which the loop applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from ..statefiles import line_to_text
from .jobs import UNKNOWN_EXIT, Job, JobState, Outcome


@dataclass(frozen=True)
class Probe:
    """What the executor found out about one saved job, before the lock."""

    alive: bool = False  # its process (pid + start time) or cluster job exists
    stopped: bool = False  # ... and is stopped (state T)
    pid: int | None = None  # a process found for a job whose pid was never recorded
    pid_start: float | None = None
    exit: Outcome | None = None  # the old job runner's record of how it ended
    ended_at: float | None = None
    cluster_id: str | None = None  # a cluster job found by the submission's ticket


class Action(Enum):
    FORGET = "forget"  # leaves the book: never taken, or its line is back already
    KEEP = "keep"  # taken ahead and never started: it runs here
    ADOPT = "adopt"  # still running (or stopped): watch it
    FINISH = "finish"  # ended while no scheduler ran: record the outcome the runner kept
    BACK_FRONT = "back-front"  # its line goes back to the front of the jobfile
    BACK_END = "back-end"  # its line goes back to the end (a retry that was being put back)
    SETTLE = "settle"  # ended; only its retry count is left to clear


@dataclass(frozen=True)
class Step:
    job: Job
    action: Action
    why: str = ""  # the log line, when the step is worth one
    probe: Probe = Probe()


def plan_recovery(
    jobs: Iterable[Job], committed_op: int, probes: dict[int, Probe], job_id: str, drm: str | None
) -> list[Step]:
    """One step per saved job.  ``job_id`` is the host name (ids are HOST.seq); ``drm`` the
    resource manager's name on a cluster head node, else None."""
    return [
        _plan_one(job, committed_op, probes.get(job.seq, Probe()), f"{job_id}.{job.seq}", drm)
        for job in jobs
    ]


def _plan_one(job: Job, committed: int, p: Probe, jid: str, drm: str | None) -> Step:  # noqa: PLR0911
    # A flat decision table: the first rule that matches wins, so the order is the logic.
    text = line_to_text(job.line)
    st = job.state
    if st in (JobState.REQUEUE_FRONT, JobState.REQUEUE_END):
        if job.putback_op is not None and job.putback_op <= committed:
            return Step(job, Action.FORGET)  # its put-back committed: the line is pending again
        action = Action.BACK_FRONT if st is JobState.REQUEUE_FRONT else Action.BACK_END
        return Step(
            job,
            action,
            f"job {jid} was being put back when the scheduler died: putting it "
            f"back now (POSSIBLE DUPLICATE if it had run): {text}",
        )
    if st in (JobState.CLAIMED, JobState.STARTING) and job.op > committed:
        # Write-ahead record of a take that never committed: still pending.
        return Step(
            job,
            Action.FORGET,
            f"job {jid} was never taken (crash while taking): left in the jobfile",
        )
    if st is JobState.CLAIMED:
        return Step(job, Action.KEEP)
    if st is JobState.SETTLING:
        return Step(job, Action.SETTLE)
    if drm is not None:
        return _plan_cluster_job(job, p, jid, drm, text)
    if st in (JobState.TERMINATING, JobState.TERMINATED) and not p.alive:
        return Step(
            job,
            Action.BACK_FRONT,
            f"job {jid} did not finish (terminated): putting it back at the front: {text}",
        )
    if job.pid is None and p.pid is None:
        return Step(
            job,
            Action.BACK_FRONT,
            f"job {jid} was being started when the scheduler died: "
            f"putting it back; POSSIBLE DUPLICATE if it had already run: {text}",
        )
    if p.alive:
        return Step(job, Action.ADOPT, probe=p)
    if st is JobState.EVICTING:
        return Step(
            job,
            Action.BACK_FRONT,
            f"job {jid} was ended by pbq (to free memory, or stopped "
            "too long): putting it back at the front",
        )
    if st is JobState.CANCELLING and p.exit is None:
        # Cancelled: whatever its end was, its line is not to run again.
        unknown = Outcome(UNKNOWN_EXIT, note="its end was not recorded")
        return Step(job, Action.FINISH, probe=Probe(exit=unknown))
    if st is JobState.TIMING_OUT and p.exit is None:
        # Its end is known well enough: it was being killed for running too long.
        return Step(
            job,
            Action.FINISH,
            probe=Probe(exit=Outcome(UNKNOWN_EXIT, note="timed out; its end was not recorded")),
        )
    if p.exit is not None:
        return Step(job, Action.FINISH, probe=p)
    return Step(
        job,
        Action.BACK_FRONT,
        f"job {jid} did not finish (its process is gone, reboot?; POSSIBLE "
        f"DUPLICATE if it had ended): putting it back at the front: {text}",
    )


def _plan_cluster_job(job: Job, p: Probe, jid: str, drm: str, text: str) -> Step:
    if job.state in (JobState.TERMINATING, JobState.TERMINATED):
        return Step(
            job, Action.BACK_FRONT, f"job {jid} was cancelled by term: putting it back at the front"
        )
    cid = job.cluster_id or p.cluster_id
    if cid is None:
        return Step(
            job,
            Action.BACK_FRONT,
            f"job {jid} was being submitted when the scheduler died: "
            f"putting it back; POSSIBLE DUPLICATE: {text}",
        )
    return Step(
        job,
        Action.ADOPT,
        f"re-attached job {jid} to {drm} job {cid}",
        probe=Probe(alive=True, stopped=job.state is JobState.STOPPED, cluster_id=cid),
    )
