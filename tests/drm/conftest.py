"""Fixtures of the DRM tests: polling with deadlines, the fake DRM commands, real testbeds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pbq.drm import ClusterState, DrmBackend, JobStatus

REPO = Path(__file__).resolve().parents[2]
FAKEDRM = REPO / "tests" / "fakedrm"
T = TypeVar("T")


def wait_for(
    check: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> T:
    """Call CHECK until it returns something true; fail with its last answer at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: last {value!r}")
        time.sleep(interval)


def wait_states(
    backend: DrmBackend,
    ids: list[str],
    states: set[ClusterState],
    timeout: float = 20.0,
    seen: dict[str, list[str]] | None = None,
) -> dict[str, JobStatus]:
    """Poll (one statuses() call per round) until every id is in one of STATES. SEEN collects
    the raw DRM states each id went through."""
    last: dict[str, JobStatus] = {}

    def check() -> bool:
        last.update(backend.statuses(ids))
        if seen is not None:
            for i, status in last.items():
                trail = seen.setdefault(i, [])
                if not trail or trail[-1] != status.raw:
                    trail.append(status.raw)
        return all(last[i].state in states for i in ids)

    wait_for(check, timeout, 0.1, f"{ids} to reach {sorted(s.name for s in states)}")
    return dict(last)


@pytest.fixture
def poll() -> Callable[..., object]:
    """``poll(check, timeout=20, interval=0.1, what="")``: see :func:`wait_for`."""
    return wait_for


@pytest.fixture
def until_states() -> Callable[..., dict[str, JobStatus]]:
    """``until_states(backend, ids, states, timeout=20, seen=None)``: see :func:`wait_states`."""
    return wait_states


@pytest.fixture
def fakedrm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake Torque/HTCondor/LSF commands first on PATH, with their own state file."""
    state = tmp_path / "fakedrm-state.json"
    monkeypatch.setenv("PATH", f"{FAKEDRM}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PBQ_FAKEDRM_STATE", str(state))
    monkeypatch.setenv("PBQ_FAKEDRM_QUEUE_DELAY", "0.3")
    monkeypatch.setenv("PBQ_FAKEDRM_EXIT_DELAY", "0.6")
    monkeypatch.setenv("PBQ_FAKEDRM_KEEP", "1.5")
    yield state
    subprocess.run(
        [sys.executable, str(FAKEDRM / "_fakedrm.py"), "--kill-all"],
        env={**os.environ, "PBQ_FAKEDRM_STATE": str(state)},
        check=False,
        timeout=30,
    )


def _testbed(name: str, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Bring scripts/testbed-NAME up for the session (and down after it, unless it was already
    up). Skips when not root, or when it cannot start outside CI; fails in CI."""
    script = REPO / "scripts" / f"testbed-{name}"
    if os.geteuid() != 0:
        pytest.skip(f"the {name} testbed needs root (it installs packages and starts daemons)")
    full_env = {**os.environ, **env}
    was_up = (
        subprocess.run([str(script), "status"], env=full_env, capture_output=True).returncode == 0
    )
    if not was_up:
        result = subprocess.run(
            [str(script), "up"], env=full_env, capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            message = f"testbed-{name} up failed: {result.stderr.strip() or result.stdout.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not was_up:
            subprocess.run([str(script), "down"], env=full_env, capture_output=True, timeout=120)


def testbed_dir(name: str) -> str:
    """The state dir scripts/testbed-NAME uses (same default as the script)."""
    return os.environ.get(f"PBQ_TESTBED_{name.upper()}_DIR") or os.path.join(
        os.environ.get("TMPDIR", "/tmp"), f"pbq-testbed-{name}"
    )


@pytest.fixture(scope="session")
def slurm_testbed() -> Iterator[dict[str, str]]:
    yield from _testbed("slurm", {"SLURM_CONF": os.path.join(testbed_dir("slurm"), "slurm.conf")})


@pytest.fixture(scope="session")
def sge_testbed() -> Iterator[dict[str, str]]:
    yield from _testbed("sge", {})
