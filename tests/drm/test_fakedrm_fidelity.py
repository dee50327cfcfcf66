"""The fake DRM commands behave like the real tools where pbq (or a plugin) could tell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import wait_for  # noqa: E402


def run(
    *argv: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, cwd=cwd,
                          timeout=30)  # fmt: skip


def test_qsub_copies_the_script_at_submission(tmp_path: Path, fakedrm: Path) -> None:
    # Torque keeps its own copy: BioQueue deletes the script right after qsub.
    out = tmp_path / "out"
    script = tmp_path / "job.pbs"
    script.write_text(f"#!/bin/sh\necho ran > {out}\n")
    r = run("qsub", str(script), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script.unlink()
    wait_for(lambda: out.exists() and out.read_text() == "ran\n", what="the copy ran")


def test_condor_q_prints_the_total_line(tmp_path: Path, fakedrm: Path) -> None:
    r = run("condor_q")
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1].startswith("Total for query: 0 jobs; 0 completed")


def test_condor_submit_makes_the_executable_runnable(tmp_path: Path, fakedrm: Path) -> None:
    exe = tmp_path / "job.sh"
    out = tmp_path / "out"
    exe.write_text(f"#!/bin/sh\necho ran > {out}\n")
    os.chmod(exe, 0o644)
    (tmp_path / "job.sub").write_text(f"executable = {exe}\ninitialdir = {tmp_path}\nqueue 1\n")
    r = run("condor_submit", str(tmp_path / "job.sub"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: out.exists() and out.read_text() == "ran\n", what="the job ran")
    name = run("condor_q", "-constraint", 'JobBatchName == "nobody"', "-af", "ClusterId")
    assert name.returncode == 0 and name.stdout == ""


def test_bsub_reads_a_script_from_standard_input(tmp_path: Path, fakedrm: Path) -> None:
    out = tmp_path / "out"
    r = run("bsub", stdin=f"#!/bin/sh\n#BSUB -J fromstdin\necho ran > {out}\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "is submitted to" in r.stdout
    wait_for(lambda: out.exists() and out.read_text() == "ran\n", what="the job ran")
    named = run("bjobs", "-a", "-noheader", "-J", "fromstdin", "-o", "jobid")
    assert named.stdout.split() == [r.stdout.split("<")[1].split(">")[0]]
    assert run("bjobs", "-J", "nobody").returncode == 255
