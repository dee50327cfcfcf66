"""``pbq-single``: the per-host scheduler loop -- the pass order and the wiring, no more.

One pass of the loop, always in this order (supervisor's shape)::

    wait     until the next tick, a signal, or news from the executor (the job runner's socket)
    fence    still the host's owner? (its epoch in the queue record; else exit, touching nothing)
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
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..config import Config
from ..errors import PbqError
from ..hostfile import Host
from ..hostlog import HostLog
from ..jobfile import JobQueue
from ..policy import Candidate, Decision, Mode, View, choose, decide
from ..quarantine import End, HostHealth, read_peers
from ..safety import check_input_file
from ..sensors import Sensors
from ..sidefiles import (
    CancelInbox,
    ControlInbox,
    HostStatus,
    PidRecord,
    read_pidfile,
)
from ..statefiles import (
    HostFiles,
)
from .cancels import Cancels
from .edges import WorkdayEdge
from .executor import Ended, Executor
from .hostentry import HostEntry
from .intake import Intake
from .jobcontrol import JobControl
from .joboutput import JobOutput
from .jobs import ASKED, UNKNOWN_EXIT, Job, JobBook, JobState
from .launch import Launched, apply_answers
from .ledger import Ledger, Replaced
from .limits import TimeLimits, enforce_limits
from .modes import Modes
from .notify import Notifier
from .outcomes import Outcomes
from .outputs import VIEW_DEBOUNCE, HostOutputs
from .ownership import Ownership
from .recovery import plan_recovery
from .sensing import LoadSensing, Measurements, why_zero
from .starts import Starts
from .startup import apply_recovery, drm_executor, local_executor
from .wakeup import Wakeup


@dataclass
class SchedulerOptions:
    hostfile: Path
    jobfile: Path
    host: str  # the name in file names and in the hostfile
    config: Config
    output_dir: Path | None = None  # None: JOBFILE.HOST.output/, packed
    inherit_output: bool = False  # --output-dir -: jobs share the scheduler's stdout/stderr
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
        self.interval = self.cfg.scheduler.interval
        self._make_parts()
        self.over_since: float | None = None  # monotonic time the load went over the limit
        self.m = Measurements()
        self.executor: Executor | None = None
        self.joboutput: JobOutput | None = None  # local jobs only
        self.exit_code = 0
        self.next_tick = self.next_load_log = self.next_history = 0.0
        self.passed_at = 0.0  # monotonic time of the last pass (see _wait)
        self.control_ack: str | None = None
        self.recorded: list[Ended] = []  # ends on the ledger, not acknowledged yet
        self.views_now = False  # .running/.stopped to be written at the end of this pass
        self.started_at = clock()

    def _make_parts(self) -> None:
        """The parts, each with one reason to change; the loop only wires them together."""
        cfg, opts, sc, files = self.cfg, self.opts, self.cfg.scheduler, self.files
        usage = opts.jobfile.with_name(opts.jobfile.name + ".usage")
        trust = opts.allow_group_write
        self.log = log = HostLog(files.log, cfg.log.max_bytes, cfg.log.backups, echo=opts.echo_log)
        self.queue = JobQueue(opts.jobfile, lock=opts.lock, fsync=cfg.jobfile.fsync,
                              compact_after=cfg.jobfile.compact_after,
                              stale_lock_after=cfg.jobfile.stale_lock_after, log=log,
                              clock=self.clock, allow_group_write=trust)
        self.book = book = JobBook(opts.host)
        self.ledger = ledger = Ledger(files, book, log, cfg.jobfile.fsync, self.mono)
        self.intake = Intake(self.queue, book, ledger, log, trust, sc.retries)
        self.outcomes = Outcomes(book, ledger, log, cfg, usage, self.clock)
        self.outputs = HostOutputs(files, book, cfg, self.mono, ledger.disk_problem)
        self.sensing = LoadSensing(cfg, self.sensors)
        self.notifier = Notifier(cfg.notify.command, cfg.notify.timeout, opts.host,
                                 str(opts.jobfile), log)
        self.outcomes.on_failed = self.notifier.job_failed
        self.limits = TimeLimits(cfg, usage)
        self.health = HostHealth(sc.quarantine_after, sc.quick_fail)
        self.edge = WorkdayEdge(cfg, usage)
        self.hostentry = HostEntry(opts.hostfile, opts.host, trust, log)
        self.modes = Modes(book, ledger, self.intake, self.health, log, sc.term_grace, self.mono)
        self.owner = Ownership(files, self.queue, ledger, log, self.clock, cfg.jobfile.fsync)
        self.ledger.fence = self.intake.fence = self.owner.fence
        self.wakeup = Wakeup()
        self.jobcontrol = JobControl(book, ledger, log, self.clock, self.mono)
        self.control_inbox = ControlInbox(files.control, trust)
        self.cancels = Cancels(CancelInbox(files.path("cancel"), trust), book, ledger,
                               self.outcomes, log)
        self.starts = Starts(book, ledger, self.intake, self.outcomes, self.edge, self.health,
                             self.notifier, self._env_for, log)

    # ---------------------------------------------------------------- set-up

    @property
    def host_entry(self) -> Host | None:
        return self.hostentry.entry

    def _make_executor(self, old: PidRecord | None) -> Executor:
        h = self.host_entry
        assert h is not None
        if h.drm:
            return drm_executor(self.files, h, self.cfg, self.opts.output_dir, self.log, self.mono)
        self.joboutput = JobOutput(self.files, self.opts.output_dir, self.opts.inherit_output,
                                   self.cfg.jobfile.fsync, self.log)
        self.outcomes.receive = self.joboutput.received
        ex = local_executor(self.files, self.cfg, self.joboutput.directory, self.log,
                            self.sensors, old, self.opts.allow_group_write)
        ex.output = self.joboutput
        ex.on_runner_started = self.owner.runner_started
        ex.on_stray = self.notifier.reaped
        return ex

    def startup(self) -> None:
        self.hostentry.load()
        check_input_file(self.jobfile, "jobfile", self.opts.allow_group_write)
        if not self.jobfile.exists():
            raise PbqError(
                f"no such jobfile (create it, e.g. with: touch {self.jobfile})",
                path=str(self.jobfile),
            )
        old = read_pidfile(self.files.pid)
        self.executor = self.modes.executor = self._make_executor(old)
        if self.joboutput is None and self.opts.output_dir is not None:
            try:
                self.opts.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise PbqError(
                    f"cannot create output directory: {err.strerror}",
                    path=str(self.opts.output_dir),
                ) from None
        self.ledger.load(self.opts.allow_group_write)
        probes = self.executor.probe(list(self.book))  # outside the lock: it may wait
        with self.queue.transaction() as txn:
            self.owner.claim(txn)
            committed = txn.state.ops.get(self.host, 0)
            if self.book.counters.next_op <= committed:
                self.book.counters.next_op = committed + 1
            steps = plan_recovery(list(self.book), committed, probes, self.host,
                                  self.executor.drm_name)
            apply_recovery(steps, self.book, self.ledger, self.outcomes, self.executor,
                           self.intake, self.queue, txn, self.log)
        self.ledger.save()
        self.ledger.recheck = self.owner.fence_now  # from now on (the claim is committed)
        if self.joboutput is not None:
            self.joboutput.open({j.seq for j in self.book})
        self.outputs.write_views(force=True)
        self.modes.restore_pause()
        h = self.host_entry
        assert h is not None
        self.log(
            f"pbq {__version__} scheduler for host {self.host} started, pid {os.getpid()}, "
            f"max {h.max:g} wday {h.wday:g} interactive {h.interactive}, "
            f"work hours {self.cfg.schedule.calendar.describe()}, interval {self.interval:g}s"
        )
        self.log.flush()

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        self.wakeup.install()
        try:
            self.startup()
            assert self.executor is not None
            self.executor.running_for_real()  # e.g. become the subreaper of the jobs
        except BaseException:
            if self.executor is not None:
                self.executor.close()
            raise
        try:
            # The first pass runs at once (not one interval later): a short queue starts now.
            done = self.pass_once(self.clock())
            self.queue.start_up_over()  # the claim and the first take
            while not done:
                done = self.step()
        except Replaced:
            # Nothing of this host is ours any more: no shutdown writes, no signals.  The
            # runner sees us gone and keeps the ends for the new owner in .exits.
            raise
        except BaseException:
            self._shutdown()
            raise
        self._shutdown()
        return self.exit_code

    def step(self) -> bool:
        """Wait for the next event, then make one pass.  True when the scheduler is done."""
        self._wait()
        return self.pass_once(self.clock())

    def pass_once(self, now: float) -> bool:
        """One pass in fixed order: fence, signals, events, tick (when due), act, files."""
        self.owner.fence_now(self.mono())  # before anything is signalled, reaped or written
        self._handle_signals()
        assert self.executor is not None
        ended = self.executor.events(now)
        self._started(now)  # before the ends: a job's start is answered before its end
        self._record_ends(ended, now)
        if self.mono() >= self.next_tick:
            self.tick(now)
        self.act(now)
        self._acknowledge()
        self.ledger.save_if_changed()
        self.ledger.flush_journal()
        # Churn (starts, ends) is debounced; a command's effect, or a stop, shows at once.
        self.outputs.write_views(force=self.views_now)
        self.views_now = False
        self.log.flush()
        return self._done()

    def settle_starts(self, timeout: float = 5.0) -> None:
        """Wait for the answers to the start requests sent so far and apply them (with the
        ends read meanwhile): for whoever drives passes one at a time, and before exit."""
        assert self.executor is not None
        self.executor.settle(timeout)
        now = self.clock()
        ended = self.executor.events(now)
        self._started(now)
        self._record_ends(ended, now)
        self._acknowledge()

    def _wait(self) -> None:
        timeout = self.next_tick - self.mono()
        if self.modes.term_deadline is not None:
            # Processes of a job's session may not be our children: poll for their end.
            timeout = min(timeout, self.modes.term_deadline - self.mono(), 0.1)
        if self.outputs.stale:
            timeout = min(timeout, VIEW_DEBOUNCE)  # the views lag the jobs by at most that
        # Ends of short jobs pile up while the runner's queued starts fill their slots.
        linger = self.starts.linger(self.book.running_count()) - (self.mono() - self.passed_at)
        if self.executor is not None and self.executor.has_news():
            timeout = min(timeout, max(0.0, linger))
        self.wakeup.wait(timeout, self.executor.fileno() if self.executor is not None else None,
                         linger)
        self.passed_at = self.mono()

    def _handle_signals(self) -> None:
        for sig in self.wakeup.take():
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
                self.hostentry.reload(force=True)

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    def _command(self, command: str, source: str) -> None:
        self.modes.command(command, source)
        self.views_now = True

    def _done(self) -> bool:
        if self.mode is Mode.TERM:
            return self.modes.term_done()
        if self.book.live() or self.book.in_state(*ASKED, JobState.CLAIMED):
            return False
        if self.ledger.pending():
            return False  # outcomes not written yet (full disk): wait for them
        if self.mode is Mode.QUIT:
            return True
        if self.opts.exit_when_empty and self.mode is Mode.RUN:
            return self.intake.drained()
        return False

    def _shutdown(self) -> None:
        if self.mode is not Mode.TERM:
            # before the exit's compaction changes the jobfile:
            self.notifier.drained_if(self.intake.nothing_left)
        if self.executor is not None:
            self.settle_starts(1.0)
            self.modes.put_back_terminated(self.queue)
            self.executor.close()
        if self.joboutput is not None:
            self.joboutput.close()
        self.ledger.flush(self.queue)
        self.outcomes.flush_usage()
        if self.opts.exit_when_empty and self.mode is Mode.RUN:
            self.intake.compact_if_due(self.clock(), force=True)
            with contextlib.suppress(PbqError):
                if self.queue.partial_tail() is not None:
                    self.log("exiting with an unterminated last line still pending (not run)")
        state = "terminated" if self.mode is Mode.TERM else "exited"
        with contextlib.suppress(PbqError):
            self.ledger.save(fsync=True)
        self.outputs.write_views(force=True)
        c = self.book.counters
        self.log(f"scheduler exits ({state}): {c.done} done, {c.failed} failed")
        self.log.flush()
        self.outputs.write_status(self.status(self.clock(), state=state))
        self.owner.release()

    # ---------------------------------------------------------------- ends

    def _record_ends(self, ended: list[Ended], now: float) -> None:
        """Put ends on the ledger, then tell the executor they are there.

        Ends are written (joblog, .error, journal) before they are acknowledged: until then
        the job runner keeps them, and writes them to ``.exits`` if the scheduler dies."""
        assert self.executor is not None
        for e in ended:
            # Only a job's own end says something of the host (not a timeout, an eviction
            # or a put-back).
            plain = e.job.state in (JobState.RUNNING, JobState.STOPPED, *ASKED)
            started = e.job.started
            self.outcomes.ended(e, terminating=self.mode is Mode.TERM)
            if plain and started is not None and e.outcome.exit_code != UNKNOWN_EXIT:
                self._health_end(End(e.when, e.outcome.ok, max(0.0, e.when - started)), now)
        for job, cpu, maxrss in self.executor.usage():
            self.outcomes.usage(job, cpu, maxrss, now)
        if ended:
            if self.ledger.flush(self.queue):
                self.intake.changed()
            self.ledger.save_if_changed()
            # Right behind the joblog rows, not at the pass's end: a scheduler killed between
            # the two records the end again after its restart (a second joblog row).
            self.ledger.flush_journal()
            self.recorded += ended  # acknowledged after this pass's starts (_acknowledge)

    def _acknowledge(self) -> None:
        """Tell the executor which ends the ledger holds (the runner forgets them, job
        cgroups go) and pack their output: after the pass's starts, off their path."""
        if not self.recorded:
            return
        assert self.executor is not None
        ended, self.recorded = self.recorded, []
        self.ledger.flush_journal()  # their "ended" record first
        self.executor.recorded(ended)  # (hands ended jobs' output to be packed)
        if self.joboutput is not None:
            self.joboutput.pack()  # now: their slots are free only once packed

    # ---------------------------------------------------------------- tick

    def tick(self, now: float) -> None:
        """Once per interval: requests, sensors, polled ends, heartbeat."""
        assert self.executor is not None and self.host_entry is not None
        mono = self.mono()
        self.next_tick = mono + self.interval
        self._check_control_file()
        self.cancels.apply(self.executor, now, self.cfg.scheduler.term_grace)
        self.hostentry.reload()
        if self.health.until is not None and not self.health.quarantined(now):
            self.health.until = None
            self.log(
                "quarantine over: taking jobs again (one more quick failure quarantines "
                "the host again, for twice as long)"
            )
        own = (
            self.executor.own_cpu_seconds(self.book.live())
            if self.executor.counts_foreign_load
            else None
        )
        before, self.m = self.m, self.sensing.sense(now, mono, self.host_entry, own)
        if self.m.limit == 0 and (before.limit != 0 or self.next_load_log == 0.0):
            why = why_zero(self.host_entry, self.m)
            self.log(f"the load limit is 0 now ({why}): starting nothing")
        for job in self.executor.stopped_by_others(self.book.in_state(JobState.RUNNING)):
            # PBQ's rule: only pbq stops a job for long; a job stopped by anyone else (or by
            # itself, `kill -STOP $$`) would hold its slot, and --exit-when-empty, for ever.
            if self.executor.cont(job) is not None:
                self.log(f"job {self.book.job_id(job)} was stopped by someone else: continued it")
        self._record_ends(self.executor.poll(self.book.live(), now, mono), now)
        self._enforce_limits(now)
        if self.ledger.flush(self.queue):
            self.intake.changed()
        self.outcomes.flush_usage()
        if self.joboutput is not None:
            self.joboutput.pack()
        self.notifier.drained_if(self.intake.nothing_left)
        if self.notifier.pids:
            self.notifier.poll()
        if self.ledger.disk_error is not None:
            self.ledger.retry_disk(self.queue)
        self.intake.compact_if_due(now)
        if self.book.changed:
            self.ledger.snapshot_soon()  # at least one snapshot per tick
        self.outputs.write_status(self.status(now))
        if mono >= self.next_load_log:
            self.next_load_log = mono + self.cfg.log.load_every
            self.log(self.outputs.load_line(self.m))
        if mono >= self.next_history:
            self.next_history = mono + self.cfg.history.every
            self.outputs.append_history(now, self.m)

    def _enforce_limits(self, now: float) -> None:
        assert self.executor is not None
        enforce_limits(
            self.limits,
            self.book,
            self.executor,
            self.ledger,
            self.log,
            now,
            self.cfg.scheduler.term_grace,
            decide=self.mode is not Mode.TERM,
        )

    def _check_control_file(self) -> None:
        req = self.control_inbox.take(self.log)
        if req is None:
            return
        self.control_ack = str(req.get("id", ""))
        cmd = str(req["command"])
        if cmd == "kill":
            self.outputs.write_status(self.status(self.clock()))
        self._command(cmd, f"control request from {req.get('by', '?')}")

    # ---------------------------------------------------------------- act

    def view(self, now: float) -> View:
        assert self.executor is not None
        stopped, mono, m = self.book.in_state(JobState.STOPPED), self.mono(), self.m
        h = self.cfg.scheduler.hysteresis if self.executor.counts_foreign_load else 0.0
        # A queued start is answered before the end that freed its slot: not two in that slot.
        running = max(0, self.book.running_count() - self.executor.ends_in_flight())
        over = m.foreign + running - m.limit > h + 1e-9
        self.over_since = (mono if self.over_since is None else self.over_since) if over else None
        return View(
            mode=self.mode,
            limit=m.limit,
            foreign=m.foreign,
            foreign_recent=m.foreign_recent,
            running=running,
            stopped_by_load=sum(1 for j in stopped if j.stopped_by != "user"),
            stopped_by_user=sum(1 for j in stopped if j.stopped_by == "user"),
            pending=self.executor.accepting(mono)
            and self.ledger.disk_error is None
            and not self.health.quarantined(now)
            and self.intake.may_have_lines(),
            hysteresis=h,
            mem_available=m.mem_available,
            memfree=self.cfg.scheduler.memfree,
            since_evict=mono - self.jobcontrol.last_evict,
            settle=self.cfg.scheduler.settle,
            over_for=0.0 if self.over_since is None else mono - self.over_since,
            stop_after=self.cfg.scheduler.stop_after,
        )

    def act(self, now: float) -> Decision:
        v = self.view(now)
        d = decide(v)
        ex = self.executor
        assert ex is not None and self.host_entry is not None
        ahead = self.starts.ahead_target(v, ex, now, self.mono(), self.host_entry, self.m)
        if not ahead:
            ex.revoke()  # before any job is stopped or killed: no queued start takes its slot
        # Until the queued starts taken back are answered, nothing newer starts or is queued:
        # lines start in the order they were taken.
        waiting = ex.revoking
        if d:
            self._act_on(d, now, start=not waiting)
        if ahead and not waiting:
            self._launched(self.starts.queue_ahead(ahead, now, ex, self.m), now)
        return d

    def _act_on(self, d: Decision, now: float, start: bool) -> None:
        held = self.book.in_state(JobState.RUNNING, JobState.STOPPED)
        choice = choose(
            [Candidate(j.seq, j.started or 0.0, j.state is JobState.STOPPED) for j in held], d
        )
        by_seq = {j.seq: j for j in held}
        ex, m = self.executor, self.m
        assert ex is not None
        self.views_now = self.views_now or bool(choice.evict or choice.stop or choice.cont)
        for seq in choice.evict:
            self.jobcontrol.evict(ex, by_seq[seq], m)
        by = "user" if self.mode is Mode.PAUSED else "load"
        for seq in choice.stop:
            self.jobcontrol.stop(ex, by_seq[seq], by, m)
        for seq in choice.cont:
            self.jobcontrol.cont(ex, by_seq[seq])
        if choice.start and start:
            assert self.host_entry is not None
            self._launched(self.starts.start_now(choice.start, now, ex, self.host_entry,
                                                 self.mode, m), now)

    def _started(self, now: float) -> None:
        """Answers to start requests of earlier passes (the job runner's)."""
        assert self.executor is not None
        answers = self.executor.start_answers()
        if answers:
            self._launched(apply_answers(answers, now, self.executor, self.book, self.ledger,
                                         self.outcomes, self.log), now)

    def _launched(self, done: Launched | None, now: float) -> None:
        if done is None:
            return
        if done.revoked and (self.modes.quitting or self.health.quarantined(now)):
            self.intake.give_back_claimed()  # taken back after quit (or quarantine) gave back
        for ok in done.refused:
            self._health_end(End(now, ok, 0.0), now)
        if self.joboutput is not None:
            self.joboutput.not_started(done.not_started)
        if done.put_back and self.ledger.flush(self.queue):
            self.intake.changed()

    def _health_end(self, end: End, now: float) -> None:
        """A job of this host ended: quarantine the host if only its jobs fail."""
        why = self.health.record_end(end, now, lambda: read_peers(self.jobfile, self.host, now))
        if why is not None:
            until = (self.health.until or now) - now
            self.log(f"quarantined for {until:.0f}s: {why}; taking no new jobs "
                     f"(pbq control ... cont {self.host} lifts it)")
            self.intake.give_back_claimed()

    def _env_for(self, job: Job) -> dict[str, str]:
        """What a job finds in its environment besides the scheduler's."""
        assert self.host_entry is not None
        return {"PBQ_HOST": self.host, "PBQ_ARCH": self.host_entry.arch,
                "PBQ_JOB_ID": self.book.job_id(job), "PBQ_JOBFILE": str(self.jobfile),
                "PBQ_SEQ": str(job.number)}

    def status(self, now: float, state: str | None = None) -> HostStatus:
        return self.outputs.heartbeat(
            now, state or self.mode.value, self.m, self.health,
            runner_pid=self.owner.runner_pid, epoch=self.owner.epoch, quitting=self.modes.quitting,
            control_ack=self.control_ack, error=self.ledger.disk_error, started=self.started_at,
            interval=self.interval, drm=None if self.executor is None else self.executor.drm_name,
            **self.queue.lock_stats(),
        )
