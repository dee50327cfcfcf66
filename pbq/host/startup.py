"""What a scheduler does once, at start: choose its executor and carry out the recovery
plan (``recovery.plan_recovery``) for the jobs the last run left on record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..hostfile import Host
from ..jobfile import JobQueue, Txn
from ..sensors import Sensors
from ..sidefiles import PidRecord, is_local
from ..statefiles import HostFiles
from .executor import Executor
from .intake import Intake
from .jobs import JobBook, JobState
from .ledger import Ledger, Log
from .outcomes import Outcomes
from .recovery import Action, Step

if TYPE_CHECKING:
    from .local import LocalExecutor


def drm_executor(files: HostFiles, entry: Host, cfg: Config, output_dir: Path | None, log: Log,
                 mono: Callable[[], float]) -> Executor:
    """A cluster head node: jobs go to the resource manager the hostfile names."""
    from .drm import DrmExecutor

    jobfile = files.jobfile
    log_dir = output_dir or jobfile.with_name(f"{jobfile.name}.{files.host}.drmlogs")
    usage = jobfile.with_name(jobfile.name + ".usage")
    return DrmExecutor(files.host, entry, cfg, Path.cwd(), log_dir, log, usage, mono)


def local_executor(files: HostFiles, cfg: Config, output_dir: Path | None, log: Log,
                   sensors: Sensors, old: PidRecord | None,
                   allow_group_write: bool) -> LocalExecutor:
    """Jobs as processes here; ``old``: the previous run's pid file (its runner may still
    be recording the ends of jobs it parents)."""
    from .local import LocalExecutor

    old_runner = old.runner if old is not None and is_local(old) else None
    return LocalExecutor(
        files.host, files.jobfile, files.exits, cfg.scheduler.nice, output_dir, log, sensors,
        old_runner, allow_group_write=allow_group_write, containment=cfg.scheduler.containment,
    )


def apply_recovery(steps: list[Step], book: JobBook, ledger: Ledger, outcomes: Outcomes,
                   executor: Executor, intake: Intake, queue: JobQueue, txn: Txn,
                   log: Log) -> None:
    """Carry out the recovery plan (under the jobfile lock; nothing here waits)."""
    adopted = []
    for step in steps:
        job, p = step.job, step.probe
        if step.why:
            log(step.why)
        if step.action is Action.FORGET:
            book.drop(job)
        elif step.action is Action.ADOPT:
            if job.pid is None and p.pid is not None:
                job.pid, job.pid_start = p.pid, p.pid_start
            if job.cluster_id is None and p.cluster_id is not None:
                job.cluster_id = p.cluster_id
            book.adopt(job, stopped=p.stopped)
            adopted.append(job)
            if job.pid is not None:
                log(f"adopted job {book.job_id(job)} pid {job.pid} ({job.state.value}) "
                    "from the previous run")
        elif step.action is Action.FINISH:
            assert p.exit is not None
            outcomes.finish(job, p.exit, when=p.ended_at)
        elif step.action in (Action.BACK_FRONT, Action.BACK_END):
            if job.state in (JobState.REQUEUE_FRONT, JobState.REQUEUE_END):
                job.putback_op = None  # its put-back never committed: redo it now
            else:
                book.requeue(job, front=step.action is Action.BACK_FRONT)
    executor.adopt(adopted)
    if ledger.flush(queue, txn):
        intake.changed()
