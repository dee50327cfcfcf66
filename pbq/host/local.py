"""Jobs as processes on this machine, started by the job runner (``runner.py``).

The scheduler is a child subreaper: if the runner dies, its jobs become the scheduler's
children, which it notices at once (end of file on the runner's socket, SIGCHLD), reaps
with their real statuses, and a new runner starts the next jobs.  Jobs of an earlier run of
this host (adopted after a restart) are nobody's children here: their end is noticed by
polling, and their exit status is the old runner's record in ``JOBFILE.HOST.exits``
(``earlier.py`` reads what an earlier run left).

Every job is a session (and process group) of its own.  Where a writable cgroup v2 exists
(``jobcgroups.py``), every job is also in a cgroup of its own, which holds every process of the
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

from ..sensors import Sensors, process_start, process_state
from .earlier import EarlierRun
from .executor import Answer, Ended, EnvFor, NotStarted, Revoked, Started
from .jobcgroups import JobCgroups
from .joboutput import JobOutput
from .jobs import Job, JobState, Outcome, outcome_of
from .ledger import Log
from .recovery import Probe
from .runner import Reader, encode

PR_SET_CHILD_SUBREAPER = 36
START_REPLY_WAIT = 30.0  # seconds the runner has to answer a start request
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def _own_cpu(pid: int) -> float:
    """utime + stime of one process (not of its children)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def start_message(job: Job, env: dict[str, str], output: JobOutput | None,
                  output_dir: Path | None, cgroups: JobCgroups, ahead: bool) -> tuple[Any, ...]:
    """The job runner's ``start`` message for a job (see ``runner.py``)."""
    from ..cmdline import job_argv

    out = err = None
    truncate = True
    if output is not None:
        paths = output.paths(job.seq)
        if paths is not None:
            out, err = paths
            truncate = output.truncates(job.seq)
    elif output_dir is not None:
        jid = env["PBQ_JOB_ID"]
        out, err = str(output_dir / f"{jid}.out"), str(output_dir / f"{jid}.err")
    cg = cgroups.for_new_job(job.seq)
    return ("start", job.seq, job_argv(job.line), env, out, err, cg, truncate, ahead)


