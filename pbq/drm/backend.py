"""The one API pbq's scheduler uses to run jobs through a resource manager.

A scheduler submits each job once (:meth:`DrmBackend.submit` -> cluster id, recorded with the
workspace), polls all its ids with one call per interval (:meth:`DrmBackend.statuses`), backs off
while that raises :class:`DrmUnavailable` (``consecutive_failures``/``backoff()`` say how long),
judges every job whose state is DONE with :meth:`DrmBackend.exit_code` (None = unknown, never
success), and can stop/cont/cancel. Nothing else is kept in memory: after a restart, the
recorded cluster ids and workspaces are enough, because each submission leaves in
``<workspace>/.pbq-drm/`` its job script, its exit-code file (written by the job itself) and a
ticket ``job-<cluster id>.json`` that leads from the cluster id to those files.

Exit code of a finished job, first found wins: the exit-code file; what the status query
reported; what the DRM reports when asked (scontrol ExitCode, qacct exit_status, Torque
exit_status, HTCondor ExitCode, LSF exit code). A job killed by cancel or walltime has no
exit-code file and comes out as 128+signal (or 143 when the DRM does not say which signal).
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from pbq.drm import registry
from pbq.drm.base import (
    ClusterState,
    CommandRunner,
    DrmError,
    DrmUnavailable,
    JobFiles,
    JobStatus,
    JobUsage,
    Resources,
    parse_usage,
    read_exit_file,
    render_job_script,
    safe_name,
    write_script,
)
from pbq.errors import PbqError

CAPABILITIES = ("hold", "suspend", "exit_code", "batch_status")

# BioQueue's query_job_status numbers.
_PROTOCOL_STATES = {0: ClusterState.DONE, 1: ClusterState.RUNNING, 2: ClusterState.QUEUED}


def _unique(ids: Iterable[object]) -> list[str]:
    return list(dict.fromkeys(str(i).strip() for i in ids if str(i).strip()))


def status_from_protocol(value: object) -> JobStatus:
    """A plugin's answer for one job (a JobStatus, or a query_job_status number) -> JobStatus.

    BioQueue's 0 ("completed") is DONE with an unknown exit code: only the exit-code file or the
    DRM's own report can make it a success. Negative numbers ("error") are DONE too."""
    if isinstance(value, JobStatus):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            return JobStatus(ClusterState.UNKNOWN, None, str(value))
    if value < 0:
        return JobStatus(ClusterState.DONE, None, f"error {value}")
    state = _PROTOCOL_STATES.get(value)
    if state is None:
        return JobStatus(ClusterState.UNKNOWN, None, str(value))
    return JobStatus(state, None, str(value))


