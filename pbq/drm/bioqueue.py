"""BioQueue's plugin protocol, both ways; the only place that knows its numbers.

:class:`BioQueuePlugin` turns a module with BioQueue's functions (see :mod:`pbq.drm.registry`)
into a typed :class:`~pbq.drm.protocol.Drm`. :class:`BioQueueFunctions` does the reverse for
the files of ``cluster_models/``, so that BioQueue-style callers can use pbq's typed backends.

``query_job_status`` numbers: 0 completed, 1 running, 2 queued, negative an error. "Completed"
says nothing of the exit code: only the exit-code file or the DRM's own report can make a job
a success.
"""

from __future__ import annotations

import inspect
import logging
import os
import shlex
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

from pbq.drm.base import (
    ClusterState,
    DrmError,
    JobFiles,
    JobStatus,
    Resources,
    read_exit_file,
    render_job_script,
    safe_name,
    write_script,
)
from pbq.drm.protocol import Action, Actions, Capability, Drm, Submission
from pbq.errors import PbqError

log = logging.getLogger("pbq.drm")

DONE, RUNNING, QUEUED, ERROR = 0, 1, 2, -1
_STATES = {DONE: ClusterState.DONE, RUNNING: ClusterState.RUNNING, QUEUED: ClusterState.QUEUED}
OK, NOT_OK = 1, 0


def status_from_protocol(value: object) -> JobStatus:
    """A plugin's answer for one job (a JobStatus, or a query_job_status number) -> JobStatus.
    Negative numbers ("error") are DONE, with an unknown exit code."""
    if isinstance(value, JobStatus):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            return JobStatus(ClusterState.UNKNOWN, None, str(value))
    if value < 0:
        return JobStatus(ClusterState.DONE, None, f"error {value}")
    return JobStatus(_STATES.get(value, ClusterState.UNKNOWN), None, str(value))


def as_drm(name: str, module: ModuleType) -> Drm:
    """The module's own typed ``DRM`` when it has one, else the module behind the adapter."""
    drm = getattr(module, "DRM", None)
    return drm if isinstance(drm, Drm) else BioQueuePlugin(name, module)


