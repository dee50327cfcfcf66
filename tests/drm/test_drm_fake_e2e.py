"""End to end through the built-in Torque, HTCondor and LSF plugins and the fake commands of
tests/fakedrm (which really run the jobs): exit codes, Torque's E state, vanished jobs judged
by their exit-code file, hold/release, suspend/resume, cancel, walltime, an unreachable DRM."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pbq.drm import ClusterState, CommandRunner, DrmBackend, DrmError, DrmUnavailable, Resources

SYSTEMS = ["torque", "condor", "lsf"]
D = ClusterState.DONE


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "work space"
    path.mkdir()
    return path


@pytest.mark.parametrize("system", SYSTEMS)
def test_exit_codes_and_vanished_jobs(
    system: str,
    fakedrm: Path,
    ws: Path,
    until_states: Callable[..., dict],
    poll: Callable[..., object],
) -> None:
    backend = DrmBackend.load(system)
    resources = Resources(cpu=2, mem="200M", vmem="1G", walltime="10")
    ids = {
        backend.submit(cmd, f"job{code}", ws, ws / f"{code}.log", resources): code
        for cmd, code in (
            ("echo out; sleep 0.3", 0),
            ("sleep 0.3; exit 3", 3),
            ("no-such-cmd-pbq", 127),
        )
    }
    seen: dict[str, list[str]] = {}
    done = until_states(backend, list(ids), {D}, timeout=20, seen=seen)
    for cluster_id, code in ids.items():
        # The DRM's own report and the exit-code file agree.
        assert done[cluster_id].exit_code in (code, None), (cluster_id, done[cluster_id])
        assert backend.exit_code(cluster_id, ws, done[cluster_id].exit_code) == code
        assert backend.module.exit_code(cluster_id) in (code, None)
    assert (ws / "0.log").read_text() == "out\n"
    if system == "torque":
        # E (exiting) was seen, and was not DONE: the job went on to C with its real code.
        assert any("E" in trail for trail in seen.values()), seen
        assert all(trail[-1] == "C" for trail in seen.values()), seen
    # Later the jobs leave the queue: the exit-code files still judge them.
    gone = {}

    def all_gone() -> bool:
        gone.update(backend.statuses(list(ids)))
        return all(s.raw == "gone" for s in gone.values())

    poll(all_gone, 10, what="the jobs to leave the queue")
    for cluster_id, code in ids.items():
        assert gone[cluster_id].exit_code is None
        assert backend.exit_code(cluster_id, ws) == code
    # Without its file, a vanished job is unknown where the DRM forgets it (Torque, LSF), and
    # HTCondor's history still knows it: never a made-up success.
    failed = next(i for i, c in ids.items() if c == 3)
    Path(str(backend.ticket(failed, ws)["exit_file"])).unlink()  # type: ignore[index]
    assert backend.exit_code(failed, ws) == (3 if system == "condor" else None)


def test_torque_resources_reach_the_drm(fakedrm: Path, ws: Path) -> None:
    backend = DrmBackend.load("pbs")
    cluster_id = backend.submit(
        "sleep 5",
        "res",
        ws,
        ws / "r.log",
        Resources(cpu=3, mem="300M", vmem="2G", walltime="2:00:00", queue="long"),
    )
    out = CommandRunner().run(["qstat", "-f", cluster_id]).stdout
    assert "Resource_List.nodes = 1:ppn=3" in out
    assert "Resource_List.mem = 300mb" in out
    assert "Resource_List.vmem = 2048mb" in out
    assert "Resource_List.walltime = 02:00:00" in out
    assert "queue = long" in out
    backend.cancel([cluster_id])


def test_condor_resources_reach_the_drm(fakedrm: Path, ws: Path) -> None:
    backend = DrmBackend.load("htcondor")
    cluster_id = backend.submit("sleep 5", "res", ws, ws / "r.log", Resources(cpu=3, mem="1.5G"))
    out = (
        CommandRunner().run(["condor_q", cluster_id, "-af", "RequestCpus", "RequestMemory"]).stdout
    )
    assert out.split() == ["3", "1536"]
    backend.cancel([cluster_id])


@pytest.mark.parametrize("system", SYSTEMS)
def test_stop_cont_cancel(
    system: str,
    fakedrm: Path,
    ws: Path,
    monkeypatch: pytest.MonkeyPatch,
    until_states: Callable[..., dict],
    poll: Callable[..., object],
) -> None:
    backend = DrmBackend.load(system)
    running = backend.submit("sleep 30", "running", ws, ws / "r.log", Resources())
    until_states(backend, [running], {ClusterState.RUNNING})
    monkeypatch.setenv("PBQ_FAKEDRM_QUEUE_DELAY", "2.0")
    start_time = time.monotonic() + 2.0
    queued = backend.submit("echo ran > ran.txt", "queued", ws, ws / "q.log", Resources())
    assert backend.statuses([queued])[queued].state is ClusterState.QUEUED
    assert backend.stop([queued, running], [running]) == "held 1, suspended 1"
    states = backend.statuses([queued, running])
    assert states[queued].state is ClusterState.HELD
    assert states[running].state is ClusterState.SUSPENDED
    # Held past its start time, it does not start.
    while time.monotonic() < start_time + 0.5:
        assert backend.statuses([queued])[queued].state is ClusterState.HELD
        time.sleep(0.1)
    assert not (ws / "ran.txt").exists()
    assert backend.stop([queued, running]) == "2 already stopped"
    assert backend.cont([queued, running]) == "released 1, resumed 1"
    done = until_states(backend, [queued], {D}, timeout=15)
    assert backend.exit_code(queued, ws, done[queued].exit_code) == 0
    assert (ws / "ran.txt").read_text() == "ran\n"
    assert backend.statuses([running])[running].state is ClusterState.RUNNING
    # Cancel: a killed job is a failure, not a success.
    waiting = backend.submit("true", "waiting", ws, ws / "w.log", Resources())
    backend.cancel([running, waiting])
    done = until_states(backend, [running, waiting], {D}, timeout=15)
    for cluster_id in (running, waiting):
        code = backend.exit_code(cluster_id, ws, done[cluster_id].exit_code)
        assert code is not None and code != 0, (cluster_id, done[cluster_id], code)
    assert backend.exit_code(running, ws, done[running].exit_code) == 143
    poll(lambda: all(s.raw == "gone" for s in backend.statuses([running]).values()), 10)
    backend.cancel([running])  # already gone: fine


@pytest.mark.parametrize("system", ["torque", "condor"])
def test_walltime_kill_is_a_failure(
    system: str, fakedrm: Path, ws: Path, until_states: Callable[..., dict]
) -> None:
    backend = DrmBackend.load(system)
    cluster_id = backend.submit("sleep 30", "slow", ws, ws / "s.log", Resources(walltime="1s"))
    done = until_states(backend, [cluster_id], {D}, timeout=15)
    assert backend.exit_code(cluster_id, ws, done[cluster_id].exit_code) == 143


@pytest.mark.parametrize("system", SYSTEMS)
def test_unreachable_drm(
    system: str, fakedrm: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = DrmBackend.load(system)
    cluster_id = backend.submit("sleep 5", "k", ws, ws / "l", Resources())
    monkeypatch.setenv("PBQ_FAKEDRM_DOWN", "1")
    before = backend.consecutive_failures
    with pytest.raises(DrmUnavailable):
        backend.statuses([cluster_id])
    with pytest.raises(DrmUnavailable):
        backend.statuses([cluster_id])
    assert backend.consecutive_failures >= before + 2 and backend.backoff() > 0
    with pytest.raises(DrmError):
        backend.submit("true", "k2", ws, ws / "l", Resources())
    assert "cannot" in backend.stop([cluster_id], [cluster_id]) or "could not" in backend.stop(
        [cluster_id], [cluster_id]
    )
    monkeypatch.delenv("PBQ_FAKEDRM_DOWN")
    assert backend.statuses([cluster_id])[cluster_id].state is not D
    assert backend.consecutive_failures == 0 and backend.backoff() == 0
    backend.cancel([cluster_id])


def test_bioqueue_protocol_of_a_builtin_plugin(
    fakedrm: Path, ws: Path, poll: Callable[..., object]
) -> None:
    module = DrmBackend.load("lsf").module
    ok = module.submit_job("true", 7, 0, workspace=str(ws), log_file=str(ws / "ok.log"))
    bad = module.submit_job("exit 4", 7, 1, cpu=1, mem="100M", workspace=str(ws))
    assert isinstance(ok, int) and ok > 0 and isinstance(bad, int) and bad > 0
    assert module.query_job_status(ok) in (0, 1, 2)
    poll(lambda: module.query_job_status(ok) == 0, 15, what="exit 0 reported as 0")
    poll(lambda: module.query_job_status(bad) == -4, 15, what="exit 4 reported as -4")
    assert module.exit_code(bad) == 4
    assert module.submit_job("true", 7, 2, mem="lots", workspace=str(ws)) == 0
    assert "bad memory size" in module.last_error
