"""Cluster hosts end to end: a real pbq-single submitting to a DRM.

Slurm and Grid Engine are real (brought up by scripts/testbed-*); Torque/PBS, HTCondor
and LSF are the fake commands of tests/fakedrm, which behave like the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pbqtest import (
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    pending_lines,  # noqa: E402
    run_cmd,
    start_scheduler,
    status,
    text_of,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

FAST = """
[scheduler]
interval = 0.2
[cluster]
poll_interval = 0.5
"""


def setup(
    tmp_path: Path, drm: str, jobs: list[str], max_jobs: int = 4, fields: str = ""
) -> tuple[Path, Path]:
    hf = hostfile(tmp_path, f"head linux {max_jobs} {max_jobs} 0 drm={drm} {fields}\n")
    jf = jobfile(tmp_path, jobs)
    (tmp_path / "pbq.toml").write_text(FAST)
    os.chmod(tmp_path / "pbq.toml", 0o644)
    return hf, jf


def joblog(jf: Path) -> dict[str, list[str]]:
    return {
        r.split("\t")[8]: r.split("\t") for r in lines_of(hostfile_path(jf, "head", "joblog"))[1:]
    }


def check_exit_codes(
    tmp_path: Path, drm: str, env: dict[str, str] | None = None, plugins: Path | None = None
) -> None:
    hf, jf = setup(tmp_path, drm, ["true", "sh -c 'exit 3'", "no-such-command-pbq"])
    if plugins is not None:
        (tmp_path / "pbq.toml").write_text(FAST + f'plugin_dir = "{plugins}"\n')
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head", env=env)
    assert wait_exit(p, 180) == 0, (tmp_path / "sched-head.out").read_text()
    rows = joblog(jf)
    assert {cmd: r[6] for cmd, r in rows.items()} == {
        "true": "0",
        "sh -c 'exit 3'": "3",
        "no-such-command-pbq": "127",
    }
    assert all(r[1].startswith("head:") for r in rows.values())  # HOST:CLUSTERID
    assert sorted(lines_of(hostfile_path(jf, "head", "error"))) == [
        "no-such-command-pbq",
        "sh -c 'exit 3'",
    ]
    log = text_of(hostfile_path(jf, "head", "log"))
    assert log.count("submitted head.") == 3


@pytest.mark.parametrize("drm", ["torquepbs", "htcondor", "lsf"])
def test_fake_drm_exit_codes_through_pbq(tmp_path: Path, fakedrm: Path, drm: str) -> None:
    check_exit_codes(tmp_path, drm)


def test_fake_torque_vanished_job_judged_by_exit_file(
    tmp_path: Path, fakedrm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Finished jobs leave qstat almost at once, long before the next poll.
    monkeypatch.setenv("PBQ_FAKEDRM_KEEP", "0")
    monkeypatch.setenv("PBQ_FAKEDRM_EXIT_DELAY", "0")
    hf, jf = setup(tmp_path, "torquepbs", ["sh -c 'exit 5'", "true"])
    (tmp_path / "pbq.toml").write_text(FAST.replace("poll_interval = 0.5", "poll_interval = 3"))
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head")
    assert wait_exit(p, 60) == 0
    assert {cmd: r[6] for cmd, r in joblog(jf).items()} == {"sh -c 'exit 5'": "5", "true": "0"}


def test_fake_torque_outage_loses_and_duplicates_nothing(
    tmp_path: Path, fakedrm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBQ_FAKEDRM_DOWN", "1")
    rec = tmp_path / "rec"
    hf, jf = setup(tmp_path, "torquepbs", [f"echo {i} >> {rec}" for i in range(4)])
    p = start_scheduler(hf, jf, host="head")
    wait_for(
        lambda: "did not answer" in text_of(hostfile_path(jf, "head", "log")),
        what="submission refused while down",
    )
    assert lines_of(hostfile_path(jf, "head", "error")) == []
    monkeypatch.delenv("PBQ_FAKEDRM_DOWN")  # the DRM comes back for the restarted scheduler
    run_cmd("pbq", "control", hf, jf, "term", timeout=60)
    wait_exit(p, 60)
    # restart with the DRM back: every line runs exactly once
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head")
    assert wait_exit(p, 120) == 0
    assert sorted(lines_of(rec)) == [str(i) for i in range(4)]


def cancel_first_and_drain(hf: Path, jf: Path, p: subprocess.Popen,
                           env: dict[str, str] | None = None) -> None:
    """`pbq cancel` job 1 of host head; the scheduler then drains the rest and exits."""
    r = run_cmd("pbq", "cancel", hf, jf, "1", env=env, timeout=120)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert r.stdout.decode().startswith("1: cancelled on head")
    assert wait_exit(p, 120) == 0


def kill_if_running(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        wait_exit(p, 30)


@pytest.mark.parametrize("drm", ["torquepbs", "htcondor", "lsf"])
def test_pbq_cancel_on_a_cluster_host_cancels_in_the_drm(
    tmp_path: Path, fakedrm: Path, drm: str
) -> None:
    hf, jf = setup(tmp_path, drm, ["sleep 120", "true"], max_jobs=2)
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head")
    try:
        wait_for(lambda: text_of(hostfile_path(jf, "head", "log")).count("submitted head.") == 2,
                 60, "both jobs submitted")
        cancel_first_and_drain(hf, jf, p)
    finally:
        kill_if_running(p)
    rows = joblog(jf)
    assert rows["true"][6] == "0" and rows["sleep 120"][6] != "0"
    assert lines_of(hostfile_path(jf, "head", "error")) == []
    log = text_of(hostfile_path(jf, "head", "log"))
    assert "job head.1 cancelled" in log and "(cancelled" in log


# ---------------------------------------------------------------- real Slurm and SGE


def squeue(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        ["squeue", "-h", *args], capture_output=True, text=True, env=env, timeout=30
    ).stdout


@pytest.mark.root
def test_slurm_through_pbq(tmp_path: Path, slurm_testbed: dict[str, str]) -> None:
    env = {**os.environ, **slurm_testbed}
    check_exit_codes(tmp_path, "slurm", env)


@pytest.mark.root
def test_slurm_resources_stop_cont_kill_restart_term(
    tmp_path: Path, slurm_testbed: dict[str, str]
) -> None:
    env = {**os.environ, **slurm_testbed}
    flag = tmp_path / "go"
    jobs = [f"sh -c 'while [ ! -e {flag} ]; do sleep 0.2; done'"] * 2 + ["sleep 300"] * 2
    hf, jf = setup(tmp_path, "slurm", jobs, fields="queue=debug cpu=1 mem=150M walltime=00:20:00")
    p = start_scheduler(hf, jf, host="head", env=env)
    wait_for(lambda: status(jf, "head").get("running") == 4, timeout=60, what="4 jobs in Slurm")
    state = json.loads(hostfile_path(jf, "head", "state").read_text())
    ids = [j["cluster_id"] for j in state["jobs"]]
    show = subprocess.run(
        ["scontrol", "-o", "show", "job", ids[0]], capture_output=True, text=True, env=env
    ).stdout
    assert (
        "TimeLimit=00:20:00" in show and "MinMemoryNode=150M" in show and "Partition=debug" in show
    )
    assert "NumCPUs=1" in show
    wait_for(
        lambda: "RUNNING" in squeue(env, "-j", ",".join(ids), "-o", "%T"),
        timeout=60,
        what="a job running",
    )
    # stop: pending jobs held, running ones suspended
    r = run_cmd("pbq", "control", hf, jf, "stop", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(
        lambda: all(
            s in ("SUSPENDED", "PENDING")
            for s in squeue(env, "-j", ",".join(ids), "-o", "%T").split()
        ),
        timeout=30,
        what="suspended/held",
    )
    assert "SUSPENDED" in squeue(env, "-j", ",".join(ids), "-o", "%T")
    r = run_cmd("pbq", "control", hf, jf, "cont", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(
        lambda: "SUSPENDED" not in squeue(env, "-j", ",".join(ids), "-o", "%T"),
        timeout=30,
        what="resumed",
    )
    # kill + restart re-attaches by the recorded cluster ids
    r = run_cmd("pbq", "control", hf, jf, "kill", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    p.wait(timeout=30)
    p = start_scheduler(hf, jf, host="head", env=env)
    wait_for(
        lambda: "re-attached job head.1" in text_of(hostfile_path(jf, "head", "log")),
        timeout=30,
        what="re-attached",
    )
    flag.write_text("")
    wait_for(
        lambda: len(joblog(jf)) >= 1, timeout=90, what="re-attached jobs finish and are recorded"
    )
    assert all(r[6] == "0" for r in joblog(jf).values())
    # term cancels the rest
    r = run_cmd("pbq", "control", hf, jf, "term", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_exit(p, 60)
    wait_for(
        lambda: (
            squeue(env, "-j", ",".join(ids[2:]), "-o", "%T").split()
            in ([], ["CANCELLED", "CANCELLED"], ["CANCELLED"])
        ),
        timeout=30,
        what="cancelled",
    )
    # their lines are back at the front of the jobfile, not left in .running/.stopped
    assert (
        lines_of(hostfile_path(jf, "head", "running"))
        + lines_of(hostfile_path(jf, "head", "stopped"))
        == []
    )
    assert pending_lines(jf) == ["sleep 300", "sleep 300"]


@pytest.mark.root
def test_pbq_cancel_in_a_real_slurm(tmp_path: Path, slurm_testbed: dict[str, str]) -> None:
    env = {**os.environ, **slurm_testbed}
    hf, jf = setup(tmp_path, "slurm", ["sleep 300", "true"], max_jobs=2)
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head", env=env)
    try:
        def sleeper_id() -> str | None:
            path = hostfile_path(jf, "head", "state")
            state = json.loads(path.read_text() or "{}") if path.exists() else {}
            return next((j.get("cluster_id") for j in state.get("jobs", [])
                         if "sleep" in j["line"] and j.get("cluster_id")), None)

        sleeper = wait_for(sleeper_id, timeout=60, what="the sleep submitted to Slurm")
        cancel_first_and_drain(hf, jf, p, env)
    finally:
        kill_if_running(p)
    assert squeue(env, "-j", sleeper, "-o", "%T").split() in ([], ["CANCELLED"])
    assert lines_of(hostfile_path(jf, "head", "error")) == []
    assert "(cancelled" in text_of(hostfile_path(jf, "head", "log"))


@pytest.mark.root
def test_sge_through_pbq(tmp_path: Path, sge_testbed: dict[str, str]) -> None:
    env = {**os.environ, **sge_testbed}
    check_exit_codes(tmp_path, "sge", env)


@pytest.mark.root
def test_sge_resources_stop_cont_term(tmp_path: Path, sge_testbed: dict[str, str]) -> None:
    env = {**os.environ, **sge_testbed}
    hf, jf = setup(
        tmp_path, "sge", ["sleep 300"] * 2, fields="mem=100M vmem=500M walltime=00:30:00"
    )
    p = start_scheduler(hf, jf, host="head", env=env)
    wait_for(lambda: status(jf, "head").get("running") == 2, timeout=60, what="2 jobs in SGE")
    state = json.loads(hostfile_path(jf, "head", "state").read_text())
    ids = [j["cluster_id"] for j in state["jobs"]]
    qj = subprocess.run(["qstat", "-j", ids[0]], capture_output=True, text=True, env=env).stdout
    assert "h_rt=1800" in qj and "h_vmem=500" in qj and "mem_free=100" in qj

    def states() -> list[str]:
        out = subprocess.run(["qstat"], capture_output=True, text=True, env=env).stdout
        return [ln.split()[4] for ln in out.splitlines()[2:] if ln.split() and ln.split()[0] in ids]

    wait_for(lambda: states() == ["r", "r"], timeout=60, what="both running")
    r = run_cmd("pbq", "control", hf, jf, "stop", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: states() == ["s", "s"], timeout=30, what="suspended")
    r = run_cmd("pbq", "control", hf, jf, "cont", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: states() == ["r", "r"], timeout=30, what="resumed")
    r = run_cmd("pbq", "control", hf, jf, "term", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_exit(p, 60)
    wait_for(lambda: states() == [], timeout=60, what="cancelled")


def slurm_timeout_sbatch(folder: Path) -> Path:
    """An ``sbatch`` that submits through the real one, then answers as Slurm does when the
    controller's reply is lost: a timeout, exit 1 (the job exists all the same). Its jobs start
    4 s late, so the retry finds them by name, not yet by their claim markers."""
    folder.mkdir()
    real = subprocess.run(
        ["sh", "-c", "command -v sbatch"], capture_output=True, text=True
    ).stdout.strip()
    wrapper = folder / "sbatch"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'{real} --begin=now+4 "$@" >/dev/null || exit $?\n'
        'echo "sbatch: error: Batch job submission failed: '
        'Socket timed out on send/recv operation" >&2\n'
        "exit 1\n"
    )
    os.chmod(wrapper, 0o755)
    return folder


@pytest.mark.root
def test_slurm_reattaches_by_name_after_a_submit_timeout(
    tmp_path: Path, slurm_testbed: dict[str, str]
) -> None:
    bin_dir = slurm_timeout_sbatch(tmp_path / "bin")
    env = {**os.environ, **slurm_testbed, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    rec = tmp_path / "rec"
    hf, jf = setup(tmp_path, "slurm", [f"echo ran >> {rec}; exit 5"])
    p = start_scheduler(hf, jf, "--exit-when-empty", host="head", env=env)
    assert wait_exit(p, 120) == 0, (tmp_path / "sched-head.out").read_text()
    log = text_of(hostfile_path(jf, "head", "log"))
    assert "did not answer" in log and "re-attached by its name" in log
    assert lines_of(rec) == ["ran"]
    assert [r[6] for r in joblog(jf).values()] == ["5"]


def torque_path() -> str:
    out = subprocess.run(
        [str(Path(__file__).resolve().parents[2] / "scripts" / "testbed-slurm"), "torque-path"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


TORQUE_PLUGIN = '''
"""A BioQueue-protocol plugin written from BioQueue's documented protocol: qsub/qstat/qdel."""
import os, re, subprocess, tempfile