class DrmBackend:
    """A DRM plugin behind pbq's API. Make one with :meth:`load`."""

    def __init__(self, name: str, module: ModuleType, origin: str = "") -> None:
        self.name = name
        self.module = module
        self.origin = origin
        has = self._has
        caps = set()
        if has("hold_job") and has("release_job"):
            caps.add("hold")
        if has("suspend_job") and has("resume_job"):
            caps.add("suspend")
        if has("exit_code"):
            caps.add("exit_code")
        if has("query_jobs_status"):
            caps.add("batch_status")
        self.capabilities: set[str] = caps
        self._failures = 0
        try:
            params = dict(inspect.signature(module.submit_job).parameters)
        except (TypeError, ValueError):
            params = {}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._submit_extras = {extra for extra in ("exit_file", "pe") if var_kw or extra in params}

    @classmethod
    def load(cls, name: str, plugin_dir: str | os.PathLike[str] | None = None) -> DrmBackend:
        """The plugin NAME (see :mod:`pbq.drm.registry`); PbqError if unknown or broken."""
        spec, module = registry.load(name, plugin_dir)
        return cls(spec.name, module, spec.origin)

    def __repr__(self) -> str:
        return f"DrmBackend({self.name!r}, {self.origin!r})"

    # ------------------------------------------------------------------ failures

    def _has(self, name: str) -> bool:
        return callable(getattr(self.module, name, None))

    @property
    def runner(self) -> CommandRunner | None:
        runner = getattr(self.module, "runner", None)
        return runner if isinstance(runner, CommandRunner) else None

    @property
    def consecutive_failures(self) -> int:
        """:meth:`statuses` calls in a row that raised DrmUnavailable (0 once one answers)."""
        return self._failures

    def backoff(self, base: float = 5.0, cap: float = 300.0) -> float:
        """Seconds to wait before polling again: 0 when the DRM answers, then doubling."""
        n = self.consecutive_failures
        return 0.0 if n == 0 else min(cap, base * 2 ** min(n - 1, 30))

    def _last_error(self) -> str:
        try:
            message = getattr(self.module, "last_error", "")
        except Exception:  # a plugin's __getattr__ may raise anything
            return ""
        return str(message or "")

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        command: str,
        job_key: str,
        workspace: Path,
        log_file: Path,
        resources: Resources,
    ) -> str:
        """Submit COMMAND (one shell command line) to run in WORKSPACE; returns the cluster id.

        DrmError when the DRM refuses it; never a made-up id."""
        ws = Path(workspace).resolve()
        if not ws.is_dir():
            raise DrmError(f"workspace {ws} is not a folder")
        log_path = Path(log_file)
        log_path = (log_path if log_path.is_absolute() else ws / log_path).resolve()
        files = JobFiles.new(ws, str(job_key))
        try:
            files.dir.mkdir(exist_ok=True)
            log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DrmError(f"cannot prepare {files.dir}: {exc.strerror}") from exc
        protocol = command
        extras: dict[str, str] = {}
        if "exit_file" in self._submit_extras:
            extras["exit_file"] = str(files.exit_file)
        else:
            # A plugin that knows nothing of exit-code files runs a wrapper that writes one.
            script = render_job_script(
                "plain",
                command=command,
                workspace=ws,
                exit_file=files.exit_file,
                usage_file=files.usage_file,
                job_name=safe_name(str(job_key)),
            )
            write_script(files.script, script)
            protocol = f"/bin/sh {shlex.quote(str(files.script))}"
        if "pe" in self._submit_extras and resources.pe:
            extras["pe"] = resources.pe
        args = (
            protocol, str(job_key), 0, resources.cpu, resources.mem, resources.vmem,
            resources.queue, str(log_path), resources.walltime, str(ws),
        )  # fmt: skip
        try:
            answer = self.module.submit_job(*args, **extras)
        except PbqError as exc:
            raise DrmError(f"{self.name}: {exc}") from exc
        except Exception as exc:
            raise DrmError(
                f"{self.name} plugin failed to submit job {job_key}: {type(exc).__name__}: {exc}"
            ) from exc
        cluster_id = "" if answer is None or isinstance(answer, bool) else str(answer).strip()
        if cluster_id in ("", "0"):
            reason = self._last_error() or f"submit_job returned {answer!r}"
            raise DrmError(f"{self.name} did not accept job {job_key}: {reason}")
        self._write_ticket(ws, cluster_id, job_key, files, log_path)
        return cluster_id

    @staticmethod
    def ticket_path(workspace: Path, cluster_id: str) -> Path:
        return Path(workspace) / ".pbq-drm" / f"job-{safe_name(cluster_id, 200)}.json"

    def _write_ticket(
        self, ws: Path, cluster_id: str, job_key: str, files: JobFiles, log_path: Path
    ) -> None:
        ticket = {
            "drm": self.name,
            "cluster_id": cluster_id,
            "job_key": str(job_key),
            "exit_file": str(files.exit_file),
            "usage_file": str(files.usage_file),
            "script": str(files.script),
            "log_file": str(log_path),
            "submitted": time.time(),
        }
        path = self.ticket_path(ws, cluster_id)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(ticket, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            # Without its ticket the job could never be judged: take it back.
            cancelled, _ = self._call("cancel_job", cluster_id)
            raise DrmError(
                f"job {job_key} was submitted as {self.name} job {cluster_id}, but its ticket "
                f"{path} cannot be written ({exc.strerror}); the job was "
                f"{'cancelled' if cancelled else 'NOT cancelled'}"
            ) from exc

    def ticket(self, cluster_id: str, workspace: Path) -> dict[str, object] | None:
        """What :meth:`submit` recorded for CLUSTER_ID in WORKSPACE (paths of the exit-code,
        usage, script and log files), None when there is no ticket."""
        try:
            data = json.loads(self.ticket_path(workspace, str(cluster_id)).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------------ status and results

    def statuses(self, cluster_ids: Sequence[str]) -> dict[str, JobStatus]:
        """{id: JobStatus} for every id given: one DRM command when the plugin has batch status.

        DrmUnavailable when the DRM does not answer: then nothing may be judged."""
        ids = _unique(cluster_ids)
        if not ids:
            return {}
        try:
            if "batch_status" in self.capabilities:
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
            else:
                result = {i: status_from_protocol(self.module.query_job_status(i)) for i in ids}
        except DrmUnavailable:
            self._failures += 1
            raise
        except Exception as exc:
            self._failures += 1
            raise DrmUnavailable(
                f"{self.name}: status query failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._failures = 0
        return result

    def exit_code(
        self, cluster_id: str, workspace: Path, reported: int | None = None
    ) -> int | None:
        """Exit code of a finished job: its exit-code file, else REPORTED (a DONE status's
        ``exit_code``), else the DRM's answer. None = unknown (never success by default).

        Call it once the job is DONE. DrmUnavailable when the DRM had to be asked and did not
        answer."""
        ticket = self.ticket(cluster_id, workspace)
        if ticket and isinstance(ticket.get("exit_file"), str):
            code = read_exit_file(Path(ticket["exit_file"]))  # type: ignore[arg-type]
            if code is not None:
                return code
        if reported is not None:
            return reported
        if "exit_code" not in self.capabilities:
            return None
        try:
            answer = self.module.exit_code(str(cluster_id))
        except DrmUnavailable:
            raise
        except Exception:
            return None
        if isinstance(answer, bool) or not isinstance(answer, int):
            return None
        return answer

    def usage(self, cluster_id: str, workspace: Path) -> JobUsage | None:
        """Peak memory, CPU seconds and runtime of a finished job, when its script measured them."""
        ticket = self.ticket(cluster_id, workspace)
        if not ticket or not isinstance(ticket.get("usage_file"), str):
            return None
        try:
            text = Path(ticket["usage_file"]).read_text(encoding="utf-8")  # type: ignore[arg-type]
        except OSError:
            return None
        return parse_usage(text)

    def forget(self, cluster_id: str, workspace: Path) -> None:
        """Delete what :meth:`submit` left in ``<workspace>/.pbq-drm/`` for a job whose result
        has been recorded (ticket, job script, exit-code and usage files; not the log)."""
        ticket = self.ticket(cluster_id, workspace)
        paths = [self.ticket_path(workspace, str(cluster_id))]
        if ticket and isinstance(ticket.get("exit_file"), str):
            files = JobFiles.from_exit_file(str(ticket["exit_file"]))
            paths += [files.script, files.exit_file, files.usage_file]
            paths += [files.path(s) for s in (".sub", ".condor.log")]
        for path in paths:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ control

    def _call(self, function: str, cluster_id: str) -> tuple[bool, str]:
        try:
            answer = getattr(self.module, function)(cluster_id)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if answer is True or answer == 1:
            return True, ""
        return False, self._last_error() or f"{function} returned {answer!r}"

    def cancel(self, ids: Iterable[str]) -> None:
        """Cancel every job (queued, held, running or suspended). A job that has already left
        the queue counts as cancelled. DrmError naming the ones that could not be."""
        failed: list[str] = []
        reasons: list[str] = []
        for cluster_id in _unique(ids):
            ok, reason = self._call("cancel_job", cluster_id)
            if not ok:
                failed.append(cluster_id)
                reasons.append(reason)
        if failed:
            raise DrmError(
                f"{self.name}: could not cancel {len(failed)} job(s) ({', '.join(failed)}): "
                f"{reasons[-1]}"
            )

    def _split(
        self, ids: list[str], running_hint: set[str]
    ) -> tuple[dict[ClusterState, list[str]], bool]:
        """Group IDS by their current state (one status query); without an answer from the
        DRM, by the caller's hint (RUNNING_HINT running, the rest queued)."""
        groups: dict[ClusterState, list[str]] = {state: [] for state in ClusterState}
        try:
            current = self.statuses(ids)
        except DrmUnavailable:
            for i in ids:
                groups[ClusterState.RUNNING if i in running_hint else ClusterState.QUEUED].append(i)
            return groups, False
        for i in ids:
            groups[current[i].state].append(i)
        return groups, True

    def stop(self, ids: Iterable[str], running_ids: Iterable[str] = ()) -> str:
        """Hold the queued jobs and suspend the running ones, where the DRM can. IDS are the jobs
        to stop; RUNNING_IDS (possibly among IDS) those the caller believes running: the DRM's
        answer to one status query wins over that belief. Returns what was done, in words."""
        all_ids = _unique([*ids, *running_ids])
        if not all_ids:
            return "nothing to stop"
        groups, _ = self._split(all_ids, set(_unique(running_ids)))
        queued = groups[ClusterState.QUEUED] + groups[ClusterState.UNKNOWN]
        running = groups[ClusterState.RUNNING]
        already = len(groups[ClusterState.HELD]) + len(groups[ClusterState.SUSPENDED])
        held: list[str] = []
        suspended: list[str] = []
        failed: list[str] = []
        reasons: list[str] = []
        left_queued: list[str] = []
        left_running: list[str] = []
        can_hold = "hold" in self.capabilities
        can_suspend = "suspend" in self.capabilities
        for i in queued:
            if not can_hold:
                left_queued.append(i)
                continue
            ok, reason = self._call("hold_job", i)
            if ok:
                held.append(i)
            elif can_suspend and self._call("suspend_job", i)[0]:
                suspended.append(i)  # it started meanwhile
            else:
                failed.append(i)
                reasons.append(reason)
        for i in running:
            if not can_suspend:
                left_running.append(i)
                continue
            ok, reason = self._call("suspend_job", i)
            if ok:
                suspended.append(i)
            else:
                failed.append(i)
                reasons.append(reason)
        done = [f"held {len(held)}"] if held else []
        if suspended:
            done.append(f"suspended {len(suspended)}")
        if already:
            done.append(f"{already} already stopped")
        problems = []
        if left_running:
            problems.append(
                f"this DRM cannot suspend running jobs ({len(left_running)} still running)"
            )
        if left_queued:
            problems.append(f"this DRM cannot hold queued jobs ({len(left_queued)} still queued)")
        if failed:
            problems.append(f"could not stop {len(failed)} ({', '.join(failed)}): {reasons[-1]}")
        sentence = ", ".join(done) or "nothing stopped"
        return "; ".join([sentence, *problems])

    def cont(self, ids: Iterable[str]) -> str:
        """Release held jobs and resume suspended ones. Returns what was done, in words."""
        all_ids = _unique(ids)
        if not all_ids:
            return "nothing to continue"
        groups, answered = self._split(all_ids, set())
        plan: list[tuple[str, tuple[str, ...]]]
        if answered:
            plan = [(i, ("release_job",)) for i in groups[ClusterState.HELD]]
            plan += [(i, ("resume_job",)) for i in groups[ClusterState.SUSPENDED]]
        else:  # no answer from the DRM: try both, the wrong one fails harmlessly
            plan = [(i, ("release_job", "resume_job")) for i in all_ids]
        released: list[str] = []
        resumed: list[str] = []
        failed: list[str] = []
        reason = ""
        for i, functions in plan:
            for function in functions:
                capability = "hold" if function == "release_job" else "suspend"
                if capability not in self.capabilities:
                    reason = reason or f"{self.name} has no {function}"
                    continue
                ok, why = self._call(function, i)
                if ok:
                    (released if function == "release_job" else resumed).append(i)
                    break
                reason = why
            else:
                failed.append(i)
        done = [f"released {len(released)}"] if released else []
        if resumed:
            done.append(f"resumed {len(resumed)}")
        sentence = ", ".join(done) or "nothing to continue"
        if failed:
            sentence += f"; could not continue {len(failed)} ({', '.join(failed)}): {reason}"
        return sentence
