"""HTCondor: submit description, argv builders and parsers over :class:`~pbq.drm.batch.BatchDrm`.

* submit: ``condor_submit FILE`` with a submit description whose ``executable`` is the generated
  job script, ``initialdir`` the workspace, ``output``/``error`` the log, ``request_cpus``,
  ``request_memory`` in whole megabytes (rounded up), ``getenv = True``, ``should_transfer_files
  = NO`` (the workspace must be on a shared file system), and for a walltime a
  ``periodic_remove`` of jobs running longer. ``vmem`` and ``queue`` have no HTCondor meaning and
  are not passed. The id comes from ``... submitted to cluster N.``.
* status: one ``condor_q ID ID ... -af ClusterId JobStatus ExitCode ExitBySignal ExitSignal``;
  JobStatus 1 idle, 2 running, 3 removed (leaving), 4 completed (leaving), 5 held, 6 transferring
  output, 7 suspended. A job no longer listed has left the queue.
* exit code once gone: ``condor_history ID -af ...`` (3 removed = killed; 4 with ExitCode).
* hold/release ``condor_hold``/``condor_release``; suspend/resume ``condor_suspend``/
  ``condor_continue``; cancel ``condor_rm``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

from pbq.drm.base import (
    KILLED_EXIT,
    ClusterState,
    CommandResult,
    DrmError,
    DrmUnavailable,
    JobStatus,
    Resources,
    signal_code,
    to_mb,
)
from pbq.drm.batch import BatchDrm, Query, StatusQueries, listed_ids
from pbq.drm.protocol import Submission

ATTRS = ["ClusterId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal"]

_STATES = {
    1: ClusterState.QUEUED,
    2: ClusterState.RUNNING,
    3: ClusterState.EXITING,
    4: ClusterState.DONE,
    5: ClusterState.HELD,
    6: ClusterState.EXITING,
    7: ClusterState.SUSPENDED,
}


def _value(name: str, value: str) -> str:
    if "\n" in value or "$(" in value:
        raise DrmError(f"HTCondor cannot take {name} {value!r} (newline or '$(')")
    return value


def submit_description(
    *,
    script: str,
    job_name: str,
    log_file: str,
    workspace: str,
    event_log: str,
    resources: Resources,
) -> str:
    lines = [
        "# HTCondor submit description written by pbq",
        "universe = vanilla",
        f"executable = {_value('script path', script)}",
        f"initialdir = {_value('workspace', workspace)}",
        f"output = {_value('log file', log_file)}",
        f"error = {log_file}",
        f"log = {_value('event log', event_log)}",
        f"batch_name = {_value('job name', job_name)}",
        "getenv = True",
        "should_transfer_files = NO",
        f"request_cpus = {resources.cpu}",
    ]
    if resources.mem_bytes is not None:
        lines.append(f"request_memory = {to_mb(resources.mem_bytes)}")
    if resources.walltime_seconds is not None:
        lines.append(
            "periodic_remove = (JobStatus == 2) && "
            f"((time() - EnteredCurrentStatus) > {resources.walltime_seconds})"
        )
    lines.append("queue 1")
    return "\n".join(lines) + "\n"


def submit_argv(submit_file: str) -> list[str]:
    return ["condor_submit", submit_file]


def parse_submit(stdout: str) -> str:
    m = re.search(r"submitted to cluster (\d+)\.", stdout)
    if not m:
        raise DrmError(f"condor_submit printed no cluster id: {stdout.strip()[:200]!r}")
    return m.group(1)


def status_argv(job_ids: Sequence[str]) -> list[str]:
    return ["condor_q", *[str(i) for i in job_ids], "-af", *ATTRS]


def history_argv(job_id: str) -> list[str]:
    return ["condor_history", str(job_id), "-limit", "1", "-af", *ATTRS]


def _int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def status_of(
    job_status: int | None,
    exit_code: str = "undefined",
    by_signal: str = "undefined",
    exit_signal: str = "undefined",
) -> JobStatus:
    state = _STATES.get(job_status or 0, ClusterState.UNKNOWN)
    raw = str(job_status)
    if job_status == 3:
        # Removed (condor_rm, periodic_remove): killed, whatever it printed before.
        return JobStatus(state, KILLED_EXIT if state is ClusterState.DONE else None, raw)
    if job_status == 4:
        if by_signal.lower() == "true" and _int(exit_signal) is not None:
            return JobStatus(ClusterState.DONE, signal_code(_int(exit_signal) or 0), raw)
        return JobStatus(ClusterState.DONE, _int(exit_code), raw)
    return JobStatus(state, None, raw)


def parse_af(stdout: str, *, finished: bool = False) -> dict[str, JobStatus]:
    """``-af ClusterId JobStatus ExitCode ExitBySignal ExitSignal`` lines -> {id: JobStatus}.

    With FINISHED (``condor_history``), a removed job (3) is DONE and killed."""
    result: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or _int(parts[0]) is None:
            continue
        parts += ["undefined"] * (5 - len(parts))
        job_status = _int(parts[1])
        status = status_of(job_status, parts[2], parts[3], parts[4])
        if finished and job_status == 3:
            status = JobStatus(ClusterState.DONE, KILLED_EXIT, "3")
        result.setdefault(parts[0], status)
    return result


def is_unknown_job(text: str) -> bool:
    return bool(re.search(r"Couldn't find|not found|No such job|does not exist", text, re.I))


def _listed(result: CommandResult) -> dict[str, JobStatus]:
    if not result.ok:
        raise DrmUnavailable(f"htcondor: {result.describe()}")
    return parse_af(result.stdout)


def _in_history(job_id: str, result: CommandResult) -> JobStatus | None:
    return parse_af(result.stdout, finished=True).get(job_id) if result.ok else None


class HTCondor(BatchDrm):
    name = "htcondor"
    actions = {"hold": ("condor_hold",), "release": ("condor_release",),
               "suspend": ("condor_suspend",), "resume": ("condor_continue",),
               "cancel": ("condor_rm",)}  # fmt: skip

    def submit_files(self, job: Submission) -> dict[str, str]:
        description = submit_description(
            script=str(job.files.script),
            job_name=job.job_name,
            log_file=str(job.log_file),
            workspace=str(job.workspace),
            event_log=str(job.files.path(".condor.log")),
            resources=job.resources,
        )
        return {str(job.files.path(".sub")): description}

    def submit_argv(self, job: Submission) -> list[str]:
        return submit_argv(str(job.files.path(".sub")))

    parse_submit = staticmethod(parse_submit)

    def status_queries(self, cluster_ids: Sequence[str]) -> StatusQueries:
        return [(status_argv(cluster_ids), _listed)]

    def job_queries(self, cluster_id: str) -> list[Query[JobStatus | None]]:
        # Still queued (condor_q), else the history.
        return [
            (status_argv([cluster_id]), lambda result: _listed(result).get(cluster_id)),
            (history_argv(cluster_id), partial(_in_history, cluster_id)),
        ]

    def name_query(self, job_name: str) -> Query[list[str]]:
        constraint = f'JobBatchName == "{job_name}"'
        argv = ["condor_q", "-constraint", constraint, "-af", "ClusterId"]
        return (argv, lambda result: listed_ids(result, self.name, is_unknown_job))

    def is_gone(self, output: str) -> bool:
        return is_unknown_job(output)
