"""Shared fixtures: every test cleans up the processes it caused.

Schedulers are started in a session of their own; jobs run in sessions of their own too.
After each test every process whose command line or environment mentions the test's
temporary directory is killed (SIGKILL, then SIGCONT for stopped ones), so a failing test
never leaves schedulers or jobs behind.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pbqtest import kill_all, processes_mentioning, remove_job_cgroups  # noqa: E402


@pytest.fixture(autouse=True)
def _kill_leftovers(request: pytest.FixtureRequest):
    """Kill whatever a test left running in its temporary directory."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    tmp = request.getfixturevalue("tmp_path")
    yield
    left = processes_mentioning(str(tmp))
    if left:
        kill_all(left)
    remove_job_cgroups(tmp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    strays = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if (
            p.pid != os.getpid()
            and ("pbq-single" in cmd or "pbq.cli" in cmd)
            and "pytest" not in cmd
        ):
            strays.append(f"{p.pid}: {cmd}")
    if strays:
        warnings.warn(
            "schedulers left running after the tests:\n" + "\n".join(strays), stacklevel=1
        )
        print(
            "\nWARNING: schedulers left running after the tests:\n" + "\n".join(strays),
            file=sys.stderr,
        )
