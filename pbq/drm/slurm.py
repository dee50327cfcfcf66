"""Slurm: argv builders and output parsers over :class:`~pbq.drm.batch.BatchDrm`.

* submit: ``sbatch --parsable -J NAME -o LOG -D WS -c CPU [--mem=NM] [-t D-HH:MM:SS] [-p Q] SCRIPT``
  (Slurm has no virtual-memory request: ``vmem`` is not passed).
* status: one ``squeue -h -t all -j ID,ID,... -o '%i|%T|%r'``; ids it does not list (purged after
  MinJobAge, or the whole call failing with "Invalid job id specified" when every id is unknown)
  are asked one by one with ``scontrol -o show job ID``; "Invalid job id" there = left the queue.
* exit code: ``scontrol -o show job ID`` ``ExitCode=RC:SIG``; once purged, ``sacct`` (works only
  with accounting storage or ``sacct -c`` job completion files).
* hold/release: ``scontrol hold|release ID`` (pending jobs); suspend/resume: ``scontrol
  suspend|resume ID`` (running jobs only); cancel: ``scancel ID``.
* by name: ``squeue -h -t all -n NAME -o %i``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

from pbq.drm.base import (
    ClusterState,
    CommandResult,
    DrmError,
    JobStatus,
    Resources,
    failure_code,
    signal_code,
    to_mb,
)
from pbq.drm.batch import BatchDrm, Query, StatusQueries, unavailable_unless

_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "RESV_DEL_HOLD_PENDING"}
_HELD = {"REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "RESIZING"}
_SUSPENDED = {"SUSPENDED", "STOPPED"}
_EXITING = {"COMPLETING", "SIGNALING", "STAGE_OUT", "POWER_UP_NODE", "UPDATE_DB"}
_KILLED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE", "REVOKED"}
_FAILED = {"FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY"}
_HOLD_REASONS = {"JobHeldUser", "JobHeldAdmin"}

UNKNOWN_JOB = "Invalid job id specified"


def slurm_walltime(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}"


def submit_argv(
    script: str, *, job_name: str, log_file: str, workspace: str, resources: Resources
) -> list[str]:
    # sbatch expands %j, %x ... in file names: "%%" is a literal "%".
    log = log_file.replace("%", "%%")
    argv = ["sbatch", "--parsable", "-J", job_name, "-o", log, "-D", workspace]
    argv += ["-c", str(resources.cpu)]
    if resources.mem_bytes is not None:
        argv.append(f"--mem={to_mb(resources.mem_bytes)}M")
    if resources.walltime_seconds is not None:
        argv += ["-t", slurm_walltime(resources.walltime_seconds)]
    if resources.queue:
        argv += ["-p", resources.queue]
    argv.append(script)
    return argv


def parse_submit(stdout: str) -> str:
    """``sbatch --parsable`` prints ``ID`` or ``ID;CLUSTER``."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise DrmError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return job_id


def status_argv(job_ids: Sequence[str]) -> list[str]:
    return ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"]


def job_argv(job_id: str) -> list[str]:
    return ["scontrol", "-o", "show", "job", str(job_id)]


def sacct_argv(job_id: str) -> list[str]:
    return ["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State,ExitCode"]


def parse_exit_code(text: str) -> int | None:
    """``ExitCode=RC:SIG`` -> RC, or 128+SIG when a signal ended the job."""
    m = re.fullmatch(r"\s*(\d+):(\d+)\s*", text or "")
    if not m:
        return None
    rc, sig = int(m.group(1)), int(m.group(2))
    return signal_code(sig) if sig else rc


