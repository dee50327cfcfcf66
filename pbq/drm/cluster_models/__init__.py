"""Built-in DRM plugins (BioQueue's folder name). Every module here whose name does not start
with ``_`` is a plugin: it provides BioQueue's ``submit_job``/``query_job_status``/``cancel_job``
and pbq's optional extras (see :mod:`pbq.drm.registry`), and pbq's typed backend as ``DRM``,
which pbq uses directly."""
