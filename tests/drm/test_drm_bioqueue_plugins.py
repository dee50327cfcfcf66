"""BioQueue-protocol plugins that fail as BioQueue's own files do under Python 3, run through a
real pbq-single against the fake Torque commands (tests/fakedrm).

Each plugin here is written like BioQueue's ``TorquePBS.py``: it writes the protocol into a
script, runs ``qsub`` on it, deletes the script, and reads ``qstat``; then it breaks the way the
real ones do (raising before or after ``qsub`` ran, returning qsub's error text as the id,
returning -3 while qstat is briefly unreachable, None for a held job, IndexError for one job).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pbqtest import (  # noqa: E402
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    run_cmd,
    start_scheduler,
    status,
    text_of,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

BASE = '''
import os, re, subprocess, tempfile

STATE = {state!r}

def note(what):
    with open(os.path.join(STATE, what), "a") as f:
        f.write("x\\n")

def count(what):
    try:
        with open(os.path.join(STATE, what)) as f:
            return len(f.read().splitlines())
    except OSError:
        return 0

def qsub(protocol, job_id, workspace):
    fd, path = tempfile.mkstemp(suffix=".pbs", dir=workspace)
    with os.fdopen(fd, "w") as f:
        f.write("#!/bin/sh\\n#PBS -N %s\\n%s\\n" % (job_id[:15], protocol))
    out = subprocess.run(["qsub", path], capture_output=True, cwd=workspace)
    os.remove(path)  # BioQueue deletes the script right after qsub
    return out

def state_of(job_id):
    out = subprocess.run(["qstat", "-f", str(job_id)], capture_output=True, text=True)
    m = re.search(r"job_state = (\\S)", out.stdout)
    return m.group(1) if m else None

def query_job_status(job_id):
    st = state_of(job_id)
    return {{"Q": 2, "H": 2, "R": 1, "S": 1, "E": 1, "C": 0, None: 0}}[st]

def cancel_job(job_id):
    return 1 if subprocess.run(["qdel", str(job_id)]).returncode == 0 else 0
'''

PLUGINS = {
    # TypeError before anything was submitted (a Python 3 str/bytes mix-up in the arguments)
    "raisesbefore": '''
def submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace=''):
    note("submit")
    print("building the job script for", job_id)
    raise TypeError("can't concat str to bytes")
''',
    # qsub ran, then the answer (bytes) is parsed as str
    "raisesafter": '''
def submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace=''):
    note("submit")
    out = qsub(protocol, job_id, workspace)
    return out.stdout.split(".")[0]  # TypeError: bytes.split() wants bytes
''',
    # qsub refused: its error text comes back as the "id"
    "errortext": '''
def submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace=''):
    note("submit")
    return "qsub: submit error (Illegal attribute or resource value Resource_List.walltime)"
''',
    # qstat briefly unreachable: -3 for the first two polls of each job
    "minusthree": '''
def submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace=''):
    note("submit")
    return qsub(protocol, job_id, workspace).stdout.decode().strip()

_asked = {{}}

def query_job_status(job_id):
    _asked[job_id] = _asked.get(job_id, 0) + 1
    if _asked[job_id] <= 2:
        return -3
    st = state_of(job_id)
    return {{"Q": 2, "H": 2, "R": 1, "S": 1, "E": 1, "C": 0, None: 0}}[st]
''',
    # a held job reads None; hold/release through qhold/qrls
    "heldnone": '''
def submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace=''):
    return qsub(protocol, job_id, workspace).stdout.decode().strip()

def query_job_status(job_id):
    st = state_of(job_id)
    if st == "H":
        return None
    return {{"Q": 2, "R": 1, "S": 1, "E": 1, "C": 0, None: 0}}[st]

def hold_job(job_id):
    return 1 if subprocess.run(["qhold", str(job_id)]).returncode == 0 else 0

def release_job(job_id):
    return 1 if subprocess.run(["qrls", str(job_id)]).returncode == 0 else 0
''',
    # bjobs-style parsing: IndexError for the first job once it is gone, answers for the rest
    "indexerror": '''
def submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace=''):
    return qsub(protocol, job_id, workspace).stdout.decode().strip()

_first = []

def query_job_status(job_id):
    if not _first:
        _first.append(str(job_id))
    st = state_of(job_id)
    if str(job_id) == _first[0] and st in (None, "C", "E"):
        return [][0]  # IndexError: the job's line is gone from the listing
    return {{"Q": 2, "H": 2, "R": 1, "S": 1, "E": 1, "C": 0, None: 0}}[st]
''',
}


def setup(tmp_path: Path, plugin: str, jobs: list[str], extra: str = "") -> tuple[Path, Path]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    state = tmp_path / "pluginstate"
    state.mkdir()
    (plugins / f"{plugin}.py").write_text(BASE.format(state=str(state)) + PLUGINS[plugin].format())
    # BioQueue's abstract base module is skipped, not reported as a broken plugin
    (plugins / "ClusterBase.py").write_text("import ui.tools\n")
    hf = hostfile(tmp_path, f"head linux 4 4 0 drm={plugin}\n")
    jf = jobfile(tmp_path, jobs)
    (tmp_path / "pbq.toml").write_text(textwrap.dedent(f"""
        [scheduler]
        interval = 0.2
        [cluster]
        poll_interval = 0.5
        plugin_dir = "{plugins}"
        {extra}
        """))
    os.chmod(tmp_path / "pbq.toml", 0o644)
    return hf, jf


def calls(tmp_path: Path, what: str = "submit") -> int:
    path = tmp_path / "pluginstate" / what
    return len(path.read_text().splitlines()) if path.exists() else 0


def joblog(jf: Path) -> dict[str, list[str]]:
    rows = lines_of(hostfile_path(jf, "head", "joblog"))[1:]
    return {r.split("\t")[8]: r.split("\t") for r in rows}


def test_plugin_raising_before_submit_fails_the_line_after_submit_tries(
    tmp_path: Path, fakedrm: Path
) -> None:
    hf, jf = setup(tmp_path, "raisesbefore", ["true", "echo two"])
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head")
    assert wait_exit(p, 60) == 0, (tmp_path / "sched-head.out").read_text()
    assert calls(tmp_path) <= 2 * 3  # submit_tries (3) calls per line at most
    assert sorted(lines_of(hostfile_path(jf, "head", "error"))) == ["echo two", "true"]
    log = text_of(hostfile_path(jf, "head", "log"))
    assert "TypeError: can't concat str to bytes" in log
    assert "raisesbefore.py" in log and "in submit_job" in log  # the last frame
    assert "building the job script for" in log  # what it printed went to the log
    assert "building the job script" not in (tmp_path / "sched-head.out").read_text()


def test_plugin_raising_after_qsub_runs_the_command_once(tmp_path: Path, fakedrm: Path) -> None:
    rec = tmp_path / "rec"
    hf, jf = setup(tmp_path, "raisesafter", [f"echo ran >> {rec}; exit 4"])
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head")
    assert wait_exit(p, 90) == 0, (tmp_path / "sched-head.out").read_text()
    assert lines_of(rec) == ["ran"]
    assert {cmd: r[6] for cmd, r in joblog(jf).items()} == {f"echo ran >> {rec}; exit 4": "4"}
    assert "found running by its claim marker" in text_of(hostfile_path(jf, "head", "log"))


def test_error_text_is_never_a_cluster_id(tmp_path: Path, fakedrm: Path) -> None:
    hf, jf = setup(tmp_path, "errortext", ["true"], extra="submit_tries = 2")
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head")
    assert wait_exit(p, 60) == 0
    assert calls(tmp_path) == 2
    assert lines_of(hostfile_path(jf, "head", "error")) == ["true"]
    assert all(not r[1].startswith("head:qsub") for r in joblog(jf).values())
    log = text_of(hostfile_path(jf, "head", "log"))
    assert "which is not a cluster job id" in log and "submitted head" not in log


def test_minus_three_for_two_polls_then_the_real_exit_status(
    tmp_path: Path, fakedrm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBQ_FAKEDRM_QUEUE_DELAY", "1.5")  # still queued while -3 is read
    rec = tmp_path / "rec"
    hf, jf = setup(tmp_path, "minusthree", [f"echo ran >> {rec}; exit 3", "true"])
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head")
    assert wait_exit(p, 90) == 0, (tmp_path / "sched-head.out").read_text()
    assert {cmd: r[6] for cmd, r in joblog(jf).items()} == {
        f"echo ran >> {rec}; exit 3": "3", "true": "0"}
    assert lines_of(rec) == ["ran"] and calls(tmp_path) == 2


def test_held_job_reading_none_is_released_by_cont(
    tmp_path: Path, fakedrm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBQ_FAKEDRM_QUEUE_DELAY", "3")  # queued long enough to be held
    rec = tmp_path / "rec"
    hf, jf = setup(tmp_path, "heldnone", [f"echo ran >> {rec}"])
    p = start_scheduler(hf, jf, host="head")
    wait_for(lambda: status(jf, "head").get("running") == 1, timeout=30, what="submitted")
    r = run_cmd("pbq", "control", hf, jf, "stop", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: "held 1" in text_of(hostfile_path(jf, "head", "log")), what="held")
    r = run_cmd("pbq", "control", hf, jf, "cont", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: "released 1" in text_of(hostfile_path(jf, "head", "log")), what="released")
    wait_for(lambda: len(joblog(jf)) == 1, timeout=60, what="the job ran")
    assert [r[6] for r in joblog(jf).values()] == ["0"] and lines_of(rec) == ["ran"]
    run_cmd("pbq", "control", hf, jf, "quit", timeout=60)
    wait_exit(p, 60)


def test_one_jobs_index_error_does_not_stall_the_others(tmp_path: Path, fakedrm: Path) -> None:
    hf, jf = setup(tmp_path, "indexerror", ["sh -c 'exit 6'", "sleep 1", "true"])
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head")
    assert wait_exit(p, 90) == 0, (tmp_path / "sched-head.out").read_text()
    # the first job is judged by its exit-code file, the others by their statuses
    assert {cmd: r[6] for cmd, r in joblog(jf).items()} == {
        "sh -c 'exit 6'": "6", "sleep 1": "0", "true": "0"}
    assert "does not answer" not in text_of(hostfile_path(jf, "head", "log"))