def status_of(state: str, reason: str = "", exit_code: str = "") -> JobStatus:
    """One Slurm state word (``CANCELLED by 0`` is read as ``CANCELLED``) -> JobStatus."""
    word = state.split()[0].rstrip("+") if state.split() else ""
    if word == "PENDING" and reason in _HOLD_REASONS:
        return JobStatus(ClusterState.HELD, None, word)
    if word in _QUEUED:
        return JobStatus(ClusterState.QUEUED, None, word)
    if word in _HELD:
        return JobStatus(ClusterState.HELD, None, word)
    if word in _RUNNING:
        return JobStatus(ClusterState.RUNNING, None, word)
    if word in _SUSPENDED:
        return JobStatus(ClusterState.SUSPENDED, None, word)
    if word in _EXITING:
        return JobStatus(ClusterState.EXITING, None, word)
    code = parse_exit_code(exit_code) if exit_code else None
    if word == "COMPLETED":
        return JobStatus(ClusterState.DONE, 0 if code is None else code, word)
    if word in _KILLED or word in _FAILED:
        if code is None and not exit_code:
            return JobStatus(ClusterState.DONE, None, word)
        return JobStatus(ClusterState.DONE, failure_code(code, word in _KILLED), word)
    return JobStatus(ClusterState.UNKNOWN, None, word)


def parse_squeue(stdout: str) -> dict[str, JobStatus]:
    """``squeue -h -o '%i|%T|%r'`` lines -> {id: JobStatus}. Exit codes are not shown there."""
    result: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        reason = parts[2].strip() if len(parts) > 2 else ""
        result[parts[0].strip()] = status_of(parts[1].strip(), reason)
    return result


def parse_show_job(stdout: str) -> dict[str, str]:
    """``scontrol -o show job`` (one line of Key=Value) -> dict. Values never hold spaces except
    the last keys (Command=, WorkDir=...), which are not needed here."""
    fields: dict[str, str] = {}
    for token in stdout.strip().split():
        if "=" in token:
            key, value = token.split("=", 1)
            fields.setdefault(key, value)
    return fields


def status_from_show_job(stdout: str) -> JobStatus:
    f = parse_show_job(stdout)
    if "JobState" not in f:
        return JobStatus(ClusterState.UNKNOWN, None, stdout.strip()[:40])
    return status_of(f["JobState"], f.get("Reason", ""), f.get("ExitCode", ""))


def status_from_sacct(stdout: str) -> JobStatus | None:
    """``sacct -n -P -X -o JobID,State,ExitCode`` -> the last record, None when empty."""
    rows = [line.split("|") for line in stdout.splitlines() if line.count("|") >= 2]
    if not rows:
        return None
    _, state, code = rows[-1][:3]
    return status_of(state, "", code)


def is_unknown_job(text: str) -> bool:
    return UNKNOWN_JOB in text


def _listed(ids: Sequence[str], result: CommandResult) -> dict[str, JobStatus]:
    unavailable_unless(result, "slurm", is_unknown_job)
    return {k: v for k, v in parse_squeue(result.stdout).items() if k in ids} if result.ok else {}


def _shown(result: CommandResult) -> JobStatus | None:
    """``scontrol show job``; None when Slurm no longer knows the job."""
    unavailable_unless(result, "slurm", is_unknown_job)
    return status_from_show_job(result.stdout) if result.ok else None


def _accounted(result: CommandResult) -> JobStatus | None:
    return status_from_sacct(result.stdout) if result.ok else None


def _named(result: CommandResult) -> list[str]:
    unavailable_unless(result, "slurm", lambda _: False)
    return [line.strip() for line in result.stdout.splitlines() if line.strip().isdigit()]


class Slurm(BatchDrm):
    name = "slurm"
    actions = {"hold": ("scontrol", "hold"), "release": ("scontrol", "release"),
               "suspend": ("scontrol", "suspend"), "resume": ("scontrol", "resume"),
               "cancel": ("scancel",)}  # fmt: skip
    ask_missing = True

    options_argv = staticmethod(submit_argv)

    parse_submit = staticmethod(parse_submit)

    def status_queries(self, cluster_ids: Sequence[str]) -> StatusQueries:
        return [(status_argv(cluster_ids), partial(_listed, list(cluster_ids)))]

    def job_queries(self, cluster_id: str) -> list[Query[JobStatus | None]]:
        return [(job_argv(cluster_id), _shown), (sacct_argv(cluster_id), _accounted)]

    def name_query(self, job_name: str) -> Query[list[str]]:
        return (["squeue", "-h", "-t", "all", "-n", job_name, "-o", "%i"], _named)
