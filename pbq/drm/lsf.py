"""LSF: argv builders and output parsers over :class:`~pbq.drm.batch.BatchDrm`.

* submit: ``bsub -J NAME -o LOG -e LOG -cwd WS -n CPU [-M KB] [-v KB] [-W HH:MM] [-q Q] /bin/sh
  SCRIPT``: the script file is the command (no ``bsub < file`` through a shell), so every option is
  on the command line. ``-M`` (memory) and ``-v`` (virtual memory) are in kilobytes (LSF's
  default ``LSF_UNIT_FOR_LIMITS``), ``-W`` in hours:minutes, rounded up. The id comes from
  ``Job <N> is submitted``.
* status: one ``bjobs -noheader -o 'jobid stat exit_code' ID ID ...`` (the classic table is read
  too); PEND/WAIT/PROV queued, PSUSP held, RUN running, USUSP/SSUSP suspended, DONE done (0),
  EXIT done with its exit code (never 0); "Job <N> is not found" = left the queue.
* hold/release and suspend/resume: ``bstop``/``bresume`` (a stopped pending job is PSUSP, a
  stopped running one USUSP); cancel: ``bkill``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import partial

from pbq.drm.base import (
    ClusterState,
    CommandResult,
    DrmError,
    DrmUnavailable,
    JobStatus,
    Resources,
    failure_code,
    to_kb,
)
from pbq.drm.batch import BatchDrm, Query, StatusQueries, listed_ids

FORMAT = "jobid stat exit_code"

_STATES = {
    "PEND": ClusterState.QUEUED,
    "WAIT": ClusterState.QUEUED,
    "PROV": ClusterState.QUEUED,
    "PSUSP": ClusterState.HELD,
    "RUN": ClusterState.RUNNING,
    "USUSP": ClusterState.SUSPENDED,
    "SSUSP": ClusterState.SUSPENDED,
    "ZOMBI": ClusterState.EXITING,
    "DONE": ClusterState.DONE,
    "EXIT": ClusterState.DONE,
    "UNKWN": ClusterState.UNKNOWN,
}


def lsf_walltime(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def submit_argv(
    script: str, *, job_name: str, log_file: str, workspace: str, resources: Resources
) -> list[str]:
    for what, path in (("log file", log_file), ("workspace", workspace)):
        if "%" in path:  # bsub expands %J and %I in these paths
            raise DrmError(f"LSF cannot take the {what} {path!r} ('%' in it)")
    argv = ["bsub", "-J", job_name, "-o", log_file, "-e", log_file, "-cwd", workspace]
    argv += ["-n", str(resources.cpu)]
    if resources.mem_bytes is not None:
        argv += ["-M", str(to_kb(resources.mem_bytes))]
    if resources.vmem_bytes is not None:
        argv += ["-v", str(to_kb(resources.vmem_bytes))]
    if resources.walltime_seconds is not None:
        argv += ["-W", lsf_walltime(resources.walltime_seconds)]
    if resources.queue:
        argv += ["-q", resources.queue]
    argv += ["/bin/sh", script]
    return argv


def parse_submit(stdout: str) -> str:
    m = re.search(r"Job <(\d+)> is submitted", stdout)
    if not m:
        raise DrmError(f"bsub printed no job id: {stdout.strip()[:200]!r}")
    return m.group(1)


def status_argv(job_ids: Sequence[str]) -> list[str]:
    return ["bjobs", "-noheader", "-o", FORMAT, *[str(i) for i in job_ids]]


def classic_status_argv(job_ids: Sequence[str]) -> list[str]:
    """For LSF older than 9.1, which has no ``-o``."""
    return ["bjobs", "-a", *[str(i) for i in job_ids]]


def status_of(stat: str, exit_code: str = "-") -> JobStatus:
    state = _STATES.get(stat, ClusterState.UNKNOWN)
    if stat == "DONE":
        return JobStatus(state, 0, stat)
    if stat == "EXIT":
        code = int(exit_code) if re.fullmatch(r"-?\d+", exit_code or "") else None
        # EXIT without a code: killed before it ran (bkill of a pending job) or by LSF.
        return JobStatus(state, failure_code(code, killed=code is None), stat)
    return JobStatus(state, None, stat)


def parse_bjobs(stdout: str) -> dict[str, JobStatus]:
    """``bjobs -noheader -o 'jobid stat exit_code'`` lines, or the classic table (``JOBID USER
    STAT QUEUE ...``, header optional) -> {id: JobStatus}."""
    result: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        if parts[1] in _STATES:  # -o 'jobid stat exit_code'
            result[parts[0]] = status_of(parts[1], parts[2] if len(parts) > 2 else "-")
        elif len(parts) > 2 and parts[2] in _STATES:  # JOBID USER STAT ...
            result[parts[0]] = status_of(parts[2], "-")
    return result


def not_found_ids(text: str) -> set[str]:
    return set(re.findall(r"Job <(\d+)> is not found", text))


def is_unknown_job(text: str) -> bool:
    return bool(re.search(r"is not found|No matching job found|already finished", text))


def format_unsupported(text: str) -> bool:
    """bjobs of an LSF without ``-o`` rejects the option."""
    return bool(re.search(r"illegal option|invalid option|unknown option|Usage:", text, re.I))


def _listed(
    ids: Sequence[str], result: CommandResult, *, newest: bool = True
) -> dict[str, JobStatus] | None:
    if newest and not result.ok and format_unsupported(result.output):
        return None  # an LSF older than 9.1: the classic form is asked next
    found = parse_bjobs(result.stdout)
    gone = not_found_ids(result.output)
    if not result.ok and any(i not in found and i not in gone for i in ids):
        raise DrmUnavailable(f"lsf: {result.describe()}")
    return found


def _no_job(text: str) -> bool:
    return is_unknown_job(text) or "not found" in text or "No job found" in text


class Lsf(BatchDrm):
    name = "lsf"
    # A stopped pending job is PSUSP (held), a stopped running one USUSP (suspended).
    actions = {"hold": ("bstop",), "release": ("bresume",), "suspend": ("bstop",),
               "resume": ("bresume",), "cancel": ("bkill",)}  # fmt: skip

    options_argv = staticmethod(submit_argv)

    parse_submit = staticmethod(parse_submit)

    def status_queries(self, cluster_ids: Sequence[str]) -> StatusQueries:
        ids = list(cluster_ids)
        return [
            (status_argv(ids), partial(_listed, ids)),
            (classic_status_argv(ids), partial(_listed, ids, newest=False)),
        ]

    def name_query(self, job_name: str) -> Query[list[str]]:
        argv = ["bjobs", "-a", "-noheader", "-J", job_name, "-o", "jobid"]
        return (argv, lambda result: listed_ids(result, self.name, _no_job))

    def is_gone(self, output: str) -> bool:
        return is_unknown_job(output)
