"""BioQueue's plugin protocol, both ways; the only place that knows its numbers.

:class:`BioQueuePlugin` turns a module with BioQueue's functions (see :mod:`pbq.drm.registry`)
into a typed :class:`~pbq.drm.protocol.Drm`. :class:`BioQueueFunctions` does the reverse for
the files of ``cluster_models/``, so that BioQueue-style callers can use pbq's typed backends.

``query_job_status`` numbers: 0 completed, 1 running, 2 queued, negative an error. "Completed"
says nothing of the exit code: only the exit-code file or the DRM's own report can make a job
a success.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

from pbq.drm.base import (
    ODD,
    ClusterState,
    DrmError,
    DrmUnavailable,
    JobFiles,
    JobStatus,
    PluginFailed,
    Resources,
    format_hms,
    read_exit_file,
    render_job_script,
    safe_name,
    to_mb,
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
    Negative numbers ("error") are ERROR, and so are odd values (None, text that is not a
    number: raw ``ODD``); the caller decides when an error is a verdict."""
    if isinstance(value, JobStatus):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            return JobStatus(ClusterState.ERROR, None, f"{ODD} {value!r:.60}")
    if value < 0:
        return JobStatus(ClusterState.ERROR, None, f"error {value}")
    state = _STATES.get(value)
    if state is None:
        return JobStatus(ClusterState.ERROR, None, f"{ODD} {value!r}")
    return JobStatus(state, None, str(value))


#: what a cluster id looks like: digits, optionally ``.server`` and an array index.
CLUSTER_ID_RE = re.compile(r"\d+(?:\.[A-Za-z0-9][A-Za-z0-9_.-]*)?(?:\[\d*\])?")


def is_cluster_id(text: str) -> bool:
    return CLUSTER_ID_RE.fullmatch(text) is not None


def bioqueue_size(nbytes: int | None) -> str:
    """A size as BioQueue's documentation writes it: ``64G``, else ``1536M``."""
    if nbytes is None:
        return ""
    if nbytes % (1 << 30) == 0:
        return f"{nbytes >> 30}G"
    return f"{to_mb(nbytes)}M"


def bioqueue_resources(res: Resources) -> tuple[int, str, str, str]:
    """(cpu, mem, vrt_mem, wall_time) as BioQueue's plugins take them: sizes like ``64G``,
    wall time ``HH:MM:SS``."""
    wall = res.walltime_seconds
    return (res.cpu, bioqueue_size(res.mem_bytes), bioqueue_size(res.vmem_bytes),
            format_hms(wall) if wall is not None else "")  # fmt: skip


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """What the block prints, from Python (sys.stdout/stderr) and from child processes (file
    descriptors 1 and 2), in the list yielded (filled when the block ends)."""
    found: list[str] = []
    py_out, py_err = io.StringIO(), io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile() as tmp:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(tmp.fileno(), fd)
                except OSError:
                    pass
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                yield found
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            raw = tmp.read().decode("utf-8", "replace")
            text = "\n".join(t.strip() for t in (py_out.getvalue(), py_err.getvalue(), raw))
            found.append(text.strip())


