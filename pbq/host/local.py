"""Jobs as processes on this machine, started by the job runner (``runner.py``).

The scheduler is a child subreaper: if the runner dies, its jobs become the scheduler's
children, which it notices at once (end of file on the runner's socket, SIGCHLD), reaps
with their real statuses, and a new runner starts the next jobs.  Jobs of an earlier run of
this host (adopted after a restart) are nobody's children here: their end is noticed by
polling, and their exit status is the old runner's record in ``JOBFILE.HOST.exits``.

Every job is a session (and process group) of its own.  Where a writable cgroup v2 exists
(``cgroup.py``), every job is also in a cgroup of its own, which holds every process of the
job, wherever it went (``setsid`` daemons, ``set -m`` children): ``stop``/``cont``/``term``
signal every process in it, eviction and the end of ``term_grace`` kill it whole, a job's
CPU time is one read of its ``cpu.stat``, and when a job's leader exits whatever it left
running is killed (as Slurm and HTCondor do: a batch job leaves no daemon behind on
someone's desktop).  Elsewhere ``stop``/``cont``/``term`` signal the job's process group,
and ``term`` waits until no process of the job's session is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PbqError
from ..sensors import (
    Sensors,
    pids_with_env,
    process_cmdline,
    process_environ,
    process_parent,
    process_start,
    process_state,
    same_process,
)
from ..sidefiles import ExitRecord, exit_records_by_job, read_exit_records
from . import cgroup as cgroups
from .executor import Ended, EnvFor, NotStarted, Started
from .joboutput import JobOutput
from .jobs import UNKNOWN_EXIT, Job, JobState, Outcome
from .ledger import Log
from .recovery import Probe
from .runner import Reader, encode

PR_SET_CHILD_SUBREAPER = 36
ADOPTED_EXIT_WAIT = 5.0  # seconds to wait for the old runner's record of an adopted job's end
RECORD_WAIT = 2.0  # at start-up, seconds to wait for a live old runner to record an end
START_REPLY_WAIT = 30.0  # seconds the runner has to answer a start request
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
RECORDED = "exit status recorded by the job runner"


def set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a job's whole process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def outcome_of(status: int, cpu: float = 0.0, maxrss: int = 0, note: str = "") -> Outcome:
    if os.WIFEXITED(status):
        return Outcome(os.WEXITSTATUS(status), 0, cpu, maxrss, note)
    if os.WIFSIGNALED(status):
        # As GNU Parallel writes it: Exitval 0, Signal N (Exitval -1 means unknown only).
        return Outcome(0, os.WTERMSIG(status), cpu, maxrss, note)
    return Outcome(UNKNOWN_EXIT, note="unreadable exit status")


def _own_cpu(pid: int) -> float:
    """utime + stime of one process (not of its children)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