class LocalExecutor:
    name = "local"
    counts_foreign_load = True
    queues_ahead = True

    @property
    def drm_name(self) -> str | None:
        return None  # not a resource manager

    def __init__(self, host: str, jobfile: Path, exits: Path, nice: int, output_dir: Path | None,
                 log: Log, sensors: Sensors, old_runner: int | None = None,
                 allow_group_write: bool = False, containment: str = "auto") -> None:
        self.host = host
        self.jobfile = jobfile
        self.exits = exits
        self.nice = nice
        self.output_dir = output_dir
        self.output: JobOutput | None = None  # its output files (set by the loop)
        self.log = log
        self.sensors = sensors
        self.earlier = EarlierRun(host, jobfile, exits, allow_group_write, old_runner)
        self.subreaper = False  # set by the loop's run(): tests drive passes in their own process
        self.runner_pid: int | None = None
        self.sock: socket.socket | None = None
        self.reader = Reader()
        self.inbox: list[tuple[Any, ...]] = []
        self.by_pid: dict[int, Job] = {}  # jobs whose end the runner will report
        self.ends_owed = 0  # see ends_in_flight
        # Start requests not answered yet: seq -> (job, its environment, answer deadline).
        self.pending: dict[int, tuple[Job, dict[str, str], float]] = {}
        self.answers: list[Answer] = []  # for start_answers
        self.queued: set[int] = set()  # seqs of starts asked for ahead, not answered yet
        self.revoke_sent = False  # taken back, not all answered yet
        self.orphans: dict[int, Job] = {}  # jobs of a dead runner: our children now
        self.adopted: dict[int, Job] = {}  # by seq: jobs of an earlier run, polled
        self.awaiting_usage: dict[int, Job] = {}
        self.usage_done: list[tuple[Job, float, int]] = []
        self.unacked: list[int] = []
        self.finished_cpu = 0.0  # CPU seconds of ended jobs (and dead runners)
        self.on_runner_started: Callable[[int], None] | None = None  # the loop records its pid
        self.on_stray: Callable[[int, int], object] | None = None  # (pid, status) of a stray
        self.cgroups = JobCgroups(host, str(jobfile), containment, log)
        self.cg_cpu_done: set[int] = set()  # pids whose CPU the cgroup counted already

    # -- the runner ---------------------------------------------------------------

    def fileno(self) -> int | None:
        return self.sock.fileno() if self.sock is not None else None

    def accepting(self, mono: float) -> bool:
        return True

    def running_for_real(self) -> None:
        """``pbq-single`` itself (not a test driving passes in its own process): jobs of a
        dead runner become our children, not init's."""
        self.subreaper = set_subreaper()

    def ends_in_flight(self) -> int:
        """Jobs that ended whose "exited" has not been read yet, known because a start
        queued ahead was made in their slots (the runner answers for it first)."""
        return self.ends_owed

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
        self.ends_owed = 0
        self.unacked.clear()  # their records are ours now (the ledger holds them)
        for job, env, _ in self.pending.values():  # did they start before it died?
            self.answers.append(self._lost_start(job, env))
        self.pending.clear()
        self.queued.clear()
        self.revoke_sent = False

    # -- starting -------------------------------------------------------------------

    def start(self, jobs: list[Job], env_for: EnvFor, now: float,
              wait: bool = True, ahead: bool = False) -> list[Answer]:
        """Ask the runner to start the jobs.  Without ``wait`` the answers come later (from
        ``start_answers``, after ``events``): the loop records other ends meanwhile, and the
        runner spawns while the scheduler writes.  With ``ahead`` the runner queues them and
        starts one whenever one of its jobs ends (no deadline: that may take a while)."""
        if self.sock is None:
            self._start_runner()
        deadline = time.monotonic() + START_REPLY_WAIT
        requests = []
        for job in jobs:
            env = env_for(job)
            requests.append((job, env, start_message(job, env, self.output, self.output_dir,
                                                     self.cgroups, ahead)))
        if self.output is not None:  # where their output goes, on record before they run
            self.output.requested([(j.seq, j.number, now) for j, _, _ in requests])
        for job, env, _ in requests:
            self.pending[job.seq] = (job, env, float("inf") if ahead else deadline)
            if ahead:
                self.queued.add(job.seq)
        for _, _, msg in requests:
            if not self._send(msg):
                break  # the runner is gone: each is answered as lost (did it start?) below
        if self.sock is not None and not self._drain():
            self._runner_gone()
        if not wait or ahead:
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
            if kind in ("started", "failed", "again", "revoked") and msg[1] in self.pending:
                job, env, _ = self.pending.pop(msg[1])
                self.queued.discard(job.seq)
                if kind == "revoked":
                    self.cgroups.unassign(job.seq)
                    self.answers.append(Revoked(job))
                elif kind == "started":
                    self.ends_owed += bool(msg[6])  # the end that freed its slot is next
                    self.by_pid[msg[2]] = job
                    self.cgroups.started(job.seq, env["PBQ_JOB_ID"], msg[5])
                    self.answers.append(Started(job, pid=msg[2], pid_start=msg[3], when=msg[4]))
                elif kind == "failed":
                    self.cgroups.not_started(job.seq)
                    self.answers.append(NotStarted(job, Outcome(msg[2], note=msg[3]), msg[3]))
                else:
                    self.cgroups.not_started(job.seq)
                    self.answers.append(NotStarted(job, None, f"cannot start processes ({msg[2]})"))
            else:
                keep.append(msg)
        self.inbox = keep
        if not self.queued:
            self.revoke_sent = False
        for seq, (job, env, deadline) in list(self.pending.items()):
            if mono >= deadline:
                del self.pending[seq]
                self.answers.append(self._lost_start(job, env))

    def start_queued(self, n: int) -> None:
        if self.queued and self.sock is not None and not self._send(("go", n)):
            self._runner_gone()

    def revoke(self) -> None:
        if not self.queued or self.sock is None or self.revoke_sent:
            return
        self.revoke_sent = True
        if not self._send(("revoke",)):
            self._runner_gone()

    @property
    def revoking(self) -> bool:
        return self.revoke_sent and bool(self.queued)

    def start_answers(self) -> list[Answer]:
        out, self.answers = self.answers, []
        return out

    def _lost_start(self, job: Job, env: dict[str, str]) -> Started | NotStarted:
        """The runner died (or hung) before answering: did the job start?"""
        found = self.earlier.find_job(env["PBQ_JOB_ID"])
        if found:
            self.orphans[found[0]] = job
            self.cgroups.find(job.seq, found[0])
            return Started(job, pid=found[0], pid_start=process_start(found[0]))
        self.cgroups.not_started(job.seq)
        return NotStarted(job, None, "the job runner did not answer")

    # -- ends -----------------------------------------------------------------------

    def _job_ended(self, job: Job, pid: int | None) -> None:
        """A job's leader exited: that is the job's end (as in PBQ), and whatever it left
        running in its cgroup is killed now.  Its CPU time, daemons included, is the
        cgroup's; the runner's wait4 figure then does not count again."""
        cpu = self.cgroups.leader_ended(job.seq)
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
                    self.ends_owed = max(0, self.ends_owed - 1)
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
        self.revoke()  # starts queued ahead are given back: every request gets its answer
        while self.sock is not None and (self.awaiting_usage or self.pending):
            pending = {m[1] for m in self.inbox if m[0] == "usage"}
            answered = {m[1] for m in self.inbox
                        if m[0] in ("started", "failed", "again", "revoked")}
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
            emptied = self.cgroups.recorded(e.job.seq)
            if self.output is not None:
                # Only a job whose every process is gone may hand its output files on.
                self.output.ended(e.job.seq, reusable=emptied)

    def poll(self, live: list[Job], now: float, mono: float) -> list[Ended]:
        """Adopted jobs are not our children: their ends are noticed by polling (``earlier``)."""
        self.cgroups.remove_unremoved()
        ended: list[Ended] = []
        for job, outcome, when in self.earlier.ended(list(self.adopted.values()), now, mono):
            before = job.cpu_seconds
            self._job_ended(job, None)
            self.finished_cpu += max(before, job.cpu_seconds)
            del self.adopted[job.seq]
            ended.append(Ended(job, outcome, when))
        return ended

    # -- signals ----------------------------------------------------------------------

    def _signal(self, job: Job, sig: int) -> bool:
        if job.pid is None:
            return False
        if job.seq in self.adopted and not self.earlier.alive(job):
            return False  # never signal a pid we did not verify: it may be someone else's now
        return signal_group(job.pid, sig)

    def _signal_cgroup(self, job: Job, sig: int, freeze: bool) -> int | None:
        return self.cgroups.signal(job.seq, sig, freeze)

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
        n = self.cgroups.kill(job.seq)
        if n is not None:
            return n > 0
        done = self._signal(job, signal.SIGKILL)
        self._signal(job, signal.SIGCONT)
        return done

    def terminate(self, jobs: list[Job]) -> str:
        self.revoke()  # before any job ends: no queued start may take its slot
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
            left = self.cgroups.busy(job.seq, hard)
            if left is None and job.pid:
                sids.append(job.pid)
            busy = busy or bool(left)
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
            cpu = self.cgroups.cpu(job.seq)
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

    def probe(self, jobs: list[Job]) -> dict[int, Probe]:
        return self.earlier.probe(jobs)

    def adopt(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.pid is not None:
                self.adopted[job.seq] = job
                self.cgroups.find(job.seq, job.pid)
                if self.cgroups.thaw(job.seq):
                    # Killed between freezing and thawing (a stop, a term): the job would
                    # never run nor end.  A SIGSTOP it got takes effect now, and a stop by
                    # "someone else" is continued as always.
                    self.log(f"job {self.host}.{job.seq}: thawed its cgroup, left frozen by a "
                             "scheduler that died while signalling it")
        self.cgroups.clean()
        if not self.adopted and not self.earlier.runner_alive():
            # No job of an earlier run is left whose end a runner could still write (a runner
            # from two runs back may outlive the one in the pid file).
            self.earlier.forget_records()

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
        self.cgroups.close()