def submit_job(protocol, job_id, job_step, cpu=0, mem='', vrt_mem='', queue='', log_file='',
               wall_time='', workspace=''):
    fd, path = tempfile.mkstemp(suffix=".pbs", dir=workspace or None)
    with os.fdopen(fd, "w") as f:
        f.write("#!/bin/sh\\n")
        if wall_time:
            f.write("#PBS -l walltime=%s\\n" % wall_time)
        f.write(protocol + "\\n")
    args = ["qsub", "-N", str(job_id)[:15]]
    if log_file:
        args += ["-o", log_file, "-j", "oe"]
    out = subprocess.run(args + [path], capture_output=True, text=True, cwd=workspace or None)
    os.remove(path)
    m = re.match(r"\\s*(\\d+)", out.stdout)
    return m.group(1) if out.returncode == 0 and m else 0

def query_job_status(job_id):
    out = subprocess.run(["qstat", "-f", str(job_id)], capture_output=True, text=True)
    if out.returncode not in (0, 153):
        return -1
    m = re.search(r"job_state = (\\S)", out.stdout)
    return {"Q": 2, "H": 2, "W": 2, "R": 1, "S": 1, "E": 1, "C": 0}.get(m.group(1), -1) if m else 0

def cancel_job(job_id):
    return 1 if subprocess.run(["qdel", str(job_id)]).returncode == 0 else 0

