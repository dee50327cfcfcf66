"""Plugin discovery: built-ins, user folder, entry points, aliases, broken plugins, and a
BioQueue-style plugin with only the three protocol functions."""

from __future__ import annotations

import inspect
import textwrap
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from pbq.drm import ClusterState, DrmBackend, Resources, registry
from pbq.errors import PbqError

BUILTINS = {"slurm", "sge", "torquepbs", "htcondor", "lsf"}
BIOQUEUE_PARAMS = [
    "protocol", "job_id", "job_step", "cpu", "mem", "vrt_mem", "queue", "log_file",
    "wall_time", "workspace",
]  # fmt: skip

# A plugin written like BioQueue's (Python 3): it runs the job itself through a shell.
LOCAL_PLUGIN = """
import os
import subprocess

_jobs = {}


def submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace=''):
    log = open(log_file or os.devnull, 'ab')
    proc = subprocess.Popen(protocol, shell=True, cwd=workspace or None, stdout=log, stderr=log)
    _jobs[proc.pid] = proc
    return proc.pid


def query_job_status(job_id):
    proc = _jobs.get(int(job_id))
    if proc is None:
        return -1
    return 1 if proc.poll() is None else 0


def cancel_job(job_id):
    proc = _jobs.get(int(job_id))
    if proc is None:
        return 0
    proc.kill()
    return 1
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtins_are_found_without_importing() -> None:
    specs = registry.available()
    assert set(specs) >= BUILTINS
    assert all(not name.startswith("_") for name in specs)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("slurm", "slurm"),
        ("SLURM", "slurm"),
        ("sge", "sge"),
        ("GridEngine", "sge"),
        ("torquepbs", "torquepbs"),
        ("TorquePBS", "torquepbs"),
        ("pbs", "torquepbs"),
        ("torque", "torquepbs"),
        ("htcondor", "htcondor"),
        ("Condor", "htcondor"),
        ("lsf", "lsf"),
    ],
)
def test_names_and_aliases(name: str, canonical: str, fakedrm: Path) -> None:
    backend = DrmBackend.load(name)
    assert backend.name == canonical
    assert backend.capabilities == {"hold", "suspend", "exit_code", "batch_status"}


def test_torque_without_qsig_cannot_suspend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slurm's Torque wrappers (slurm-wlm-torque) have no qsig: running jobs cannot be suspended.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert DrmBackend.load("torquepbs").capabilities == {"hold", "exit_code", "batch_status"}


def test_builtin_plugins_keep_bioqueue_parameter_names() -> None:
    for name in BUILTINS:
        module = DrmBackend.load(name).module
        params = list(inspect.signature(module.submit_job).parameters)
        assert params[: len(BIOQUEUE_PARAMS)] == BIOQUEUE_PARAMS
        assert list(inspect.signature(module.query_job_status).parameters) == ["job_id"]
        assert list(inspect.signature(module.cancel_job).parameters) == ["job_id"]
        assert isinstance(module.last_error, str)


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(PbqError, match=r"unknown DRM 'nosuch' \(available: .*slurm"):
        DrmBackend.load("nosuch")


def test_missing_plugin_dir(tmp_path: Path) -> None:
    with pytest.raises(PbqError, match="does not exist"):
        DrmBackend.load("slurm", tmp_path / "nope")


def test_broken_plugin_is_reported_only_when_used(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", "import no_such_module_pbq\n")
    write(tmp_path, "syntax.py", "def submit_job(:\n")
    write(tmp_path, "exits.py", "raise SystemExit(3)\n")
    write(tmp_path, "_helper.py", "raise RuntimeError('never imported')\n")
    write(tmp_path, "good.py", LOCAL_PLUGIN)
    # Discovery imports nothing; the others still load.
    assert {"broken", "syntax", "good", "exits"} <= set(registry.available(tmp_path))
    assert "_helper" not in registry.available(tmp_path)
    assert DrmBackend.load("good", tmp_path).name == "good"
    assert DrmBackend.load("slurm", tmp_path).name == "slurm"
    with pytest.raises(
        PbqError,
        match=r"DRM plugin 'broken' \(.*broken.py\) failed to import: "
        r"ModuleNotFoundError: .*no_such_module_pbq",
    ):
        DrmBackend.load("broken", tmp_path)
    with pytest.raises(PbqError, match=r"'syntax' .* failed to import: SyntaxError"):
        DrmBackend.load("syntax", tmp_path)
    with pytest.raises(PbqError, match=r"'exits' .* failed to import: SystemExit"):
        DrmBackend.load("exits", tmp_path)
    assert DrmBackend.load("good", tmp_path).name == "good"


def test_incomplete_plugin(tmp_path: Path) -> None:
    write(tmp_path, "half.py", "def submit_job(protocol, job_id, job_step):\n    return 1\n")
    with pytest.raises(PbqError, match="lacks query_job_status, cancel_job"):
        DrmBackend.load("half", tmp_path)


def test_user_plugin_overrides_builtin(tmp_path: Path) -> None:
    path = write(tmp_path, "Slurm.py", LOCAL_PLUGIN)
    backend = DrmBackend.load("slurm", tmp_path)
    assert backend.origin == str(path)
    assert backend.capabilities == set()
    # A BioQueue file name with an alias.
    write(tmp_path, "TorquePBS.py", LOCAL_PLUGIN)
    assert DrmBackend.load("pbs", tmp_path).origin.endswith("TorquePBS.py")
    assert DrmBackend.load("pbs").origin.startswith("built-in")


def test_entry_point_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "site", "pbq_test_ep_plugin.py", LOCAL_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    eps = [
        EntryPoint(name="MyDRM", value="pbq_test_ep_plugin", group=registry.ENTRY_POINT_GROUP),
        EntryPoint(name="bad", value="pbq_no_such_ep_module", group=registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    backend = DrmBackend.load("mydrm")
    assert backend.origin == "entry point pbq_test_ep_plugin"
    with pytest.raises(PbqError, match="'bad'.*failed to import"):
        DrmBackend.load("bad")
    assert DrmBackend.load("lsf").name == "lsf"


def test_bioqueue_plugin_with_three_functions_works(tmp_path: Path) -> None:
    """pbq wraps the command so that even a plugin that knows nothing of exit-code files gets
    real exit codes; its "0 = completed" never means success by itself."""
    plugins = tmp_path / "plugins"
    write(plugins, "local.py", LOCAL_PLUGIN)
    backend = DrmBackend.load("local", plugins)
    assert backend.capabilities == set()
    ws = tmp_path / "ws"
    ws.mkdir()
    ids = {
        backend.submit(cmd, f"job{code}", ws, ws / f"{code}.log", Resources()): code
        for cmd, code in (("echo out; true", 0), ("exit 3", 3), ("no-such-cmd-pbq", 127))
    }
    sleeper = backend.submit("sleep 30", "sleeper", ws, ws / "s.log", Resources())
    deadline = time.monotonic() + 20
    while True:
        states = backend.statuses(list(ids))
        if all(s.state is ClusterState.DONE for s in states.values()):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.05)
    assert all(s.exit_code is None for s in states.values())
    for cluster_id, code in ids.items():
        assert backend.exit_code(cluster_id, ws) == code
    assert (ws / "0.log").read_text() == "out\n"
    assert backend.statuses([sleeper])[sleeper].state is ClusterState.RUNNING
    assert backend.stop([sleeper], [sleeper]) == (
        "nothing stopped; this DRM cannot suspend running jobs (1 still running)"
    )
    backend.cancel([sleeper])
    deadline = time.monotonic() + 10
    while backend.statuses([sleeper])[sleeper].state is not ClusterState.DONE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Killed, no exit-code file, and the plugin cannot tell the exit code: unknown, not success.
    assert backend.exit_code(sleeper, ws) is None
