"""The process model: ``pbq-single`` is the scheduler, a job runner child is the jobs' parent.

Real ``pbq-single`` processes, real signals, real files.  Jobs record what they did in files
(``echo $$ > pid_x``, ``echo 17 >> rec``) and wait for gate files the test creates, so a
test decides when a job ends instead of hoping a sleep is long enough.

Only the first line of ``JOBFILE.HOST.pid`` is read here (the scheduler's pid); the runner
is found as the scheduler's child whose command line contains ``#pbq-runner``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from pbqtest import (
    BIN,
    FAST_CONFIG,
    alive,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    kill_all,
    lines_of,
    proc_state,
    run_cmd,
    session_members,
    start_scheduler,
    status,
    text_of,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

HOST = "h1"
TERM_GRACE = 2.0  # FAST_CONFIG's term_grace
# Lines the .log uses when a job may run (or may have run) more than once (as test_faults).
DUPLICATE_NOTES = ("POSSIBLE DUPLICATE", "putting it back", "back at the front")
# Room for foreign load on a shared machine: the tests decide how many jobs run at once.
ROOMY_HOSTFILE = "* linux 8 8 0\n"


# ------------------------------------------------------------------ helpers


def scheduler_pid(jf: Path) -> int | None:
    """The first line of ``.pid``, if the file is there and readable."""
    try:
        return int(hostfile_path(jf, HOST, "pid").read_text().split("\n")[0])
    except (OSError, ValueError):
        return None


def wait_scheduler_up(p: subprocess.Popen, jf: Path) -> None:
    """Until ``.pid`` names the started process (its start-up and recovery are done)."""

    def up() -> bool:
        if p.poll() is not None:
            raise AssertionError(f"pbq-single exited with {p.returncode}: {sched_output(jf)}")
        return scheduler_pid(jf) == p.pid

    wait_for(up, timeout=30, what=f"{jf.name}.{HOST}.pid naming pid {p.pid}")


def sched_output(jf: Path) -> str:
    return text_of(jf.parent / f"sched-{HOST}.out")


def runner_of(sched: int) -> int | None:
    """The live job runner under scheduler ``sched``."""
    try:
        for child in psutil.Process(sched).children():
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE and "#pbq-runner" in " ".join(
                    child.cmdline()
                ):
                    return child.pid
    except psutil.Error:
        return None
    return None


def pid_in(path: Path) -> int | None:
    """A pid a job wrote to a file (None while the file is missing or half written)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def gate_line(tmp: Path, name: str, tail: str) -> str:
    """A job that writes its pid to ``pid_NAME``, waits for the file ``gate_NAME``, then runs
    ``tail`` (its last command decides its exit status)."""
    return (
        f"echo $$ > {tmp / ('pid_' + name)}; "
        f"while [ ! -e {tmp / ('gate_' + name)} ]; do sleep 0.05; done; {tail}"
    )


def open_gate(tmp: Path, name: str) -> None:
    (tmp / f"gate_{name}").touch()


def log_text(jf: Path) -> str:
    """The host's .log with its rotated backups, oldest first."""
    path = hostfile_path(jf, HOST, "log")
    backups = [
        p for p in path.parent.glob(path.name + ".*") if p.name[len(path.name) + 1 :].isdigit()
    ]
    backups.sort(key=lambda p: int(p.name[len(path.name) + 1 :]), reverse=True)
    return "".join(text_of(p) for p in [*backups, path])


def admitted(jf: Path, line: str) -> int:
    """How often the .log says ``line`` was put back / may run twice (test_faults' admitted)."""
    return sum(
        1 for ln in log_text(jf).split("\n") if line in ln and any(n in ln for n in DUPLICATE_NOTES)
    )


def joblog_outcomes(jf: Path) -> dict[str, list[tuple[int, int]]]:
    """Command -> [(Exitval, Signal), ...] from the joblog (GNU Parallel columns)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for row in lines_of(hostfile_path(jf, HOST, "joblog"))[1:]:
        cols = row.split("\t", 8)
        out.setdefault(cols[8], []).append((int(cols[6]), int(cols[7])))
    return out


def exit_records(jf: Path) -> list[dict]:
    """The runner's ``.exits`` records (JSON lines)."""
    out = []
    for ln in lines_of(hostfile_path(jf, HOST, "exits")):
        with contextlib.suppress(ValueError):
            out.append(json.loads(ln))
    return out