class LocalExecutor:
    name = "local"
    counts_foreign_load = True

    @property
    def drm_name(self) -> str | None:
        return None  # not a resource manager

    def __init__(self, host: str, jobfile: Path, exits: Path, nice: int, output_dir: Path | None,
                 log: Log, sensors: Sensors, old_runner: int | None = None,
                 allow_group_write: bool = False, containment: str = "auto") -> None:
        self.host = host
        self.allow_group_write = allow_group_write  # whether a group-writable .exits is trusted
        self.jobfile = jobfile
        self.exits = exits
        self.nice = nice
        self.output_dir = output_dir
        self.output: JobOutput | None = None  # its output files (set by the loop)
        self.log = log
        self.sensors = sensors
        self.old_runner = old_runner  # the previous run's runner, which may still record ends
        self.subreaper = False  # set by the loop's run(): tests drive passes in their own process
        self.runner_pid: int | None = None
        self.sock: socket.socket | None = None
        self.reader = Reader()
        self.inbox: list[tuple[Any, ...]] = []
        self.by_pid: dict[int, Job] = {}  # jobs whose end the runner will report
        # Start requests not answered yet: seq -> (job, its environment, answer deadline).
        self.pending: dict[int, tuple[Job, dict[str, str], float]] = {}
        self.answers: list[Started | NotStarted] = []  # for start_answers
        self.orphans: dict[int, Job] = {}  # jobs of a dead runner: our children now
        self.adopted: dict[int, Job] = {}  # by seq: jobs of an earlier run, polled
        self.gone_since: dict[int, float] = {}
        self.awaiting_usage: dict[int, Job] = {}
        self.usage_done: list[tuple[Job, float, int]] = []
        self.unacked: list[int] = []
        self.finished_cpu = 0.0  # CPU seconds of ended jobs (and dead runners)
        self.on_runner_started: Callable[[int], None] | None = None  # the loop records its pid
        self.on_stray: Callable[[int, int], object] | None = None  # (pid, status) of a stray
        self.cg: cgroups.Cgroups | None = None  # None: process groups only
        self.new_in_cgroup = False  # new jobs get a cgroup (off after a failed move)
        self.job_cg: dict[int, str] = {}  # seq -> the job's cgroup
        self.cg_cpu_done: set[int] = set()  # pids whose CPU the cgroup counted already
        self.cg_unremoved: list[str] = []  # cgroups of recorded jobs, still busy
        self._contain(containment)

    def _contain(self, mode: str) -> None:
        """Decide, once, how jobs are contained; say so once in the log."""
        if mode == "process-group":
            self.log("job containment: process groups (containment = process-group)")
            return
        found = cgroups.probe(self.host, str(self.jobfile))
        if isinstance(found, str):
            if mode == "cgroup":
                raise PbqError(f"containment = cgroup, but no writable cgroup v2: {found}")
            self.log(f"job containment: process groups (no writable cgroup v2: {found})")
            return
        self.cg, self.new_in_cgroup = found, True
        self.log(f"job containment: cgroup v2 at {found.describe()}")

    # -- the runner ---------------------------------------------------------------

    def fileno(self) -> int | None:
        return self.sock.fileno() if self.sock is not None else None

    def accepting(self, mono: float) -> bool:
        return True

    def running_for_real(self) -> None:
        """``pbq-single`` itself (not a test driving passes in its own process): jobs of a
        dead runner become our children, not init's."""
        self.subreaper = set_subreaper()

    def has_news(self) -> bool:
        return bool(self.inbox or self.answers)  # read while waiting for a start's answer

    def _start_runner(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        os.set_inheritable(theirs.fileno(), True)
        code = (f"#pbq-runner\nimport sys; sys.path.insert(0, {PACKAGE_ROOT!r})\n"
                "from pbq.host.runner import main; sys.exit(main())")
        argv = [sys.executable, "-c", code, str(theirs.fileno()), str(self.exits), str(self.nice)]
        try:
            self.runner_pid = os.posix_spawn(sys.executable, argv, os.environ, setsid=True,
                                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null",
                                                            os.O_RDONLY, 0)])
        finally:
            theirs.close()
        self.sock = mine
        self.reader = Reader()
        if self.on_runner_started is not None:
            self.on_runner_started(self.runner_pid)

    def _send(self, msg: tuple[Any, ...]) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendall(encode(msg))  # a blocking socket: reads use MSG_DONTWAIT
            return True
        except OSError:
            return False

    def _drain(self) -> bool:
        """Read what the runner sent; False on end of file (the runner is gone)."""
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            self.inbox.extend(self.reader.feed(data))

    def _runner_gone(self) -> None:
        """The runner died: its jobs are our children now (we are their subreaper)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        pid, self.runner_pid = self.runner_pid, None
        if pid is not None:
            with contextlib.suppress(ChildProcessError):
                _, status, ru = os.wait4(pid, 0)
                self.finished_cpu += ru.ru_utime + ru.ru_stime
        self.orphans.update(self.by_pid)
        if self.by_pid:
            self.log(f"the job runner (pid {pid}) died: {len(self.by_pid)} job(s) run on, reaped "
                     "by the scheduler; a new runner starts the next jobs")
        self.by_pid.clear()
        self.unacked.clear()  # their records are ours now (the ledger holds them)
        for job, env, _ in self.pending.values():  # did they start before it died?
            self.answers.append(self._lost_start(job, env))
        self.pending.clear()

    # -- starting -------------------------------------------------------------------

    def start(self, jobs: list[Job], env_for: EnvFor, now: float,
              wait: bool = True) -> list[Started | NotStarted]:
        """Ask the runner to start the jobs.  Without ``wait`` the answers come later (from
        ``start_answers``, after ``events``): the loop records other ends meanwhile, and the
        runner spawns while the scheduler writes."""
        if self.sock is None:
            self._start_runner()
        from ..cmdline import job_argv

        deadline = time.monotonic() + START_REPLY_WAIT
        requests = []
        for job in jobs:
            env = env_for(job)
            out = err = None
            truncate = True
            if self.output is not None:
                paths = self.output.paths(job.seq)
                if paths is not None:
                    out, err = paths
                    truncate = self.output.truncates(job.seq)
            elif self.output_dir is not None:
                jid = env["PBQ_JOB_ID"]
                out, err = str(self.output_dir / f"{jid}.out"), str(self.output_dir / f"{jid}.err")
            cg = None
            if self.cg is not None and self.new_in_cgroup:
                cg = (self.cg.path(env["PBQ_JOB_ID"]), self.cg.home)
            requests.append((job, env, ("start", job.seq, job_argv(job.line), env, out, err, cg,
                                         truncate)))
        if self.output is not None:  # where their output goes, on record before they run
            self.output.requested([(j.seq, j.number, now) for j, _, _ in requests])
        for job, env, _ in requests:
            self.pending[job.seq] = (job, env, deadline)
        for _, _, msg in requests:
            if not self._send(msg):
                break  # the runner is gone: each is answered as lost (did it start?) below
        if self.sock is not None and not self._drain():
            self._runner_gone()
        if not wait:
            return self.start_answers()
        want = {j.seq for j in jobs}
        self._take_answers(time.monotonic())
        while self.sock is not None and want & self.pending.keys():
            with contextlib.suppress(InterruptedError):
                select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not self._drain():
                self._runner_gone()
            self._take_answers(time.monotonic())
        return self.start_answers()

    def _take_answers(self, mono: float) -> None:
        """Answers to start requests, from the messages read so far (kept in order: a
        job's start comes before its end); requests past their deadline, or left by a
        runner that died, are answered by looking for the job."""
        keep = []
        for msg in self.inbox:
            kind = msg[0]
            if kind in ("started", "failed", "again") and msg[1] in self.pending:
                job, env, _ = self.pending.pop(msg[1])
                if kind == "started":
                    self.by_pid[msg[2]] = job
                    self._contained(job, env["PBQ_JOB_ID"], msg[5])
                    self.answers.append(Started(job, pid=msg[2], pid_start=msg[3], when=msg[4]))
                elif kind == "failed":
                    self.answers.append(NotStarted(job, Outcome(msg[2], note=msg[3]), msg[3]))
                else:
                    self.answers.append(NotStarted(job, None, f"cannot start processes ({msg[2]})"))
            else:
                keep.append(msg)
        self.inbox = keep
        for seq, (job, env, deadline) in list(self.pending.items()):
            if mono >= deadline:
                del self.pending[seq]
                self.answers.append(self._lost_start(job, env))

    def start_answers(self) -> list[Started | NotStarted]:
        out, self.answers = self.answers, []
        return out

    def _lost_start(self, job: Job, env: dict[str, str]) -> Started | NotStarted:
        """The runner died (or hung) before answering: did the job start?"""
        found = self.find_job(env["PBQ_JOB_ID"])
        if found:
            self.orphans[found[0]] = job
            self._find_cgroup(job, env["PBQ_JOB_ID"], found[0])
            return Started(job, pid=found[0], pid_start=process_start(found[0]))
        return NotStarted(job, None, "the job runner did not answer")

    def _contained(self, job: Job, job_id: str, why_not: str) -> None:
        if self.cg is None or not self.new_in_cgroup:
            return
        if not why_not:
            self.job_cg[job.seq] = self.cg.path(job_id)
            return
        self.new_in_cgroup = False
        self.log(f"job containment: process groups from now on ({job_id}: {why_not})")

    def _find_cgroup(self, job: Job, job_id: str, pid: int) -> None:
        if self.cg is not None:
            where = self.cg.find(job_id, pid)
            if where is not None:
                self.job_cg[job.seq] = where

    # -- ends -----------------------------------------------------------------------

    def _job_ended(self, job: Job, pid: int | None) -> None:
        """A job's leader exited: that is the job's end (as in PBQ), and whatever it left
        running in its cgroup is killed now.  Its CPU time, daemons included, is the
        cgroup's; the runner's wait4 figure then does not count again."""
        where = self.job_cg.get(job.seq)
        if where is None or self.cg is None:
            return
        left = cgroups.kill(self.cg, where)
        if left:
            self.log(f"job {self.host}.{job.seq} left {left} process(es) running: killed")
            cgroups.wait_empty(where, cgroups.EMPTY_WAIT)  # so it can be removed once recorded
        cpu = cgroups.cpu_seconds(where)
        if cpu is not None:
            job.cpu_seconds = cpu
            if pid is not None:
                self.finished_cpu += cpu
                self.cg_cpu_done.add(pid)

    def events(self, now: float) -> list[Ended]:
        ended: list[Ended] = []
        if self.sock is not None and not self._drain():
            self._runner_gone()
        self._take_answers(time.monotonic())
        for msg in self.inbox:
            if msg[0] == "exited":
                job = self.by_pid.pop(msg[1], None)
                if job is not None:
                    self._job_ended(job, msg[1])
                    ended.append(Ended(job, outcome_of(msg[2]), msg[3]))
                    self.awaiting_usage[msg[1]] = job
                    self.unacked.append(msg[1])
            elif msg[0] == "usage":
                job = self.awaiting_usage.pop(msg[1], None)
                if msg[1] in self.cg_cpu_done:
                    self.cg_cpu_done.discard(msg[1])
                else:
                    self.finished_cpu += msg[2]
                if job is not None:
                    self.usage_done.append((job, msg[2], msg[3]))
        self.inbox = []
        ended += self._reap_children(now)
        return ended

    def _reap_children(self, now: float) -> list[Ended]:
        """Our own children: a dead runner, its orphaned jobs, and -- as a subreaper --
        whatever daemons jobs left behind (reaped and forgotten)."""
        ended: list[Ended] = []
        known = ([self.runner_pid] if self.runner_pid else []) + list(self.orphans)
        for pid in known:
            with contextlib.suppress(ChildProcessError, InterruptedError):
                got, status, ru = os.wait4(pid, os.WNOHANG)
                if got:
                    ended += self._child_ended(got, status, ru, now)
        while self.subreaper:
            try:
                got, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if got == 0:
                break
            ended += self._child_ended(got, status, ru, now)
        return ended

    def _child_ended(self, pid: int, status: int, ru: Any, now: float) -> list[Ended]:
        cpu, maxrss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024
        if pid == self.runner_pid:
            self.runner_pid = None  # reaped here; _runner_gone must not wait for it
            self.finished_cpu += cpu
            ended = self.events(now) if self.sock is not None else []
            self._runner_gone()
            return ended
        job = self.orphans.pop(pid, None)
        if job is None:
            if self.on_stray is not None:
                self.on_stray(pid, status)  # a notify command (notify.py)
            return []  # or a daemon some job left behind
        self._job_ended(job, pid)
        if pid in self.cg_cpu_done:
            self.cg_cpu_done.discard(pid)
        else:
            self.finished_cpu += cpu
        return [Ended(job, outcome_of(status, cpu, maxrss), now)]

    def settle(self, timeout: float = 1.0) -> None:
        """Before exit: wait (briefly) for the usage the runner reports right after an end."""
        deadline = time.monotonic() + timeout
        while self.sock is not None and (self.awaiting_usage or self.pending):
            pending = {m[1] for m in self.inbox if m[0] == "usage"}
            answered = {m[1] for m in self.inbox if m[0] in ("started", "failed", "again")}
            if (set(self.awaiting_usage) <= pending and self.pending.keys() <= answered) \
                    or time.monotonic() >= deadline:
                return
            with contextlib.suppress(InterruptedError):
                select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not self._drain():
                return

    def usage(self) -> list[tuple[Job, float, int]]:
        out, self.usage_done = self.usage_done, []
        return out

    def recorded(self, ended: list[Ended]) -> None:
        if self.unacked and self.sock is not None:
            self._send(("ack", self.unacked))
        self.unacked = []
        for e in ended:  # their cgroups are empty now (killed at the end), or soon
            where = self.job_cg.pop(e.job.seq, None)
            emptied = where is not None and cgroups.remove(where)
            if where is not None and not emptied:
                self.cg_unremoved.append(where)
            if self.output is not None:
                # Only a job whose every process is gone may hand its output files on.
                self.output.ended(e.job.seq, reusable=emptied)

    def _remove_cgroups(self) -> None:
        """Cgroups of recorded jobs whose last (killed) process had not quite gone yet."""
        busy = [w for w in self.cg_unremoved if not cgroups.remove(w)]
        if busy and self.cg is not None:
            live = set(self.job_cg.values())
            for where in busy:
                if where not in live:  # never a running job's, whatever the names say
                    cgroups.kill(self.cg, where)
        self.cg_unremoved = busy

    def poll(self, live: list[Job], now: float, mono: float) -> list[Ended]:
        """Adopted jobs are not our children: notice their end by polling, and take their
        exit status from the old runner's record (``.exits``)."""
        ended: list[Ended] = []
        if self.cg_unremoved:
            self._remove_cgroups()
        records: dict[tuple[int, float | None], ExitRecord] | None = None
        for seq, job in list(self.adopted.items()):
            if self.adopted_alive(job):
                continue
            if records is None:
                records = read_exit_records(self.exits, self.allow_group_write)
            rec = records.get((job.pid or 0, _round(job.pid_start)))
            if rec is not None:
                ended.append(Ended(job, outcome_of(rec.status, rec.cpu, rec.maxrss,
                                                   RECORDED), rec.time))
            elif mono - self.gone_since.setdefault(seq, mono) >= ADOPTED_EXIT_WAIT:
                note = "adopted job ended with no recorded exit status"
                ended.append(Ended(job, Outcome(UNKNOWN_EXIT, note=note), now))
            else:
                continue
            before = job.cpu_seconds
            self._job_ended(job, None)
            self.finished_cpu += max(before, job.cpu_seconds)
            del self.adopted[seq]
            self.gone_since.pop(seq, None)
        return ended

    def adopted_alive(self, job: Job) -> bool:
        return job.pid is not None and same_process(job.pid, job.pid_start)

    # -- signals ----------------------------------------------------------------------

    def _signal(self, job: Job, sig: int) -> bool:
        if job.pid is None:
            return False
        if job.seq in self.adopted and not self.adopted_alive(job):
            return False  # never signal a pid we did not verify: it may be someone else's now
        return signal_group(job.pid, sig)

    def _signal_cgroup(self, job: Job, sig: int, freeze: bool) -> int | None:
        """Signal every process of the job's cgroup: how many; None if it has no cgroup."""
        where = self.job_cg.get(job.seq)
        if where is None or self.cg is None:
            return None
        return cgroups.signal_all(self.cg, where, sig, freeze)

    def _said(self, job: Job, n: int | None) -> str | None:
        if n is None:
            return None
        if not n:
            return None
        return f"pid {job.pid}" + (f" (+{n - 1} in its cgroup)" if n > 1 else "")

    def stop(self, job: Job) -> str | None:
        # Frozen first, so that nothing forks away between reading the cgroup and signalling.
        n = self._signal_cgroup(job, signal.SIGSTOP, freeze=True)
        if n is not None:
            return self._said(job, n)
        return f"pid {job.pid}" if self._signal(job, signal.SIGSTOP) else None

    def cont(self, job: Job) -> str | None:
        # No freeze: stopped processes do not fork.
        n = self._signal_cgroup(job, signal.SIGCONT, freeze=False)
        if n is not None:
            return self._said(job, n)
        return f"pid {job.pid}" if self._signal(job, signal.SIGCONT) else None

    def term(self, job: Job) -> None:
        self.terminate([job])  # SIGTERM to the whole job (and SIGCONT to a stopped one)

    def kill(self, job: Job) -> bool:
        where = self.job_cg.get(job.seq)
        if where is not None and self.cg is not None:
            return cgroups.kill(self.cg, where) > 0
        done = self._signal(job, signal.SIGKILL)
        self._signal(job, signal.SIGCONT)
        return done

    def terminate(self, jobs: list[Job]) -> str:
        for job in jobs:
            stopped = job.state is JobState.STOPPED or bool(job.stopped_by)
            if self._signal_cgroup(job, signal.SIGTERM, freeze=False) is not None:
                if stopped:
                    self._signal_cgroup(job, signal.SIGCONT, freeze=False)
                continue
            self._signal(job, signal.SIGTERM)
            if stopped:
                self._signal(job, signal.SIGCONT)  # a stopped process can't act on SIGTERM
        return ""  # the loop's own log line says it

    def term_finished(self, jobs: list[Job], hard: bool) -> bool:
        """Done when no process of any job is left: its cgroup is empty, or, without one,
        its session (a job's leader may die of SIGTERM while what it started ignores it)."""
        busy = any(job.seq in self.pending for job in jobs)  # its pid is on its way
        sids = []
        for job in jobs:
            where = self.job_cg.get(job.seq)
            if where is None or self.cg is None:
                if job.pid:
                    sids.append(job.pid)
            elif cgroups.populated(where):
                busy = True
                if hard:
                    cgroups.kill(self.cg, where)
        members = self.sensors.sessions(sids).members if sids else {}
        if hard:
            for sid in members:
                signal_group(sid, signal.SIGKILL)
        return not members and not busy

    def stopped_by_others(self, running: list[Job]) -> list[Job]:
        return [j for j in running if j.pid is not None and process_state(j.pid) == "T"]

    def own_cpu_seconds(self, live: list[Job]) -> float:
        # Only running jobs use CPU: scan /proc for their sessions only when there are some
        # (an idle or all-stopped scheduler reads almost nothing).  Stopped jobs keep their
        # last figure, so the total stays continuous.
        # A job in a cgroup: one read of its cpu.stat, daemons and reaped children included.
        running = []
        for job in live:
            if not job.pid or job.state is not JobState.RUNNING:
                continue
            where = self.job_cg.get(job.seq)
            cpu = cgroups.cpu_seconds(where) if where is not None else None
            if cpu is not None:
                job.cpu_seconds = cpu
            else:
                running.append(job.pid)
        if running:
            sample = self.sensors.sessions(running)
            for job in live:
                if job.pid in sample.cpu_by_sid:
                    job.cpu_seconds = sample.cpu_by_sid[job.pid]
        t = os.times()
        runner = _own_cpu(self.runner_pid) if self.runner_pid else 0.0
        return sum(j.cpu_seconds for j in live) + t.user + t.system + runner + self.finished_cpu

    # -- recovery ------------------------------------------------------------------------

    def old_runner_alive(self) -> bool:
        pid = self.old_runner
        return bool(pid and pid > 1 and process_state(pid) not in (None, "Z")
                    and "pbq" in " ".join(process_cmdline(pid)))

    def probe(self, jobs: list[Job]) -> dict[int, Probe]:
        """Before the lock: which saved jobs live, and how the gone ones ended.  A job whose
        end the old runner may still be writing is given ``RECORD_WAIT`` seconds (here, with
        no lock held)."""
        records = read_exit_records(self.exits, self.allow_group_write)
        out: dict[int, Probe] = {}
        waiting: list[Job] = []
        for job in jobs:
            if job.state not in (JobState.STARTING, JobState.RUNNING, JobState.STOPPED,
                                 JobState.EVICTING, JobState.TERMINATING, JobState.CANCELLING):
                continue
            pid, start = job.pid, job.pid_start
            if pid is None:
                # Its start was asked for, its pid never reached the ledger: a live process
                # started as this job, or the old runner's record of the job's end.
                found = self.find_job(f"{self.host}.{job.seq}")
                if found:
                    pid, start = found[0], process_start(found[0])
                else:
                    rec = exit_records_by_job(records.values()).get(job.seq)
                    if rec is None and self.old_runner_alive():
                        waiting.append(job)
                    if rec is not None:
                        out[job.seq] = self._probe_gone(rec, rec.pid, rec.start)
                    continue
            if same_process(pid, start) or self._ending(pid, start):
                out[job.seq] = Probe(alive=True, stopped=process_state(pid) == "T", pid=pid,
                                     pid_start=start)
                continue
            rec = records.get((pid, _round(start)))
            if rec is None and self.old_runner_alive():
                waiting.append(job)
            out[job.seq] = self._probe_gone(rec, pid, start)
        deadline = time.monotonic() + RECORD_WAIT
        while waiting and time.monotonic() < deadline and self.old_runner_alive():
            time.sleep(0.05)
            records = read_exit_records(self.exits, self.allow_group_write)
            by_job = exit_records_by_job(records.values())
            for job in list(waiting):
                if job.pid is None:
                    rec = by_job.get(job.seq)
                else:
                    rec = records.get((job.pid, _round(job.pid_start)))
                if rec is not None:
                    out[job.seq] = self._probe_gone(rec, rec.pid, rec.start)
                    waiting.remove(job)
        return out

    def find_job(self, job_id: str) -> list[int]:
        """Session leaders started as this job of this jobfile (found by their environment)."""
        out = []
        for pid in pids_with_env("PBQ_JOB_ID", job_id):
            with contextlib.suppress(OSError):
                ours = str(self.jobfile)
                if os.getsid(pid) == pid and process_environ(pid).get("PBQ_JOBFILE") == ours:
                    out.append(pid)
        return out

    @staticmethod
    def _probe_gone(rec: ExitRecord | None, pid: int | None, start: float | None) -> Probe:
        if rec is None:
            return Probe(pid=pid, pid_start=start)
        return Probe(pid=pid, pid_start=start, ended_at=rec.time,
                     exit=outcome_of(rec.status, rec.cpu, rec.maxrss, RECORDED))

    def _ending(self, pid: int, start: float | None) -> bool:
        """A zombie the live old runner is about to reap and record: adopt it, and the
        adoption poll waits for the record."""
        if process_state(pid) != "Z" or process_start(pid) != start or self.old_runner is None:
            return False
        return process_parent(pid) == self.old_runner and self.old_runner_alive()

    def adopt(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.pid is not None:
                self.adopted[job.seq] = job
                self._find_cgroup(job, f"{self.host}.{job.seq}", job.pid)
                where = self.job_cg.get(job.seq)
                if where is not None and cgroups.thaw(where):
                    # Killed between freezing and thawing (a stop, a term): the job would
                    # never run nor end.  A SIGSTOP it got takes effect now, and a stop by
                    # "someone else" is continued as always.
                    self.log(f"job {self.host}.{job.seq}: thawed its cgroup, left frozen by a "
                             "scheduler that died while signalling it")
        self._clean_cgroups()
        if not self.adopted and not self.old_runner_alive():
            # Recovery has read every record an earlier runner left, and no job of an earlier
            # run is left whose end a runner could still write (a runner from two runs back
            # may outlive the one in the pid file): the file starts afresh (it stays bounded).
            with contextlib.suppress(OSError):
                os.truncate(self.exits, 0)

    def _clean_cgroups(self) -> None:
        """At start, after adoption: job cgroups of this scheduler that no live job owns are
        leftovers of jobs that ended while no scheduler watched (their leftover processes are
        killed, as at any job's end) or of a crash; removed."""
        if self.cg is None:
            return
        owned = set(self.job_cg.values())
        for where in self.cg.children():
            if where in owned:
                continue
            left = cgroups.kill(self.cg, where)
            if left:
                self.log(f"killed {left} leftover process(es) of an ended job ({where})")
            if not cgroups.remove(where):
                self.cg_unremoved.append(where)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()  # the runner exits after its last job (none, normally)
            self.sock = None
        if self.runner_pid is not None:
            # Not waited for: a runner with jobs left (term gave up on a D-state process)
            # goes on reaping them without us.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.runner_pid, os.WNOHANG)
        if self.cg is not None:
            for where in self.cg_unremoved:
                cgroups.wait_empty(where, cgroups.EMPTY_WAIT)
                cgroups.remove(where)
            for where in self.job_cg.values():  # ends not recorded (term) or jobs left running
                cgroups.remove(where)  # only if empty: a live job keeps its cgroup for adoption
            self.cg.close()  # only if no job cgroup is left (jobs live on after `kill`)


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)
