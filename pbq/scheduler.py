"""``pbq-single``: the per-host scheduler loop.

One pass of the loop, always in this order (supervisor's shape)::

    wait     until the next tick, a signal, or a child's exit (SIGCHLD wakes it)
    signals  act on what the handlers recorded (handlers only record)
    reap     collect ended jobs: joblog, .error, retries; their slots are free now
    tick     once per interval: control file, sensors, adopted jobs, heartbeat
    act      ask the pure policy what to do, then stop / continue / take and start
    files    rewrite .running/.stopped if they changed

``tick(now)`` and ``act(now)`` take the time, so tests can drive them.  The state that
must survive a crash is ``JOBFILE.HOST.state`` (see model.py and jobfile.py).
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

from . import __version__
from .cmdline import job_argv
from .config import Config
from .errors import PbqError
from .hostfile import Host, find_host, load_hostfile
from .hostlog import HostLog
from .jobfile import JobQueue
from .model import HostState, Job, JobState
from .policy import Decision, Mode, View, decide, load_limit
from .proc import Spawner, SpawnError, collect, peek_exit, signal_group
from .safety import check_input_file, control_file_trusted
from .sensors import (
    Sensors,
    pids_with_env,
    process_cmdline,
    process_parent,
    process_start,
    process_state,
    same_process,
)
from .sidefiles import (
    JOBLOG_HEADER,
    HostStatus,
    PidRecord,
    is_local,
    joblog_row,
    looks_like_scheduler,
    read_pidfile,
    write_pidfile,
    write_status,
)
from .statefiles import (
    HostFiles,
    append_bytes,
    atomic_write,
    atomic_write_json,
    line_to_text,
    read_json,
    read_json_lines,
    unlink_quietly,
)

PREFETCH_MAX = 16
SUBMIT_TRIES = 3  # a line the DRM refuses this many times in a row is a failed job
VIEW_DEBOUNCE = 0.05  # seconds
SNAPSHOT_EVERY = 0.5  # seconds between state snapshots while jobs churn (the journal fills in)  # most lines a host takes ahead of its free slots
UNKNOWN_EXIT = -1  # joblog Exitval of a job whose outcome cannot be known
ADOPTED_EXIT_WAIT = 5.0  # seconds to wait for the keeper's record of an adopted job's exit


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


@dataclass
class Outcome:
    exit_code: int  # -1 when unknown
    signal: int = 0
    cpu_seconds: float = 0.0
    maxrss: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.signal == 0


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
        self.files = HostFiles(opts.jobfile, opts.host)
        self.sensors = sensors or Sensors()
        self.clock = clock
        self.mono = monotonic
        sc = self.cfg.scheduler
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
        self.interval = sc.interval
        self.spawner = Spawner(sc.nice)
        self.state = HostState(opts.host)
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
        self.adopted_cpu = 0.0  # CPU seconds of adopted jobs that ended (not in os.times())
        # bookkeeping
        self.by_pid: dict[int, Job] = {}
        self.empty_sig: tuple | None = None  # jobfile signature when it was last found empty
        self.next_tick = 0.0
        self.next_load_log = 0.0
        self.next_history = 0.0
        self.written_views: dict[str, bytes] = {}
        self.signals: list[int] = []
        self.control_ack: str | None = None
        self.host_entry: Host | None = None
        self.drm = None  # a DrmDriver on a cluster head node (hostfile drm=...)
        self.submit_failures: dict[bytes, tuple[int, float]] = {}  # line -> (tries, first failure)
        self.last_submit_ok = -math.inf
        self.hold_starts_until = -math.inf
        self.forget_ids: list[str] = []
        self.usage_buf: list[tuple[bytes, int, float, float]] = []  # (line, maxrss, cpu, runtime)
        self.hostfile_mtime: float | None = None
        self.env_base = dict(os.environ)
        self.joblog_buf: list[str] = []
        self.error_buf: list[bytes] = []
        self.requeue_end: list[Job] = []
        self.requeue_front: list[Job] = []
        self.state_dirty = False
        self.journal_used = True  # an old journal may exist: its records are of older generations
        self.journal_bytes_since_cut = 1 << 20  # so the first snapshot cuts it
        self.views_written_at = -math.inf
        self.views_stale = False
        self.ended_seqs: list[int] = []  # dropped since the last snapshot (journaled)
        self.next_snapshot = -math.inf
        self.started_at = clock()
        self.disk_error: str | None = None
        self.disk_errors_said: set[str] = set()
        self.old_pidinfo: PidRecord | None = None  # the previous run's .pid, read at start-up
        self.input_error: str | None = None  # the jobfile became unsafe (e.g. world-writable)
        self._wake_r = self._wake_w = -1

    # ---------------------------------------------------------------- set-up

    def load_host(self) -> None:
        """(Re)read the hostfile; the host's entry gives max, wday and interactive."""
        check_input_file(self.opts.hostfile, "hostfile", self.opts.allow_group_write)
        hosts = load_hostfile(self.opts.hostfile)
        self.host_entry = find_host(hosts, self.opts.host, str(self.opts.hostfile))
        with contextlib.suppress(OSError):
            self.hostfile_mtime = os.stat(self.opts.hostfile).st_mtime
        if self.host_entry.drm and (self.drm is None or self.drm.host.fields != self.host_entry.fields):
            from .drmhost import DrmDriver

            log_dir = self.opts.output_dir or self.jobfile.with_name(f"{self.jobfile.name}.{self.opts.host}.drmlogs")
            self.drm = DrmDriver(self.host_entry, self.cfg, Path.cwd(), log_dir, self.log)

    def startup(self) -> None:
        self.load_host()
        check_input_file(self.jobfile, "jobfile", self.opts.allow_group_write)
        if not self.jobfile.exists():
            raise PbqError(
                f"no such jobfile (create it, e.g. with: touch {self.jobfile})", path=str(self.jobfile)
            )
        if self.opts.output_dir is not None:
            try:
                self.opts.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise PbqError(f"cannot create output directory: {err.strerror}", path=str(self.opts.output_dir)) from None
        with self.queue.transaction() as txn:
            self._claim_pidfile()
            self._recover(txn)
        self._save_state()
        self._write_views(force=True)
        h = self.host_entry
        assert h is not None
        self.log(
            f"pbq {__version__} scheduler for host {self.opts.host} started, pid {os.getpid()}, "
            f"max {h.max:g} wday {h.wday:g} interactive {h.interactive}, "
            f"work hours {self.cfg.schedule.calendar.describe()}, interval {self.interval:g}s"
        )
        self.log.flush()

    def _claim_pidfile(self) -> None:
        """Refuse a second scheduler for this host and jobfile; else write ``.pid``.

        Runs under the jobfile lock so two schedulers starting at once can't both win.
        """
        info = read_pidfile(self.files.pid)
        self.old_pidinfo = info
        if info is not None:
            pid = info.pid
            if is_local(info):
                if same_process(pid, info.start) and looks_like_scheduler(pid, self.jobfile):
                    raise PbqError(
                        f"a scheduler for host {self.opts.host} is already running (pid {pid}); "
                        f"stop it first (pbq control ... quit {self.opts.host})",
                        path=str(self.files.pid),
                    )
                self.log(f"found stale {self.files.pid.name} (pid {pid} is gone or reused): recovering")
            else:
                status = read_json(self.files.status) or {}
                age = self.clock() - float(status.get("time", 0) or 0)
                fresh = max(10 * float(status.get("interval", 1.0) or 1.0), 60.0)
                if status.get("state") not in ("exited", "terminated", None) and age < fresh:
                    raise PbqError(
                        f"a scheduler for host {self.opts.host} seems to run on machine "
                        f"{info.machine} (pid {pid}, heartbeat {age:.0f} s ago); "
                        "stop it there, or wait until its heartbeat is older than "
                        f"{fresh:.0f} s",
                        path=str(self.files.pid),
                    )
                self.log(f"found {self.files.pid.name} of machine {info.machine} with an old heartbeat: taking over")
        me = PidRecord.current(runner=os.getppid())
        write_pidfile(self.files.pid, me, fsync=self.cfg.jobfile.fsync)

    def _recover(self, txn) -> None:
        """Make the recorded state true again after a crash, a kill or a reboot.

        Runs under the jobfile lock.  Takes whose operation never reached the jobfile's
        commit record are dropped (their lines are still pending); live jobs of the
        previous run are adopted; jobs whose process is gone get their recorded exit
        status, or go back to the front of the jobfile, once.
        """
        raw = read_json(self.files.state)
        self.state = HostState.from_json(self.opts.host, raw)
        self._replay_journal()
        committed = txn.state.ops.get(self.opts.host, 0)
        if self.state.next_op <= committed:
            self.state.next_op = committed + 1
        exits = None
        back: list[Job] = []
        keep: list[Job] = []
        for job in self.state.jobs:
            if job.op > committed and job.state in (JobState.CLAIMED, JobState.STARTING, JobState.REQUEUE):
                if job.state is not JobState.REQUEUE:
                    # Write-ahead record of a take that never committed: still pending.
                    self.log(f"job {self._id(job)} was never taken (crash while taking): left in the jobfile")
                else:
                    back.append(job)  # a put-back that never committed: do it now
                    self.log(
                        f"job {self._id(job)} was being put back when the scheduler died: putting it "
                        f"back now (POSSIBLE DUPLICATE if it had run): {line_to_text(job.line)}"
                    )
                continue
            if job.state is JobState.REQUEUE:
                continue  # its put-back committed: the line is in the jobfile again
            if job.state is JobState.CLAIMED:
                keep.append(job)  # taken ahead, never started: it will run here
                continue
            if self.drm is not None:
                if job.extra.get("terminated"):
                    job.requeue_front = True
                    back.append(job)
                    self.log(f"job {self._id(job)} was cancelled by term: putting it back at the front")
                    continue
                if job.cluster_id is None:
                    job.cluster_id = self.drm.find_submitted(self._id(job))
                if job.cluster_id is not None:
                    job.adopted = True
                    if job.state is JobState.STARTING:
                        job.state = JobState.RUNNING
                    self.log(f"re-attached job {self._id(job)} to {self.drm.name} job {job.cluster_id}")
                    keep.append(job)
                else:
                    job.requeue_front = True
                    back.append(job)
                    self.log(f"job {self._id(job)} was being submitted when the scheduler died: putting it back; POSSIBLE DUPLICATE: {line_to_text(job.line)}")
                continue
            if job.pid is None:
                # Taken, maybe started, but the pid was never recorded: look for it.
                found = pids_with_env("PBQ_JOB_ID", self._id(job))
                found = [p for p in found if os.getsid(p) == p] if found else []
                if found:
                    job.pid, job.pid_start = found[0], process_start(found[0])
                else:
                    job.requeue_front = True
                    back.append(job)
                    self.log(
                        f"job {self._id(job)} was being started when the scheduler died: "
                        f"putting it back; POSSIBLE DUPLICATE if it had already run: {line_to_text(job.line)}"
                    )
                    continue
            if job.evicting and not same_process(job.pid, job.pid_start):
                back.append(job)
                self.log(f"job {self._id(job)} was killed to free memory: putting it back at the front")
                continue
            if same_process(job.pid, job.pid_start) or self._ending(job):
                # Alive -- or a zombie that its keeper is about to reap and record: adopt it,
                # and _poll_adopted waits for the keeper's record of its exit.
                job.adopted = True
                st = process_state(job.pid)
                job.state = JobState.STOPPED if st == "T" else JobState.RUNNING
                if job.state is JobState.STOPPED and not job.stopped_by:
                    job.stopped_by = "load"
                self.log(f"adopted job {self._id(job)} pid {job.pid} ({job.state.value}) from the previous run")
                keep.append(job)
                continue
            if exits is None:
                exits = self._read_exits()
            rec = exits.get((job.pid, _round(job.pid_start)))
            if rec is None and not job.extra.get("terminated") and self._old_keeper_alive():
                # The keeper may have reaped it a moment ago: give it time to write the record.
                deadline = time.monotonic() + 2.0
                while rec is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                    exits = self._read_exits()
                    rec = exits.get((job.pid, _round(job.pid_start)))
            if rec is not None and not job.extra.get("terminated"):
                keep.append(job)
                self._finish(job, self._outcome_from_record(rec), when=rec.get("time"))
                continue
            job.requeue_front = True
            back.append(job)
            why = "terminated" if job.extra.get("terminated") else "its process is gone (reboot?)"
            self.log(f"job {self._id(job)} did not finish ({why}): putting it back at the front: {line_to_text(job.line)}")
        kept = {id(j) for j in keep}
        self.state.jobs = [j for j in self.state.jobs if id(j) in kept]
        for job in self.state.jobs:
            if job.pid is not None:
                self.by_pid[job.pid] = job
        if back:
            op = self.state.new_op()
            for job in back:
                job.state, job.op = JobState.REQUEUE, op
            self.state.jobs.extend(back)
            self._save_state(fsync=True)
            self.log.flush()  # the log names every put-back before it commits
            front = [j.line for j in back if j.requeue_front]
            end = [j.line for j in back if not j.requeue_front]
            if front:
                txn.prepend(front, self.opts.host, op)
            if end:
                txn.append(end, self.opts.host, op)
            if not front and not end:
                txn.commit_op(self.opts.host, op)
            gone = {id(j) for j in back}
            self.state.jobs = [j for j in self.state.jobs if id(j) not in gone]
        self._flush_outcomes(txn)

    def _ending(self, job: Job) -> bool:
        """The job's process has ended and waits to be reaped by the previous run's keeper,
        which is alive and will record its exit status."""
        if job.pid is None or process_state(job.pid) != "Z" or process_start(job.pid) != job.pid_start:
            return False
        keeper = self.old_pidinfo.runner if self.old_pidinfo else None
        return process_parent(job.pid) == keeper and self._old_keeper_alive()

    def _old_keeper_alive(self) -> bool:
        info = self.old_pidinfo
        if not info or not is_local(info):
            return False
        keeper = info.runner or 0
        return keeper > 1 and process_state(keeper) not in (None, "Z") and "pbq" in " ".join(process_cmdline(keeper))

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        self._install_signals()
        try:
            self.startup()
        except BaseException:
            self.spawner.close()
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
        """One pass in fixed order: signals, reap, tick (when due), act, files."""
        self._handle_signals(now)
        self._reap(now)
        if self.mono() >= self.next_tick:
            self.tick(now)
        self.act(now)
        self._save_if_dirty()
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
        # SIGCHLD needs a handler (not SIG_DFL) so that it reaches the wakeup fd.
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
        if self.signals:
            timeout = 0.0
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            ready = []
        if ready:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while os.read(self._wake_r, 4096):
                    pass

    def _handle_signals(self, now: float) -> None:
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
            for job in self.state.in_state(JobState.STOPPED):
                if job.stopped_by == "user":
                    job.stopped_by = "load"
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
        """TERM: SIGTERM to every job's group now, SIGKILL after the grace period.

        The jobs stay in .running/.stopped (and in the state file, marked terminated), so
        a restart -- or ``cat *.running *.stopped >> JOBFILE`` -- puts them back.
        """
        grace = self.cfg.scheduler.term_grace
        self.log(f"{source}: terminating {len(self._live_jobs())} job(s) (SIGKILL after {grace:g} s)")
        self.term_deadline = self.mono() + grace
        self._give_back_claimed()
        if self.drm is not None:
            live = self._live_jobs()
            for job in live:
                job.extra["terminated"] = True
            try:
                self.drm.cancel(live)  # `term` cancels all of ours in the DRM
                self.log(f"cancelled {len(live)} {self.drm.name} job(s)")
            except PbqError as err:
                self.log(f"could not cancel every {self.drm.name} job: {err}")
        for job in self._live_jobs() if self.drm is None else []:
            job.extra["terminated"] = True
            self._signal_job(job, signal.SIGTERM)
            if job.state is JobState.STOPPED:
                self._signal_job(job, signal.SIGCONT)  # a stopped process can't act on SIGTERM
        self.state_dirty = True
        self._save_state(fsync=True)

    def _done(self) -> bool:
        live = self._live_jobs()
        if self.mode is Mode.TERM and self.drm is not None:
            return True  # cancelled in the DRM: their lines go back when the host restarts
        if self.mode is Mode.TERM:
            # Done when no process of any job's session is left (a job's leader may die
            # of SIGTERM while what it started ignores it).  SIGKILL at the deadline.
            sids = [j.pid for j in live if j.pid]
            members = self.sensors.sessions(sids).members if sids else {}
            if self.term_deadline is not None and self.mono() >= self.term_deadline and not self.killed_hard:
                for sid in members:
                    signal_group(sid, signal.SIGKILL)
                self.killed_hard = True
                self.term_deadline = self.mono() + 5.0
            if not members:
                return True
            # After SIGKILL, give up waiting for processes that won't die (D state) after 5 s.
            return bool(self.killed_hard and self.term_deadline is not None and self.mono() >= self.term_deadline)
        if live or self.state.in_state(JobState.STARTING, JobState.CLAIMED):
            return False
        if self.joblog_buf or self.error_buf or self.requeue_front or self.requeue_end:
            return False  # outcomes not written yet (full disk): wait for them
        if self.mode is Mode.QUIT:
            return True
        if self.opts.exit_when_empty and self.mode is Mode.RUN:
            return self.empty_sig is not None and self.empty_sig == self._jobfile_sig()
        return False

    def _shutdown(self) -> None:
        self.spawner.close()
        self._flush_outcomes()
        self._flush_usage()
        if self.opts.exit_when_empty and self.mode is Mode.RUN:
            self._compact_if_due(self.clock(), force=True)
        state = "terminated" if self.mode is Mode.TERM else "exited"
        with contextlib.suppress(PbqError):
            self._save_state(fsync=True)
        self._write_views(force=True)
        self.log(f"scheduler exits ({state}): {self.state.done} done, {self.state.failed} failed")
        self.log.flush()
        with contextlib.suppress(PbqError):
            self._write_status(self.clock(), state=state)
        info = read_pidfile(self.files.pid)
        if info is not None and info.pid == os.getpid():
            unlink_quietly(self.files.pid)

    # ---------------------------------------------------------------- reaping

    def _reap(self, now: float) -> None:
        """Record the jobs that ended, then reap them.

        Outcomes are written (joblog, .error, journal) while the ended processes are still
        zombies; only then are they reaped.  A scheduler killed in between leaves them to the
        keeper, which records their exit status: nothing finished is run again.
        """
        ended = []
        for pid, job in list(self.by_pid.items()):
            how = peek_exit(pid)
            if how is not None:
                ended.append((pid, job, how))
        for pid, job, (code, sig) in ended:
            del self.by_pid[pid]
            if self.mode is Mode.TERM or job.extra.get("terminated"):
                job.extra["reaped"] = True  # stays listed: it goes back to the jobfile on restart
                continue
            self._finish(job, Outcome(-1 if code is None else code, sig), when=now, record_usage=False)
        if ended:
            self._flush_outcomes()
            self._save_if_dirty()  # the ends are on record (journal or snapshot) before reaping
        for pid, job, _how in ended:
            ex = collect(pid)
            if ex is not None and job.started is not None and not job.extra.get("terminated"):
                self.usage_buf.append((job.line, ex.maxrss_bytes, ex.cpu_seconds, max(0.0, now - job.started)))
        # No catch-all wait(-1) here: the scheduler's only children are its jobs (DRM
        # commands are waited for by subprocess), and a job that ends right now is peeked
        # at on the next pass -- SIGCHLD wakes it.

    def _finish(self, job: Job, out: Outcome, when: float | None = None, record_usage: bool = True) -> None:
        """A job ended: record it (joblog, .error, log) or queue its line to go back."""
        end = when or self.clock()
        runtime = max(0.0, end - (job.started or end))
        self.avg_runtime = runtime if self.avg_runtime is None else 0.8 * self.avg_runtime + 0.2 * runtime
        if record_usage and (out.exit_code != UNKNOWN_EXIT or out.maxrss):
            self.usage_buf.append((job.line, out.maxrss, out.cpu_seconds, runtime))
        if job.evicting:
            job.requeue_front = True
            self.requeue_front.append(job)
            self.log(f"job {self._id(job)} killed to free memory: back at the front of the jobfile")
            return
        host_col = f"{self.opts.host}:{job.cluster_id}" if job.cluster_id else self.opts.host
        self.joblog_buf.append(
            joblog_row(job.seq, host_col, job.started or end, runtime, out.exit_code, out.signal, job.line)
        )
        how = f"exit {out.exit_code}" if not out.signal else f"signal {out.signal}"
        if out.exit_code == UNKNOWN_EXIT and not out.signal:
            how = "outcome UNKNOWN"
        note = f" ({out.note})" if out.note else ""
        who = f"pid {job.pid}" if job.pid else f"cluster id {job.cluster_id}" if job.cluster_id else "never started"
        self.log(f"finished {self._id(job)} {who} {how} after {runtime:.1f}s{note}: {line_to_text(job.line)}")
        if out.ok:
            self.state.done += 1
            if job.tries:
                job.extra["clear_retries"] = True
                self.requeue_end.append(job)  # only to clear its retry count under the lock
                job.extra["done_only"] = True
            else:
                self._drop(job)
            return
        retries = self.cfg.scheduler.retries
        if job.tries < retries and out.exit_code != UNKNOWN_EXIT:
            job.tries += 1
            job.requeue_front = False
            self.requeue_end.append(job)
            self.log(f"retry {job.tries}/{retries} of {self._id(job)}: back at the end of the jobfile")
            return
        self.state.failed += 1
        self.error_buf.append(job.line)
        if job.tries:
            job.extra["clear_retries"] = True
            job.extra["done_only"] = True
            self.requeue_end.append(job)
        else:
            self._drop(job)

    def _drop(self, job: Job) -> None:
        self.state.jobs = [j for j in self.state.jobs if j is not job]
        self.ended_seqs.append(job.seq)
        if job.pid is not None:
            self.by_pid.pop(job.pid, None)
        self.state_dirty = True

    def _flush_outcomes(self, txn=None) -> None:
        """Write what ended this pass: joblog and .error first, then the put-backs, then
        the state (so a crash in between repeats a record rather than losing a job)."""
        # The buffers are cleared only once written: on a full disk they wait for the next try.
        if self.joblog_buf:
            rows = "".join(self.joblog_buf).encode("utf-8", "surrogateescape")
            try:
                if not self.files.joblog.exists():
                    rows = JOBLOG_HEADER.encode() + rows
                append_bytes(self.files.joblog, rows)
                self.joblog_buf.clear()
            except PbqError as err:
                self._disk_problem(err)
        if self.error_buf:
            data = b"".join(line + b"\n" for line in self.error_buf)
            try:
                append_bytes(self.files.error, data)
                self.error_buf.clear()
            except PbqError as err:
                self._disk_problem(err)
        if self.requeue_front or self.requeue_end:
            try:
                if txn is not None:
                    self._put_back(txn)
                else:
                    with self.queue.transaction() as t:
                        self._put_back(t)
            except PbqError as err:
                self._disk_problem(err)  # the jobs stay in the state file: retried next pass

    def _put_back(self, txn) -> None:
        front = [j for j in self.requeue_front]
        end = [j for j in self.requeue_end if not j.extra.get("done_only")]
        clear = [j for j in self.requeue_end if j.extra.get("clear_retries")]
        if front or end:
            op = self.state.new_op()
            for job in front + end:
                job.state, job.op = JobState.REQUEUE, op
            self._save_state(fsync=True)  # write-ahead: the put-back is on record first
            self.log.flush()
            for job in end:
                txn.set_retries(job.line, job.tries)
            if front:
                txn.prepend([j.line for j in front], self.opts.host, op)
            if end:
                txn.append([j.line for j in end], self.opts.host, op)
            self.empty_sig = None
        for job in clear:
            txn.set_retries(job.line, 0)
        for job in front + self.requeue_end:
            self._drop(job)
        self.requeue_front.clear()
        self.requeue_end.clear()
        self.state_dirty = True

    def _disk_problem(self, err: PbqError) -> None:
        msg = str(err)
        if msg not in self.disk_errors_said:  # each message once per episode, not every tick
            self.disk_errors_said.add(msg)
            self.log(f"ERROR: {msg}; not taking new jobs until it is fixed")
            sys.stderr.write(f"pbq-single: {msg}\n")
        self.disk_error = msg

    # ---------------------------------------------------------------- tick

    def tick(self, now: float) -> None:
        """Once per interval: requests, sensors, adopted jobs, heartbeat."""
        mono = self.mono()
        self.next_tick = mono + self.interval
        self._check_control_file()
        self._reload_hostfile()
        self._sense(now, mono)
        if self.drm is not None:
            self._poll_drm(now, mono)
        else:
            self._poll_adopted(now, mono)
        self._flush_outcomes()
        self._flush_usage()
        if self.disk_error is not None:
            self._retry_disk()
        self._compact_if_due(now)
        if self.state_dirty:
            self.next_snapshot = -math.inf  # at least one snapshot per tick
        self._write_status(now)
        if mono >= self.next_load_log:
            self.next_load_log = mono + self.cfg.log.load_every
            self.log(
                f"load {self.foreign + self._running_count():.2f} (foreign {self.foreign:.2f}) "
                f"limit {self.limit:g}: {self._running_count()} running, "
                f"{len(self.state.in_state(JobState.STOPPED))} stopped, "
                f"{self.state.done} done, {self.state.failed} failed"
            )
        if mono >= self.next_history:
            self.next_history = mono + self.cfg.history.every
            self._append_history(now)

    def _sense(self, now: float, mono: float) -> None:
        if self.drm is not None:
            # max/wday count our jobs queued or running in the resource manager.
            self.foreign, self.active_users = 0.0, 0
            self.work_time = self.cfg.schedule.calendar.is_work_time(datetime.fromtimestamp(now))
            h = self.host_entry
            assert h is not None
            self.limit = load_limit(h.max, h.wday, 0, self.work_time, 0)
            self.foreign_hist.clear()
            return
        live = self._live_jobs()
        # Only running jobs use CPU: scan /proc for their sessions only when there are
        # some (an idle or all-stopped scheduler reads almost nothing).  Stopped jobs keep
        # their last figure, so the own-CPU total stays continuous.
        running = [j.pid for j in live if j.pid and j.state is JobState.RUNNING]
        if running:
            sample = self.sensors.sessions(running)
            for job in live:
                if job.pid in sample.cpu_by_sid:
                    job.cpu_seconds = sample.cpu_by_sid[job.pid]
        t = os.times()
        own = sum(j.cpu_seconds for j in live) + t.children_user + t.children_system + t.user + t.system + self.adopted_cpu
        self.foreign = self.sensors.foreign_load(own, mono)
        self.foreign_hist.append((mono, self.foreign))
        settle = self.cfg.scheduler.settle
        while self.foreign_hist and self.foreign_hist[0][0] < mono - settle - 1e-6:
            self.foreign_hist.popleft()
        self.active_users = self.sensors.active_users(self.cfg.interactive.idle_minutes * 60, now)
        self.work_time = self.cfg.schedule.calendar.is_work_time(datetime.fromtimestamp(now))
        h = self.host_entry
        assert h is not None
        self.limit = load_limit(h.max, h.wday, h.interactive, self.work_time, self.active_users)
        if self.cfg.scheduler.memfree:
            self.mem_available = self.sensors.mem_available()

    def _poll_adopted(self, now: float, mono: float) -> None:
        """Jobs of an earlier run are not our children: notice their end by polling, and
        take their exit status from the keeper's record (``.exits``)."""
        adopted = [j for j in self._live_jobs() if j.adopted and not j.extra.get("reaped")]
        if not adopted:
            return
        exits = None
        for job in adopted:
            if job.pid is not None and same_process(job.pid, job.pid_start):
                continue
            if exits is None:
                exits = self._read_exits()
            rec = exits.get((job.pid, _round(job.pid_start)))
            if self.mode is Mode.TERM or job.extra.get("terminated"):
                job.extra["reaped"] = True
                continue
            if rec is not None:
                self.adopted_cpu += job.cpu_seconds
                self._finish(job, self._outcome_from_record(rec), when=rec.get("time") or now)
                continue
            if job.gone_since is None:
                job.gone_since = mono
            elif mono - job.gone_since >= ADOPTED_EXIT_WAIT:
                self.adopted_cpu += job.cpu_seconds
                self._finish(job, Outcome(UNKNOWN_EXIT, note="adopted job ended with no recorded exit status"), when=now)

    def _read_exits(self) -> dict[tuple[int, float | None], dict]:
        out = {}
        for rec in read_json_lines(self.files.exits):
            if isinstance(rec, dict) and "pid" in rec:
                out[(int(rec["pid"]), _round(rec.get("start")))] = rec
        return out

    @staticmethod
    def _outcome_from_record(rec: dict) -> Outcome:
        status = int(rec.get("status", 0))
        if os.WIFEXITED(status):
            return Outcome(os.WEXITSTATUS(status), 0, float(rec.get("cpu", 0)), int(rec.get("maxrss", 0)), "exit status recorded by the keeper")
        if os.WIFSIGNALED(status):
            return Outcome(-1, os.WTERMSIG(status), float(rec.get("cpu", 0)), int(rec.get("maxrss", 0)), "recorded by the keeper")
        return Outcome(UNKNOWN_EXIT, note="unreadable exit record")

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
            self._disk_problem(err)

    def _retry_disk(self) -> None:
        try:
            self._save_state()
            self._flush_outcomes()
            if self.joblog_buf or self.error_buf:
                return
            self.disk_error = None
            self.disk_errors_said.clear()
            self.log("file system writable again: resuming")
        except PbqError:
            pass

    # ---------------------------------------------------------------- act

    def view(self, now: float) -> View:
        running = self._running_count()
        stopped = self.state.in_state(JobState.STOPPED)
        recent = max((f for _, f in self.foreign_hist), default=self.foreign)
        return View(
            mode=self.mode,
            limit=self.limit,
            foreign=self.foreign,
            foreign_recent=max(recent, self.foreign),
            running=running,
            stopped_by_load=sum(1 for j in stopped if j.stopped_by != "user"),
            stopped_by_user=sum(1 for j in stopped if j.stopped_by == "user"),
            pending=self.mono() >= self.hold_starts_until
            and self.disk_error is None
            and (bool(self.state.in_state(JobState.CLAIMED)) or self.empty_sig != self._jobfile_sig()),
            hysteresis=0.0 if self.drm is not None else self.cfg.scheduler.hysteresis,
            mem_available=self.mem_available,
            memfree=self.cfg.scheduler.memfree,
            since_evict=self.mono() - self.last_evict,
            settle=self.cfg.scheduler.settle,
        )

    def act(self, now: float) -> Decision:
        d = decide(self.view(now))
        if not d:
            return d
        running = sorted(self.state.in_state(JobState.RUNNING), key=lambda j: (j.started or 0, j.seq))
        if d.evict:
            victims = sorted(self._live_jobs(), key=lambda j: (j.started or 0, j.seq))[-d.evict :]
            for job in victims:
                self._evict(job)
            running = [j for j in running if j not in victims]
        if d.stop:
            by = "user" if self.mode is Mode.PAUSED else "load"
            for job in reversed(running[-d.stop :]):  # newest first: the oldest is nearest to done
                self._stop(job, by)
        if d.cont:
            stopped = sorted(self.state.in_state(JobState.STOPPED), key=lambda j: (j.started or 0, j.seq))
            for job in stopped[: d.cont]:  # oldest stopped first
                self._cont(job)
        if d.start:
            self._start(d.start, now)
        return d

    def _stop(self, job: Job, by: str) -> None:
        if self.drm is not None:
            said = self.drm.stop([job])
            job.state, job.stopped_by = JobState.STOPPED, by  # RUNNING -> STOPPED (held/suspended)
            self.state_dirty = True
            self.log(f"stopped {self._id(job)} ({self.drm.name} job {job.cluster_id}, {by}): {said}")
            return
        if self._signal_job(job, signal.SIGSTOP):
            job.state = JobState.STOPPED  # RUNNING -> STOPPED (whole process group)
            job.stopped_by = by
            self.state_dirty = True
            self.log(f"stopped {self._id(job)} pid {job.pid} ({by}: load {self.foreign + self._running_count() + 1:.2f}, limit {self.limit:g})")

    def _cont(self, job: Job) -> None:
        if self.drm is not None:
            said = self.drm.cont([job])
            job.state, job.stopped_by = JobState.RUNNING, None  # STOPPED -> RUNNING (released/resumed)
            self.state_dirty = True
            self.log(f"continued {self._id(job)} ({self.drm.name} job {job.cluster_id}): {said}")
            return
        if self._signal_job(job, signal.SIGCONT):
            job.state = JobState.RUNNING  # STOPPED -> RUNNING
            job.stopped_by = None
            self.state_dirty = True
            self.log(f"continued {self._id(job)} pid {job.pid}")

    def _evict(self, job: Job) -> None:
        job.evicting = True
        self._save_state(fsync=True)  # on record before the kill: a restart requeues it
        self._signal_job(job, signal.SIGKILL)
        self._signal_job(job, signal.SIGCONT)
        self.last_evict = self.mono()
        self.log(f"available memory {self.mem_available or 0 >> 20} MiB is below half of memfree: killing {self._id(job)}")

    def _signal_job(self, job: Job, sig: int) -> bool:
        if job.pid is None:
            return False
        if job.adopted and not same_process(job.pid, job.pid_start):
            return False  # never signal a pid we did not verify: it may belong to someone else now
        return signal_group(job.pid, sig)

    def _start(self, n: int, now: float) -> None:
        """Start ``n`` jobs: those taken ahead first, then fresh ones from the jobfile."""
        claimed = self.state.in_state(JobState.CLAIMED)
        if len(claimed) < n:
            try:
                claimed += self._take(n - len(claimed) + self._prefetch(n), now)
            except PbqError as err:
                self._disk_problem(err)
        batch = claimed[:n]
        if not batch:
            return
        for job in batch:
            job.state = JobState.STARTING  # CLAIMED -> STARTING: from now on it may have run
        try:
            self._journal({"starting": [j.seq for j in batch]})
        except PbqError as err:
            for job in batch:
                job.state = JobState.CLAIMED
            self._disk_problem(err)
            return
        failed = False
        for job in batch:
            try:
                self._spawn(job, now)
            except SpawnError as err:
                job.started = now
                self.log(f"could not start {self._id(job)}: {err.message}")
                self._finish(job, Outcome(err.exit_code, note=err.message), when=now)
                failed = True
            except OSError as err:
                # Out of processes/memory: the job goes back; try again later.
                self.log(f"cannot start processes ({err.strerror}): putting {self._id(job)} back")
                job.requeue_front = True
                self.requeue_front.append(job)
                failed = True
        self.state_dirty = True
        started = [[j.seq, j.pid, j.pid_start, j.started] for j in batch if j.state is JobState.RUNNING and j.pid]
        submitted = [[j.seq, j.cluster_id, j.started] for j in batch if j.state is JobState.RUNNING and j.cluster_id]
        if started or submitted:
            try:
                self._journal({"started": started, "submitted": submitted})
            except PbqError as err:
                self._disk_problem(err)
        if failed:
            self._flush_outcomes()

    def _prefetch(self, n: int) -> int:
        """How many lines to take ahead: about half a second of work when jobs are short,
        so that a lock round trip and two fsyncs are shared by many jobs."""
        if self.avg_runtime is None or self.avg_runtime >= 0.5 or self.mode is not Mode.RUN:
            return 0
        slots = max(1, math.ceil(self.limit))
        return min(PREFETCH_MAX, math.ceil(slots * 0.5 / max(self.avg_runtime, 0.001)))

    def _give_back_claimed(self) -> None:
        """Lines taken ahead go back to the front of the jobfile (quit, term)."""
        for job in self.state.in_state(JobState.CLAIMED):
            job.requeue_front = True
            self.requeue_front.append(job)
        if self.requeue_front:
            self._flush_outcomes()

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
                    txn.commit_take(end, self.opts.host, self.state.new_op())  # only comments
                txn.maybe_compact()
                self.empty_sig = self._jobfile_sig()
                return []
            op = self.state.new_op()
            retries = self.cfg.scheduler.retries > 0 and self.queue.retries_path.exists()
            jobs = []
            for pl in lines:
                job = Job(seq=self.state.new_seq(), line=pl.line, op=op, state=JobState.CLAIMED)
                if retries:
                    job.tries = txn.retries_of(pl.line)
                jobs.append(job)
            self.state.jobs.extend(jobs)
            try:
                self._save_state(fsync=True)  # write-ahead: ours on record before we commit
                txn.commit_take(end, self.opts.host, op)
            except PbqError:
                taken = {id(j) for j in jobs}
                self.state.jobs = [j for j in self.state.jobs if id(j) not in taken]
                with contextlib.suppress(PbqError):
                    self._save_state()
                raise
            txn.maybe_compact()
        if len(lines) < n:
            self.empty_sig = self._jobfile_sig()
        return jobs

    def _spawn(self, job: Job, now: float) -> None:
        h = self.host_entry
        assert h is not None
        jid = self._id(job)
        env = dict(self.env_base)
        env.update(
            PBQ_HOST=self.opts.host,
            PBQ_ARCH=h.arch,
            PBQ_JOB_ID=jid,
            PBQ_JOBFILE=str(self.jobfile),
        )
        if self.drm is not None:
            self._submit(job, jid, now)
            return
        out = err = None
        if self.opts.output_dir is not None:
            out = self.opts.output_dir / f"{jid}.out"
            err = self.opts.output_dir / f"{jid}.err"
        pid = self.spawner.spawn(job_argv(job.line), env, out, err)
        job.pid = pid
        job.pid_start = process_start(pid)
        job.started = now
        job.state = JobState.RUNNING  # STARTING -> RUNNING
        self.by_pid[pid] = job
        self.log(f"started {jid} pid {pid}: {line_to_text(job.line)}")

    def _submit(self, job: Job, jid: str, now: float) -> None:
        """DRM host: submit instead of spawning.  A refusal is a failed job; a DRM that
        does not answer puts the line back (OSError path of _start)."""
        from .drm.base import DrmError, DrmUnavailable
        from .drmhost import resources_for
        from .predict import command_key, format_mem

        assert self.drm is not None and self.host_entry is not None
        predicted = None
        if self.cfg.cluster.predict:
            peak = self._usage_store().predict_mem(command_key(line_to_text(job.line)))
            predicted = format_mem(peak) if peak else None
        try:
            res = resources_for(self.host_entry, self.cfg, predicted)
            cid = self.drm.submit(job, jid, res)
        except DrmError as err:
            # The DRM may be down (or refuse this one job): put the line back and wait a
            # poll interval; only a line refused SUBMIT_TRIES times in a row is a failed job.
            tries, first = self.submit_failures.get(job.line, (0, self.mono()))
            self.submit_failures[job.line] = (tries + 1, first)
            self.hold_starts_until = self.mono() + self.drm.poll_interval
            # Refused, not down: other submissions went through since this line first failed.
            refused = self.last_submit_ok > first and not isinstance(err, DrmUnavailable)
            if tries + 1 >= SUBMIT_TRIES and refused:
                del self.submit_failures[job.line]
                raise SpawnError(126, str(err)) from None
            raise OSError(11, f"{self.drm.name} did not take it ({err}); retrying in {self.drm.poll_interval:g} s") from None
        except PbqError as err:
            raise SpawnError(126, str(err)) from None
        self.submit_failures.pop(job.line, None)
        self.last_submit_ok = self.mono()
        job.cluster_id = cid
        job.started = now
        job.state = JobState.RUNNING  # STARTING -> RUNNING (queued or running in the DRM)
        job.extra["drm_state"] = "queued"
        mem = f", mem {predicted} predicted" if predicted else ""
        self.log(f"submitted {jid} as {self.drm.name} job {cid}{mem}: {line_to_text(job.line)}")

    def _poll_drm(self, now: float, mono: float) -> None:
        assert self.drm is not None
        if not self.drm.poll_due(mono):
            return
        if self.forget_ids:  # recorded (and snapshotted) in an earlier pass
            self.drm.forget(self.forget_ids)
            self.forget_ids = []
        jobs = [j for j in self._live_jobs() if j.cluster_id]
        for e in self.drm.poll(jobs, mono):
            if e.job.extra.get("terminated"):
                continue
            code = UNKNOWN_EXIT if e.exit_code is None else e.exit_code
            self._finish(e.job, Outcome(code, e.signal, e.cpu, e.maxrss, e.note), when=now)
            self.forget_ids.append(str(e.job.cluster_id))

    def _usage_store(self):
        from .predict import ResourceStore

        return ResourceStore(self.jobfile.with_name(self.jobfile.name + ".usage"))

    def _flush_usage(self) -> None:
        """Peak memory and CPU time of finished jobs, for resource prediction."""
        if not self.usage_buf:
            return
        from .predict import command_key

        batch, self.usage_buf = self.usage_buf, []
        store = self._usage_store()
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

    def _id(self, job: Job) -> str:
        return f"{self.opts.host}.{job.seq}"

    def _live_jobs(self) -> list[Job]:
        return self.state.in_state(JobState.RUNNING, JobState.STOPPED)

    def _running_count(self) -> int:
        return len(self.state.in_state(JobState.RUNNING, JobState.STARTING))

    def _jobfile_sig(self) -> tuple:
        try:
            st = os.stat(self.jobfile)
            q = os.stat(self.queue.state_path)
            return (st.st_ino, st.st_size, st.st_mtime_ns, q.st_mtime_ns, q.st_size)
        except OSError:
            return ()

    def _save_state(self, fsync: bool = False) -> None:
        """Write a new snapshot of the host's state; the journal before it is obsolete."""
        self.state.gen += 1
        try:
            atomic_write_json(self.files.state, self.state.to_json(), fsync=fsync)
        except PbqError:
            self.state.gen -= 1  # the journal must keep following the snapshot on disk
            raise
        self.state_dirty = False
        self.ended_seqs = []
        self.next_snapshot = self.mono() + SNAPSHOT_EVERY
        # Journal records of older generations are ignored; cut the file now and then.
        self.journal_bytes_since_cut = self.journal_bytes_since_cut if self.journal_used else 0
        if self.journal_used and self.journal_bytes_since_cut > 1 << 16:
            with contextlib.suppress(OSError):
                os.truncate(self.files.journal, 0)
            self.journal_used = False
            self.journal_bytes_since_cut = 0

    def _save_if_dirty(self) -> None:
        """End of a pass: a snapshot at most every SNAPSHOT_EVERY seconds; in between, the
        jobs that ended go to the journal (a small append instead of a rewrite)."""
        if not self.state_dirty:
            return
        try:
            if self.mono() >= self.next_snapshot:
                self._save_state()
            elif self.ended_seqs:
                self._journal({"ended": self.ended_seqs, "done": self.state.done, "failed": self.state.failed})
                self.ended_seqs = []
        except PbqError as err:
            self._disk_problem(err)

    def _journal(self, rec: dict) -> None:
        """Put a fact on record before the next snapshot (one small append)."""
        rec["g"] = self.state.gen
        data = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        append_bytes(self.files.journal, data)
        self.journal_used = True
        self.journal_bytes_since_cut += len(data)

    def _replay_journal(self) -> None:
        """Apply what the journal recorded after the last snapshot (crash recovery)."""
        self.state.apply_journal(read_json_lines(self.files.journal))

    def _write_views(self, force: bool = False) -> None:
        """``.running`` / ``.stopped``: exactly the job lines, rewritten when they change
        (at most every VIEW_DEBOUNCE seconds while jobs churn; always at a tick and at exit)."""
        mono = self.mono()
        if not force and mono - self.views_written_at < VIEW_DEBOUNCE:
            self.views_stale = True
            return
        self.views_written_at = mono
        self.views_stale = False
        # Lines taken ahead are listed with the running ones: `cat *.running *.stopped`
        # must give back everything this host holds.
        running = [j for j in self.state.jobs if j.state in (JobState.RUNNING, JobState.STARTING, JobState.CLAIMED)]
        stopped = self.state.in_state(JobState.STOPPED)
        for ext, jobs in (("running", running), ("stopped", stopped)):
            data = b"".join(j.line + b"\n" for j in jobs)
            if self.written_views.get(ext) != data:
                try:
                    atomic_write(self.files.path(ext), data)
                    self.written_views[ext] = data
                except PbqError as err:
                    self._disk_problem(err)

    def status(self, now: float, state: str | None = None) -> dict:
        return self.host_status(now, state).to_json()

    def host_status(self, now: float, state: str | None = None) -> HostStatus:
        stopped = self.state.in_state(JobState.STOPPED)
        return HostStatus.of_this_process(
            host=self.opts.host,
            jobfile=str(self.jobfile),
            state=state or self.mode.value,
            time=now,
            interval=self.interval,
            load=round(self.foreign + self._running_count(), 3),
            foreign=round(self.foreign, 3),
            limit=self.limit,
            work_time=self.work_time,
            active_users=self.active_users,
            running=self._running_count(),
            stopped=len(stopped),
            stopped_by_user=sum(1 for j in stopped if j.stopped_by == "user"),
            claimed=len(self.state.in_state(JobState.CLAIMED)),
            done=self.state.done,
            failed=self.state.failed,
            mem_available=self.mem_available,
            control_ack=self.control_ack,
            error=self.disk_error,
            started=self.started_at,
            drm=self.drm.name if self.drm is not None else None,
        )

    def _write_status(self, now: float, state: str | None = None) -> None:
        try:
            write_status(self.files.status, self.host_status(now, state))
        except PbqError as err:
            self._disk_problem(err)

    def _append_history(self, now: float) -> None:
        rec = {
            "t": round(now, 1),
            "load": round(self.foreign + self._running_count(), 3),
            "foreign": round(self.foreign, 3),
            "limit": self.limit,
            "running": self._running_count(),
            "stopped": len(self.state.in_state(JobState.STOPPED)),
            "done": self.state.done,
            "failed": self.state.failed,
            "users": self.active_users,
        }
        path = self.files.history
        try:
            if path.exists() and os.stat(path).st_size > self.cfg.history.max_bytes > 0:
                os.replace(path, path.with_name(path.name + ".1"))
            append_bytes(path, json.dumps(rec).encode() + b"\n")
        except (OSError, PbqError):
            pass


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)

