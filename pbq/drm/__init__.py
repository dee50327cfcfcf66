"""Running pbq jobs through a distributed resource manager (Slurm, Grid Engine, Torque/PBS,
HTCondor, LSF, or any BioQueue-style plugin). The scheduler uses :class:`DrmBackend` only."""

from pbq.drm.backend import DrmBackend
from pbq.drm.base import (
    ClusterState,
    CommandResult,
    CommandRunner,
    DrmError,
    DrmUnavailable,
    JobStatus,
    JobUsage,
    Resources,
)

__all__ = [
    "ClusterState",
    "CommandResult",
    "CommandRunner",
    "DrmBackend",
    "DrmError",
    "DrmUnavailable",
    "JobStatus",
    "JobUsage",
    "Resources",
]
