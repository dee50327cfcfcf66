"""Finding DRM plugins.

A plugin is a Python module with BioQueue's three functions (exactly these parameter names)::

    submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace='') -> int      # cluster job id, 0 on failure
    query_job_status(job_id) -> int                    # 0 done, 1 running, 2 queued, <0 error
    cancel_job(job_id) -> int                          # 1 ok, 0 not

and optionally pbq's extras: ``hold_job``/``release_job``, ``suspend_job``/``resume_job`` (-> 1
ok / 0 not), ``exit_code(job_id) -> int | None``, ``query_jobs_status(job_ids) -> dict`` (id ->
:class:`~pbq.drm.base.JobStatus` or a query_job_status number), ``submit_job(...,
exit_file='')`` (the plugin's job script writes the exit code there itself; otherwise pbq wraps
the command so that it does), ``submit_job(..., pe='')``, and ``last_error`` (a message for a
failed call).

A module may instead (or also) offer a typed :class:`~pbq.drm.protocol.Drm` as its ``DRM``
attribute: pbq then uses that directly, as it does for the built-ins. A module without one is
wrapped by :class:`~pbq.drm.bioqueue.BioQueuePlugin`.

Where plugins come from, later ones overriding earlier ones of the same name:

1. the modules of ``pbq/drm/cluster_models/`` (built-ins) whose names do not start with ``_``
   or ``cluster`` (abstract base modules);
2. the ``pbq.drm`` entry-point group of installed packages;
3. the ``*.py`` files of a user plugin folder (config ``[cluster] plugin_dir``), names not
   starting with ``_`` or ``cluster``: a BioQueue plugin file dropped there works unchanged.

Names are case-insensitive (``TorquePBS.py`` is ``torquepbs``), with aliases ``pbs``/``torque``
-> ``torquepbs``, ``condor`` -> ``htcondor``, ``gridengine`` -> ``sge``. Nothing is imported until
a plugin is used; a plugin that fails to import is reported then (a PbqError naming the plugin and
the error) and never disturbs the others.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from pbq.errors import PbqError
from pbq.safety import check_plugin_dir, read_trusted

BUILTIN_PACKAGE = "pbq.drm.cluster_models"
ENTRY_POINT_GROUP = "pbq.drm"
REQUIRED = ("submit_job", "query_job_status", "cancel_job")
ALIASES = {
    "pbs": "torquepbs",
    "torque": "torquepbs",
    "condor": "htcondor",
    "gridengine": "sge",
}


@dataclass(frozen=True)
class PluginSpec:
    name: str
    origin: str
    loader: Callable[[], ModuleType]


def _abstract(module_name: str) -> bool:
    """Base modules of plugins, not plugins: ``_*`` and ``cluster*`` (BioQueue's
    ``ClusterBase.py``)."""
    return module_name.startswith("_") or module_name.lower().startswith("cluster")


def _builtin_specs() -> dict[str, PluginSpec]:
    package = importlib.import_module(BUILTIN_PACKAGE)
    specs = {}
    for info in pkgutil.iter_modules(package.__path__):
        if _abstract(info.name):
            continue
        module_name = f"{BUILTIN_PACKAGE}.{info.name}"
        specs[info.name.lower()] = PluginSpec(
            info.name.lower(),
            f"built-in {module_name}",
            functools.partial(importlib.import_module, module_name),
        )
    return specs


def _entry_point_specs() -> dict[str, PluginSpec]:
    specs = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        specs[ep.name.lower()] = PluginSpec(ep.name.lower(), f"entry point {ep.value}", ep.load)
    return specs


def _load_file(path: Path) -> ModuleType:
    """Import a plugin file from the bytes that were checked (pbq.safety): yours, closed to
    others, not a symlink -- it runs as you."""
    module_name = f"pbq_drm_plugin_{path.stem.lower()}"
    source = read_trusted(path, "DRM plugin", allow_group_write=False)
    if source is None:
        raise ImportError(f"cannot load {path}: it is gone")
    module = ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _dir_specs(plugin_dir: str | os.PathLike[str]) -> dict[str, PluginSpec]:
    folder = Path(plugin_dir).expanduser()
    if not folder.is_dir():
        raise PbqError(f"DRM plugin folder {folder} does not exist")
    check_plugin_dir(folder)  # whoever can add a file there runs Python as you
    specs = {}
    for path in sorted(folder.glob("*.py")):
        if _abstract(path.stem):
            continue
        specs[path.stem.lower()] = PluginSpec(
            path.stem.lower(), str(path), functools.partial(_load_file, path)
        )
    return specs


def available(plugin_dir: str | os.PathLike[str] | None = None) -> dict[str, PluginSpec]:
    """Every plugin by canonical (lower-case) name; nothing is imported."""
    specs = _builtin_specs()
    specs.update(_entry_point_specs())
    if plugin_dir:
        specs.update(_dir_specs(plugin_dir))
    return specs


def resolve(name: str, plugin_dir: str | os.PathLike[str] | None = None) -> PluginSpec:
    specs = available(plugin_dir)
    key = name.strip().lower()
    if key not in specs and ALIASES.get(key) in specs:
        key = ALIASES[key]
    if key not in specs:
        names = ", ".join(sorted(specs)) or "none"
        raise PbqError(f"unknown DRM {name!r} (available: {names})")
    return specs[key]


_cache: dict[tuple[str, str], ModuleType] = {}


def load(
    name: str, plugin_dir: str | os.PathLike[str] | None = None
) -> tuple[PluginSpec, ModuleType]:
    """Import the plugin NAME (once per origin). PbqError if unknown, broken or incomplete."""
    spec = resolve(name, plugin_dir)
    cache_key = (spec.name, spec.origin)
    module = _cache.get(cache_key)
    if module is None:
        try:
            module = spec.loader()
        except PbqError:
            raise  # refused (pbq.safety): already one clear message
        except (Exception, SystemExit) as exc:  # anything a third-party module may raise
            raise PbqError(
                f"DRM plugin {spec.name!r} ({spec.origin}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
        if missing:
            raise PbqError(f"DRM plugin {spec.name!r} ({spec.origin}) lacks {', '.join(missing)}")
        _cache[cache_key] = module
    return spec, module
