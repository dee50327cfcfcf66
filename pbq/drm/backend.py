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

Behind it is one typed :class:`~pbq.drm.protocol.Drm`: a built-in system's object, or a
BioQueue-protocol module behind :class:`~pbq.drm.bioqueue.BioQueuePlugin`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from pbq.drm import registry
from pbq.drm.base import (
    STATE_DIR,
    ClusterState,
    CommandRunner,
    DrmError,
    DrmUnavailable,
    JobFiles,
    JobStatus,
    JobUsage,
    PluginFailed,
    Resources,
    parse_usage,
    read_exit_file,
    safe_name,
)
from pbq.drm.bioqueue import as_drm, describe_exception
from pbq.drm.protocol import Action, Drm, Submission, job_name, perform
from pbq.errors import PbqError

CAPABILITIES = ("hold", "suspend", "exit_code", "batch_status")


def _unique(ids: Iterable[object]) -> list[str]:
    return list(dict.fromkeys(str(i).strip() for i in ids if str(i).strip()))


class DrmBackend:
    """A DRM behind pbq's API. Make one with :meth:`load`."""

    def __init__(self, name: str, plugin: Drm | ModuleType, origin: str = "") -> None:
        """PLUGIN is a typed :class:`~pbq.drm.protocol.Drm`, or a plugin module (its ``DRM``,
        else the module itself behind the BioQueue adapter)."""
        self.name = name
        self.module = plugin if isinstance(plugin, ModuleType) else None
        self.drm: Drm = as_drm(name, plugin) if isinstance(plugin, ModuleType) else plugin
        self.origin = origin
        self.capabilities: set[str] = set(self.drm.capabilities)
        self._failures = 0

    @classmethod
    def load(cls, name: str, plugin_dir: str | os.PathLike[str] | None = None) -> DrmBackend:
        """The plugin NAME (see :mod:`pbq.drm.registry`); PbqError if unknown or broken."""
        spec, module = registry.load(name, plugin_dir)
        return cls(spec.name, module, spec.origin)

    def __repr__(self) -> str:
        return f"DrmBackend({self.name!r}, {self.origin!r})"

    # ------------------------------------------------------------------ failures

    @property
    def runner(self) -> CommandRunner | None:
        runner = getattr(self.drm, "runner", None)
        return runner if isinstance(runner, CommandRunner) else None

    @property
    def consecutive_failures(self) -> int:
        """:meth:`statuses` calls in a row that raised DrmUnavailable (0 once one answers)."""
        return self._failures

    def backoff(self, base: float = 5.0, cap: float = 300.0) -> float:
        """Seconds to wait before polling again: 0 when the DRM answers, then doubling."""
        n = self.consecutive_failures
        return 0.0 if n == 0 else min(cap, base * 2 ** min(n - 1, 30))

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        command: str,
        job_key: str,
        workspace: Path,
        log_file: Path,
        resources: Resources,
        name: str = "",
    ) -> str:
        """Submit COMMAND (one shell command line) to run in WORKSPACE; returns the cluster id.
        NAME is the attempt's name (the job's name in the DRM and the stem of its files in
        ``.pbq-drm/``); submitting the same NAME again shares those files, and only one cluster
        job of the attempt runs the command (the job script claims ``NAME.claim``).

        DrmError when the DRM refuses it (DrmUnavailable when it does not answer or may have
        taken it, PluginFailed when the plugin raised); never a made-up id."""
        ws = Path(workspace).resolve()
        if not ws.is_dir():
            raise DrmError(f"workspace {ws} is not a folder")
        log_path = Path(log_file)
        log_path = (log_path if log_path.is_absolute() else ws / log_path).resolve()
        files = self.files_for(ws, name) if name else JobFiles.new(ws, str(job_key))
        try:
            files.dir.mkdir(exist_ok=True)
            log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DrmError(f"cannot prepare {files.dir}: {exc.strerror}") from exc
        job = Submission(command, str(job_key), ws, log_path, files, resources, name)
        try:
            cluster_id = str(self.drm.submit(job)).strip()
        except DrmError:
            raise
        except PbqError as exc:
            raise DrmError(f"{self.name}: {exc}") from exc
        except Exception as exc:
            raise PluginFailed(
                f"{self.name} failed to submit job {job_key}: {describe_exception(exc)}"
            ) from exc
        if not cluster_id:
            raise DrmError(f"{self.name} did not accept job {job_key}: no cluster id")
        self._write_ticket(ws, cluster_id, job_key, files, log_path)
        return cluster_id

    @staticmethod
    def files_for(workspace: Path, name: str) -> JobFiles:
        """The files of the attempt NAME in WORKSPACE's ``.pbq-drm/``."""
        return JobFiles(Path(workspace) / STATE_DIR, safe_name(name, 200))

    def attach(
        self, ws: Path, cluster_id: str, job_key: str, name: str, log_file: Path
    ) -> None:
        """Record CLUSTER_ID as the job of attempt NAME (found by its name or its claim
        marker, not returned by a submission): its ticket names the attempt's files."""
        self._write_ticket(ws, cluster_id, job_key, self.files_for(ws, name), log_file)

    def drain_printed(self) -> list[str]:
        """What the plugin's calls printed since the last call (for the log)."""
        printed = getattr(self.drm, "printed", None)
        if not isinstance(printed, list) or not printed:
            return []
        out = [str(p) for p in printed]
        printed.clear()
        return out

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
            cancelled = not self._perform("cancel", cluster_id)
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
        """{id: JobStatus} for every id given: one DRM command when the DRM has batch status.

        DrmUnavailable when the DRM does not answer: then nothing may be judged."""
        ids = _unique(cluster_ids)
        if not ids:
            return {}
        try:
            answer = self.drm.statuses(ids)
            unknown = JobStatus(ClusterState.UNKNOWN, None, "not reported")
            result = {i: answer.get(i, unknown) for i in ids}
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
            code = read_exit_file(Path(str(ticket["exit_file"])))
            if code is not None:
                return code
        if reported is not None:
            return reported
        if "exit_code" not in self.capabilities:
            return None
        try:
            return self.drm.exit_code(str(cluster_id))
        except DrmUnavailable:
            raise
        except Exception:
            return None

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
            paths += JobFiles.from_exit_file(str(ticket["exit_file"])).all_paths()
        for path in paths:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ control

    def _perform(self, action: Action, cluster_id: str) -> str:
        """Do ACTION on the job; "" when done, else why not."""
        try:
            perform(self.drm, action, cluster_id)
        except PbqError as exc:
            return str(exc)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    def find_by_name(self, job_key: str) -> list[str] | None:
        """Ids of the DRM's jobs submitted for JOB_KEY (found by their job name); None when
        this DRM cannot search by name. DrmUnavailable when it does not answer."""
        return self.drm.find_by_name(job_name(str(job_key)))

    def find_attempt(self, name: str) -> list[str] | None:
        """Ids of the DRM's jobs of the attempt NAME (submitted with ``name=NAME``); None when
        this DRM cannot search by name. DrmUnavailable when it does not answer."""
        return self.drm.find_by_name(name)

    def cancel(self, ids: Iterable[str]) -> None:
        """Cancel every job (queued, held, running or suspended). A job that has already left
        the queue counts as cancelled. DrmError naming the ones that could not be."""
        failed: list[str] = []
        reasons: list[str] = []
        for cluster_id in _unique(ids):
            reason = self._perform("cancel", cluster_id)
            if reason:
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
        return self.stop_jobs(ids, running_ids)[0]

    def stop_jobs(
        self, ids: Iterable[str], running_ids: Iterable[str] = ()
    ) -> tuple[str, list[str]]:
        """:meth:`stop`, and the ids it held or suspended (for :meth:`cont`'s STOPPED)."""
        all_ids = _unique([*ids, *running_ids])
        if not all_ids:
            return "nothing to stop", []
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
            reason = self._perform("hold", i)
            if not reason:
                held.append(i)
            elif can_suspend and not self._perform("suspend", i):
                suspended.append(i)  # it started meanwhile
            else:
                failed.append(i)
                reasons.append(reason)
        for i in running:
            if not can_suspend:
                left_running.append(i)
                continue
            reason = self._perform("suspend", i)
            if not reason:
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
        return "; ".join([sentence, *problems]), held + suspended

    def cont(self, ids: Iterable[str], stopped: Iterable[str] = ()) -> str:
        """Release held jobs and resume suspended ones. STOPPED are jobs pbq itself held or
        suspended: they are released or resumed whatever their status reads (a plugin may say
        None, or "queued", for a held job). Returns what was done, in words."""
        all_ids = _unique([*ids, *stopped])
        ours = set(_unique(stopped))
        if not all_ids:
            return "nothing to continue"
        groups, answered = self._split(all_ids, set())
        plan: list[tuple[str, tuple[Action, ...]]]
        if answered:
            plan = [(i, ("release",)) for i in groups[ClusterState.HELD]]
            plan += [(i, ("resume",)) for i in groups[ClusterState.SUSPENDED]]
            shown = set(groups[ClusterState.HELD]) | set(groups[ClusterState.SUSPENDED])
            plan += [(i, ("release", "resume")) for i in all_ids if i in ours and i not in shown]
        else:  # no answer from the DRM: try both, the wrong one fails harmlessly
            plan = [(i, ("release", "resume")) for i in all_ids]
        released: list[str] = []
        resumed: list[str] = []
        failed: list[str] = []
        reason = ""
        for i, actions in plan:
            for action in actions:
                capability = "hold" if action == "release" else "suspend"
                if capability not in self.capabilities:
                    reason = reason or f"{self.name} cannot {action} jobs"
                    continue
                why = self._perform(action, i)
                if not why:
                    (released if action == "release" else resumed).append(i)
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
