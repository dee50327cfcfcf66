"""Slurm plugin: BioQueue's protocol plus pbq's extras, on :mod:`pbq.drm.slurm`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pbq.drm import slurm as drm
from pbq.drm.base import (
    GONE,
    ClusterState,
    DrmUnavailable,
    JobFiles,
    JobStatus,
    Resources,
)
from pbq.drm.cluster_models._common import PluginCore, last_error_getter, protocol_functions


class SlurmCore(PluginCore):
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
        return self.submit_script(script, job_name, log_file, workspace, resources, "sbatch")

    def show_job(self, job_id: str) -> JobStatus | None:
        """``scontrol -o show job``; None when Slurm no longer knows the job."""
        result = self.run(drm.job_argv(job_id))
        if result.ok:
            return drm.status_from_show_job(result.stdout)
        if drm.is_unknown_job(result.output):
            return None
        raise DrmUnavailable(f"slurm: {result.describe()}")

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = [str(i) for i in job_ids]
        found: dict[str, JobStatus] = {}
        result = self.run(drm.status_argv(ids))
        if result.ok:
            found = {k: v for k, v in drm.parse_squeue(result.stdout).items() if k in ids}
        elif not drm.is_unknown_job(result.output):
            raise DrmUnavailable(f"slurm: {result.describe()}")
        for job_id in ids:
            if job_id not in found:
                found[job_id] = self.show_job(job_id) or GONE
        return found

    def drm_exit_code(self, job_id: str) -> int | None:
        status = self.show_job(job_id)
        if status is None:
            try:
                result = self.run(drm.sacct_argv(job_id))
            except DrmUnavailable:
                return None
            status = drm.status_from_sacct(result.stdout) if result.ok else None
        if status is None or status.state is not ClusterState.DONE:
            return None
        return status.exit_code


_core = SlurmCore()
runner = _core.runner
(submit_job, query_job_status, cancel_job, query_jobs_status, exit_code,
 hold_job, release_job, suspend_job, resume_job) = protocol_functions(_core)  # fmt: skip
__getattr__ = last_error_getter(_core)
