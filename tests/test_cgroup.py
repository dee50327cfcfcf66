"""Job containment with cgroup v2: every process of a job, wherever it went.

Real ``pbq-single`` processes (and, for the executor's own figures, a real ``LocalExecutor``
with its job runner), real cgroups.  Jobs that escape their process group -- a ``setsid``
daemon, a ``set -m`` background child -- are stopped, continued and terminated with the job;
what a job leaves running is killed when it ends.  Tests of the cgroup mode need a writable
cgroup v2 (root, or a delegated subtree) and are skipped with the reason elsewhere; the
fallback tests run everywhere.  The conftest removes the cgroups a failed test leaves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pbqtest import (
    FAST_CONFIG,
    alive,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    proc_state,
    run_cmd,
    start_scheduler,
    text_of,
    wait_exit,
    wait_for,
)
from test_process_model import daemonizer_line, pid_in

from pbq.errors import PbqError
from pbq.host import cgroup as cgroups
from pbq.host.jobs import Job, JobState
from pbq.host.local import LocalExecutor
from pbq.sensors import Sensors

pytestmark = pytest.mark.timeout(180)

HOST = "h1"
ROOMY = "* linux 8 8 0\n"  # room for foreign load on a shared machine


def _cgroup_unavailable() -> str | None:
    found = cgroups.locate()
    if isinstance(found, str):
        return found
    home = found[1]
    if not (os.access(home, os.W_OK) and os.access(f"{home}/cgroup.procs", os.W_OK)):
        return f"{home} is not writable"
    return None


UNAVAILABLE = _cgroup_unavailable()
needs_cgroup = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"no writable cgroup v2 here: {UNAVAILABLE}"
)


def parent_of(jf: Path) -> Path:
    """The scheduler's cgroup of job cgroups (the scheduler runs in this process's cgroup)."""
    found = cgroups.locate()
    assert not isinstance(found, str), found
    return Path(found[1]) / cgroups.parent_name(HOST, str(jf))


def cgroup_of(pid: int) -> Path:
    """The cgroup a process is in (job cgroups are named j1, j2...: they are reused)."""
    found = cgroups.locate(pid)
    assert not isinstance(found, str), found
    return Path(found[1])


def log_text(jf: Path) -> str:
    return text_of(hostfile_path(jf, HOST, "log"))


# A job whose processes leave its process group two ways, then waits for a gate file.
ESCAPING_JOB = """\
#!/bin/bash
cd "$(dirname "$0")"
setsid sh -c 'echo $$ > daemon.tmp; mv daemon.tmp daemon.pid; exec sleep 300' &
set -m
sleep 300 &
echo $! > monitor.tmp; mv monitor.tmp monitor.pid
set +m
echo $$ > leader.tmp; mv leader.tmp leader.pid
while [ ! -e gate ]; do sleep 0.05; done
"""


def escaping_job(tmp: Path) -> str:
    script = tmp / "job.sh"
    script.write_text(ESCAPING_JOB)
    script.chmod(0o755)
    return str(script)


def job_pids(tmp: Path) -> dict[str, int]:
    """leader, daemon (a session of its own) and monitor (a process group of its own)."""
    names = ("leader", "daemon", "monitor")
    found = {n: pid_in(tmp / f"{n}.pid") for n in names}
    return {n: p for n, p in found.items() if p is not None} if all(found.values()) else {}


def control(hf: Path, jf: Path, command: str) -> None:
    r = run_cmd("pbq", "control", hf, jf, command, timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------ the cgroup mode


@needs_cgroup
def test_stop_cont_term_reach_processes_that_left_the_process_group(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, [escaping_job(tmp_path)])
    p = start_scheduler(hf, jf)
    try:
        pids = wait_for(lambda: job_pids(tmp_path), timeout=30, what="the job and its escapees")
        leader = pids["leader"]
        assert os.getsid(pids["daemon"]) != leader, "the daemon is a session of its own"
        assert os.getpgid(pids["monitor"]) != leader, "the set -m child is a group of its own"
        where = cgroup_of(leader)
        assert where.parent == parent_of(jf), "a job cgroup of this scheduler's"
        assert set(pids.values()) <= set(cgroups.pids(str(where))), "all in the job's cgroup"
        assert "job containment: cgroup v2 at" in log_text(jf)

        control(hf, jf, "stop")
        wait_for(lambda: all(proc_state(q) == "T" for q in pids.values()),
                 what=f"every process of the job stopped (T): {pids}")
        control(hf, jf, "cont")
        wait_for(lambda: all(proc_state(q) in ("S", "R") for q in pids.values()),
                 what=f"every process of the job continued: {pids}")

        control(hf, jf, "term")
        wait_exit(p, 30)
        wait_for(lambda: not any(psutil.pid_exists(q) and alive(q) for q in pids.values()),
                 timeout=30, what=f"no process of the job left: {pids}")
        assert not where.exists(), "the job's cgroup is removed"
        assert not parent_of(jf).exists(), "the scheduler's cgroup is removed at its exit"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)


@needs_cgroup
def test_term_leaves_no_cgroup_behind(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 300"] * 4)
    p = start_scheduler(hf, jf)
    try:
        wait_for(lambda: len(lines_of(hostfile_path(jf, HOST, "running"))) == 4, timeout=30,
                 what="four jobs running")
        control(hf, jf, "term")
        wait_exit(p, 30)
        assert not parent_of(jf).exists(), "every job cgroup and the scheduler's removed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)


@needs_cgroup
def test_a_job_ends_with_its_leader_and_what_it_left_running_is_killed(tmp_path: Path) -> None:
    line = daemonizer_line(tmp_path)  # the leader ends once its daemon is up
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, [line])
    p = start_scheduler(hf, jf, "--exit-when-empty")
    daemon: int | None = None
    try:
        daemon = wait_for(lambda: pid_in(tmp_path / "daemon.pid"), timeout=30, what="the daemon")
        assert wait_exit(p, 30) == 0, text_of(tmp_path / f"sched-{HOST}.out")
        wait_for(lambda: not alive(daemon), timeout=30, what=f"the daemon {daemon} killed")
        rows = lines_of(hostfile_path(jf, HOST, "joblog"))[1:]
        assert [r.split("\t")[6:8] for r in rows] == [["0", "0"]], "the job's own exit counts"
        assert f"job {HOST}.1 left 1 process(es) running: killed" in log_text(jf)
        assert not parent_of(jf).exists()
    finally:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(p.pid, signal.SIGKILL)
            os.kill(daemon, signal.SIGKILL)  # type: ignore[arg-type]


@contextlib.contextmanager
def killed_with_a_running_job(
    tmp_path: Path,
) -> Iterator[tuple[Path, Path, dict[str, int], list[subprocess.Popen]]]:
    """A scheduler running the escaping job, SIGKILLed: the job lives on for the next one.
    Yields the hostfile, the jobfile, the job's pids, and a list for the schedulers started
    next (every one of them is killed at the end)."""
    hf = hostfile(tmp_path, ROOMY)
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, [escaping_job(tmp_path)])
    first = start_scheduler(hf, jf)
    started = [first]
    try:
        pids = wait_for(lambda: job_pids(tmp_path), timeout=30, what="the job and its escapees")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        yield hf, jf, pids, started
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


@needs_cgroup
def test_a_restarted_scheduler_finds_its_adopted_jobs_cgroups_and_removes_leftovers(
    tmp_path: Path,
) -> None:
    with killed_with_a_running_job(tmp_path) as (hf, jf, pids, started):
        stale = parent_of(jf) / "j999"  # an empty job cgroup, as a crash leaves them
        stale.mkdir()
        restarted = start_scheduler(hf, jf, "--exit-when-empty")
        started.append(restarted)
        wait_for(lambda: f"adopted job {HOST}.1 pid {pids['leader']}" in log_text(jf),
                 timeout=30, what="the job adopted")
        wait_for(lambda: not stale.exists(), what="the leftover empty cgroup removed")
        control(hf, jf, "stop")  # the daemon is reached: the adopted job's cgroup was found
        wait_for(lambda: all(proc_state(q) == "T" for q in pids.values()),
                 what=f"every process of the adopted job stopped: {pids}")
        control(hf, jf, "cont")
        (tmp_path / "gate").touch()
        assert wait_exit(restarted, 30) == 0
        wait_for(lambda: not any(alive(q) for q in pids.values()), timeout=30,
                 what="the job's leftovers killed at its end")
        assert not parent_of(jf).exists()


@needs_cgroup
def test_a_job_cgroup_left_frozen_by_a_killed_scheduler_is_thawed_on_adoption(
    tmp_path: Path,
) -> None:
    """A scheduler killed between freezing a job's cgroup and thawing it (while stopping it)
    leaves a job that neither runs nor ends; the next scheduler thaws it."""
    with killed_with_a_running_job(tmp_path) as (hf, jf, pids, started):
        job_cg = cgroup_of(pids["leader"])
        assert job_cg.parent == parent_of(jf)
        (job_cg / "cgroup.freeze").write_text("1")
        wait_for(lambda: "frozen 1" in (job_cg / "cgroup.events").read_text(), what="frozen")
        restarted = start_scheduler(hf, jf, "--exit-when-empty")
        started.append(restarted)
        wait_for(lambda: f"job {HOST}.1: thawed its cgroup" in log_text(jf), timeout=30,
                 what="the job's cgroup thawed")
        assert (job_cg / "cgroup.freeze").read_text().strip() == "0"
        (tmp_path / "gate").touch()
        assert wait_exit(restarted, 30) == 0, "the thawed job ran to its end"
        wait_for(lambda: not any(alive(q) for q in pids.values()), timeout=30,
                 what="the job's leftovers killed at its end")


# ------------------------------------------------------------------ the executor itself


class ListLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str, when: float | None = None) -> None:
        self.lines.append(message)

    def flush(self) -> None:
        pass


def executor(tmp: Path, containment: str = "auto") -> tuple[LocalExecutor, ListLog]:
    log = ListLog()
    jf = tmp / "jobfile"
    jf.touch()
    ex = LocalExecutor(HOST, jf, tmp / "exits", 19, None, log, Sensors(),
                       containment=containment)
    return ex, log


def start(ex: LocalExecutor, line: str, seq: int = 1) -> Job:
    job = Job(seq=seq, line=line.encode(), op=1)
    env = {"PBQ_JOB_ID": f"{HOST}.{seq}", "PBQ_JOBFILE": str(ex.jobfile)}
    (r,) = ex.start([job], lambda j: env, 0.0)
    assert r.pid is not None, r  # type: ignore[union-attr]
    job.pid, job.state = r.pid, JobState.RUNNING  # type: ignore[union-attr]
    return job


def finish(ex: LocalExecutor, job: Job) -> None:
    """End the job (whole), wait for its end, record it, close the executor."""
    ex.kill(job)
    ended = wait_for(lambda: ex.events(0.0), timeout=20, what="the job's end")
    ex.recorded(ended)
    ex.close()


BUSY = """\
import os, sys, time
while sum(os.times()[:2]) < 0.5:
    pass
