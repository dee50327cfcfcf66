"""What the built-in plugins share: the BioQueue protocol on top of argv builders and parsers.

A :class:`PluginCore` subclass per system implements ``submit`` (write the job script, run the
submit command, parse the id), ``statuses`` (many ids, one command), ``drm_exit_code`` and the
argv builders for hold/release/suspend/resume/cancel. This class turns them into the protocol
functions' return conventions (cluster id or 0; 0 done / 1 running / 2 queued / negative error;
1 ok / 0 not) and remembers the last error message for the backend (``last_error``).

Files starting with ``_`` are not plugins.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

from pbq.drm.base import (
    ClusterState,
    CommandResult,
    CommandRunner,
    DrmError,
    DrmUnavailable,
    JobFiles,
    JobStatus,
    Resources,
    read_exit_file,
    render_job_script,
    safe_name,
    write_script,
)
from pbq.errors import PbqError

log = logging.getLogger("pbq.drm")


ARGV_BUILDERS = ("hold_argv", "release_argv", "suspend_argv", "resume_argv", "cancel_argv")


class PluginCore:
    system = ""
    #: the system's module of pure argv builders and parsers (``pbq.drm.slurm`` ...): its
    #: SYSTEM name and its hold/release/suspend/resume/cancel builders are taken from it.
    builders: ModuleType | None = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        mod = cls.__dict__.get("builders")
        if mod is None:
            return
        cls.system = mod.SYSTEM
        for name in ARGV_BUILDERS:
            fn = getattr(mod, name, None)
            if fn is not None and name not in cls.__dict__:
                setattr(cls, name, staticmethod(fn))

    def submit_script(
        self, script: Path, job_name: str, log_file: Path, workspace: Path, resources: Resources, tool: str
    ) -> str:
        """Submit a job script whose options are all on the command line; the cluster id."""
        assert self.builders is not None
        argv = self.builders.submit_argv(
            str(script),
            job_name=job_name,
            log_file=str(log_file),
            workspace=str(workspace),
            resources=resources,
        )
        return self.builders.parse_submit(self.run_ok(argv, tool).stdout)

    def __init__(self) -> None:
        self.runner = CommandRunner()
        self.last_error = ""
        #: files of the jobs this process submitted (for BioQueue-style callers, which never
        #: tell the workspace again): cluster id -> JobFiles.
        self.files: dict[str, JobFiles] = {}

    # ------------------------------------------------------------------ per system

    def submit(
        self,
        files: JobFiles,
        command: str,
        job_name: str,
        log_file: Path,
        workspace: Path,
        resources: Resources,
    ) -> str:
        raise NotImplementedError

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        raise NotImplementedError

    def drm_exit_code(self, job_id: str) -> int | None:
        raise NotImplementedError

    hold_argv: Callable[[str], list[str]] | None = None
    release_argv: Callable[[str], list[str]] | None = None
    suspend_argv: Callable[[str], list[str]] | None = None
    resume_argv: Callable[[str], list[str]] | None = None
    cancel_argv: Callable[[str], list[str]] | None = None

    def action_ok(self, action: str, result: CommandResult) -> bool:
        """Did hold/release/suspend/resume/cancel work? (cancel of a job already gone does.)"""
        return result.ok

    # ------------------------------------------------------------------ helpers

    def write_job_script(
        self,
        files: JobFiles,
        command: str,
        job_name: str,
        workspace: Path,
        directives: Sequence[str] = (),
    ) -> Path:
        text = render_job_script(
            self.system,
            command=command,
            workspace=workspace,
            exit_file=files.exit_file,
            usage_file=files.usage_file,
            job_name=job_name,
            directives=directives,
        )
        write_script(files.script, text)
        return files.script

    def run(self, argv: Sequence[str], **kwargs: object) -> CommandResult:
        return self.runner.run(argv, **kwargs)  # type: ignore[arg-type]

    def run_ok(self, argv: Sequence[str], what: str) -> CommandResult:
        """Run a command that must succeed; DrmError (with its message) if it does not."""
        result = self.run(argv)
        if not result.ok:
            raise DrmError(f"{what} failed: {result.describe()}")
        return result

    # ------------------------------------------------------------------ BioQueue protocol

    def submit_job(
        self,
        protocol: str,
        job_id: object,
        job_step: object,
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
        self.last_error = ""
        try:
            resources = Resources(
                cpu=int(cpu) if str(cpu).strip() not in ("", "0") else 1,
                mem=mem or "",
                vmem=vrt_mem or "",
                queue=queue or "",
                walltime=wall_time or "",
                pe=pe or "",
            )
            ws = Path(workspace or os.getcwd()).resolve()
            if exit_file:
                files = JobFiles.from_exit_file(Path(exit_file).resolve())
            else:
                files = JobFiles.new(ws, f"{job_id}-{job_step}")
            files.dir.mkdir(parents=True, exist_ok=True)
            for stale in (files.exit_file, files.usage_file):
                stale.unlink(missing_ok=True)
            log_path = Path(log_file).resolve() if log_file else files.dir / f"{files.stem}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            job_name = f"pbq-{safe_name(str(job_id), 40)}"
            cluster_id = self.submit(files, str(protocol), job_name, log_path, ws, resources)
        except (PbqError, OSError, ValueError) as exc:
            self.last_error = str(exc)
            log.warning("%s: submit failed: %s", self.system, exc)
            return 0
        self.files[cluster_id] = files
        return int(cluster_id)

    def query_job_status(self, job_id: object) -> int:
        self.last_error = ""
        try:
            status = self.statuses([str(job_id)]).get(str(job_id))
        except PbqError as exc:
            self.last_error = str(exc)
            return -1
        if status is None or status.state is ClusterState.UNKNOWN:
            return 1
        if status.state in (ClusterState.QUEUED, ClusterState.HELD):
            return 2
        if status.state is not ClusterState.DONE:
            return 1
        code = self.exit_code(job_id, status.exit_code)
        if code == 0:
            return 0
        return -abs(code) if code else -1

    def query_jobs_status(self, job_ids: Iterable[object]) -> dict[str, JobStatus]:
        ids = [str(i) for i in job_ids]
        if not ids:
            return {}
        result = self.statuses(ids)
        return {i: result.get(i, JobStatus(ClusterState.UNKNOWN, None, "not listed")) for i in ids}

    def exit_code(self, job_id: object, reported: int | None = None) -> int | None:
        """Exit-code file of a job this process submitted, else what the DRM reports."""
        files = self.files.get(str(job_id))
        if files is not None:
            code = read_exit_file(files.exit_file)
            if code is not None:
                return code
        if reported is not None:
            return reported
        return self.drm_exit_code(str(job_id))

    def _action(self, action: str, job_id: object) -> int:
        builder = getattr(self, f"{action}_argv")
        if builder is None:
            self.last_error = f"{self.system} cannot {action} jobs"
            return 0
        try:
            result = self.run(builder(str(job_id)))
        except DrmUnavailable as exc:
            self.last_error = str(exc)
            return 0
        if self.action_ok(action, result):
            return 1
        self.last_error = result.describe()
        return 0

    def cancel_job(self, job_id: object) -> int:
        return self._action("cancel", job_id)

    def hold_job(self, job_id: object) -> int:
        return self._action("hold", job_id)

    def release_job(self, job_id: object) -> int:
        return self._action("release", job_id)

    def suspend_job(self, job_id: object) -> int:
        return self._action("suspend", job_id)

    def resume_job(self, job_id: object) -> int:
        return self._action("resume", job_id)


ProtocolFunctions = tuple[Callable[..., object], ...]


def protocol_functions(core: PluginCore) -> ProtocolFunctions:
    """The module-level functions of a built-in plugin, bound to CORE:
    ``submit_job, query_job_status, cancel_job`` (BioQueue) and ``query_jobs_status, exit_code,
    hold_job, release_job, suspend_job, resume_job`` (pbq's extras)."""

    def submit_job(
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
        """Submit PROTOCOL (one command line). Returns the cluster job id, 0 on failure (the
        reason is in the module's ``last_error``). pbq's extras: EXIT_FILE names the exit-code
        file (``DIR/STEM.exit``; the script and usage file go beside it), PE the Grid Engine
        parallel environment for cpu > 1."""
        return core.submit_job(
            protocol,
            job_id,
            job_step,
            cpu,
            mem,
            vrt_mem,
            queue,
            log_file,
            wall_time,
            workspace,
            exit_file=exit_file,
            pe=pe,
        )

    def query_job_status(job_id: int | str) -> int:
        """0 done with exit 0; 1 running (or suspended, exiting); 2 queued or held; negative:
        finished with a failure (-exit code), unknown outcome or DRM error (-1)."""
        return core.query_job_status(job_id)

    def cancel_job(job_id: int | str) -> int:
        """1 when the job is cancelled (or had already left the queue), else 0."""
        return core.cancel_job(job_id)

    def query_jobs_status(job_ids: Iterable[int | str]) -> dict[str, JobStatus]:
        """{id: JobStatus} for many jobs with one status command (pbq's extra); raises
        DrmUnavailable when the DRM does not answer."""
        return core.query_jobs_status(job_ids)

    def exit_code(job_id: int | str) -> int | None:
        """The job's exit code as the DRM (or this process's exit-code file) tells it; None
        when unknown."""
        return core.exit_code(job_id)

    def hold_job(job_id: int | str) -> int:
        return core.hold_job(job_id)

    def release_job(job_id: int | str) -> int:
        return core.release_job(job_id)

    def suspend_job(job_id: int | str) -> int:
        return core.suspend_job(job_id)

    def resume_job(job_id: int | str) -> int:
        return core.resume_job(job_id)

    return (submit_job, query_job_status, cancel_job, query_jobs_status, exit_code,
            hold_job, release_job, suspend_job, resume_job)  # fmt: skip


def last_error_getter(core: PluginCore) -> Callable[[str], str]:
    """A module ``__getattr__`` that serves ``last_error`` from CORE."""

    def __getattr__(name: str) -> str:
        if name == "last_error":
            return core.last_error
        raise AttributeError(name)

    return __getattr__