def hold_job(job_id):
    return 1 if subprocess.run(["qhold", str(job_id)], capture_output=True).returncode == 0 else 0

def release_job(job_id):
    return 1 if subprocess.run(["qrls", str(job_id)], capture_output=True).returncode == 0 else 0
'''


@pytest.mark.root
@pytest.mark.parametrize("drm", ["torquepbs", "bqtorque"])
def test_torque_style_commands_over_real_slurm(
    tmp_path: Path, slurm_testbed: dict[str, str], drm: str
) -> None:
    env = {
        **os.environ,
        **slurm_testbed,
        "PATH": f"{torque_path()}{os.pathsep}{os.environ['PATH']}",
    }
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "bqtorque.py").write_text(TORQUE_PLUGIN)
    check_exit_codes_with(tmp_path / "codes", drm, env, plugins)
    # stop holds the queued jobs (the wrappers cannot suspend running ones), cont releases; term
    base = tmp_path / "ctl"
    base.mkdir()
    flag = base / "go"
    jobs = [f"sh -c 'while [ ! -e {flag} ]; do sleep 0.2; done'"] * 2
    hf, jf = setup(base, drm, jobs, fields="walltime=00:20:00")
    (base / "pbq.toml").write_text(FAST + f'plugin_dir = "{plugins}"\n')
    p = start_scheduler(hf, jf, host="head", env=env)
    wait_for(lambda: status(jf, "head").get("running") == 2, timeout=60, what="2 jobs submitted")
    control_then_log(hf, jf, env, "stop", "stopped head.")
    log = text_of(hostfile_path(jf, "head", "log"))
    assert "held" in log or "cannot suspend running jobs" in log
    control_then_log(hf, jf, env, "cont", "continued head.")
    r = run_cmd("pbq", "control", hf, jf, "term", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_exit(p, 60) is not None
    assert lines_of(hostfile_path(jf, "head", "running")) == []


def control_then_log(hf: Path, jf: Path, env: dict[str, str], command: str, said: str) -> None:
    r = run_cmd("pbq", "control", hf, jf, command, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    log = hostfile_path(jf, "head", "log")
    wait_for(lambda: said in text_of(log), timeout=30, what=f"{command} logged")


def check_exit_codes_with(tmp_path: Path, drm: str, env: dict[str, str], plugins: Path) -> None:
    tmp_path.mkdir()
    check_exit_codes(tmp_path, drm, env, plugins)