def exit_status_of(jf: Path, pid: int) -> int | None:
    """The raw wait status ``.exits`` holds for ``pid``."""
    for rec in exit_records(jf):
        if rec.get("pid") == pid:
            return int(rec["status"])
    return None


def kill_quietly(pid: int | None, sig: int = signal.SIGKILL) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_pids(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    kill_all(procs)


def setup_queue(tmp: Path, lines: list[str], hosts: str = ROOMY_HOSTFILE) -> tuple[Path, Path]:
    hf = hostfile(tmp, hosts)
    config(tmp, FAST_CONFIG)
    return hf, jobfile(tmp, lines)


# ------------------------------------------------------------------ 1. the pid


def test_started_process_is_the_scheduler_named_in_pid_file(tmp_path: Path) -> None:
    hf, jf = setup_queue(tmp_path, [gate_line(tmp_path, "a", "exit 0")])
    p = start_scheduler(hf, jf)
    try:
        wait_for(lambda: scheduler_pid(jf) is not None, timeout=30, what=".pid written")
        assert scheduler_pid(jf) == p.pid, sched_output(jf)
        # The runner starts with the first job (and .pid is rewritten): still the same first line.
        job = wait_for(lambda: pid_in(tmp_path / "pid_a"), what="the job running")
        runner = wait_for(lambda: runner_of(p.pid), what="a #pbq-runner child of the scheduler")
        assert psutil.Process(job).ppid() == runner, "the runner is the job's parent"
        assert os.getsid(job) == job, "the job is a session of its own"
        assert os.getsid(runner) == runner, "the runner is a session of its own"
        wait_for(
            lambda: status(jf, HOST).get("runner_pid") == runner, what=".status naming the runner"
        )
        assert scheduler_pid(jf) == p.pid
        open_gate(tmp_path, "a")
        wait_for(lambda: joblog_outcomes(jf), what="the job's joblog row")
        p.send_signal(signal.SIGTERM)
        wait_exit(p, 30)
    finally:
        kill_quietly(p.pid)


# ------------------------------------------------------------------ 2. kill -9, restart


def test_sigkilled_scheduler_jobs_run_on_and_restart_records_real_exit_statuses(
    tmp_path: Path,
) -> None:
    early_line = gate_line(tmp_path, "early", f"echo early >> {tmp_path / 'rec'}; exit 0")
    late_line = gate_line(tmp_path, "late", f"echo late >> {tmp_path / 'rec'}; exit 3")
    hf, jf = setup_queue(tmp_path, [early_line, late_line])
    p = start_scheduler(hf, jf)
    restarted: subprocess.Popen | None = None
    try:
        wait_scheduler_up(p, jf)
        early = wait_for(lambda: pid_in(tmp_path / "pid_early"), what="job 'early' running")
        late = wait_for(lambda: pid_in(tmp_path / "pid_late"), what="job 'late' running")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        assert alive(early) and alive(late), "the jobs must outlive their scheduler"

        # 'early' ends while no scheduler runs: the runner keeps its exit in .exits.
        open_gate(tmp_path, "early")
        wait_for(
            lambda: exit_status_of(jf, early) is not None, what="the exit of 'early' in .exits"
        )
        assert exit_status_of(jf, early) == 0
        assert alive(late)

        restarted = start_scheduler(hf, jf, "--exit-when-empty")
        wait_for(
            lambda: any(
                "adopted job" in ln and f"pid {late} " in ln for ln in log_text(jf).split("\n")
            ),
            timeout=30,
            what=f"the restarted scheduler adopting 'late' (pid {late})",
        )
        open_gate(tmp_path, "late")  # 'late' ends under the restarted scheduler
        wait_exit(restarted, 60)

        assert exit_status_of(jf, late) == 3 << 8, "the old runner recorded the end of 'late'"
        assert Counter(lines_of(tmp_path / "rec")) == {"early": 1, "late": 1}, "each job ran once"
        outcomes = joblog_outcomes(jf)
        assert outcomes.get(early_line) == [(0, 0)], outcomes
        assert outcomes.get(late_line) == [(3, 0)], outcomes
        assert any(
            f"finished {HOST}." in ln and f"pid {late} exit 3" in ln
            for ln in log_text(jf).split("\n")
        ), log_text(jf)
    finally:
        kill_quietly(p.pid)
        if restarted is not None:
            kill_quietly(restarted.pid)


# ------------------------------------------------------------------ 3. pbq control kill


def test_control_kill_ends_the_scheduler_within_2s_and_jobs_run_on(tmp_path: Path) -> None:
    lines = [gate_line(tmp_path, n, f"echo {n} >> {tmp_path / 'rec'}") for n in ("a", "b")]
    hf, jf = setup_queue(tmp_path, lines)
    p = start_scheduler(hf, jf)
    control: subprocess.Popen | None = None
    try:
        wait_scheduler_up(p, jf)
        jobs = [
            wait_for(lambda n=n: pid_in(tmp_path / f"pid_{n}"), what=f"job {n} running")
            for n in "ab"
        ]
        control = subprocess.Popen(
            [sys.executable, str(BIN / "pbq"), "control", str(hf), str(jf), "kill"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 2.0  # the required figure: from the command to the exit
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.poll() is not None, "pbq-single still runs 2 s after `pbq control ... kill`"
        assert p.returncode == -signal.SIGKILL
        out, _ = control.communicate(timeout=30)
        assert control.returncode == 0, out.decode(errors="replace")
        assert all(alive(pid) for pid in jobs), "the jobs keep running"
        for n in "ab":
            open_gate(tmp_path, n)
        wait_for(
            lambda: sorted(lines_of(tmp_path / "rec")) == ["a", "b"], what="both jobs completing"
        )
    finally:
        kill_quietly(p.pid)
        if control is not None and control.poll() is None:
            control.kill()
            control.wait()


# ------------------------------------------------------------------ 4. SIGKILL rounds


@pytest.mark.slow
def test_twelve_random_sigkills_lose_nothing_and_admit_every_duplicate(tmp_path: Path) -> None:
    seed = int(os.environ.get("PBQ_TEST_SEED", "20240611"))
    rnd = random.Random(seed)
    rec = tmp_path / "rec"
    # 0.11-0.19 s each: 150 jobs on 4 slots outlast the 12 rounds, so the kills land mid-run.
    lines = [f"sh -c 'echo {n} >> {rec}; sleep 0.1{1 + n % 9}'" for n in range(150)]
    hf, jf = setup_queue(tmp_path, lines, hosts="* linux 4 4 0\n")
    started: list[subprocess.Popen] = []
    progress = []  # jobs recorded at each kill
    try:
        for _ in range(12):
            p = start_scheduler(hf, jf)
            started.append(p)
            wait_scheduler_up(p, jf)
            time.sleep(rnd.uniform(0.05, 0.6))  # a random moment of its run
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
            progress.append(len(set(lines_of(rec))))
        final = start_scheduler(hf, jf, "--exit-when-empty")
        started.append(final)
        assert wait_exit(final, 120) == 0, sched_output(jf)

        got = Counter(int(x) for x in lines_of(rec))
        missing = sorted(set(range(150)) - set(got))
        assert not missing, f"seed {seed}: jobs never run: {missing}"
        unadmitted = {n: c for n, c in got.items() if c > 1 and c - 1 > admitted(jf, lines[n])}
        assert not unadmitted, (
            f"seed {seed}: duplicates the .log does not admit (job: runs): {unadmitted}"
        )
        outcomes = joblog_outcomes(jf)
        no_row = [n for n in range(150) if lines[n] not in outcomes]
        assert not no_row, f"seed {seed}: ran but no joblog row: {no_row}"
        bad = {
            n: outcomes[lines[n]]
            for n in range(150)
            if any(o != (0, 0) for o in outcomes[lines[n]])
        }
        assert not bad, f"seed {seed}: exit statuses lost (joblog rows not 0): {bad}"
        log = log_text(jf)
        print(
            f"seed {seed}: jobs recorded at each kill {progress}; {sum(got.values()) - 150} "
            f"duplicate run(s); {log.count('adopted job')} adoption(s), "
            f"{log.count('recorded by the job runner')} end(s) taken from .exits"
        )
    finally:
        for p in started:
            kill_quietly(p.pid)


# ------------------------------------------------------------------ 5. power loss


def test_power_loss_reruns_every_job_once_and_never_signals_a_reused_pid(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    lines = [
        f"echo {n} >> {tmp_path / 'ran'}; "
        + gate_line(tmp_path, n, f"echo {n} >> {tmp_path / 'rec'}")
        for n in names
    ]
    hf, jf = setup_queue(tmp_path, lines)
    p = start_scheduler(hf, jf)
    unrelated: subprocess.Popen | None = None
    restarted: subprocess.Popen | None = None
    try:
        wait_scheduler_up(p, jf)
        jobs = [
            wait_for(lambda n=n: pid_in(tmp_path / f"pid_{n}"), what=f"job {n} running")
            for n in names
        ]
        runner = wait_for(lambda: runner_of(p.pid), what="the job runner")
        # Power loss: every process of the run stops at once (SIGSTOP first so none of them
        # sees another die and records anything), then all die.
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in (p.pid, runner):
                kill_quietly(pid, sig)
            for job in jobs:  # each job is a process group of its own
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job, sig)
        victims = [p.pid, runner, *jobs]
        p.wait(timeout=10)
        wait_for(
            lambda: not any(alive(pid) for pid in victims), what="every process of the run gone"
        )
        assert exit_records(jf) == [], "nobody was left to record an exit"

        # The pid of the dead scheduler now belongs to an unrelated process.
        unrelated = subprocess.Popen(["sleep", "300"])
        pidfile = hostfile_path(jf, HOST, "pid")
        rest = pidfile.read_text().split("\n")[1:]
        pidfile.write_text("\n".join([str(unrelated.pid), *rest]))

        r = run_cmd("pbq", "control", hf, jf, "term", HOST, "--timeout", "2")
        assert unrelated.poll() is None and proc_state(unrelated.pid) != "T", (
            f"`pbq control term` signalled the unrelated pid: {r.stdout + r.stderr!r}"
        )

        for n in names:
            open_gate(tmp_path, n)
        restarted = start_scheduler(hf, jf, "--exit-when-empty")
        assert wait_exit(restarted, 60) == 0, sched_output(jf)
        assert Counter(lines_of(tmp_path / "ran")) == dict.fromkeys(names, 2), (
            "each job ran again, once"
        )
        assert Counter(lines_of(tmp_path / "rec")) == dict.fromkeys(names, 1)
        assert unrelated.poll() is None, "the unrelated process was killed"
        assert proc_state(unrelated.pid) not in ("T", "t", None), (
            "the unrelated process was stopped"
        )
    finally:
        kill_quietly(p.pid)
        for proc in (unrelated, restarted):
            if proc is not None:
                kill_quietly(proc.pid)
                proc.wait(timeout=10)


# ------------------------------------------------------------------ 6. the runner dies


def test_sigkilled_runner_loses_no_exit_status_and_a_new_runner_starts_later_jobs(
    tmp_path: Path,
) -> None:
    rec = tmp_path / "rec"
    five_line = gate_line(tmp_path, "five", "exit 5")
    zero_line = gate_line(tmp_path, "zero", f"echo zero >> {rec}")
    hf, jf = setup_queue(tmp_path, [five_line, zero_line])
    p = start_scheduler(hf, jf, "--exit-when-empty")
    try:
        wait_scheduler_up(p, jf)
        five = wait_for(lambda: pid_in(tmp_path / "pid_five"), what="job 'five' running")
        zero = wait_for(lambda: pid_in(tmp_path / "pid_zero"), what="job 'zero' running")
        old_runner = wait_for(lambda: runner_of(p.pid), what="the job runner")
        os.kill(old_runner, signal.SIGKILL)
        wait_for(
            lambda: f"the job runner (pid {old_runner}) died" in log_text(jf),
            what="the runner's death logged",
        )
        assert alive(five) and alive(zero), "the jobs outlive their runner"
        wait_for(
            lambda: psutil.Process(five).ppid() == p.pid,
            timeout=30,
            what="the scheduler adopting 'five'",
        )

        # Later jobs need a new runner (appended while 'five' and 'zero' still run, so that
        # --exit-when-empty cannot end the run first).
        later = [
            f"tr '\\0' ' ' < /proc/$PPID/cmdline > {tmp_path / 'parent'}; echo later >> {rec}",
            "sh -c 'exit 7'",
        ]
        r = run_cmd("jobfile-append", jf, "-", input="".join(ln + "\n" for ln in later).encode())
        assert r.returncode == 0, r.stderr
        wait_for(lambda: len(joblog_outcomes(jf)) == 2, timeout=30, what="the later jobs finished")
        # Jobs ending now are the scheduler's children (it is their subreaper).
        open_gate(tmp_path, "five")
        open_gate(tmp_path, "zero")
        assert wait_exit(p, 60) == 0, sched_output(jf)

        outcomes = joblog_outcomes(jf)
        assert outcomes.get(five_line) == [(5, 0)], outcomes
        assert outcomes.get(zero_line) == [(0, 0)], outcomes
        assert outcomes.get(later[0]) == [(0, 0)], outcomes
        assert outcomes.get(later[1]) == [(7, 0)], outcomes
        assert Counter(lines_of(rec)) == {"zero": 1, "later": 1}
        parent = text_of(tmp_path / "parent")
        assert "#pbq-runner" in parent, f"a later job's parent is not a job runner: {parent!r}"
    finally:
        kill_quietly(p.pid)


# ------------------------------------------------------------------ 7. daemons


DAEMONIZER = """\
import os, sys, time
pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # the daemon: a session of its own, its parents gone
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(300)
    os._exit(0)
os.wait()
while not os.path.exists(pidfile):  # the leader ends once the daemon is up
    time.sleep(0.02)
"""


def daemonizer_line(tmp: Path) -> str:
    script = tmp / "daemonize.py"
    script.write_text(DAEMONIZER)
    return f"{sys.executable} {script} {tmp / 'daemon.pid'}"


# With process groups a daemon escapes its job; in a cgroup it ends with it (test_cgroup.py).
PROCESS_GROUPS = FAST_CONFIG.replace(
    "[scheduler]\n", '[scheduler]\ncontainment = "process-group"\n'
)


def test_daemon_left_by_a_job_does_not_hold_term(tmp_path: Path) -> None:
    daemon_job = daemonizer_line(tmp_path)
    hf, jf = setup_queue(tmp_path, [daemon_job, gate_line(tmp_path, "long", "exit 0")])
    config(tmp_path, PROCESS_GROUPS)
    p = start_scheduler(hf, jf)
    daemon: int | None = None
    try:
        wait_scheduler_up(p, jf)
        daemon = wait_for(lambda: pid_in(tmp_path / "daemon.pid"), what="the daemon up")
        wait_for(lambda: daemon_job in joblog_outcomes(jf), what="the daemonizing job finished")
        wait_for(lambda: pid_in(tmp_path / "pid_long"), what="the other job running")
        p.send_signal(signal.SIGTERM)
        wait_exit(p, TERM_GRACE + 5)
        assert alive(daemon), "the daemon was not the scheduler's to end"
        assert joblog_outcomes(jf)[daemon_job] == [(0, 0)]
    finally:
        kill_quietly(p.pid)
        kill_quietly(daemon)


def test_exit_when_empty_does_not_wait_for_a_daemon_left_by_a_job(tmp_path: Path) -> None:
    daemon_job = daemonizer_line(tmp_path)
    hf, jf = setup_queue(tmp_path, [daemon_job])
    config(tmp_path, PROCESS_GROUPS)
    p = start_scheduler(hf, jf, "--exit-when-empty")
    daemon: int | None = None
    try:
        daemon = wait_for(lambda: pid_in(tmp_path / "daemon.pid"), timeout=30, what="the daemon up")
        assert wait_exit(p, 20) == 0, sched_output(jf)
        assert alive(daemon), "the daemon lives on"
        assert joblog_outcomes(jf)[daemon_job] == [(0, 0)]
    finally:
        kill_quietly(p.pid)
        kill_quietly(daemon)


# ------------------------------------------------------------------ 8. term and SIGTERM-proof jobs


def test_term_ends_despite_a_job_ignoring_sigterm(tmp_path: Path) -> None:
    stubborn = f"trap '' TERM; echo $$ > {tmp_path / 'pid_stubborn'}; sleep 60"
    hf, jf = setup_queue(tmp_path, [stubborn])
    p = start_scheduler(hf, jf)
    try:
        wait_scheduler_up(p, jf)
        job = wait_for(lambda: pid_in(tmp_path / "pid_stubborn"), what="the job past its trap")
        p.send_signal(signal.SIGTERM)
        wait_exit(p, 30)
        # Without the SIGKILL its `sleep 60` would outlive these deadlines.
        wait_for(lambda: not session_members(job), timeout=20, what="the job's session empty")
        assert "terminating" in log_text(jf)
    finally:
        kill_quietly(p.pid)
