"""DrmBackend's own logic, with in-memory plugins: submit, batch status, exit-code precedence,
back-off, stop/cont sentences, cancel errors, re-attaching after a restart."""

from __future__ import annotations

import json
import shlex
import types
from pathlib import Path
from typing import Any

import pytest

from pbq.drm import ClusterState, DrmBackend, DrmError, DrmUnavailable, JobStatus, Resources
from pbq.drm.base import PluginFailed
from pbq.drm.bioqueue import status_from_protocol

Q, H, R, S, D = (
    ClusterState.QUEUED,
    ClusterState.HELD,
    ClusterState.RUNNING,
    ClusterState.SUSPENDED,
    ClusterState.DONE,
)


class Recorder:
    """A plugin module made of functions that record their calls."""

    def __init__(self, **functions: Any) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.module = types.ModuleType("fake_plugin")
        defaults = {
            "submit_job": lambda *a, **k: 77,
            "query_job_status": lambda job_id: 1,
            "cancel_job": lambda job_id: 1,
        }
        for name, function in {**defaults, **functions}.items():
            setattr(self.module, name, self._wrap(name, function))

    def _wrap(self, name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return function(*args, **kwargs)

        wrapper.__signature__ = __import__("inspect").signature(function)  # type: ignore[attr-defined]
        return wrapper

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args, _ in self.calls if n == name]


def backend_of(rec: Recorder) -> DrmBackend:
    return DrmBackend("fake", rec.module, "test")


def test_capabilities() -> None:
    assert backend_of(Recorder()).capabilities == set()
    rec = Recorder(
        hold_job=lambda i: 1, release_job=lambda i: 1, suspend_job=lambda i: 1,
        resume_job=lambda i: 1, exit_code=lambda i: 0, query_jobs_status=lambda ids: {},
    )  # fmt: skip
    assert backend_of(rec).capabilities == {"hold", "suspend", "exit_code", "batch_status"}
    assert backend_of(Recorder(hold_job=lambda i: 1)).capabilities == set()  # needs release too


def bioqueue_submit(protocol, job_id, job_step, cpu=0, mem="", vrt_mem="", queue="", log_file="",
                    wall_time="", workspace=""):  # type: ignore[no-untyped-def]  # fmt: skip
    return 501


def test_submit_wraps_the_command_for_a_plain_bioqueue_plugin(tmp_path: Path) -> None:
    rec = Recorder(submit_job=bioqueue_submit)
    backend = backend_of(rec)
    resources = Resources(cpu=2, mem="1G", vmem="2G", queue="q", walltime="10", pe="smp")
    cluster_id = backend.submit("echo hi > x", "job 1", tmp_path, Path("logs/a.log"), resources)
    assert cluster_id == "501"
    (args,) = rec.called("submit_job")
    # job_id is the attempt's name; sizes and wall time as BioQueue's documentation has them
    assert args[1:] == (
        "pbq-job_1", 0, 2, "1G", "2G", "q", str(tmp_path / "logs" / "a.log"), "00:10:00",
        str(tmp_path),
    )  # fmt: skip
    assert (tmp_path / "logs").is_dir()
    # The protocol is a wrapper script that writes the exit-code file.
    words = shlex.split(args[0])
    assert words[0] == "/bin/sh"
    script = Path(words[1])
    assert script.parent == tmp_path / ".pbq-drm" and script.name.startswith("job_1.")
    assert "echo hi > x" in script.read_text()
    ticket = backend.ticket("501", tmp_path)
    assert ticket is not None
    assert ticket["exit_file"] == str(script.with_suffix(".exit"))
    assert ticket["job_key"] == "job 1" and ticket["drm"] == "fake"
    assert json.loads((tmp_path / ".pbq-drm" / "job-501.json").read_text())["cluster_id"] == "501"


