"""Slurm plugin: pbq's typed backend as ``DRM``, and BioQueue's ``submit_job``,
``query_job_status``, ``cancel_job`` (with pbq's extras) over it for BioQueue-style callers.

To change how jobs are submitted, copy this file into your plugin folder and subclass
:class:`pbq.drm.slurm.Slurm` there (its argv builders and parsers are plain methods).
"""

from pbq.drm.bioqueue import plugin_namespace
from pbq.drm.slurm import Slurm

DRM = Slurm()
globals().update(plugin_namespace(DRM))
