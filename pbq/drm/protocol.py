"""The typed protocol every DRM implements for :class:`~pbq.drm.backend.DrmBackend`.

The built-in systems (:mod:`pbq.drm.slurm`, ``sge``, ``torque``, ``htcondor``, ``lsf``) implement
it directly over :class:`~pbq.drm.batch.BatchDrm`; a module following BioQueue's protocol is
turned into it by :class:`~pbq.drm.bioqueue.BioQueuePlugin`. A plugin module may also offer a
ready object as its ``DRM`` attribute.

Errors: :class:`~pbq.drm.base.DrmUnavailable` when the DRM did not answer (nothing may be
concluded), :class:`~pbq.drm.base.DrmError` when it refused (or cannot do) what was asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pbq.drm.base import JobFiles, JobStatus, Resources, safe_name

Action = Literal["hold", "release", "suspend", "resume", "cancel"]
#: what a DRM can do beyond submit, statuses and cancel: ``hold`` (hold and release queued
#: jobs), ``suspend`` (suspend and resume running ones), ``exit_code`` (it can tell a finished
#: job's exit code), ``batch_status`` (one command answers for many jobs).
Capability = Literal["hold", "suspend", "exit_code", "batch_status"]


def job_name(job_key: str) -> str:
    """The name a job shows in the DRM (and :meth:`Drm.find_by_name` looks for)."""
    return f"pbq-{safe_name(job_key, 40)}"


@dataclass(frozen=True)
class Submission:
    """One job to submit: COMMAND (a shell command line) run in WORKSPACE, its output in
    LOG_FILE, its script, exit-code and usage files named by FILES."""

    command: str
    job_key: str
    workspace: Path
    log_file: Path
    files: JobFiles
    resources: Resources
    #: the attempt's name (unique to jobfile, job number and attempt): shown in the DRM,
    #: searched by :meth:`Drm.find_by_name`, the stem of its files. Default: from JOB_KEY.
    name: str = ""

    @property
    def job_name(self) -> str:
        return self.name or job_name(self.job_key)


@runtime_checkable
class Drm(Protocol):
    @property
    def name(self) -> str:
        """The DRM's plugin name (``slurm`` ...); also the name of its job script template."""
        ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    def submit(self, job: Submission) -> str:
        """Submit JOB; its cluster id. The job's script writes ``job.files.exit_file`` (the
        BioQueue adapter wraps the command when the plugin does not)."""
        ...

    def statuses(self, cluster_ids: Sequence[str]) -> dict[str, JobStatus]:
        """{id: JobStatus} for every id given, from one DRM query where it can."""
        ...

    def exit_code(self, cluster_id: str) -> int | None:
        """A finished job's exit code as the DRM reports it; None when it does not say."""
        ...

    def hold(self, cluster_id: str) -> None: ...

    def release(self, cluster_id: str) -> None: ...

    def suspend(self, cluster_id: str) -> None: ...

    def resume(self, cluster_id: str) -> None: ...

    def cancel(self, cluster_id: str) -> None:
        """Cancel the job; one that has already left the queue counts as cancelled."""
        ...

    def find_by_name(self, job_name: str) -> list[str] | None:
        """Ids of the DRM's jobs named JOB_NAME; None when this DRM cannot search by name."""
        ...


class Actions:
    """The five control methods of :class:`Drm` through one :meth:`act`."""

    def act(self, action: Action, cluster_id: str) -> None:
        """Do ACTION on the job; DrmError when the DRM refuses or cannot."""
        raise NotImplementedError

    def hold(self, cluster_id: str) -> None:
        self.act("hold", cluster_id)

    def release(self, cluster_id: str) -> None:
        self.act("release", cluster_id)

    def suspend(self, cluster_id: str) -> None:
        self.act("suspend", cluster_id)

    def resume(self, cluster_id: str) -> None:
        self.act("resume", cluster_id)

    def cancel(self, cluster_id: str) -> None:
        self.act("cancel", cluster_id)


def perform(drm: Drm, action: Action, cluster_id: str) -> None:
    """Call DRM's method for ACTION on CLUSTER_ID."""
    method = {
        "hold": drm.hold,
        "release": drm.release,
        "suspend": drm.suspend,
        "resume": drm.resume,
        "cancel": drm.cancel,
    }[action]
    method(cluster_id)
