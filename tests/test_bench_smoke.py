"""Smoke test of the benchmark: ``bench/run --quick`` runs every section, prints the table,
and no job is lost or run twice.  No timing assertions: CI machines are noisy."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTION_TITLES = (
    "1. dispatch overhead",
    "2. jobfile scaling",
    "3. reaction to foreign load",
    "4. idle cost",
    "5. 8 schedulers on ONE 2-core machine",
    "6. stress: exactly once under concurrent appends",
    "7. commands a person types",
    "8. a fleet: many schedulers",
    "9. a huge jobfile",
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_bench_quick_prints_every_section_and_loses_nothing() -> None:
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "run"), "--quick"],
        capture_output=True,
        timeout=390,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, (
        f"bench/run --quick exited {r.returncode}\n{out}\n--- stderr ---\n{err[-4000:]}"
    )
    assert re.search(r"^pbq benchmark: quick", out, re.M), out
    assert re.search(r"load average at start: [\d.]+ [\d.]+ [\d.]+", out), out
    assert re.search(
        r"^measure\s*\| pbq\s*\| other\s*\| ratio\s*\| target\s*\| ok\?$", out, re.M
    ), out
    for title in SECTION_TITLES:
        assert f"-- {title}" in out, f"section {title!r} missing:\n{out}"
    assert "ERROR" not in out, out
    assert re.search(r"^targets met: \d+/\d+$", out, re.M), out
    once = [line for line in out.splitlines() if "exactly once" in line and " | " in line]
    # 8 schedulers, the stress run, the fleet with each lock, and its two runs of what limits it
    assert len(once) == 6, out
    for line in once:
        assert "lost = 0, duplicated = 0" in line, line
        assert "unexpected" not in line and "lost = 1" not in line, line
    stress = next(
        line for line in once if "|" in line and line.count("lost = 0, duplicated = 0") == 2
    )
    assert stress  # the stress row reports the 8-scheduler and the 1-scheduler run