class BioQueuePlugin(Actions):
    """A BioQueue-protocol module as a :class:`~pbq.drm.protocol.Drm`."""

    def __init__(self, name: str, module: ModuleType) -> None:
        self.name = name
        self.module = module
        caps: set[Capability] = set()
        if self._has("hold_job") and self._has("release_job"):
            caps.add("hold")
        if self._has("suspend_job") and self._has("resume_job"):
            caps.add("suspend")
        if self._has("exit_code"):
            caps.add("exit_code")
        if self._has("query_jobs_status"):
            caps.add("batch_status")
        self.capabilities = frozenset(caps)
        try:
            params = dict(inspect.signature(module.submit_job).parameters)
        except (TypeError, ValueError):
            params = {}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._submit_extras = {extra for extra in ("exit_file", "pe") if var_kw or extra in params}

    def _has(self, function: str) -> bool:
        return callable(getattr(self.module, function, None))

    def _last_error(self) -> str:
        try:
            message = getattr(self.module, "last_error", "")
        except Exception:  # a plugin's __getattr__ may raise anything
            return ""
        return str(message or "")

    def submit(self, job: Submission) -> str:
        protocol = job.command
        extras: dict[str, str] = {}
        if "exit_file" in self._submit_extras:
            extras["exit_file"] = str(job.files.exit_file)
        else:
            # A plugin that knows nothing of exit-code files runs a wrapper that writes one.
            script = render_job_script(
                "plain",
                command=job.command,
                workspace=job.workspace,
                exit_file=job.files.exit_file,
                usage_file=job.files.usage_file,
                job_name=safe_name(job.job_key),
            )
            write_script(job.files.script, script)
            protocol = f"/bin/sh {shlex.quote(str(job.files.script))}"
        res = job.resources
        if "pe" in self._submit_extras and res.pe:
            extras["pe"] = res.pe
        args = (protocol, job.job_key, 0, res.cpu, res.mem, res.vmem, res.queue,
                str(job.log_file), res.walltime, str(job.workspace))  # fmt: skip
        # What the plugin raises is reported by DrmBackend.submit.
        answer = self.module.submit_job(*args, **extras)
        cluster_id = "" if answer is None or isinstance(answer, bool) else str(answer).strip()
        if cluster_id in ("", "0"):
            reason = self._last_error() or f"submit_job returned {answer!r}"
            raise DrmError(f"{self.name} did not accept job {job.job_key}: {reason}")
        return cluster_id

    def statuses(self, cluster_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = list(cluster_ids)
        if "batch_status" not in self.capabilities:
            return {i: status_from_protocol(self.module.query_job_status(i)) for i in ids}
        answer = self.module.query_jobs_status(ids)
        if not isinstance(answer, dict):
            raise DrmError(f"query_jobs_status returned {type(answer).__name__}")
        result = {}
        for i in ids:
            value = answer.get(i, answer.get(int(i)) if i.isdigit() else None)
            result[i] = (
                JobStatus(ClusterState.UNKNOWN, None, "not reported")
                if value is None
                else status_from_protocol(value)
            )
        return result

    def exit_code(self, cluster_id: str) -> int | None:
        if "exit_code" not in self.capabilities:
            return None
        try:
            answer = self.module.exit_code(cluster_id)
        except DrmError:
            raise
        except Exception:
            return None
        return None if isinstance(answer, bool) or not isinstance(answer, int) else answer

    def act(self, action: Action, cluster_id: str) -> None:
        function = f"{action}_job"
        if not self._has(function):
            raise DrmError(f"{self.name} has no {function}")
        try:
            answer = getattr(self.module, function)(cluster_id)
        except Exception as exc:
            raise DrmError(f"{type(exc).__name__}: {exc}") from exc
        if answer is not True and answer != OK:
            raise DrmError(self._last_error() or f"{function} returned {answer!r}")

    def find_by_name(self, job_name: str) -> list[str] | None:
        return None


class BioQueueFunctions:
    """BioQueue's ``submit_job``/``query_job_status``/``cancel_job`` and pbq's extras over a
    typed DRM. Failures become 0 (or -1) with the reason in :attr:`last_error`."""

    def __init__(self, drm: Drm) -> None:
        self.drm = drm
        self.last_error = ""
        #: files of the jobs submitted here (BioQueue's callers never tell the workspace again).
        self.files: dict[str, JobFiles] = {}

    def submit_job(
        self,
        protocol: str,
        job_id: int | str,
        job_step: int | str,
        cpu: int | str = 0,
        mem: str = "",
        vrt_mem: str = "",
        queue: str = "",
        log_file: str = "",
        wall_time: str = "",
        workspace: str = "",
        exit_file: str = "",
        pe: str = "",
    ) -> int:
        """Submit PROTOCOL (one command line). The cluster job id, 0 on failure. pbq's extras:
        EXIT_FILE names the exit-code file (``DIR/STEM.exit``; the script and usage file go
        beside it), PE the Grid Engine parallel environment for cpu > 1."""
        self.last_error = ""
        try:
            resources = Resources(
                cpu=int(cpu) if str(cpu).strip() not in ("", "0") else 1,
                mem=mem or "", vmem=vrt_mem or "", queue=queue or "",
                walltime=wall_time or "", pe=pe or "",
            )  # fmt: skip
            ws = Path(workspace or os.getcwd()).resolve()
            if exit_file:
                files = JobFiles.from_exit_file(Path(exit_file).resolve())
            else:
                files = JobFiles.new(ws, f"{job_id}-{job_step}")
            files.dir.mkdir(parents=True, exist_ok=True)
            log_path = Path(log_file).resolve() if log_file else files.path(".log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            job = Submission(str(protocol), str(job_id), ws, log_path, files, resources)
            cluster_id = self.drm.submit(job)
        except (PbqError, OSError, ValueError) as exc:
            self.last_error = str(exc)
            log.warning("%s: submit failed: %s", self.drm.name, exc)
            return NOT_OK
        self.files[cluster_id] = files
        return int(cluster_id)

    def query_job_status(self, job_id: int | str) -> int:
        """0 done with exit 0; 1 running (or suspended, exiting); 2 queued or held; negative:
        finished with a failure (-exit code), unknown outcome or DRM error (-1)."""
        self.last_error = ""
        try:
            status = self.drm.statuses([str(job_id)]).get(str(job_id))
        except PbqError as exc:
            self.last_error = str(exc)
            return ERROR
        if status is None or status.state is ClusterState.UNKNOWN:
            return RUNNING
        if status.state in (ClusterState.QUEUED, ClusterState.HELD):
            return QUEUED
        if status.state is not ClusterState.DONE:
            return RUNNING
        code = self.exit_code(job_id, status.exit_code)
        if code == 0:
            return DONE
        return -abs(code) if code else ERROR

    def query_jobs_status(self, job_ids: Iterable[int | str]) -> dict[str, JobStatus]:
        """{id: JobStatus} for many jobs with one status command; raises DrmUnavailable when
        the DRM does not answer."""
        return self.drm.statuses([str(i) for i in job_ids])

    def exit_code(self, job_id: int | str, reported: int | None = None) -> int | None:
        """The exit-code file of a job submitted here, else REPORTED, else the DRM's answer;
        None when unknown."""
        files = self.files.get(str(job_id))
        code = read_exit_file(files.exit_file) if files is not None else None
        if code is not None:
            return code
        return reported if reported is not None else self.drm.exit_code(str(job_id))

    def _act(self, action: Callable[[str], None], job_id: int | str) -> int:
        self.last_error = ""
        try:
            action(str(job_id))
        except PbqError as exc:
            self.last_error = str(exc)
            return NOT_OK
        return OK

    def cancel_job(self, job_id: int | str) -> int:
        """1 when the job is cancelled (or had already left the queue), else 0."""
        return self._act(self.drm.cancel, job_id)

    def hold_job(self, job_id: int | str) -> int:
        return self._act(self.drm.hold, job_id)

    def release_job(self, job_id: int | str) -> int:
        return self._act(self.drm.release, job_id)

    def suspend_job(self, job_id: int | str) -> int:
        return self._act(self.drm.suspend, job_id)

    def resume_job(self, job_id: int | str) -> int:
        return self._act(self.drm.resume, job_id)

    def module_getattr(self, name: str) -> str:
        """A module ``__getattr__`` that serves ``last_error``."""
        if name == "last_error":
            return self.last_error
        raise AttributeError(name)


FUNCTIONS = ("submit_job", "query_job_status", "cancel_job", "query_jobs_status", "exit_code",
             "hold_job", "release_job", "suspend_job", "resume_job")  # fmt: skip


def plugin_namespace(drm: Drm) -> dict[str, object]:
    """BioQueue's functions and pbq's extras over DRM, and ``last_error``: what a plugin module
    that offers a typed ``DRM`` defines for BioQueue-style callers."""
    functions = BioQueueFunctions(drm)
    namespace: dict[str, object] = {name: getattr(functions, name) for name in FUNCTIONS}
    return {**namespace, "__getattr__": functions.module_getattr}
