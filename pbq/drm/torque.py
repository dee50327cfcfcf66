"""Torque / PBS: directives, argv builders and output parsers over :class:`~pbq.drm.batch.BatchDrm`.

* submit: ``qsub SCRIPT``; the script carries ``#PBS`` directives: ``-N``, ``-o LOG``, ``-j oe``,
  ``-S /bin/sh``, ``-l nodes=1:ppn=CPU``, ``-l mem=Nmb`` (from ``mem``), ``-l vmem=Nmb`` (from
  ``vmem``: each from its OWN value), ``-l walltime=HH:MM:SS``, ``-q QUEUE``. qsub prints
  ``ID.SERVER``; pbq keeps the numeric ID (the commands accept it).
* status: one ``qstat -f ID ID ...``: ``job_state`` Q/W/T queued, H held, R running, S suspended,
  E exiting (NOT a failure), C done (PBS Pro: F/X); ``exit_status`` read WHOLE: negative values
  are Torque's own start-up failures, values above 256 mean "killed by signal N-256" (reported
  as 128+N). "Unknown Job Id" = left the queue.
* hold/release: ``qhold``/``qrls``; suspend/resume: ``qsig -s suspend|resume``; cancel: ``qdel``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from functools import partial

from pbq.drm.base import (
    KILLED_EXIT,
    ClusterState,
    CommandResult,
    DrmError,
    JobStatus,
    Resources,
    format_hms,
    signal_code,
    to_mb,
)
from pbq.drm.batch import BatchDrm, Query, StatusQueries, unavailable_unless
from pbq.drm.protocol import Capability, Submission

#: old PBS servers refuse longer job names.
NAME_LIMIT = 15

_STATES = {
    "Q": ClusterState.QUEUED,
    "W": ClusterState.QUEUED,
    "T": ClusterState.QUEUED,
    "M": ClusterState.QUEUED,
    "H": ClusterState.HELD,
    "R": ClusterState.RUNNING,
    "B": ClusterState.RUNNING,
    "S": ClusterState.SUSPENDED,
    "U": ClusterState.SUSPENDED,
    "E": ClusterState.EXITING,
    "C": ClusterState.DONE,
    "F": ClusterState.DONE,
    "X": ClusterState.DONE,
}


def _path(path: str) -> str:
    """A path in a directive: double-quoted when it has blanks (qsub splits directive lines)."""
    if '"' in path or "\n" in path or ":" in path:  # qsub reads "host:path"
        raise DrmError(f"Torque cannot take the path {path!r}")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def directives(*, job_name: str, log_file: str, resources: Resources) -> list[str]:
    lines = [
        f"#PBS -N {job_name[:NAME_LIMIT]}",
        f"#PBS -o {_path(log_file)}",
        "#PBS -j oe",
        "#PBS -S /bin/sh",
        f"#PBS -l nodes=1:ppn={resources.cpu}",
    ]
    if resources.mem_bytes is not None:
        lines.append(f"#PBS -l mem={to_mb(resources.mem_bytes)}mb")
    if resources.vmem_bytes is not None:
        lines.append(f"#PBS -l vmem={to_mb(resources.vmem_bytes)}mb")
    if resources.walltime_seconds is not None:
        lines.append(f"#PBS -l walltime={format_hms(resources.walltime_seconds)}")
    if resources.queue:
        lines.append(f"#PBS -q {resources.queue}")
    return lines


def submit_argv(script: str) -> list[str]:
    return ["qsub", script]


def parse_submit(stdout: str) -> str:
    """``qsub`` prints ``123.server`` -> ``"123"``."""
    m = re.match(
        r"\s*(\d+)(?:\[\])?(?:\.\S*)?\s*$", stdout.strip().splitlines()[0] if stdout.strip() else ""
    )
    if not m:
        raise DrmError(f"qsub printed no job id: {stdout.strip()[:200]!r}")
    return m.group(1)


def numeric_id(job_id: str) -> str:
    m = re.match(r"\s*(\d+)", str(job_id))
    return m.group(1) if m else str(job_id).strip()


def status_argv(job_ids: Sequence[str]) -> list[str]:
    return ["qstat", "-f", *[str(i) for i in job_ids]]


def parse_qstat_f(stdout: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` -> {numeric id: {attribute: value}}. Continuation lines (a long value wraps
    onto lines indented by a tab or fewer spaces than the attributes) are joined."""
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key = ""
    for raw in stdout.splitlines():
        if not raw.strip():
            continue
        m = re.match(r"^Job Id:\s*(\S+)", raw)
        if m:
            current = jobs.setdefault(numeric_id(m.group(1)), {"Job Id": m.group(1)})
            last_key = ""
            continue
        if current is None:
            continue
        # Torque indents attributes by 4 spaces (continuations by a tab); Slurm's Torque
        # wrappers indent them by a tab.
        a = re.match(r"^(?: {4}|\t)([A-Za-z_][\w.]*) = ?(.*)$", raw)
        if a:
            last_key = a.group(1)
            current[last_key] = a.group(2).strip()
        elif last_key:
            current[last_key] += raw.strip()
    return jobs


