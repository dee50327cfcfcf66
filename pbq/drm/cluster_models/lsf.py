"""LSF plugin: BioQueue's protocol plus pbq's extras, on :mod:`pbq.drm.lsf`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pbq.drm import lsf as drm
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


class LsfCore(PluginCore):
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
        script = self.write_job_script(files, command, job_name, workspace)
        return self.submit_script(script, job_name, log_file, workspace, resources, "bsub")

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = [str(i) for i in job_ids]
        result = self.run(drm.status_argv(ids))
        if not result.ok and drm.format_unsupported(result.output):
            result = self.run(drm.classic_status_argv(ids))
        found = drm.parse_bjobs(result.stdout)
        gone = drm.not_found_ids(result.output)
        missing = [i for i in ids if i not in found and i not in gone]
        if missing and not result.ok:
            raise DrmUnavailable(f"lsf: {result.describe()}")
        return {i: found.get(i, GONE) for i in ids}

    def drm_exit_code(self, job_id: str) -> int | None:
        status = self.statuses([job_id])[str(job_id)]
        return status.exit_code if status.state is ClusterState.DONE else None

    def action_ok(self, action: str, result: CommandResult) -> bool:
        if action == "cancel":
            return result.ok or drm.is_unknown_job(result.output)
        return result.ok


_core = LsfCore()
runner = _core.runner
(submit_job, query_job_status, cancel_job, query_jobs_status, exit_code,
 hold_job, release_job, suspend_job, resume_job) = protocol_functions(_core)  # fmt: skip
__getattr__ = last_error_getter(_core)
