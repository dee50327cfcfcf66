"""The jobs one host holds, and the only code that changes their state.

Every state that must survive a crash is a state of :class:`JobState` -- no flag on the side
says "running but terminated".  The edges (each is one method of :class:`JobBook`, which
refuses any other)::

    (jobfile line) -take-> CLAIMED -start-> STARTING -started-> RUNNING <-stop/cont-> STOPPED
                              |                |                   | \\                     /
                              |                |                   |  +-evict/term/timeout-+
                              |                |                   v       v
                              |                | EVICTING/TIMING_OUT  TERMINATING -gone-> TERMINATED
                              |                |                   |       |                  |
                              +----------------+-------------------+-------+-------------------+
                                               |  put back (front: crash, eviction, term, quit;
                                               v            end: a retry)
                      REQUEUE_FRONT / REQUEUE_END -committed-> (gone: the line is pending again)

    STARTING/RUNNING/STOPPED/TIMING_OUT -ended-> (gone: joblog/.error written)
                                    \\-> SETTLING -> (gone)
                                        (its retry count is cleared under the next lock)

    STARTING -term-> TERMINATING -started-> TERMINATING (its pid, once the runner answers)

    CLAIMED -queue-> QUEUED: its start is asked for ahead, to be made by the job runner the
    moment one of the host's jobs ends (short jobs); from then on it is what STARTING is
    (it may have run; saved as STARTING) and shares its edges, plus QUEUED -revoked-> CLAIMED
    when the scheduler takes the request back before it was made, and QUEUED -go-> STARTING
    when a slot is free and the runner is told to make it now.

    RUNNING/STOPPED/EVICTING/TIMING_OUT/TERMINATING -cancel-> CANCELLING -ended-> (gone, or
    SETTLING: joblog row and .log say "cancelled"; never retried, never in .error)
    CLAIMED -cancel-> (gone, the same record: it never started)

A put-back carries the operation number under which it is written ahead (``putback_op``);
until then it is ``None`` and a restart puts the line back itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..statefiles import line_to_text, text_to_line

UNKNOWN_EXIT = -1  # joblog Exitval of a job whose outcome cannot be known


class JobState(StrEnum):
    CLAIMED = "claimed"  # taken from the jobfile, not started yet (short jobs are taken ahead)
    STARTING = "starting"  # being started: if the scheduler dies now, it may have run
    QUEUED = "queued"  # to be started by the runner when a job ends (saved as "starting")
    RUNNING = "running"
    STOPPED = "stopped"  # stopped by the load policy or by the user (``stopped_by``)
    EVICTING = "evicting"  # ended by pbq (memory, max_suspend): its line goes back to the front
    TIMING_OUT = "timing_out"  # past its time limit, being ended: its line goes to .error
    TERMINATING = "terminating"  # `term` signalled it: its line goes back when the host restarts
    TERMINATED = "terminated"  # ... and its processes are gone
    CANCELLING = "cancelling"  # `pbq cancel` signalled it: recorded as cancelled when it ends
    SETTLING = "settling"  # outcome on record; its retry count is cleared under the next lock
    REQUEUE_FRONT = "requeue_front"  # its line is being put back at the front
    REQUEUE_END = "requeue_end"  # its line is being put back at the end (a retry)


LIVE = (
    JobState.RUNNING,
    JobState.STOPPED,
    JobState.EVICTING,
    JobState.TIMING_OUT,
    JobState.TERMINATING,
    JobState.CANCELLING,
)
REQUEUE = (JobState.REQUEUE_FRONT, JobState.REQUEUE_END)
ASKED = (JobState.STARTING, JobState.QUEUED)  # a start was asked for, not answered yet
# States whose process may still run (it must be watched, signalled on term, adopted).
WATCHED = LIVE


class IllegalTransition(RuntimeError):
    """A state change the diagram does not allow: a bug, never a user error."""


@dataclass
class Outcome:
    exit_code: int  # UNKNOWN_EXIT when unknown
    signal: int = 0
    cpu_seconds: float = 0.0
    maxrss: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.signal == 0


def outcome_of(status: int, cpu: float = 0.0, maxrss: int = 0, note: str = "") -> Outcome:
    """The outcome a raw wait status says."""
    if os.WIFEXITED(status):
        return Outcome(os.WEXITSTATUS(status), 0, cpu, maxrss, note)
    if os.WIFSIGNALED(status):
        # As GNU Parallel writes it: Exitval 0, Signal N (Exitval -1 means unknown only).
        return Outcome(0, os.WTERMSIG(status), cpu, maxrss, note)
    return Outcome(UNKNOWN_EXIT, note="unreadable exit status")


@dataclass
class Job:
    seq: int  # per-host sequence number: the job id is HOST.seq
    line: bytes
    op: int  # the operation that took it
    state: JobState = JobState.CLAIMED
    pid: int | None = None  # session (and process group) id of a local job
    pid_start: float | None = None  # process start time: pid + start time name the process
    started: float | None = None  # wall-clock start
    stopped_by: str | None = None  # "load" or "user" while STOPPED
    tries: int = 0  # earlier failed attempts of this line
    cluster_id: str | None = None  # on a DRM host: the resource manager's job id
    putback_op: int | None = None  # REQUEUE_*: the operation that puts the line back
    stopped_at: float | None = None  # STOPPED: since when (wall clock)
    stopped_secs: float = 0.0  # time spent stopped before (a time limit excludes it)
    kill_at: float | None = None  # EVICTING/TIMING_OUT/CANCELLING: SIGKILL what is left then
    cpu_seconds: float = 0.0  # last CPU sample (not saved)
    held: bool = False  # on a DRM host: pbq itself held or suspended it (released by cont)
    line_seq: int | None = None  # the line's number in the jobfile's history (joblog Seq)

    @property
    def number(self) -> int:
        """Its joblog Seq (a job taken by an older pbq has none: its per-host seq)."""
        return self.seq if self.line_seq is None else self.line_seq

    def running_time(self, now: float) -> float:
        """Seconds it has run, time stopped excluded."""
        stopped = self.stopped_secs + (
            now - self.stopped_at if self.stopped_at is not None else 0.0
        )
        started = now if self.started is None else self.started
        return max(0.0, now - started - stopped)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "seq": self.seq,
            "line": line_to_text(self.line),
            "op": self.op,
            # A queued start is a start asked for, to whoever reads this after a crash.
            "state": (JobState.STARTING if self.state is JobState.QUEUED else self.state).value,
        }
        for key in (
            "pid",
            "pid_start",
            "started",
            "stopped_by",
            "cluster_id",
            "putback_op",
            "stopped_at",
            "kill_at",
            "line_seq",
        ):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.tries:
            d["tries"] = self.tries
        if self.stopped_secs:
            d["stopped_secs"] = self.stopped_secs
        if self.held:
            d["held"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        """A saved job; also reads the first release's flags (``evicting``, ``extra``,
        ``requeue_front``), so a queue can be upgraded while jobs run."""
        raw_state = str(d.get("state", "starting"))
        extra = d.get("extra") or {}
        op = int(d["op"])
        putback = d.get("putback_op")
        if raw_state == "requeue":  # first release: one state, the op was the put-back's
            state = JobState.REQUEUE_FRONT if d.get("requeue_front", True) else JobState.REQUEUE_END
            putback = op
        else:
            state = JobState(raw_state)
        if isinstance(extra, dict) and state in LIVE + (JobState.STARTING,):
            if extra.get("terminated"):
                state = JobState.TERMINATED if extra.get("reaped") else JobState.TERMINATING
            elif extra.get("done_only"):
                state = JobState.SETTLING
        if d.get("evicting") and state in (JobState.RUNNING, JobState.STOPPED):
            state = JobState.EVICTING
        return cls(
            seq=int(d["seq"]),
            line=text_to_line(str(d["line"])),
            op=op,
            state=state,
            pid=_opt_int(d.get("pid")),
            pid_start=_opt_float(d.get("pid_start")),
            started=_opt_float(d.get("started")),
            stopped_by=d.get("stopped_by"),
            tries=int(d.get("tries", 0) or 0),
            cluster_id=None if d.get("cluster_id") is None else str(d["cluster_id"]),
            putback_op=_opt_int(putback),
            stopped_at=_opt_float(d.get("stopped_at")),
            stopped_secs=float(d.get("stopped_secs", 0.0) or 0.0),
            kill_at=_opt_float(d.get("kill_at")),
            held=bool(d.get("held", False)),
            line_seq=_opt_int(d.get("line_seq")),
        )


def _seq(job: Job) -> int:
    return job.seq


def _opt_int(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[call-overload]


def _opt_float(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


@dataclass
class Counters:
    """Numbers a host keeps across restarts."""

    next_seq: int = 1
    next_op: int = 1
    done: int = 0
    failed: int = 0
    timed_out: int = 0  # ended by [scheduler] timeout
    suspend_ended: int = 0  # ended by [scheduler] max_suspend (their lines went back)
    cancelled: int = 0  # ended (or dropped before starting) by `pbq cancel`


@dataclass
class JobBook:
    """The host's jobs.  Every state change goes through one method here, guarded."""

    host: str
    counters: Counters = field(default_factory=Counters)
    _jobs: dict[int, Job] = field(default_factory=dict)  # by seq, in the order taken
    changed: bool = False  # something changed since the ledger last saw the book
    # The jobs of each state (by seq), kept by the transitions: the loop asks for the jobs
    # of a state many times a pass, and a host holds up to a hundred lines taken ahead.
    _by_state: dict[JobState, dict[int, Job]] = field(default_factory=dict)
    _unsorted: set[JobState] = field(default_factory=set)  # a lower seq entered after a higher

    # -- queries --------------------------------------------------------------

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, seq: int) -> Job | None:
        return self._jobs.get(seq)

    def in_state(self, *states: JobState) -> list[Job]:
        """The jobs in these states, in the order taken (by seq)."""
        found = [self._in_one(s) for s in states]
        parts = [p for p in found if p]
        if len(parts) > 1:
            return sorted((j for p in parts for j in p.values()), key=_seq)
        return list(parts[0].values()) if parts else []

    def _in_one(self, state: JobState) -> dict[int, Job] | None:
        group = self._by_state.get(state)
        if group and state in self._unsorted:
            group = self._by_state[state] = dict(sorted(group.items()))
            self._unsorted.discard(state)
        return group

    def _file(self, job: Job) -> None:
        group = self._by_state.setdefault(job.state, {})
        if group and job.seq < next(reversed(group)):
            self._unsorted.add(job.state)
        group[job.seq] = job

    def _unfile(self, job: Job) -> None:
        group = self._by_state.get(job.state)
        if group is not None:
            group.pop(job.seq, None)

    def live(self) -> list[Job]:
        return self.in_state(*LIVE)

    def running_count(self) -> int:
        """Jobs that use a slot now (being started counts: it will run at once)."""
        return sum(len(self._by_state.get(s, ())) for s in (JobState.RUNNING, JobState.STARTING))

    def job_id(self, job: Job) -> str:
        return f"{self.host}.{job.seq}"

    def new_op(self) -> int:
        op = self.counters.next_op
        self.counters.next_op += 1
        return op

    # -- transitions ------------------------------------------------------------

    def _move(self, job: Job, to: JobState, allowed: Iterable[JobState]) -> None:
        if self._jobs.get(job.seq) is not job or job.state not in allowed:
            raise IllegalTransition(f"job {self.job_id(job)}: {job.state.value} -> {to.value}")
        self._unfile(job)
        job.state = to
        self._file(job)
        self.changed = True

    def claim(self, line: bytes, op: int, tries: int = 0, line_seq: int | None = None) -> Job:
        # (jobfile line) -> CLAIMED
        job = Job(seq=self.counters.next_seq, line=line, op=op, tries=tries, line_seq=line_seq)
        self.counters.next_seq += 1
        self._jobs[job.seq] = job
        self._file(job)
        self.changed = True
        return job

    def unclaim(self, jobs: Iterable[Job]) -> None:
        """Undo takes whose commit failed: the lines are still pending."""
        for job in jobs:
            self._move(job, job.state, (JobState.CLAIMED,))  # CLAIMED -> (never taken)
            self._unfile(job)
            del self._jobs[job.seq]

    def starting(self, job: Job) -> None:
        # CLAIMED -> STARTING; QUEUED -> STARTING (a free slot: the runner is to start it now)
        self._move(job, JobState.STARTING, (JobState.CLAIMED, JobState.QUEUED))

    def unstart(self, job: Job) -> None:
        self._move(job, JobState.CLAIMED, ASKED)  # STARTING/QUEUED -> CLAIMED (not on record)

    def queue(self, job: Job) -> None:
        self._move(job, JobState.QUEUED, (JobState.CLAIMED,))  # CLAIMED -> QUEUED

    def unqueue(self, job: Job) -> None:
        """The runner gave the queued start back unmade (revoked)."""
        self._move(job, JobState.CLAIMED, (JobState.QUEUED,))  # QUEUED -> CLAIMED

    def started(
        self,
        job: Job,
        now: float,
        pid: int | None = None,
        pid_start: float | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self._move(job, JobState.RUNNING, ASKED)  # STARTING/QUEUED -> RUNNING
        job.pid, job.pid_start, job.cluster_id, job.started = pid, pid_start, cluster_id, now

    def adopt(self, job: Job, stopped: bool) -> None:
        """A job of an earlier run whose process (or cluster job) still exists."""
        to = JobState.STOPPED if stopped else JobState.RUNNING
        if job.state in (JobState.EVICTING, JobState.TIMING_OUT, JobState.TERMINATING,
                         JobState.CANCELLING):
            return  # these stay: their end decides where the line goes
        self._move(job, to, (JobState.STARTING, JobState.RUNNING, JobState.STOPPED))
        if stopped and not job.stopped_by:
            job.stopped_by = "load"
        if not stopped:
            job.stopped_by = None

    def stop(self, job: Job, by: str, now: float | None = None) -> None:
        self._move(job, JobState.STOPPED, (JobState.RUNNING,))  # RUNNING -> STOPPED
        job.stopped_by = by
        job.stopped_at = now

    def cont(self, job: Job, now: float | None = None) -> None:
        self._move(job, JobState.RUNNING, (JobState.STOPPED,))  # STOPPED -> RUNNING
        job.stopped_by = None
        if job.stopped_at is not None and now is not None:
            job.stopped_secs += max(0.0, now - job.stopped_at)
        job.stopped_at = None

    def release_user_stops(self) -> None:
        """`cont`: jobs the user stopped are the load policy's to continue now."""
        for job in self.in_state(JobState.STOPPED):
            if job.stopped_by == "user":
                job.stopped_by = "load"
                self.changed = True

    def evicting(self, job: Job, kill_at: float | None = None) -> None:
        self._move(job, JobState.EVICTING, (JobState.RUNNING, JobState.STOPPED))  # -> EVICTING
        job.kill_at = kill_at

    def timing_out(self, job: Job, kill_at: float) -> None:
        self._move(job, JobState.TIMING_OUT, (JobState.RUNNING, JobState.STOPPED))  # -> TIMING_OUT
        job.kill_at = kill_at

    def cancelling(self, job: Job, kill_at: float) -> None:
        # RUNNING/STOPPED/EVICTING/TIMING_OUT/TERMINATING -> CANCELLING
        self._move(job, JobState.CANCELLING, (JobState.RUNNING, JobState.STOPPED,
                                              JobState.EVICTING, JobState.TIMING_OUT,
                                              JobState.TERMINATING))
        job.kill_at = kill_at

    def terminating(self, job: Job) -> None:
        # RUNNING/STOPPED/STARTING/QUEUED -> TERMINATING
        self._move(job, JobState.TERMINATING, (JobState.RUNNING, JobState.STOPPED, *ASKED))

    def started_while_terminating(
        self, job: Job, now: float, pid: int | None, pid_start: float | None,
        cluster_id: str | None,
    ) -> None:
        """`term` reached the job while it was being started: it stays TERMINATING, with the
        process (or cluster job) it turned out to be, so that its end can be waited for."""
        self._move(job, JobState.TERMINATING, (JobState.TERMINATING,))  # TERMINATING (pid known)
        job.pid, job.pid_start, job.cluster_id, job.started = pid, pid_start, cluster_id, now

    def terminated(self, job: Job) -> None:
        self._move(job, JobState.TERMINATED, (JobState.TERMINATING,))  # TERMINATING -> TERMINATED
        job.pid = None

    def requeue(self, job: Job, front: bool) -> None:
        """Its line is to go back into the jobfile (written ahead by the ledger)."""
        if front:
            # CLAIMED/STARTING/QUEUED/live/TERMINATED -> REQUEUE_FRONT
            self._move(
                job,
                JobState.REQUEUE_FRONT,
                (JobState.CLAIMED, *ASKED, JobState.TERMINATED, *LIVE),
            )
        else:
            # STARTING/QUEUED/RUNNING/STOPPED -> REQUEUE_END (a retry)
            self._move(job, JobState.REQUEUE_END, (*ASKED, JobState.RUNNING, JobState.STOPPED))
        job.putback_op = None

    def settling(self, job: Job) -> None:
        # ended with a retry count to clear:
        # CLAIMED/STARTING/QUEUED/RUNNING/STOPPED/TIMING_OUT/CANCELLING -> SETTLING
        self._move(
            job,
            JobState.SETTLING,
            (JobState.CLAIMED, *ASKED, JobState.RUNNING, JobState.STOPPED,
             JobState.TIMING_OUT, JobState.CANCELLING),
        )

    def drop(self, job: Job) -> None:
        """The job leaves the book: its outcome is written, or its line is pending again."""
        if self._jobs.get(job.seq) is not job:
            raise IllegalTransition(f"job {self.job_id(job)} is not in the book")
        self._unfile(job)
        del self._jobs[job.seq]
        self.changed = True

    # -- persistence (the ledger decides when) ------------------------------------

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        return {
            "next_seq": c.next_seq,
            "next_op": c.next_op,
            "done": c.done,
            "failed": c.failed,
            "timed_out": c.timed_out,
            "suspend_ended": c.suspend_ended,
            "cancelled": c.cancelled,
            "jobs": [j.to_json() for j in self._jobs.values()],
        }

    @classmethod
    def from_json(cls, host: str, d: object) -> JobBook:
        book = cls(host)
        book.load_json(d)
        return book

    def load_json(self, d: object) -> None:
        """Replace the book's contents with a saved one (start-up, recover)."""
        self._jobs = {}
        self._by_state, self._unsorted = {}, set()
        self.counters = Counters()
        if not isinstance(d, dict):
            return
        self.counters = Counters(
            int(d.get("next_seq", 1)),
            int(d.get("next_op", 1)),
            int(d.get("done", 0)),
            int(d.get("failed", 0)),
            int(d.get("timed_out", 0)),
            int(d.get("suspend_ended", 0)),
            int(d.get("cancelled", 0)),
        )
        for raw in d.get("jobs", []):
            self.restore(Job.from_json(raw))

    def restore(self, job: Job) -> None:
        """Put a job read from the ledger into the book (start-up only)."""
        old = self._jobs.get(job.seq)
        if old is not None:
            self._unfile(old)
        self._jobs[job.seq] = job
        self._file(job)
