"""Torque/PBS plugin: BioQueue's protocol plus pbq's extras, on :mod:`pbq.drm.torque`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pbq.drm import torque as drm
from pbq.drm.base import (
    GONE,
    ClusterState,
    CommandResult,
    DrmUnavailable,
    JobFiles,
    JobStatus,
    Resources,
)
from pbq.drm.cluster_models._common import PluginCore, last_error_getter, protocol_functions


class TorqueCore(PluginCore):
    builders = drm

    def submit(
        self,
        files: JobFiles,
        command: str,
        job_name: str,
        log_file: Path,
        workspace: Path,
        resources: Resources,
    ) -> str:
        directives = drm.directives(job_name=job_name, log_file=str(log_file), resources=resources)
        script = self.write_job_script(files, command, job_name, workspace, directives)
        result = self.run_ok(drm.submit_argv(str(script)), "qsub")
        return drm.parse_submit(result.stdout)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = [str(i) for i in job_ids]
        result = self.run(drm.status_argv(ids))
        if not result.ok and not drm.is_unknown_job(result.stderr):
            raise DrmUnavailable(f"torque: {result.describe()}")
        found = drm.parse_statuses(result.stdout, result.stderr, ids)
        return {i: found.get(i, GONE) for i in ids}

    def drm_exit_code(self, job_id: str) -> int | None:
        status = self.statuses([job_id])[str(job_id)]
        return status.exit_code if status.state is ClusterState.DONE else None

    def action_ok(self, action: str, result: CommandResult) -> bool:
        if action == "cancel":
            return (
                result.ok or drm.is_unknown_job(result.output) or drm.is_finished_job(result.output)
            )
        return result.ok


_core = TorqueCore()
runner = _core.runner
(submit_job, query_job_status, cancel_job, query_jobs_status, exit_code,
 hold_job, release_job, suspend_job, resume_job) = protocol_functions(_core)  # fmt: skip
__getattr__ = last_error_getter(_core)
