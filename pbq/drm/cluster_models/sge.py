"""(Son of) Grid Engine plugin: BioQueue's protocol plus pbq's extras, on :mod:`pbq.drm.sge`."""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from pathlib import Path

from pbq.drm import sge as drm
from pbq.drm.base import (
    GONE,
    CommandResult,
    DrmUnavailable,
    JobFiles,
    JobStatus,
    Resources,
)
from pbq.drm.cluster_models._common import (
    PluginCore,
    last_error_getter,
    log,
    protocol_functions,
)


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "")


class SgeCore(PluginCore):
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
        notes = []
        if drm.cpu_dropped(resources):
            note = (
                f"cpu={resources.cpu} not requested: Grid Engine needs a parallel environment "
                "for more than one slot (set pe=NAME); the job gets one slot"
            )
            log.warning("sge: %s", note)
            notes.append(f"# pbq: {note}")
        script = self.write_job_script(files, command, job_name, workspace, notes)
        return self.submit_script(script, job_name, log_file, workspace, resources, "qsub")

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        result = self.run(drm.status_argv(current_user()))
        if not result.ok:
            raise DrmUnavailable(f"sge: {result.describe()}")
        listed = drm.parse_qstat(result.stdout)
        return {str(i): listed.get(str(i), GONE) for i in job_ids}

    def drm_exit_code(self, job_id: str) -> int | None:
        result = self.run(drm.qacct_argv(job_id))
        if result.ok:
            return drm.parse_qacct(result.stdout)
        if drm.is_unknown_job(result.output):
            return None
        raise DrmUnavailable(f"sge: {result.describe()}")

    def action_ok(self, action: str, result: CommandResult) -> bool:
        if action == "cancel":
            return result.ok or drm.is_unknown_job(result.output)
        return result.ok and not drm.action_failed(result.output)


_core = SgeCore()
runner = _core.runner
(submit_job, query_job_status, cancel_job, query_jobs_status, exit_code,
 hold_job, release_job, suspend_job, resume_job) = protocol_functions(_core)  # fmt: skip
__getattr__ = last_error_getter(_core)
