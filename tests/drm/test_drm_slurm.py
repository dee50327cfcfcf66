"""A real Slurm 22.05 (scripts/testbed-slurm, root only) through DrmBackend."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pbq.drm import ClusterState, CommandRunner, DrmBackend, Resources

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("slurm_testbed")]
REPO = Path(__file__).resolve().parents[2]
D = ClusterState.DONE
CPUS = os.cpu_count() or 1  # the blocker takes every CPU of the one node


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path


def show_job(cluster_id: str) -> dict[str, str]:
    out = CommandRunner().run(["scontrol", "-o", "show", "job", cluster_id]).stdout
    return dict(t.split("=", 1) for t in out.split() if "=" in t)


def test_exit_codes_and_resources(ws: Path, until_states: Callable[..., dict]) -> None:
    backend = DrmBackend.load("slurm")
    ids = {
        backend.submit(
            cmd, f"job{code}", ws, ws / f"{code}.log", Resources(mem="100M", walltime="5")
        ): code
        for cmd, code in (("echo out", 0), ("exit 3", 3), ("no-such-cmd-pbq", 127))
    }
    sized = backend.submit(
        "sleep 1", "sized", ws, ws / "sized.log",
        Resources(cpu=2, mem="300M", walltime="1:30:00", queue="debug"),
    )  # fmt: skip
    job = show_job(sized)
    assert job["JobName"] == "pbq-sized"
    assert sized in (backend.find_by_name("sized") or [])
    assert job["NumCPUs"] == "2" and job["CPUs/Task"] == "2"
    assert job["MinMemoryNode"] == "300M"
    assert job["TimeLimit"] == "01:30:00"
    assert job["Partition"] == "debug"
    assert job["WorkDir"] == str(ws) and job["StdOut"] == str(ws / "sized.log")
    assert show_job(next(iter(ids)))["TimeLimit"] == "00:05:00"
    done = until_states(backend, [*ids, sized], {D}, timeout=60)
    for cluster_id, code in ids.items():
        assert backend.exit_code(cluster_id, ws, done[cluster_id].exit_code) == code
    assert backend.exit_code(sized, ws) == 0
    assert (ws / "0.log").read_text() == "out\n"
    usage = backend.usage(sized, ws)
    assert usage is None or (usage.runtime is not None and usage.runtime >= 0.9)
    # Slurm's own answer, without the exit-code file: scontrol ExitCode=3:0.
    failed = next(i for i, c in ids.items() if c == 3)
    Path(str(backend.ticket(failed, ws)["exit_file"])).unlink()  # type: ignore[index]
    assert backend.exit_code(failed, ws) == 3


def test_stop_cont_cancel(ws: Path, until_states: Callable[..., dict]) -> None:
    backend = DrmBackend.load("slurm")
    blocker = backend.submit("sleep 60", "blocker", ws, ws / "b.log", Resources(cpu=CPUS))
    until_states(backend, [blocker], {ClusterState.RUNNING}, timeout=30)
    waiting = backend.submit("true", "waiting", ws, ws / "w.log", Resources(cpu=1))
    assert backend.statuses([waiting])[waiting].state is ClusterState.QUEUED
    assert backend.stop([blocker, waiting], [blocker]) == "held 1, suspended 1"
    states = backend.statuses([blocker, waiting])
    assert states[blocker].state is ClusterState.SUSPENDED
    assert states[waiting].state is ClusterState.HELD
    assert backend.cont([blocker, waiting]) == "released 1, resumed 1"
    states = backend.statuses([blocker, waiting])
    assert states[blocker].state is ClusterState.RUNNING
    assert states[waiting].state is ClusterState.QUEUED
    backend.cancel([blocker, waiting])
    done = until_states(backend, [blocker, waiting], {D}, timeout=30)
    for cluster_id in (blocker, waiting):
        code = backend.exit_code(cluster_id, ws, done[cluster_id].exit_code)
        assert code is not None and code != 0, (cluster_id, done[cluster_id])
    backend.cancel([blocker])  # already finished: fine


def test_vanished_job_judged_by_its_exit_file(
    ws: Path, slurm_testbed: dict[str, str], until_states: Callable[..., dict]
) -> None:
    """A job Slurm has forgotten (here: the controller restarted with an empty state, as after
    MinJobAge) is DONE, and its exit-code file tells how it ended."""
    backend = DrmBackend.load("slurm")
    old = backend.submit("exit 3", "old", ws, ws / "old.log", Resources())
    until_states(backend, [old], {D}, timeout=30)
    script = str(REPO / "scripts" / "testbed-slurm")
    subprocess.run([script, "down"], check=True, capture_output=True, timeout=120)
    subprocess.run([script, "up"], check=True, capture_output=True, timeout=600)
    assert "Invalid job id" in CommandRunner().run(["scontrol", "show", "job", old]).output
    status = backend.statuses([old])[old]
    assert status.state is D and status.exit_code is None
    assert backend.exit_code(old, ws) == 3
    # One squeue for a known and an unknown id together.
    new = backend.submit("true", "new", ws, ws / "new.log", Resources())
    assert new != old
    states = until_states(backend, [new, old], {D}, timeout=30)
    assert states[old].raw == "gone"
    assert backend.exit_code(new, ws, states[new].exit_code) == 0