def test_submit_wraps_for_plugins_that_take_exit_file_and_passes_pe(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def submit_job(protocol, job_id, job_step, cpu=0, mem="", vrt_mem="", queue="", log_file="",
                   wall_time="", workspace="", exit_file="", pe=""):  # type: ignore[no-untyped-def]  # fmt: skip
        seen.update(protocol=protocol, exit_file=exit_file, pe=pe)
        return "12.server"

    backend = backend_of(Recorder(submit_job=submit_job))
    assert backend.submit("true", "k", tmp_path, tmp_path / "l", Resources(pe="mpi")) == "12.server"
    # Every plugin runs pbq's wrapper (it claims the attempt's marker); a plugin's own script
    # writing the exit-code file could overwrite what the first run wrote.
    assert seen["protocol"].startswith("/bin/sh ") and seen["exit_file"] == ""
    assert seen["pe"] == "mpi"
    exit_file = backend.ticket("12.server", tmp_path)["exit_file"]  # type: ignore[index]
    assert shlex.split(seen["protocol"])[1] == exit_file.removesuffix(".exit") + ".sh"


@pytest.mark.parametrize("answer", [0, "0", None, "", False])
def test_submit_failure_is_an_error_never_a_fake_id(tmp_path: Path, answer: object) -> None:
    rec = Recorder(submit_job=lambda *a, **k: answer)
    rec.module.last_error = "sbatch: error: invalid partition specified: nope"
    with pytest.raises(DrmError, match="did not accept job k: sbatch: error: invalid partition"):
        backend_of(rec).submit("true", "k", tmp_path, tmp_path / "l", Resources())
    assert not list((tmp_path / ".pbq-drm").glob("job-*.json"))


def test_submit_plugin_exception_and_bad_workspace(tmp_path: Path) -> None:
    def boom(*a: object, **k: object) -> int:
        raise RuntimeError("kaput")

    backend = backend_of(Recorder(submit_job=boom))
    with pytest.raises(PluginFailed, match="submit_job raised RuntimeError: kaput at "):
        backend.submit("true", "k", tmp_path, tmp_path / "l", Resources())
    with pytest.raises(DrmError, match="not a folder"):
        backend.submit("true", "k", tmp_path / "missing", tmp_path / "l", Resources())


def test_batch_status_is_one_call(tmp_path: Path) -> None:
    rec = Recorder(
        query_jobs_status=lambda ids: {
            "1": JobStatus(R),
            2: 2,
            "3": JobStatus(D, 4, "FAILED"),
            "5": "weird",
        }
    )
    backend = backend_of(rec)
    got = backend.statuses(["1", "2", "3", "4", "5", "1"])
    assert rec.called("query_jobs_status") == [(["1", "2", "3", "4", "5"],)]
    assert not rec.called("query_job_status")
    assert got["1"].state is R and got["2"].state is Q and got["3"] == JobStatus(D, 4, "FAILED")
    assert got["4"].state is ClusterState.UNKNOWN and got["5"].state is ClusterState.ERROR
    assert backend.statuses([]) == {}


def test_protocol_numbers() -> None:
    assert status_from_protocol(0) == JobStatus(D, None, "0")  # "completed" is not success
    assert status_from_protocol(1).state is R
    assert status_from_protocol(2).state is Q
    assert status_from_protocol(-3) == JobStatus(ClusterState.ERROR, None, "error -3")
    assert status_from_protocol(7).state is ClusterState.ERROR
    assert status_from_protocol(None) == JobStatus(ClusterState.ERROR, None, "odd value None")
    assert status_from_protocol("2").state is Q


def test_status_failures_raise_unavailable_and_count() -> None:
    def down(ids: list[str]) -> dict[str, JobStatus]:
        raise OSError("connection refused")

    backend = backend_of(Recorder(query_jobs_status=down))
    for n in (1, 2, 3):
        with pytest.raises(
            DrmUnavailable, match="status query failed: .*OSError: connection refused"
        ):
            backend.statuses(["1"])
        assert backend.consecutive_failures == n
    assert backend.backoff(base=5, cap=15) == 15
    rec = Recorder(query_job_status=lambda job_id: 1)
    ok = backend_of(rec)
    ok.statuses(["1", "2"])
    assert len(rec.called("query_job_status")) == 2
    assert ok.consecutive_failures == 0 and ok.backoff() == 0


def test_exit_code_precedence(tmp_path: Path) -> None:
    drm_answer: dict[str, Any] = {"code": 5}

    def exit_code(job_id: str) -> int | None:
        if drm_answer["code"] == "down":
            raise DrmUnavailable("qacct: no answer")
        return drm_answer["code"]

    rec = Recorder(submit_job=bioqueue_submit, exit_code=exit_code)
    backend = backend_of(rec)
    cluster_id = backend.submit("true", "k", tmp_path, tmp_path / "l", Resources())
    exit_file = Path(str(backend.ticket(cluster_id, tmp_path)["exit_file"]))  # type: ignore[index]
    assert backend.exit_code(cluster_id, tmp_path) == 5  # no file yet: the DRM's answer
    assert backend.exit_code(cluster_id, tmp_path, reported=9) == 9  # a DONE status's code
    exit_file.write_text("0\n")
    assert backend.exit_code(cluster_id, tmp_path, reported=9) == 0  # the file wins
    exit_file.unlink()
    drm_answer["code"] = None
    assert backend.exit_code(cluster_id, tmp_path) is None  # unknown, never success
    drm_answer["code"] = "down"
    with pytest.raises(DrmUnavailable):
        backend.exit_code(cluster_id, tmp_path)
    # No ticket, no capability: unknown.
    assert backend_of(Recorder()).exit_code("1", tmp_path) is None


def test_reattach_after_restart(tmp_path: Path) -> None:
    """A new backend (a restarted scheduler) needs only the cluster id and the workspace."""
    backend = backend_of(Recorder(submit_job=bioqueue_submit))
    cluster_id = backend.submit("true", "k", tmp_path, tmp_path / "l", Resources())
    ticket = backend.ticket(cluster_id, tmp_path)
    assert ticket is not None
    Path(str(ticket["exit_file"])).write_text("3\n")
    Path(str(ticket["usage_file"])).write_text(
        "pbq-usage maxrss_kb=10 user_s=1 sys_s=1 elapsed_s=4\n"
    )
    again = backend_of(Recorder())
    assert again.exit_code(cluster_id, tmp_path) == 3
    usage = again.usage(cluster_id, tmp_path)
    assert usage is not None and usage.peak_rss_bytes == 10240 and usage.cpu_seconds == 2
    assert again.usage("999", tmp_path) is None
    again.forget(cluster_id, tmp_path)
    assert list((tmp_path / ".pbq-drm").iterdir()) == []
    assert again.exit_code(cluster_id, tmp_path) is None
    again.forget("999", tmp_path)


def control_plugin(
    states: dict[str, JobStatus], caps: set[str], fail: set[str] = frozenset()
) -> Recorder:  # type: ignore[assignment]
    functions: dict[str, Any] = {"query_jobs_status": lambda ids: {i: states[i] for i in ids}}

    def make(name: str, new_state: ClusterState | None) -> Any:
        def action(job_id: str) -> int:
            if (name, job_id) in fail or name in fail:
                return 0
            if new_state is not None:
                states[job_id] = JobStatus(new_state)
            return 1

        return action

    if "hold" in caps:
        functions.update(hold_job=make("hold_job", H), release_job=make("release_job", Q))
    if "suspend" in caps:
        functions.update(suspend_job=make("suspend_job", S), resume_job=make("resume_job", R))
    functions["cancel_job"] = make("cancel_job", D)
    return Recorder(**functions)


def test_stop_and_cont_with_everything() -> None:
    states = {
        "1": JobStatus(Q),
        "2": JobStatus(Q),
        "3": JobStatus(R),
        "4": JobStatus(D),
        "5": JobStatus(H),
    }
    rec = control_plugin(states, {"hold", "suspend"})
    backend = backend_of(rec)
    # The caller believes 1 is running: the DRM's answer wins.
    assert (
        backend.stop(["1", "2", "4", "5"], ["1", "3"]) == "held 2, suspended 1, 1 already stopped"
    )
    assert rec.called("hold_job") == [("1",), ("2",)] and rec.called("suspend_job") == [("3",)]
    assert backend.cont(["1", "2", "3", "4", "5"]) == "released 3, resumed 1"
    assert backend.stop([]) == "nothing to stop"
    assert backend.cont([]) == "nothing to continue"


def test_stop_without_suspend() -> None:
    states = {
        "1": JobStatus(Q),
        "2": JobStatus(Q),
        "3": JobStatus(Q),
        "4": JobStatus(R),
        "5": JobStatus(R),
    }
    backend = backend_of(control_plugin(states, {"hold"}))
    assert backend.stop(list(states), ["4", "5"]) == (
        "held 3; this DRM cannot suspend running jobs (2 still running)"
    )


def test_stop_without_hold_and_failures() -> None:
    states = {"1": JobStatus(Q), "2": JobStatus(R)}
    backend = backend_of(control_plugin(states, {"suspend"}, fail={"suspend_job"}))
    assert backend.stop(["1", "2"]) == (
        "nothing stopped; this DRM cannot hold queued jobs (1 still queued); "
        "could not stop 1 (2): suspend_job returned 0"
    )


def test_stop_when_status_is_unavailable_uses_the_callers_split() -> None:
    calls: list[tuple[str, str]] = []

    def down(ids: list[str]) -> dict[str, JobStatus]:
        raise DrmUnavailable("no answer")

    rec = Recorder(
        query_jobs_status=down,
        hold_job=lambda i: calls.append(("hold", i)) or 1,
        release_job=lambda i: calls.append(("release", i)) or (1 if i == "1" else 0),
        suspend_job=lambda i: calls.append(("suspend", i)) or 1,
        resume_job=lambda i: calls.append(("resume", i)) or 1,
    )
    backend = backend_of(rec)
    assert backend.stop(["1"], ["2"]) == "held 1, suspended 1"
    assert calls == [("hold", "1"), ("suspend", "2")]
    calls.clear()
    # cont without an answer: release, and resume what was not held.
    assert backend.cont(["1", "2"]) == "released 1, resumed 1"
    assert calls == [("release", "1"), ("release", "2"), ("resume", "2")]


def test_cancel_reports_failures() -> None:
    states = {"1": JobStatus(R), "2": JobStatus(Q)}
    backend = backend_of(control_plugin(states, set(), fail={("cancel_job", "2")}))
    with pytest.raises(DrmError, match=r"could not cancel 1 job\(s\) \(2\)"):
        backend.cancel(["1", "2"])
    backend.cancel(["1"])
    backend.cancel([])
