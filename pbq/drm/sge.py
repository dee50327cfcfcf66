"""(Son of) Grid Engine: argv builders and output parsers over :class:`~pbq.drm.batch.BatchDrm`.

* submit: ``qsub -terse -N NAME -o LOG -j y -wd WS -S /bin/sh -b n [-pe PE CPU] [-l ...] [-q Q]
  SCRIPT``. Resources: ``vmem`` -> ``h_vmem`` (an enforced limit; Grid Engine counts it per
  slot, so with a parallel environment it is divided by the cpu count), ``mem`` -> ``mem_free``
  (the host must have that much free memory: Grid Engine has no enforced RSS limit), walltime ->
  ``h_rt`` in seconds. ``cpu > 1`` needs a parallel environment (hostfile ``pe=NAME``): without
  one it is not passed, and the job runs on one slot (with a warning in the log and the script).
* status: one ``qstat -u USER`` listing; a job not listed has left the queue.
* exit code: ``qacct -j ID`` (``failed``, ``exit_status``; the last record when ids repeat).
* hold/release: ``qhold``/``qrls``; suspend/resume: ``qmod -sj``/``qmod -usj``; cancel: ``qdel``.
"""

from __future__ import annotations

import math
import os
import pwd
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
    to_mb,
)
from pbq.drm.batch import (
    NOTE,
    BatchDrm,
    Query,
    StatusQueries,
    listed_ids,
    unavailable_unless,
)
from pbq.drm.protocol import Action, Submission

# job-ID prior name user state submit/start-at [queue] [slots] [ja-task-ID]: the state is the
# word right before the date, which keeps odd job names from shifting columns.
_LISTING_RE = re.compile(r"^\s*(\d+)\s+\S+\s+.*?\s(\S+)\s+\d\d/\d\d/\d{4}\s+\d\d:\d\d:\d\d")


def submit_argv(
    script: str,
    *,
    job_name: str,
    log_file: str,
    workspace: str,
    resources: Resources,
) -> list[str]:
    for what, path in (("log file", log_file), ("workspace", workspace)):
        # qsub reads "host:path" and expands $JOB_ID, $HOME ... in these paths.
        if ":" in path or "$" in path:
            raise DrmError(f"Grid Engine cannot take the {what} {path!r} (':' or '$' in it)")
    argv = ["qsub", "-terse", "-N", job_name, "-o", log_file, "-j", "y", "-wd", workspace]
    argv += ["-S", "/bin/sh", "-b", "n"]
    slots = 1
    if resources.cpu > 1 and resources.pe:
        argv += ["-pe", resources.pe, str(resources.cpu)]
        slots = resources.cpu
    limits = []
    if resources.vmem_bytes is not None:
        limits.append(f"h_vmem={math.ceil(to_mb(resources.vmem_bytes) / slots)}M")
    if resources.mem_bytes is not None:
        limits.append(f"mem_free={to_mb(resources.mem_bytes)}M")
    if resources.walltime_seconds is not None:
        limits.append(f"h_rt={resources.walltime_seconds}")
    if limits:
        argv += ["-l", ",".join(limits)]
    if resources.queue:
        argv += ["-q", resources.queue]
    argv.append(script)
    return argv


def cpu_dropped(resources: Resources) -> bool:
    """True when cpu > 1 cannot be passed (no parallel environment configured)."""
    return resources.cpu > 1 and not resources.pe


def parse_submit(stdout: str) -> str:
    """``qsub -terse`` prints ``ID`` (``ID.1-10:1`` for arrays)."""
    m = re.match(r"\s*(\d+)", stdout)
    if not m:
        raise DrmError(f"qsub printed no job id: {stdout.strip()[:200]!r}")
    return m.group(1)


def status_argv(user: str) -> list[str]:
    return ["qstat", "-u", user]


def qacct_argv(job_id: str) -> list[str]:
    return ["qacct", "-j", str(job_id)]


