"""HTCondor plugin: BioQueue's protocol plus pbq's extras, on :mod:`pbq.drm.htcondor`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pbq.drm import htcondor as drm
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


class CondorCore(PluginCore):
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
        description = drm.submit_description(
            script=str(script),
            job_name=job_name,
            log_file=str(log_file),
            workspace=str(workspace),
            event_log=str(files.path(".condor.log")),
            resources=resources,
        )
        submit_file = files.path(".sub")
        submit_file.write_text(description, encoding="utf-8")
        result = self.run_ok(drm.submit_argv(str(submit_file)), "condor_submit")
        return drm.parse_submit(result.stdout)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = [str(i) for i in job_ids]
        result = self.run(drm.status_argv(ids))
        if not result.ok:
            raise DrmUnavailable(f"htcondor: {result.describe()}")
        found = drm.parse_af(result.stdout)
        return {i: found.get(i, GONE) for i in ids}

    def drm_exit_code(self, job_id: str) -> int | None:
        status = self.statuses([job_id])[str(job_id)]
        if status.state is ClusterState.DONE and status is not GONE:
            return status.exit_code
        if status is not GONE:
            return None
        try:
            result = self.run(drm.history_argv(job_id))
        except DrmUnavailable:
            return None
        if not result.ok:
            return None
        history = drm.parse_af(result.stdout, finished=True).get(str(job_id))
        return history.exit_code if history else None

    def action_ok(self, action: str, result: CommandResult) -> bool:
        if action == "cancel":
            return result.ok or drm.is_unknown_job(result.output)
        return result.ok


_core = CondorCore()
runner = _core.runner
(submit_job, query_job_status, cancel_job, query_jobs_status, exit_code,
 hold_job, release_job, suspend_job, resume_job) = protocol_functions(_core)  # fmt: skip
__getattr__ = last_error_getter(_core)
