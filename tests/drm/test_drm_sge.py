"""A real Son of Grid Engine 8.1.9 (scripts/testbed-sge, root only) through DrmBackend."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pbq.drm import ClusterState, CommandRunner, DrmBackend, Resources

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("sge_testbed")]
D = ClusterState.DONE
CPUS = os.cpu_count() or 1  # the blocker takes every CPU of the one node


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path


def test_exit_codes_and_resources(ws: Path, until_states: Callable[..., dict]) -> None:
    backend = DrmBackend.load("gridengine")
    sized = backend.submit(
        "sleep 1", "sized", ws, ws / "sized.log",
        Resources(cpu=2, pe="smp", mem="100M", vmem="2G", walltime="1:00:00", queue="all.q"),
    )  # fmt: skip
    out = CommandRunner().run(["qstat", "-j", sized]).stdout
    assert "job_name:                   pbq-sized" in out
    assert "h_vmem=1024M" in out  # per slot: 2G over 2 slots
    assert "mem_free=100M" in out and "h_rt=3600" in out
    assert "parallel environment:  smp range: 2" in out
    assert "hard_queue_list:            all.q" in out
    ids = {
        backend.submit(cmd, f"job{code}", ws, ws / f"{code}.log", Resources()): code
        for cmd, code in (("echo out", 0), ("exit 3", 3), ("no-such-cmd-pbq", 127))
    }
    done = until_states(backend, [*ids, sized], {D}, timeout=60)
    for cluster_id, code in ids.items():
        # Finished jobs leave qstat at once: each is judged by its exit-code file.
        assert done[cluster_id].raw == "gone"
        assert backend.exit_code(cluster_id, ws) == code
    assert backend.exit_code(sized, ws) == 0
    assert (ws / "0.log").read_text() == "out\n"
    # Grid Engine's own answer, without the file: qacct exit_status.
    failed = next(i for i, c in ids.items() if c == 3)
    Path(str(backend.ticket(failed, ws)["exit_file"])).unlink()  # type: ignore[index]
    assert backend.exit_code(failed, ws) == 3


def test_stop_cont_cancel_walltime(ws: Path, until_states: Callable[..., dict]) -> None:
    backend = DrmBackend.load("sge")
    blocker = backend.submit("sleep 60", "blocker", ws, ws / "b.log", Resources(cpu=CPUS, pe="smp"))
    until_states(backend, [blocker], {ClusterState.RUNNING}, timeout=30)
    waiting = backend.submit("true", "waiting", ws, ws / "w.log", Resources())
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
    until_states(backend, [blocker, waiting], {D}, timeout=30)
    assert backend.exit_code(blocker, ws) == 137  # qacct: failed 100, exit_status 137
    assert backend.exit_code(waiting, ws) in (None, 143)  # never ran: no record, never success
    backend.cancel([blocker])  # already gone: fine
    slow = backend.submit("sleep 60", "slow", ws, ws / "s.log", Resources(walltime="2s"))
    until_states(backend, [slow], {D}, timeout=40)
    assert backend.exit_code(slow, ws) == 137  # h_rt exceeded