open(sys.argv[1] + ".tmp", "w").close()
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
"""


@needs_cgroup
def test_cpu_time_comes_from_cpu_stat_and_counts_processes_outside_the_session(
    tmp_path: Path,
) -> None:
    script = tmp_path / "busy.py"
    script.write_text(BUSY)
    ex, log = executor(tmp_path)
    assert ex.cgroups.cg is not None, log.lines
    # The busy process is a session of its own: a scan of the job's session misses it.
    line = f"setsid {sys.executable} {script} {tmp_path / 'busy'} {tmp_path / 'gate'}; wait"
    job = start(ex, f"sh -c '{line}'")
    try:
        where = ex.cgroups.job_cg[job.seq]
        wait_for(lambda: (tmp_path / "busy").exists(), timeout=60, what="0.5 CPU seconds burnt")
        procs = [psutil.Process(q) for q in cgroups.pids(where)]
        by_psutil = sum(sum(pr.cpu_times()[:2]) for pr in procs)
        ex.own_cpu_seconds([job])
        assert by_psutil >= 0.5
        got = job.cpu_seconds
        assert abs(got - by_psutil) <= 0.1 + 0.1 * by_psutil, (got, by_psutil)
        session = ex.sensors.sessions([job.pid or 0]).cpu_seconds
        assert session < 0.5 <= job.cpu_seconds, "the process-group scan misses the escapee"
    finally:
        finish(ex, job)
    assert not Path(where).exists(), "the job's cgroup is removed at close"
    assert not Path(ex.cgroups.cg.parent).exists(), "and the scheduler's"
    assert log.lines[0] == f"job containment: cgroup v2 at {ex.cgroups.cg.describe()}"


BURN = """\
import os
while sum(os.times()[:2]) < 0.3:
    pass
