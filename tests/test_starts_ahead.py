"""Starts queued ahead with the job runner: made the moment a job ends, answered before
that end, taken back by ``revoke``, dropped when the scheduler is gone; and the policy's
word on when a start may be queued (``may_refill``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    run_cmd,
    start_scheduler,
    wait_exit,
    wait_for,
)
from test_ledger import ListLog

from pbq.host import starts
from pbq.host.executor import Revoked, Started
from pbq.host.jobs import Job, JobState
from pbq.host.local import LocalExecutor
from pbq.host.wakeup import RECORDED, Wakeup
from pbq.policy import Mode, View, may_refill
from pbq.sensors import Sensors
from pbq.sidefiles import read_exit_records

HOST = "ahead"


@contextlib.contextmanager
def executor(tmp: Path) -> Iterator[LocalExecutor]:
    jf = tmp / "jobfile"
    jf.touch()
    ex = LocalExecutor(HOST, jf, tmp / "exits", 19, None, ListLog(), Sensors(),
                       containment="process-group")
    try:
        yield ex
    finally:
        for pid in list(ex.by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        ex.close()


def env_for(ex: LocalExecutor) -> object:
    return lambda j: {"PBQ_JOB_ID": f"{HOST}.{j.seq}", "PBQ_JOBFILE": str(ex.jobfile)}


def job(seq: int, line: str) -> Job:
    return Job(seq=seq, line=line.encode(), op=1)


def start_now(ex: LocalExecutor, j: Job) -> int:
    (r,) = ex.start([j], env_for(ex), 0.0)  # type: ignore[arg-type]
    assert isinstance(r, Started) and r.pid is not None, r
    j.pid, j.state = r.pid, JobState.RUNNING
    return r.pid


def gated(gate: Path) -> str:
    return f"sh -c 'while [ ! -e {gate} ]; do sleep 0.02; done'"


def test_a_queued_start_is_made_when_a_job_ends_and_answered_before_that_end(
    tmp_path: Path,
) -> None:
    with executor(tmp_path) as ex:
        gate, ran = tmp_path / "gate", tmp_path / "b-ran"
        a = job(1, gated(gate))
        start_now(ex, a)
        b = job(2, f"touch {ran}")
        b.state = JobState.QUEUED
        assert ex.start([b], env_for(ex), 0.0, wait=False, ahead=True) == []  # type: ignore[arg-type]
        # A start made now is answered after the queued request was read: a sync point.
        start_now(ex, job(3, "sleep 300"))
        assert ex.start_answers() == [] and not ran.exists(), "queued, not started"
        gate.touch()
        ended = wait_for(lambda: ex.events(0.0), timeout=30, what="the first job's end")
        assert 1 in [e.job.seq for e in ended]  # (the queued one may have ended too)
        answers = ex.start_answers()
        assert [type(x) for x in answers] == [Started] and answers[0].job is b, \
            "the queued start is answered no later than the end that made room for it"
        wait_for(ran.exists, timeout=30, what="the queued job ran")


def test_a_free_slot_goes_to_the_oldest_queued_start(tmp_path: Path) -> None:
    with executor(tmp_path) as ex:
        gate = tmp_path / "gate"
        start_now(ex, job(1, gated(gate)))
        b, c = job(2, "sleep 300"), job(3, "sleep 300")
        ex.start([b, c], env_for(ex), 0.0, wait=False, ahead=True)  # type: ignore[arg-type]
        ex.start_queued(1)  # the policy found a slot free: the oldest queued start, now

        def answers() -> list[object]:
            ex.events(0.0)
            return ex.start_answers()

        got = wait_for(answers, timeout=30, what="the start's answer")
        assert [(type(x), x.job) for x in got] == [(Started, b)]  # type: ignore[attr-defined]
        assert ex.queued == {3}, "the next one still waits for an end"
        b.pid = got[0].pid  # type: ignore[attr-defined]
        gate.touch()
        got = wait_for(answers, timeout=30, what="the queued start made at the end")
        assert [x.job for x in got] == [c]  # type: ignore[attr-defined]


def test_revoked_starts_are_given_back_unmade(tmp_path: Path) -> None:
    with executor(tmp_path) as ex:
        gate, ran = tmp_path / "gate", tmp_path / "c-ran"
        a = job(1, gated(gate))
        start_now(ex, a)
        c = job(2, f"touch {ran}")
        ex.start([c], env_for(ex), 0.0, wait=False, ahead=True)  # type: ignore[arg-type]
        ex.revoke()

        def answers() -> list[object]:
            ex.events(0.0)
            return ex.start_answers()

        got = wait_for(answers, timeout=30, what="the revoke's answer")
        assert len(got) == 1 and isinstance(got[0], Revoked) and got[0].job is c
        assert not ex.queued and not ex.pending
        gate.touch()
        ended = wait_for(lambda: ex.events(0.0), timeout=30, what="the job's end")
        assert [e.job.seq for e in ended] == [1]
        assert ex.start_answers() == [] and not ran.exists(), "nothing took the freed slot"


def test_a_runner_whose_scheduler_is_gone_starts_nothing_queued(tmp_path: Path) -> None:
    with executor(tmp_path) as ex:
        gate, ran = tmp_path / "gate", tmp_path / "d-ran"
        a = job(1, gated(gate))
        pid = start_now(ex, a)
        ex.start([job(2, f"touch {ran}")], env_for(ex), 0.0, wait=False,  # type: ignore[arg-type]
                 ahead=True)
        other = start_now(ex, job(3, "sleep 300"))  # the queued request was read
        assert ex.sock is not None
        ex.sock.close()  # as a scheduler that died
        ex.sock = None
        gate.touch()

        def recorded() -> bool:
            return any(r.pid == pid for r in read_exit_records(tmp_path / "exits").values())

        wait_for(recorded, timeout=30, what="the runner's record of the job's end")
        assert not ran.exists(), "a start queued ahead dies with the scheduler that asked"
        os.killpg(other, signal.SIGKILL)
        ex.by_pid.clear()


def view(**kw: object) -> View:
    base: dict[str, object] = dict(mode=Mode.RUN, limit=2.0, foreign=0.0, foreign_recent=0.0,
                                   running=2, stopped_by_load=0, stopped_by_user=0,
                                   pending=False)
    base.update(kw)
    return View(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, True),  # full and steady: an end is replaced at once
        ({"running": 1}, True),
        ({"running": 0}, False),  # nothing runs: nothing will end
        ({"foreign": 1.0, "foreign_recent": 1.0}, False),  # an end would free the slot for load
        ({"foreign_recent": 1.0}, False),  # a recent foreign load: the end is not replaced yet
        ({"stopped_by_load": 1}, False),  # an end continues a stopped job first
        ({"mode": Mode.QUIT}, False),
        ({"mode": Mode.PAUSED}, False),
        ({"mode": Mode.TERM}, False),
        ({"memfree": 100, "mem_available": 50}, False),  # low memory: no start
        ({"limit": 1.5}, True),
        ({"limit": 3.0, "foreign": 0.5, "foreign_recent": 0.5}, True),
    ],
)
def test_may_refill(kw: dict[str, object], expected: bool) -> None:
    assert may_refill(view(**kw)) is expected


def test_short_jobs_run_once_each_through_stop_and_cont_with_starts_queued(
    tmp_path: Path,
) -> None:
    """Short jobs (queued ahead with the runner) through a user's stop: nothing starts while
    the host is stopped, and every line runs exactly once."""
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG)
    out = tmp_path / "ran"
    out.mkdir()
    n = 400
    jf = jobfile(tmp_path, [f"sh -c 'sleep 0.01; echo {i} >> {out}/{i}'" for i in range(n)])
    p = start_scheduler(hf, jf, "--exit-when-empty")
    try:
        joblog = hostfile_path(jf, HOST_OF_TEST, "joblog")
        wait_for(lambda: len(lines_of(joblog)) > 50, timeout=60, what="some jobs done")
        control(hf, jf, "stop")
        stopped = hostfile_path(jf, HOST_OF_TEST, "stopped")
        wait_for(lambda: lines_of(stopped) or len(list(out.iterdir())) == n, timeout=30,
                 what="the jobs stopped (or all done)")
        # While stopped nothing new runs: the files written stay what they were through two
        # of the scheduler's ticks (its status file is rewritten at each).
        before = sorted(x.name for x in out.iterdir())
        status = hostfile_path(jf, HOST_OF_TEST, "status")
        for _ in range(2):
            mtime = status.stat().st_mtime_ns
            wait_for(lambda m=mtime: status.stat().st_mtime_ns != m, timeout=30, what="a tick")
        assert sorted(x.name for x in out.iterdir()) == before, "a job ran while stopped"
        control(hf, jf, "cont")
        assert wait_exit(p, 120) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    assert sorted(int(x.name) for x in out.iterdir()) == list(range(n))
    assert all((out / str(i)).read_text() == f"{i}\n" for i in range(n)), "each ran once"
    rows = lines_of(hostfile_path(jf, HOST_OF_TEST, "joblog"))[1:]
    assert len(rows) == n and len({r.split("\t")[0] for r in rows}) == n


HOST_OF_TEST = "h1"  # start_scheduler's


def control(hf: Path, jf: Path, command: str) -> None:
    r = run_cmd("pbq", "control", hf, jf, command)
    assert r.returncode == 0, r.stderr


def test_an_end_announced_by_a_refill_is_not_counted_as_running(tmp_path: Path) -> None:
    """The runner answers for a start made in the slot of a job that ended before it sends
    that end: until the end is read, the job is over, not a second one in the slot."""
    with executor(tmp_path) as ex:
        a, b = job(1, "true"), job(2, "true")
        a.pid, a.state = 4242, JobState.RUNNING
        ex.by_pid[4242] = a
        env = {"PBQ_JOB_ID": f"{HOST}.2", "PBQ_JOBFILE": str(ex.jobfile)}
        ex.pending[2] = (b, env, float("inf"))
        ex.queued.add(2)
        ex.inbox = [("started", 2, 4343, 0.0, 0.0, "no cgroup", True)]
        ex._take_answers(0.0)
        assert [x.job for x in ex.start_answers()] == [b]  # type: ignore[attr-defined]
        assert ex.ends_in_flight() == 1, "a's end is on its way"
        ex.inbox = [("exited", 4242, 0, 0.0)]
        assert [e.job for e in ex.events(0.0)] == [a]
        assert ex.ends_in_flight() == 0
        ex.by_pid.clear()


@pytest.mark.parametrize("slots", [1, 2])
def test_a_full_host_of_short_jobs_never_stops_its_own(tmp_path: Path, slots: int) -> None:
    """Starts queued ahead are made the moment a job ends and answered before that end: a
    host must not see one job too many then and stop it (it did, some 20 to 40 times in
    2,000 jobs)."""
    hf = hostfile(tmp_path, f"* linux {slots} {slots} 0\n")
    config(tmp_path, FAST_CONFIG.replace("[scheduler]\n", "[scheduler]\nforeign_load = false\n"))
    n = 1500
    jf = jobfile(tmp_path, ["true"] * n)
    p = start_scheduler(hf, jf, "--exit-when-empty")
    try:
        assert wait_exit(p, 120) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    assert len(lines_of(hostfile_path(jf, HOST_OF_TEST, "joblog"))) == n + 1
    log = lines_of(hostfile_path(jf, HOST_OF_TEST, "log"))
    stops = [ln for ln in log if " stopped " in ln]
    assert stops == [], stops[:5]


# -- lingering: a pass books several ends of short jobs at once ---------------------------


@pytest.mark.parametrize(
    ("queued", "running", "avg", "expected"),
    [
        (0, 2, 0.001, 0.0),  # nothing queued: an end leaves a slot for the scheduler to fill
        (1, 2, 0.001, 0.0),  # one slot would have no successor
        (2, 2, None, 0.0),  # no run time known yet
        (2, 0, 0.001, 0.0),  # nothing running
        (2, 2, 0.001, 0.0005),  # half of what the queue covers: 2 jobs x 1 ms over 2 slots
        (8, 2, 0.001, 0.002),  # capped
        (1, 1, 10.0, 0.002),  # long jobs: capped
    ],
)
def test_linger_is_half_what_the_queued_starts_cover(
    queued: int, running: int, avg: float | None, expected: float
) -> None:
    assert starts.linger(queued, running, avg) == pytest.approx(expected)
    assert starts.linger(queued, running, avg) <= starts.LINGER_MAX


@contextlib.contextmanager
def installed_wakeup() -> Iterator[Wakeup]:
    w = Wakeup()
    saved = {sig: signal.getsignal(sig) for sig in (*RECORDED, signal.SIGCHLD)}
    old_fd = signal.set_wakeup_fd(-1)
    w.install()
    try:
        yield w
    finally:
        signal.set_wakeup_fd(old_fd)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_lingering_wait_lets_news_wait_but_not_a_signal() -> None:
    """News on the runner's socket ends the wait only after the linger; a signal (a stop,
    a quit) ends it at once."""
    a, b = socket.socketpair()
    with a, b, installed_wakeup() as w:
        b.send(b"news")
        t0 = time.monotonic()
        w.wait(5.0, a.fileno(), linger=0.2)
        waited = time.monotonic() - t0
        assert 0.2 <= waited < 4.0, waited  # the linger, then the news at once
        assert w.take() == []
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()
        t0 = time.monotonic()
        w.wait(30.0, a.fileno(), linger=20.0)
        timer.join()
        assert time.monotonic() - t0 < 10.0  # not the 20 s linger
        assert w.take() == [signal.SIGUSR1]
        t0 = time.monotonic()
        w.wait(5.0, a.fileno())  # no linger: the news at once
        assert time.monotonic() - t0 < 4.0