def exit_status_code(text: str | None) -> int | None:
    """``exit_status`` read whole: ``127`` -> 127, ``-1`` -> -1, ``271`` -> 143 (SIGTERM)."""
    if text is None or not re.fullmatch(r"\s*-?\d+\s*", text):
        return None
    code = int(text)
    if code > 256:
        return signal_code(code - 256)
    return code


def status_of(attrs: dict[str, str]) -> JobStatus:
    state = attrs.get("job_state", "").strip()
    cluster_state = _STATES.get(state[:1], ClusterState.UNKNOWN)
    if cluster_state is not ClusterState.DONE:
        return JobStatus(cluster_state, None, state)
    # Torque: exit_status; PBS Pro: Exit_status.
    raw = attrs.get("exit_status", attrs.get("Exit_status"))
    code = exit_status_code(raw)
    if code is None:
        # Finished without an exit status: deleted before it ran.
        return JobStatus(ClusterState.DONE, KILLED_EXIT, state)
    return JobStatus(ClusterState.DONE, code, state)


def unknown_ids(stderr: str) -> set[str]:
    """Ids named in "qstat: Unknown Job Id [Error] 123.server" lines."""
    return {
        numeric_id(m.group(1)) for m in re.finditer(r"Unknown Job Id(?: Error)?\s+(\S+)", stderr)
    }


def parse_statuses(stdout: str, stderr: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
    """Statuses of JOB_IDS from one ``qstat -f`` call; unknown ids have left the queue."""
    jobs = parse_qstat_f(stdout)
    gone = unknown_ids(stderr)
    result: dict[str, JobStatus] = {}
    for job_id in job_ids:
        key = numeric_id(job_id)
        if key in jobs:
            result[str(job_id)] = status_of(jobs[key])
        elif key in gone:
            result[str(job_id)] = JobStatus(ClusterState.DONE, None, "gone")
    return result


def is_unknown_job(text: str) -> bool:
    return "Unknown Job Id" in text or "Invalid job id" in text


def is_finished_job(text: str) -> bool:
    """qdel/qhold answers for a job that already completed."""
    return bool(
        re.search(r"Request invalid for state of job|job.*(completed|finished)", text, re.I)
    )


#: qstat's exit status for "unknown job id" (Slurm's wrappers say nothing else).
UNKNOWN_JOB_EXIT = 153


def _listed(ids: Sequence[str], result: CommandResult) -> dict[str, JobStatus]:
    if not (result.returncode == UNKNOWN_JOB_EXIT and not result.output):
        unavailable_unless(result, "torque", is_unknown_job)
    return parse_statuses(result.stdout, result.stderr, ids)


def _named(job_name: str, result: CommandResult) -> list[str]:
    """Ids of the jobs that ``qstat -f`` lists with Job_Name JOB_NAME."""
    unavailable_unless(result, "torque", is_unknown_job)
    jobs = parse_qstat_f(result.stdout)
    return [i for i, attrs in jobs.items() if attrs.get("Job_Name", "").strip() == job_name]


class Torque(BatchDrm):
    name = "torquepbs"
    actions = {"hold": ("qhold",), "release": ("qrls",),
               "suspend": ("qsig", "-s", "suspend"), "resume": ("qsig", "-s", "resume"),
               "cancel": ("qdel",)}  # fmt: skip

    def directives(self, job: Submission) -> list[str]:
        return directives(
            job_name=job.job_name, log_file=str(job.log_file), resources=job.resources
        )

    def submit_argv(self, job: Submission) -> list[str]:
        # -o/-j on the command line too: Slurm's qsub wrapper ignores them in the script.
        return ["qsub", "-o", str(job.log_file), "-j", "oe", str(job.files.script)]

    parse_submit = staticmethod(parse_submit)

    def status_queries(self, cluster_ids: Sequence[str]) -> StatusQueries:
        return [(status_argv(cluster_ids), partial(_listed, list(cluster_ids)))]

    @property
    def capabilities(self) -> frozenset[Capability]:  # type: ignore[override]
        """Without ``qsig`` (Slurm's Torque wrappers have none) running jobs cannot be
        suspended: stop then holds the queued ones only, and says so."""
        caps = set(BatchDrm.capabilities)
        if shutil.which("qsig") is None:
            caps.discard("suspend")
        return frozenset(caps)

    def name_query(self, job_name: str) -> Query[list[str]]:
        return (["qstat", "-f"], partial(_named, job_name[:NAME_LIMIT]))

    def is_gone(self, output: str) -> bool:
        return is_unknown_job(output) or is_finished_job(output)