"""


@needs_cgroup
def test_an_emptied_job_cgroup_is_reused_and_counts_only_its_new_jobs_cpu(
    tmp_path: Path,
) -> None:
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    ex, log = executor(tmp_path)
    assert ex.cgroups.cg is not None, log.lines
    first = start(ex, f"{sys.executable} {script}")
    where = ex.cgroups.job_cg[first.seq]
    second: Job | None = None
    try:
        (ended,) = wait_for(lambda: ex.events(0.0), timeout=60, what="the first job's end")
        assert ended.job.cpu_seconds >= 0.3, "its CPU time, from its cgroup"
        ex.recorded([ended])
        assert Path(where).is_dir(), "kept for a later job"
        second = start(ex, "sleep 300", seq=2)
        assert ex.cgroups.job_cg[2] == where, "the emptied cgroup is the next job's"
        assert str(cgroup_of(second.pid or 0)) == where
        ex.own_cpu_seconds([second])
        assert second.cpu_seconds < 0.2, "the first job's CPU time is not the second's"
    finally:
        if second is not None:
            finish(ex, second)
        else:
            ex.close()
    assert second is not None and second.cpu_seconds < 0.2, "nor at its end"
    assert not Path(where).exists(), "removed at close"


def test_without_a_writable_cgroup_v2_jobs_are_process_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "probe", lambda host, jobfile: "not here (test)")
    ex, log = executor(tmp_path)
    assert ex.cgroups.cg is None
    assert log.lines == ["job containment: process groups (no writable cgroup v2: not here (test))"]
    line = f"setsid sh -c 'echo $$ > {tmp_path / 'daemon.pid'}; exec sleep 300' & sleep 300"
    job = start(ex, line)
    daemon = wait_for(lambda: pid_in(tmp_path / "daemon.pid"), what="the daemon")
    try:
        assert not ex.cgroups.job_cg
        own = cgroups.locate()
        if not isinstance(own, str):  # the job stayed in the scheduler's cgroup
            assert cgroups.locate(job.pid or 0) == own
        assert ex.stop(job) == f"pid {job.pid}"
        wait_for(lambda: proc_state(job.pid or 0) == "T", what="the job's group stopped")
        assert proc_state(daemon) != "T", "a process group does not reach a daemon"
        assert ex.cont(job) == f"pid {job.pid}"
    finally:
        finish(ex, job)
        os.kill(daemon, signal.SIGKILL)


@needs_cgroup
def test_a_job_that_cannot_enter_its_cgroup_runs_and_later_jobs_use_process_groups(
    tmp_path: Path,
) -> None:
    ex, log = executor(tmp_path)
    assert ex.cgroups.cg is not None
    cg = ex.cgroups.cg
    real_parent, cg.parent = cg.parent, "/proc/no-such-cgroup"  # mkdir fails there
    job = start(ex, "sleep 300")
    try:
        assert not ex.cgroups.job_cg and not ex.cgroups.new_in_cgroup
        assert log.lines[-1].startswith(
            f"job containment: process groups from now on ({HOST}.1: cannot enter"
        ), log.lines
        assert cgroups.locate(job.pid or 0) == cgroups.locate(), "in the scheduler's cgroup"
        assert ex.stop(job) == f"pid {job.pid}"  # its process group
        wait_for(lambda: proc_state(job.pid or 0) == "T", what="the job stopped")
    finally:
        ex.cgroups.cg.parent = real_parent
        finish(ex, job)
    assert not Path(real_parent).exists()


def test_containment_cgroup_refuses_to_start_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "probe", lambda host, jobfile: "not here (test)")
    with pytest.raises(PbqError, match="containment = cgroup, but no writable cgroup v2"):
        executor(tmp_path, containment="cgroup")


def test_containment_process_group_does_not_look_for_cgroups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_probe(host: str, jobfile: str) -> str:
        raise AssertionError("probed")

    monkeypatch.setattr(cgroups, "probe", no_probe)
    ex, log = executor(tmp_path, containment="process-group")
    assert ex.cgroups.cg is None
    assert log.lines == ["job containment: process groups (containment = process-group)"]


# ------------------------------------------------------------------ finding the hierarchy


HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_ONLY = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"


def test_the_cgroup2_mount_in_every_layout() -> None:
    assert cgroups.find_mount(HYBRID) == ("/sys/fs/cgroup/unified", "/")
    assert cgroups.find_mount(UNIFIED) == ("/sys/fs/cgroup", "/")
    assert cgroups.find_mount(V1_ONLY) is None
    escaped = "41 31 0:38 /a /mnt/c\\040g rw - cgroup2 cgroup2 rw\n"
    assert cgroups.find_mount(escaped) == ("/mnt/c g", "/a")


def test_own_cgroup_is_the_v2_line() -> None:
    assert cgroups.own_path("9:name=systemd:/x\n0::/user.slice/run-1.scope\n") == (
        "/user.slice/run-1.scope"
    )
    assert cgroups.own_path("4:memory:/x\n") is None


def test_one_parent_per_host_and_jobfile() -> None:
    a = cgroups.parent_name("h1", "/q/jobfile")
    assert a.startswith("pbq-h1-") and a != cgroups.parent_name("h1", "/q/other")
    assert a != cgroups.parent_name("h2", "/q/jobfile")
    assert "/" not in cgroups.parent_name("a/b c", "/q/jobfile")
