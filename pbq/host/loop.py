"""``pbq-single``: the per-host scheduler loop -- the pass order and the wiring, no more.

One pass of the loop, always in this order (supervisor's shape)::

    wait     until the next tick, a signal, or news from the executor (the job runner's socket)
    signals  act on what the handlers recorded (handlers only record)
    events   jobs that ended: outcome on the ledger (joblog, .error, journal), then acknowledged
    tick     once per interval: control file, hostfile, sensors, polled ends, heartbeat
    act      the pure policy decides how many, ``choose`` which; then stop / continue / start
    files    snapshot or journal, ``.running``/``.stopped`` if they changed

``tick(now)`` and ``act(now)`` take the time, so tests can drive them.  Who changes a job's
state: only :class:`~pbq.host.jobs.JobBook`.  What must survive a crash: the
:class:`~pbq.host.ledger.Ledger`.  How jobs run: an executor (``local.py`` or ``drm.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .. import __version__
from ..config import Config
from ..errors import PbqError
from ..hostfile import Host, find_host, load_hostfile
from ..hostlog import HostLog
from ..jobfile import JobQueue, Txn
from ..policy import Candidate, Decision, Mode, View, choose, decide, load_limit
from ..safety import check_input_file, control_file_trusted
from ..sensors import Sensors
from ..sidefiles import (
    HostStatus,
    PidRecord,
    is_local,
    joblog_row,
    liveness,
    read_pidfile,
    read_status,
    write_pidfile,
    write_status,
)
from ..statefiles import (
    HostFiles,
    append_bytes,
    atomic_write,
    line_to_text,
    read_json,
    unlink_quietly,
)
from .executor import Ended, Executor, NotStarted, Started
from .jobs import UNKNOWN_EXIT, Job, JobBook, JobState, Outcome
from .ledger import Ledger
from .local import LocalExecutor, set_subreaper
from .recovery import Action, Step, plan_recovery

PREFETCH_MAX = 16  # most lines a host takes ahead of its free slots
VIEW_DEBOUNCE = 0.05  # seconds


@dataclass
class SchedulerOptions:
    hostfile: Path
    jobfile: Path
    host: str  # the name in file names and in the hostfile
    config: Config
    output_dir: Path | None = None
    exit_when_empty: bool = False
    allow_group_write: bool = False
    lock: str = "flock"
    echo_log: bool = False


class Scheduler:
    def __init__(
        self,
        opts: SchedulerOptions,
        sensors: Sensors | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.opts = opts
        self.cfg = opts.config
        self.jobfile = opts.jobfile
        self.host = opts.host
        self.files = HostFiles(opts.jobfile, opts.host)
        self.sensors = sensors or Sensors()
        self.clock = clock
        self.mono = monotonic
        self.log = HostLog(self.files.log, self.cfg.log.max_bytes, self.cfg.log.backups, echo=opts.echo_log)
        self.queue = JobQueue(
            opts.jobfile,
            lock=opts.lock,
            fsync=self.cfg.jobfile.fsync,
            compact_after=self.cfg.jobfile.compact_after,
            stale_lock_after=self.cfg.jobfile.stale_lock_after,
            log=self.log,
            clock=clock,
        )
        self.interval = self.cfg.scheduler.interval
        self.book = JobBook(opts.host)
        self.ledger = Ledger(self.files, self.book, self.log, self.cfg.jobfile.fsync, monotonic)
        self.executor: Executor | None = None
        self.host_entry: Host | None = None
        # mode
        self.mode = Mode.RUN
        self.paused = False  # `stop` in force
        self.quitting = False
        self.term_deadline: float | None = None
        self.killed_hard = False
        self.exit_code = 0
        # measurements
        self.foreign = 0.0
        self.foreign_hist: deque[tuple[float, float]] = deque()
        self.limit = 0.0
        self.active_users = 0
        self.work_time = False
        self.mem_available: int | None = None
        self.last_evict = -math.inf
        self.avg_runtime: float | None = None  # moving average of job run times
        # bookkeeping
        self.empty_sig: tuple[int | float, ...] | None = None  # jobfile signature when found empty
        self.next_tick = 0.0
        self.next_load_log = 0.0
        self.next_history = 0.0
        self.written_views: dict[str, bytes] = {}
        self.views_written_at = -math.inf
        self.views_stale = False
        self.signals: list[int] = []
        self.control_ack: str | None = None
        self.hostfile_mtime: float | None = None
        self.usage_buf: list[tuple[bytes, int, float, float]] = []  # (line, maxrss, cpu, runtime)
        self.started_at = clock()
        self.input_error: str | None = None  # the jobfile became unsafe (e.g. world-writable)
        self.runner_pid: int | None = None
        self._wake_r = self._wake_w = -1

    # ---------------------------------------------------------------- set-up

    def load_host(self) -> None:
        """(Re)read the hostfile; the host's entry gives max, wday and interactive."""
        check_input_file(self.opts.hostfile, "hostfile", self.opts.allow_group_write)
        hosts = load_hostfile(self.opts.hostfile)
        self.host_entry = find_host(hosts, self.host, str(self.opts.hostfile))
        with contextlib.suppress(OSError):
            self.hostfile_mtime = os.stat(self.opts.hostfile).st_mtime

    def _make_executor(self, old: PidRecord | None) -> Executor:
        h = self.host_entry
        assert h is not None
        if h.drm:
            from .drm import DrmExecutor

            log_dir = self.opts.output_dir or self.jobfile.with_name(f"{self.jobfile.name}.{self.host}.drmlogs")
            return DrmExecutor(self.host, h, self.cfg, Path.cwd(), log_dir, self.log,
                               self.jobfile.with_name(self.jobfile.name + ".usage"), self.mono)
        local = old is not None and is_local(old)
        ex = LocalExecutor(self.host, self.jobfile, self.files.exits, self.cfg.scheduler.nice, self.opts.output_dir,
                           self.log, self.sensors, old.runner if local and old is not None else None,
                           containment=self.cfg.scheduler.containment)
        ex.on_runner_started = self._runner_started
        return ex

    def startup(self) -> None:
        self.load_host()
        check_input_file(self.jobfile, "jobfile", self.opts.allow_group_write)
        if not self.jobfile.exists():
            raise PbqError(f"no such jobfile (create it, e.g. with: touch {self.jobfile})", path=str(self.jobfile))
        if self.opts.output_dir is not None:
            try:
                self.opts.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise PbqError(f"cannot create output directory: {err.strerror}",
                               path=str(self.opts.output_dir)) from None
        old = read_pidfile(self.files.pid)
        self.executor = self._make_executor(old)
        self.book = self.ledger.load()
        probes = self.executor.probe(list(self.book))  # outside the lock: it may wait
        with self.queue.transaction() as txn:
            self._claim_pidfile()
            committed = txn.state.ops.get(self.host, 0)
            if self.book.counters.next_op <= committed:
                self.book.counters.next_op = committed + 1
            drm = None if isinstance(self.executor, LocalExecutor) else self.executor.name
            self._apply_recovery(plan_recovery(list(self.book), committed, probes, self.host, drm), txn)
        self.ledger.save()
        self._write_views(force=True)
        h = self.host_entry
        assert h is not None
        self.log(
            f"pbq {__version__} scheduler for host {self.host} started, pid {os.getpid()}, "
            f"max {h.max:g} wday {h.wday:g} interactive {h.interactive}, "
            f"work hours {self.cfg.schedule.calendar.describe()}, interval {self.interval:g}s"
        )
        self.log.flush()

    def _claim_pidfile(self) -> None:
        """Refuse a second scheduler for this host and jobfile; else write ``.pid``.

        Runs under the jobfile lock so two schedulers starting at once can't both win.
        """
        info = read_pidfile(self.files.pid)
        verdict = liveness(info, read_status(self.files.status), self.clock(), self.jobfile)
        if info is not None and verdict.alive:
            if verdict.exact:
                how = f"stop it first (pbq control ... quit {self.host})"
            else:
                how = "stop it there, or wait until its heartbeat is old"
            raise PbqError(f"a scheduler for host {self.host} is already running ({verdict.reason}); {how}",
                           path=str(self.files.pid))
        if info is not None:
            how = "recovering" if verdict.exact else "taking over"
            self.log(f"found stale {self.files.pid.name} ({verdict.reason}): {how}")
        self._write_pidfile()

    def _write_pidfile(self) -> None:
        write_pidfile(self.files.pid, PidRecord.current(runner=self.runner_pid), fsync=self.cfg.jobfile.fsync)

    def _runner_started(self, pid: int) -> None:
        self.runner_pid = pid
        try:
            self._write_pidfile()
        except PbqError as err:
            self.ledger.disk_problem(err)

    def _apply_recovery(self, steps: list[Step], txn: Txn) -> None:
        """Carry out the recovery plan (under the jobfile lock; nothing here waits)."""
        assert self.executor is not None
        adopted = []
        for step in steps:
            job, p = step.job, step.probe
            if step.why:
                self.log(step.why)
            if step.action is Action.FORGET:
                self.book.drop(job)
            elif step.action is Action.ADOPT:
                if job.pid is None and p.pid is not None:
                    job.pid, job.pid_start = p.pid, p.pid_start
                if job.cluster_id is None and p.cluster_id is not None:
                    job.cluster_id = p.cluster_id
                self.book.adopt(job, stopped=p.stopped)
                adopted.append(job)
                if job.pid is not None:
                    self.log(f"adopted job {self.book.job_id(job)} pid {job.pid} ({job.state.value}) "
                             "from the previous run")
            elif step.action is Action.FINISH:
                assert p.exit is not None
                self._finish(job, p.exit, when=p.ended_at)
            elif step.action in (Action.BACK_FRONT, Action.BACK_END):
                front = step.action is Action.BACK_FRONT
                if job.state in (JobState.REQUEUE_FRONT, JobState.REQUEUE_END):
                    job.putback_op = None  # its put-back never committed: redo it now
                else:
                    self.book.requeue(job, front=front)
        self.executor.adopt(adopted)
        if self.ledger.flush(self.queue, txn):
            self.empty_sig = None

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        self._install_signals()
        try:
            self.startup()
            if isinstance(self.executor, LocalExecutor):
                # Jobs of a dead runner become our children, not init's.
                self.executor.subreaper = set_subreaper()
        except BaseException:
            if self.executor is not None:
                self.executor.close()
            raise
        try:
            # The first pass runs at once (not one interval later): a short queue starts now.
            done = self.pass_once(self.clock())
            while not done:
                done = self.step()
        finally:
            self._shutdown()
        return self.exit_code

    def step(self) -> bool:
        """Wait for the next event, then make one pass.  True when the scheduler is done."""
        self._wait()
        return self.pass_once(self.clock())

    def pass_once(self, now: float) -> bool:
        """One pass in fixed order: signals, events, tick (when due), act, files."""
        self._handle_signals()
        assert self.executor is not None
        self._record_ends(self.executor.events(now), now)
        if self.mono() >= self.next_tick:
            self.tick(now)
        self.act(now)
        self.ledger.save_if_changed()
        self._write_views()
        self.log.flush()
        return self._done()

    def _install_signals(self) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r, self._wake_w = r, w
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._record_signal)
        # SIGCHLD needs a handler (not SIG_DFL) so that it reaches the wakeup fd: the runner's
        # death, and the end of a job a dead runner left to us, wake the loop.
        signal.signal(signal.SIGCHLD, lambda s, f: None)

    def _record_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)  # handlers only record; the loop acts

    def _wait(self) -> None:
        timeout = max(0.0, self.next_tick - self.mono())
        if self.term_deadline is not None:
            # Processes of a job's session may not be our children: poll for their end.
            timeout = min(timeout, max(0.0, self.term_deadline - self.mono()), 0.1)
        if self.views_stale:
            timeout = min(timeout, VIEW_DEBOUNCE)  # the views lag the jobs by at most that
        if self.signals or (self.executor is not None and self.executor.has_news()):
            timeout = 0.0
        fds = [self._wake_r]
        runner = self.executor.fileno() if self.executor is not None else None
        if runner is not None:
            fds.append(runner)
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            ready = []
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while os.read(self._wake_r, 4096):
                    pass

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            name = signal.Signals(sig).name
            if sig == signal.SIGUSR1:
                self._command("stop", name)
            elif sig == signal.SIGCONT:
                self._command("cont", name)
            elif sig == signal.SIGUSR2:
                self._command("quit", name)
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self._command("term", name)
            elif sig == signal.SIGHUP:
                self.log("SIGHUP: reloading the hostfile")
                self._reload_hostfile(force=True)

    def _command(self, command: str, source: str) -> None:
        """Mode transitions requested by a signal or a control file."""
        if command == "stop":
            if not self.paused:
                self.log(f"{source}: stopping all jobs; starting nothing until cont")
            self.paused = True  # RUN/QUIT -> PAUSED: the policy stops every job
        elif command == "cont":
            if self.paused:
                self.log(f"{source}: continuing")
            self.paused = False  # PAUSED -> RUN (or QUIT): jobs continue under the load policy
            self.book.release_user_stops()
        elif command == "quit":
            if not self.quitting:
                self.log(f"{source}: quitting: starting nothing new; exiting when the jobs are done")
            self.quitting = True  # -> QUIT
            self._give_back_claimed()
        elif command == "term":
            if self.term_deadline is None:
                self._terminate(source)
        elif command == "kill":
            self.log(f"{source}: killed (jobs keep running)")
            self.log.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self._update_mode()

    def _update_mode(self) -> None:
        if self.term_deadline is not None:
            self.mode = Mode.TERM
        elif self.paused:
            self.mode = Mode.PAUSED
        elif self.quitting:
            self.mode = Mode.QUIT
        else:
            self.mode = Mode.RUN

    def _terminate(self, source: str) -> None:
        """TERM: SIGTERM to every job's group now, SIGKILL after the grace period (or cancel
        in the DRM).  The jobs stay in .running/.stopped (and in the state, TERMINATING), so
        a restart -- or ``cat *.running *.stopped >> JOBFILE`` -- puts them back."""
        assert self.executor is not None
        grace = self.cfg.scheduler.term_grace
        jobs = self.book.in_state(JobState.RUNNING, JobState.STOPPED, JobState.STARTING)
        self.log(f"{source}: terminating {len(jobs)} job(s) (SIGKILL after {grace:g} s)")
        self.term_deadline = self.mono() + grace
        self._give_back_claimed()
        said = self.executor.terminate(jobs)
        if not isinstance(self.executor, LocalExecutor):
            self.log(said)
        for job in jobs:
            self.book.terminating(job)
        try:
            self.ledger.save(fsync=True)
        except PbqError as err:
            self.ledger.disk_problem(err)

    def _done(self) -> bool:
        assert self.executor is not None
        if self.mode is Mode.TERM:
            assert self.term_deadline is not None
            hard = self.mono() >= self.term_deadline and not self.killed_hard
            finished = self.executor.term_finished(self.book.in_state(JobState.TERMINATING, JobState.EVICTING), hard)
            if hard:
                self.killed_hard = True
                self.term_deadline = self.mono() + 5.0
            if finished:
                return True
            # After SIGKILL, give up waiting for processes that won't die (D state) after 5 s.
            return self.killed_hard and self.mono() >= self.term_deadline
        if self.book.live() or self.book.in_state(JobState.STARTING, JobState.CLAIMED):
            return False
        if self.ledger.pending():
            return False  # outcomes not written yet (full disk): wait for them
        if self.mode is Mode.QUIT:
            return True
        if self.opts.exit_when_empty and self.mode is Mode.RUN:
            return self.empty_sig is not None and self.empty_sig == self._jobfile_sig()
        return False

    def _shutdown(self) -> None:
        if self.executor is not None:
            self.executor.close()
        self.ledger.flush(self.queue)
        self._flush_usage()
        if self.opts.exit_when_empty and self.mode is Mode.RUN:
            self._compact_if_due(self.clock(), force=True)
        state = "terminated" if self.mode is Mode.TERM else "exited"
        with contextlib.suppress(PbqError):
            self.ledger.save(fsync=True)
        self._write_views(force=True)
        c = self.book.counters
        self.log(f"scheduler exits ({state}): {c.done} done, {c.failed} failed")
        self.log.flush()
        with contextlib.suppress(PbqError):
            self._write_status(self.clock(), state=state)
        info = read_pidfile(self.files.pid)
        if info is not None and info.pid == os.getpid():
            unlink_quietly(self.files.pid)

    # ---------------------------------------------------------------- ends

    def _record_ends(self, ended: list[Ended], now: float) -> None:
        """Put ends on the ledger, then tell the executor they are there.

        Ends are written (joblog, .error, journal) before they are acknowledged: until then
        the job runner keeps them, and writes them to ``.exits`` if the scheduler dies."""
        assert self.executor is not None
        for e in ended:
            self._ended(e, now)
        for job, cpu, maxrss in self.executor.usage():
            runtime = max(0.0, now - (job.started or now))
            self.usage_buf.append((job.line, maxrss, cpu, runtime))
        if ended:
            if self.ledger.flush(self.queue):
                self.empty_sig = None
            self.ledger.save_if_changed()
            self.executor.recorded(ended)

    def _ended(self, e: Ended, now: float) -> None:
        job = e.job
        if job.state is JobState.TERMINATING:
            self.book.terminated(job)  # TERMINATING -> TERMINATED
            if self.mode is not Mode.TERM:  # terminated by an earlier run: its line goes back now
                self.book.requeue(job, front=True)
            return
        if job.state is JobState.EVICTING:
            self.book.requeue(job, front=True)  # EVICTING -> REQUEUE_FRONT
            self.log(f"job {self.book.job_id(job)} killed to free memory: back at the front of the jobfile")
            return
        if job.state in (JobState.RUNNING, JobState.STOPPED, JobState.STARTING):
            self._finish(job, e.outcome, when=e.when)

    def _finish(self, job: Job, out: Outcome, when: float | None = None) -> None:
        """A job ended: its joblog row, .error line and log line; then it leaves the book,
        settles its retry count, or goes back for a retry."""
        end = when or self.clock()
        runtime = max(0.0, end - (job.started or end))
        self.avg_runtime = runtime if self.avg_runtime is None else 0.8 * self.avg_runtime + 0.2 * runtime
        if out.maxrss or out.cpu_seconds:
            self.usage_buf.append((job.line, out.maxrss, out.cpu_seconds, runtime))
        host_col = f"{self.host}:{job.cluster_id}" if job.cluster_id else self.host
        row = joblog_row(job.seq, host_col, job.started or end, runtime, out.exit_code, out.signal, job.line)
        self.ledger.record(row=row)
        how = f"exit {out.exit_code}" if not out.signal else f"signal {out.signal}"
        if out.exit_code == UNKNOWN_EXIT and not out.signal:
            how = "outcome UNKNOWN"
        note = f" ({out.note})" if out.note else ""
        who = f"pid {job.pid}" if job.pid else f"cluster id {job.cluster_id}" if job.cluster_id else "never started"
        jid = self.book.job_id(job)
        self.log(f"finished {jid} {who} {how} after {runtime:.1f}s{note}: {line_to_text(job.line)}")
        c = self.book.counters
        retries = self.cfg.scheduler.retries
        if not out.ok and job.tries < retries and out.exit_code != UNKNOWN_EXIT:
            job.tries += 1
            self.book.requeue(job, front=False)
            self.log(f"retry {job.tries}/{retries} of {jid}: back at the end of the jobfile")
            return
        if out.ok:
            c.done += 1
        else:
            c.failed += 1
            self.ledger.record(error_line=job.line)
        if job.tries:
            self.book.settling(job)  # its retry count is cleared under the next lock
        else:
            self.ledger.drop(job)

    # ---------------------------------------------------------------- tick

    def tick(self, now: float) -> None:
        """Once per interval: requests, sensors, polled ends, heartbeat."""
        assert self.executor is not None
        mono = self.mono()
        self.next_tick = mono + self.interval
        self._check_control_file()
        self._reload_hostfile()
        self._sense(now, mono)
        self._record_ends(self.executor.poll(self.book.live(), now, mono), now)
        if self.ledger.flush(self.queue):
            self.empty_sig = None
        self._flush_usage()
        if self.ledger.disk_error is not None:
            self.ledger.retry_disk(self.queue)
        self._compact_if_due(now)
        if self.book.changed:
            self.ledger.snapshot_soon()  # at least one snapshot per tick
        self._write_status(now)
        if mono >= self.next_load_log:
            self.next_load_log = mono + self.cfg.log.load_every
            c = self.book.counters
            self.log(
                f"load {self.foreign + self.book.running_count():.2f} (foreign {self.foreign:.2f}) "
                f"limit {self.limit:g}: {self.book.running_count()} running, "
                f"{len(self.book.in_state(JobState.STOPPED))} stopped, {c.done} done, {c.failed} failed"
            )
        if mono >= self.next_history:
            self.next_history = mono + self.cfg.history.every
            self._append_history(now)

    def _sense(self, now: float, mono: float) -> None:
        assert self.executor is not None and self.host_entry is not None
        h = self.host_entry
        self.work_time = self.cfg.schedule.calendar.is_work_time(datetime.fromtimestamp(now))
        if not self.executor.counts_foreign_load:
            # A cluster head node: max/wday count our jobs queued or running in the DRM.
            self.foreign, self.active_users = 0.0, 0
            self.limit = load_limit(h.max, h.wday, 0, self.work_time, 0)
            self.foreign_hist.clear()
            return
        own = self.executor.own_cpu_seconds(self.book.live())
        self.foreign = self.sensors.foreign_load(own, mono)
        self.foreign_hist.append((mono, self.foreign))
        settle = self.cfg.scheduler.settle
        while self.foreign_hist and self.foreign_hist[0][0] < mono - settle - 1e-6:
            self.foreign_hist.popleft()
        self.active_users = self.sensors.active_users(self.cfg.interactive.idle_minutes * 60, now)
        self.limit = load_limit(h.max, h.wday, h.interactive, self.work_time, self.active_users)
        if self.cfg.scheduler.memfree:
            self.mem_available = self.sensors.mem_available()

    def _check_control_file(self) -> None:
        path = self.files.control
        try:
            st = os.stat(path)
        except OSError:
            return
        why = control_file_trusted(st)
        req = read_json(path)
        unlink_quietly(path)
        if why is not None:
            self.log(f"ignoring control request {path.name}: {why}")
            return
        if not isinstance(req, dict) or req.get("command") not in ("stop", "cont", "quit", "term", "kill"):
            self.log(f"ignoring unreadable control request {path.name}")
            return
        self.control_ack = str(req.get("id", ""))
        cmd = str(req["command"])
        if cmd == "kill":
            self._write_status(self.clock())
        self._command(cmd, f"control request from {req.get('by', '?')}")

    def _reload_hostfile(self, force: bool = False) -> None:
        try:
            mtime = os.stat(self.opts.hostfile).st_mtime
        except OSError:
            return
        if not force and mtime == self.hostfile_mtime:
            return
        old = self.host_entry
        try:
            self.load_host()
        except PbqError as err:
            self.hostfile_mtime = mtime
            self.log(f"hostfile changed but is not usable, keeping the old settings: {err}")
            return
        h = self.host_entry
        if old is not None and h is not None and bool(old.drm) != bool(h.drm):
            self.host_entry = old  # a running scheduler does not change executors
            self.log("hostfile changed this host's drm= field: restart the scheduler for that")
            return
        if old != h and h is not None:
            self.log(f"hostfile reloaded: max {h.max:g} wday {h.wday:g} interactive {h.interactive}")

    def _compact_if_due(self, now: float, force: bool = False) -> None:
        """Cut the taken lines off the jobfile once they are ``compact_after`` old, even
        when no scheduler is taking jobs, so ``cat JOBFILE`` soon shows only what is pending."""
        q = self.queue.peek_state()
        if q.offset <= 0 or (not force and now - (q.taken_since or now) < self.queue.compact_after):
            return
        try:
            with self.queue.transaction() as txn:
                txn.maybe_compact(force=force)
        except PbqError as err:
            self.ledger.disk_problem(err)

    # ---------------------------------------------------------------- act

    def view(self, now: float) -> View:
        assert self.executor is not None
        stopped = self.book.in_state(JobState.STOPPED)
        recent = max((f for _, f in self.foreign_hist), default=self.foreign)
        mono = self.mono()
        return View(
            mode=self.mode,
            limit=self.limit,
            foreign=self.foreign,
            foreign_recent=max(recent, self.foreign),
            running=self.book.running_count(),
            stopped_by_load=sum(1 for j in stopped if j.stopped_by != "user"),
            stopped_by_user=sum(1 for j in stopped if j.stopped_by == "user"),
            pending=self.executor.accepting(mono)
            and self.ledger.disk_error is None
            and (bool(self.book.in_state(JobState.CLAIMED)) or self.empty_sig != self._jobfile_sig()),
            hysteresis=self.cfg.scheduler.hysteresis if self.executor.counts_foreign_load else 0.0,
            mem_available=self.mem_available,
            memfree=self.cfg.scheduler.memfree,
            since_evict=mono - self.last_evict,
            settle=self.cfg.scheduler.settle,
        )

    def act(self, now: float) -> Decision:
        d = decide(self.view(now))
        if not d:
            return d
        held = self.book.in_state(JobState.RUNNING, JobState.STOPPED)
        choice = choose([Candidate(j.seq, j.started or 0.0, j.state is JobState.STOPPED) for j in held], d)
        by_seq = {j.seq: j for j in held}
        for seq in choice.evict:
            self._evict(by_seq[seq])
        by = "user" if self.mode is Mode.PAUSED else "load"
        for seq in choice.stop:
            self._stop(by_seq[seq], by)
        for seq in choice.cont:
            self._cont(by_seq[seq])
        if choice.start:
            self._start(choice.start, now)
        return d

    def _stop(self, job: Job, by: str) -> None:
        assert self.executor is not None
        said = self.executor.stop(job)
        if said is None:
            return
        self.book.stop(job, by)  # RUNNING -> STOPPED
        jid = self.book.job_id(job)
        if self.executor.counts_foreign_load:
            load = self.foreign + self.book.running_count() + 1
            self.log(f"stopped {jid} {said} ({by}: load {load:.2f}, limit {self.limit:g})")
        else:
            self.log(f"stopped {jid} ({by}): {said}")

    def _cont(self, job: Job) -> None:
        assert self.executor is not None
        said = self.executor.cont(job)
        if said is None:
            return
        self.book.cont(job)  # STOPPED -> RUNNING
        self.log(f"continued {self.book.job_id(job)} {said}")

    def _evict(self, job: Job) -> None:
        assert self.executor is not None
        self.book.evicting(job)  # RUNNING/STOPPED -> EVICTING
        try:
            self.ledger.save(fsync=True)  # on record before the kill: a restart requeues it
        except PbqError as err:
            self.ledger.disk_problem(err)
        self.executor.kill(job)
        self.last_evict = self.mono()
        self.log(f"available memory {(self.mem_available or 0) >> 20} MiB is below half of memfree: "
                 f"killing {self.book.job_id(job)}")

    def _start(self, n: int, now: float) -> None:
        """Start ``n`` jobs: those taken ahead first, then fresh ones from the jobfile."""
        assert self.executor is not None
        claimed = self.book.in_state(JobState.CLAIMED)
        if len(claimed) < n:
            try:
                claimed += self._take(n - len(claimed) + self._prefetch(n), now)
            except PbqError as err:
                self.ledger.disk_problem(err)
        batch = claimed[:n]
        if not batch:
            return
        for job in batch:
            self.book.starting(job)  # CLAIMED -> STARTING: from now on it may have run
        try:
            self.ledger.journal({"starting": [j.seq for j in batch]})
        except PbqError as err:
            for job in batch:
                self.book.unstart(job)
            self.ledger.disk_problem(err)
            return
        started, submitted = [], []
        failed = False
        for r in self.executor.start(batch, self._env_for, now):
            job = r.job
            jid = self.book.job_id(job)
            if isinstance(r, Started):
                when = r.when or now
                self.book.started(job, when, r.pid, r.pid_start, r.cluster_id)  # STARTING -> RUNNING
                if r.pid is not None:
                    started.append([job.seq, r.pid, r.pid_start, when])
                    self.log(f"started {jid} pid {r.pid}: {line_to_text(job.line)}")
                else:
                    submitted.append([job.seq, r.cluster_id, when])
                    self.log(f"submitted {jid} {r.note}: {line_to_text(job.line)}")
                continue
            failed = True
            if isinstance(r, NotStarted) and r.outcome is not None:
                job.started = now
                self.log(f"could not start {jid}: {r.message}")
                self._finish(job, r.outcome, when=now)
            else:
                # Out of processes/memory, or a DRM that did not take it: the job goes back.
                self.log(f"{r.message}: putting {jid} back")
                self.book.requeue(job, front=True)
        if started or submitted:
            try:
                self.ledger.journal({"started": started, "submitted": submitted})
            except PbqError as err:
                self.ledger.disk_problem(err)
        if failed and self.ledger.flush(self.queue):
            self.empty_sig = None

    def _env_for(self, job: Job) -> dict[str, str]:
        """What a job finds in its environment besides the scheduler's."""
        assert self.host_entry is not None
        return {"PBQ_HOST": self.host, "PBQ_ARCH": self.host_entry.arch,
                "PBQ_JOB_ID": self.book.job_id(job), "PBQ_JOBFILE": str(self.jobfile)}

    def _prefetch(self, n: int) -> int:
        """How many lines to take ahead: about half a second of work when jobs are short,
        so that a lock round trip and two fsyncs are shared by many jobs."""
        if self.avg_runtime is None or self.avg_runtime >= 0.5 or self.mode is not Mode.RUN:
            return 0
        slots = max(1, math.ceil(self.limit))
        return min(PREFETCH_MAX, math.ceil(slots * 0.5 / max(self.avg_runtime, 0.001)))

    def _give_back_claimed(self) -> None:
        """Lines taken ahead go back to the front of the jobfile (quit, term)."""
        claimed = self.book.in_state(JobState.CLAIMED)
        for job in claimed:
            self.book.requeue(job, front=True)  # CLAIMED -> REQUEUE_FRONT
        if claimed and self.ledger.flush(self.queue):
            self.empty_sig = None

    def _take(self, n: int, now: float) -> list[Job]:
        """Take up to ``n`` lines: write-ahead record (fsync), then commit in the jobfile."""
        try:
            # Its mode may have changed since start-up: whoever can write it runs commands as us.
            check_input_file(self.jobfile, "jobfile", self.opts.allow_group_write)
        except PbqError as err:
            if self.input_error != str(err):
                self.log(f"ERROR: {err}; taking no jobs from it until that is fixed")
                sys.stderr.write(f"pbq-single: {err}\n")
            self.input_error = str(err)
            return []
        if self.input_error is not None:
            self.log("the jobfile is safe again: taking jobs")
            self.input_error = None
        with self.queue.transaction() as txn:
            lines, end = txn.take(n)
            if not lines:
                if end > txn.state.offset:
                    txn.commit_take(end, self.host, self.book.new_op())  # only comments
                txn.maybe_compact()
                self.empty_sig = self._jobfile_sig()
                return []
            op = self.book.new_op()
            retries = self.cfg.scheduler.retries > 0 and self.queue.retries_path.exists()
            jobs = [self.book.claim(pl.line, op, txn.retries_of(pl.line) if retries else 0) for pl in lines]
            try:
                self.ledger.save(fsync=True)  # write-ahead: ours on record before we commit
                txn.commit_take(end, self.host, op)
            except PbqError:
                self.book.unclaim(jobs)
                with contextlib.suppress(PbqError):
                    self.ledger.save()
                raise
            txn.maybe_compact()
        if len(lines) < n:
            self.empty_sig = self._jobfile_sig()
        return jobs

    def _flush_usage(self) -> None:
        """Peak memory and CPU time of finished jobs, for resource prediction."""
        if not self.usage_buf:
            return
        from ..predict import ResourceStore, command_key

        batch, self.usage_buf = self.usage_buf, []
        store = ResourceStore(self.jobfile.with_name(self.jobfile.name + ".usage"))
        try:
            lines = [
                json.dumps(
                    {"key": command_key(line_to_text(line)), "peak_rss_bytes": rss or None,
                     "cpu_seconds": round(cpu, 3), "runtime": round(rt, 3), "time": round(self.clock(), 3)},
                    sort_keys=True,
                )
                for line, rss, cpu, rt in batch
            ]
            with store._lock:
                append_bytes(store.path, ("\n".join(lines) + "\n").encode())
        except (OSError, PbqError, ValueError):
            pass

    # ---------------------------------------------------------------- files

    def _jobfile_sig(self) -> tuple[int | float, ...]:
        try:
            st = os.stat(self.jobfile)
            q = os.stat(self.queue.state_path)
            return (st.st_ino, st.st_size, st.st_mtime_ns, q.st_mtime_ns, q.st_size)
        except OSError:
            return ()

    def _write_views(self, force: bool = False) -> None:
        """``.running`` / ``.stopped``: exactly the job lines, rewritten when they change
        (at most every VIEW_DEBOUNCE seconds while jobs churn; always at a tick and at exit)."""
        mono = self.mono()
        if not force and mono - self.views_written_at < VIEW_DEBOUNCE:
            self.views_stale = True
            return
        self.views_written_at = mono
        self.views_stale = False
        # Lines taken ahead, and jobs being terminated, are listed too: `cat *.running
        # *.stopped` must give back everything this host holds.
        held = (JobState.RUNNING, JobState.STARTING, JobState.CLAIMED, JobState.STOPPED,
                JobState.EVICTING, JobState.TERMINATING, JobState.TERMINATED)
        jobs = self.book.in_state(*held)
        stopped = [j for j in jobs if j.state is JobState.STOPPED or (j.stopped_by and j.state not in LIVE_RUNNING)]
        running = [j for j in jobs if j not in stopped]
        for ext, group in (("running", running), ("stopped", stopped)):
            data = b"".join(j.line + b"\n" for j in group)
            if self.written_views.get(ext) != data:
                try:
                    atomic_write(self.files.path(ext), data)
                    self.written_views[ext] = data
                except PbqError as err:
                    self.ledger.disk_problem(err)

    def status(self, now: float, state: str | None = None) -> HostStatus:
        stopped = self.book.in_state(JobState.STOPPED)
        c = self.book.counters
        running = self.book.running_count()
        drm = None if self.executor is None or isinstance(self.executor, LocalExecutor) else self.executor.name
        return HostStatus.of_this_process(
            host=self.host, runner_pid=self.runner_pid, jobfile=str(self.jobfile),
            state=state or self.mode.value, time=now, interval=self.interval,
            load=round(self.foreign + running, 3), foreign=round(self.foreign, 3), limit=self.limit,
            work_time=self.work_time, active_users=self.active_users, running=running,
            stopped=len(stopped), stopped_by_user=sum(1 for j in stopped if j.stopped_by == "user"),
            claimed=len(self.book.in_state(JobState.CLAIMED)), done=c.done, failed=c.failed,
            mem_available=self.mem_available, control_ack=self.control_ack,
            error=self.ledger.disk_error, started=self.started_at, drm=drm,
        )

    def _write_status(self, now: float, state: str | None = None) -> None:
        try:
            write_status(self.files.status, self.status(now, state))
        except PbqError as err:
            self.ledger.disk_problem(err)

    def _append_history(self, now: float) -> None:
        c = self.book.counters
        rec = {
            "t": round(now, 1),
            "load": round(self.foreign + self.book.running_count(), 3),
            "foreign": round(self.foreign, 3),
            "limit": self.limit,
            "running": self.book.running_count(),
            "stopped": len(self.book.in_state(JobState.STOPPED)),
            "done": c.done,
            "failed": c.failed,
            "users": self.active_users,
        }
        path = self.files.history
        try:
            if path.exists() and os.stat(path).st_size > self.cfg.history.max_bytes > 0:
                os.replace(path, path.with_name(path.name + ".1"))
            append_bytes(path, json.dumps(rec).encode() + b"\n")
        except (OSError, PbqError):
            pass


LIVE_RUNNING = (JobState.RUNNING, JobState.STARTING, JobState.CLAIMED)