def state_of(code: str) -> ClusterState:
    """A ``qstat`` state code (qw, hqw, r, t, s, S, T, dr, Eqw, hr, Rr, ...) -> ClusterState.

    ``E`` (error: the job waits for an operator's ``qmod -cj``) counts as HELD; ``hr`` (a hold
    on a running job) as RUNNING."""
    if "d" in code:
        return ClusterState.EXITING
    if "E" in code:
        return ClusterState.HELD
    if any(c in code for c in "sST"):
        return ClusterState.SUSPENDED
    if any(c in code for c in "rtR"):
        return ClusterState.RUNNING
    if "h" in code:
        return ClusterState.HELD
    if "q" in code or "w" in code:
        return ClusterState.QUEUED
    return ClusterState.UNKNOWN


def parse_qstat(stdout: str) -> dict[str, JobStatus]:
    """The plain ``qstat`` listing -> {id: JobStatus} (array tasks: the first line wins)."""
    result: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        m = _LISTING_RE.match(line)
        if m and m.group(1) not in result:
            result[m.group(1)] = JobStatus(state_of(m.group(2)), None, m.group(2))
    return result


def parse_qacct(stdout: str) -> int | None:
    """``qacct -j ID`` -> the exit code of its LAST record (job ids can repeat after a qmaster
    restart). ``failed`` non-zero with ``exit_status`` 0 still counts as a failure."""
    records = [r for r in re.split(r"^=+\s*$", stdout, flags=re.MULTILINE) if r.strip()]
    for record in reversed(records):
        failed = re.search(r"^failed\s+(\d+)", record, re.MULTILINE)
        status = re.search(r"^exit_status\s+(-?\d+)", record, re.MULTILINE)
        if not status:
            continue
        code = int(status.group(1))
        if failed and failed.group(1) != "0":
            # 100 "assumedly after job" = killed by qdel or a limit (exit_status 137 then).
            return failure_code(code, killed=True)
        return code
    return None


def is_unknown_job(text: str) -> bool:
    return bool(re.search(r"do(es)? not exist|not found|Following jobs do not exist", text))


def action_failed(text: str) -> bool:
    """qmod/qhold answer 0 even when they did nothing ("can not be applied")."""
    return bool(re.search(r"can ?not|denied|does not exist|invalid|error", text, re.IGNORECASE))


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "")


def _listed(result: CommandResult) -> dict[str, JobStatus]:
    if not result.ok:
        raise DrmUnavailable(f"sge: {result.describe()}")
    return parse_qstat(result.stdout)


def _accounted(result: CommandResult) -> JobStatus | None:
    """``qacct -j``: the job's end, None when Grid Engine has no record of it."""
    unavailable_unless(result, "sge", is_unknown_job)
    return JobStatus(ClusterState.DONE, parse_qacct(result.stdout), "qacct") if result.ok else None


def _named(name: str, result: CommandResult) -> list[str]:
    """``qstat -j NAME``: one ``job_number: N`` line per job of that name."""
    return listed_ids(result, name, _no_such_job, r"^job_number:\s*(\d+)")


def _no_such_job(text: str) -> bool:
    return is_unknown_job(text) or "do not exist" in text


class Sge(BatchDrm):
    name = "sge"
    actions = {"hold": ("qhold",), "release": ("qrls",), "suspend": ("qmod", "-sj"),
               "resume": ("qmod", "-usj"), "cancel": ("qdel",)}  # fmt: skip

    def directives(self, job: Submission) -> list[str]:
        if not cpu_dropped(job.resources):
            return []
        return [
            f"{NOTE}cpu={job.resources.cpu} not requested: Grid Engine needs a parallel "
            "environment for more than one slot (set pe=NAME); the job gets one slot"
        ]

    options_argv = staticmethod(submit_argv)

    parse_submit = staticmethod(parse_submit)

    def status_queries(self, cluster_ids: Sequence[str]) -> StatusQueries:
        return [(status_argv(current_user()), _listed)]

    def job_queries(self, cluster_id: str) -> list[Query[JobStatus | None]]:
        return [(qacct_argv(cluster_id), _accounted)]

    def name_query(self, job_name: str) -> Query[list[str]]:
        return (["qstat", "-j", job_name], partial(_named, self.name))

    def is_gone(self, output: str) -> bool:
        return is_unknown_job(output)

    def action_ok(self, action: Action, result: CommandResult) -> bool:
        # qmod and qhold exit 0 even when they did nothing.
        done = action == "cancel" or not action_failed(result.output)
        return super().action_ok(action, result) and done