def describe_exception(exc: BaseException) -> str:
    """Type, message and the last frame (file:line in function: code) of EXC."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        f = frames[-1]
        where = f" at {os.path.basename(f.filename)}:{f.lineno} in {f.name}"
        if f.line:
            where += f": {f.line.strip()}"
    return f"{type(exc).__name__}: {exc}{where}"


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
        #: what the plugin's calls printed (drained into the scheduler's log).
        self.printed: list[str] = []

    def _has(self, function: str) -> bool:
        return callable(getattr(self.module, function, None))

    def _last_error(self) -> str:
        try:
            message = getattr(self.module, "last_error", "")
        except Exception:  # a plugin's __getattr__ may raise anything
            return ""
        return str(message or "")

    def call(self, function: str, *args: object, **kwargs: object) -> object:
        """Call the plugin's FUNCTION; what it prints is kept in :attr:`printed` (for the
        log, never the terminal), what it raises becomes :class:`PluginFailed` (type, message,
        last frame and what it printed)."""
        try:
            with captured_output() as out:
                answer = getattr(self.module, function)(*args, **kwargs)
        except DrmError:
            raise  # a pbq-aware plugin's own verdict (DrmUnavailable: no answer)
        except Exception as exc:
            said = f"; it printed: {out[0]!r:.400}" if out and out[0] else ""
            why = describe_exception(exc)
            raise PluginFailed(f"{self.name}.{function} raised {why}{said}") from exc
        if out and out[0]:
            self.printed.append(f"{self.name}.{function} printed: {out[0]!r:.400}")
        return answer

    def submit(self, job: Submission) -> str:
        # Every plugin runs pbq's wrapper: it claims the attempt's marker (so a second cluster
        # job of the same attempt does not run the command) and writes the exit-code file.
        script = render_job_script(
            "plain",
            command=job.command,
            workspace=job.workspace,
            exit_file=job.files.exit_file,
            usage_file=job.files.usage_file,
            job_name=safe_name(job.job_name),
            claim_file=job.files.claim_file,
            dup_file=job.files.dup_file,
        )
        write_script(job.files.script, script)
        protocol = f"/bin/sh {shlex.quote(str(job.files.script))}"
        res = job.resources
        extras: dict[str, str] = {}
        if "pe" in self._submit_extras and res.pe:
            extras["pe"] = res.pe
        cpu, mem, vmem, wall = bioqueue_resources(res)
        args = (protocol, job.job_name, 0, cpu, mem, vmem, res.queue,
                str(job.log_file), wall, str(job.workspace))  # fmt: skip
        before = len(self.printed)
        answer = self.call("submit_job", *args, **extras)
        printed = f" ({self.printed[-1]})" if len(self.printed) > before else ""
        if isinstance(answer, bytes):
            answer = answer.decode("utf-8", "replace")
        cluster_id = "" if answer is None or isinstance(answer, bool) else str(answer).strip()
        if cluster_id in ("", "0"):
            reason = self._last_error() or f"submit_job returned {answer!r}"
            raise DrmError(f"{self.name} did not accept job {job.job_key}: {reason}{printed}")
        if not is_cluster_id(cluster_id):
            raise DrmError(
                f"{self.name} did not accept job {job.job_key}: submit_job returned "
                f"{answer!r:.300}, which is not a cluster job id{printed}"
            )
        return cluster_id

    def statuses(self, cluster_ids: Sequence[str]) -> dict[str, JobStatus]:
        """One call per job (or one for all with ``query_jobs_status``). A call that raises
        makes that job's status ERROR; DrmUnavailable only when every call raised."""
        ids = list(cluster_ids)
        if not ids:
            return {}
        if "batch_status" not in self.capabilities:
            result: dict[str, JobStatus] = {}
            failures: list[str] = []
            for i in ids:
                try:
                    result[i] = status_from_protocol(self.call("query_job_status", i))
                except PluginFailed as exc:
                    failures.append(str(exc))
                    result[i] = JobStatus(ClusterState.ERROR, None, f"raised: {exc}")
            if len(failures) == len(ids):
                raise DrmUnavailable(failures[-1])
            return result
        answer = self.call("query_jobs_status", ids)
        if not isinstance(answer, dict):
            raise DrmUnavailable(f"query_jobs_status returned {type(answer).__name__}")
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
            answer = self.call("exit_code", cluster_id)
        except PluginFailed:
            return None
        return None if isinstance(answer, bool) or not isinstance(answer, int) else answer

    def act(self, action: Action, cluster_id: str) -> None:
        function = f"{action}_job"
        if not self._has(function):
            raise DrmError(f"{self.name} has no {function}")
        answer = self.call(function, cluster_id)
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
        if status is not None and status.state is ClusterState.ERROR:
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
