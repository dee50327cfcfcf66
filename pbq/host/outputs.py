"""What a host writes for people and for the other commands: ``.running``/``.stopped``
(exactly the job lines), the ``.status`` heartbeat, ``.history`` samples."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import PbqError
from ..quarantine import HostHealth
from ..sidefiles import HostStatus, write_status
from ..statefiles import HostFiles, append_bytes, atomic_write
from .jobs import JobBook, JobState
from .sensing import Measurements

VIEW_DEBOUNCE = 0.5  # seconds the views may lag the jobs while they churn (a rename each)
HELD = (
    JobState.RUNNING,
    JobState.STARTING,
    JobState.QUEUED,
    JobState.CLAIMED,
    JobState.STOPPED,
    JobState.EVICTING,
    JobState.TERMINATING,
    JobState.TERMINATED,
)


class HostOutputs:
    def __init__(
        self,
        files: HostFiles,
        book: JobBook,
        cfg: Config,
        mono: Callable[[], float],
        on_error: Callable[[PbqError], None],
    ) -> None:
        self.files = files
        self.book = book
        self.cfg = cfg
        self.mono = mono
        self.on_error = on_error  # a full disk: the ledger says it once
        self.written: dict[str, bytes] = {}
        self.written_at = -float("inf")
        self.stale = False  # a change waits for the debounce: the loop wakes for it

    def write_views(self, force: bool = False) -> None:
        """``.running`` / ``.stopped``, rewritten when they change (at most every
        VIEW_DEBOUNCE seconds while jobs churn; always at a tick and at exit).

        Lines taken ahead, and jobs being terminated, are listed too: ``cat *.running
        *.stopped`` must give back everything this host holds."""
        mono = self.mono()
        if not force and mono - self.written_at < VIEW_DEBOUNCE:
            self.stale = True
            return
        self.written_at = mono
        self.stale = False
        jobs = self.book.in_state(*HELD)
        stopped = [
            j
            for j in jobs
            if j.state is JobState.STOPPED
            or (j.stopped_by and j.state in (JobState.TERMINATING, JobState.TERMINATED))
        ]
        running = [j for j in jobs if j not in stopped]
        for ext, group in (("running", running), ("stopped", stopped)):
            data = b"".join(j.line + b"\n" for j in group)
            if self.written.get(ext) != data:
                try:
                    atomic_write(self.files.path(ext), data, volatile=True)  # a view
                    self.written[ext] = data
                except PbqError as err:
                    self.on_error(err)

    def heartbeat(self, now: float, state: str, m: Measurements, health: HostHealth,
                  **loop: Any) -> HostStatus:
        """The ``.status`` record: the book's counts, the measurements, the host's health,
        and what only the loop knows (``loop``: runner_pid, epoch, quitting, ...)."""
        stopped = self.book.in_state(JobState.STOPPED)
        c = self.book.counters
        running = self.book.running_count()
        return HostStatus.of_this_process(
            host=self.files.host,
            jobfile=str(self.files.jobfile),
            state=state,
            time=now,
            load=round(m.foreign + running, 3),
            foreign=round(m.foreign, 3),
            limit=m.limit,
            work_time=m.work_time,
            active_users=m.active_users,
            local_users=m.local_users,
            remote_users=m.remote_users,
            sources=m.sources,
            mem_available=m.mem_available,
            running=running,
            stopped=len(stopped),
            stopped_by_user=sum(1 for j in stopped if j.stopped_by == "user"),
            claimed=len(self.book.in_state(JobState.CLAIMED)),
            done=c.done,
            failed=c.failed,
            timed_out=c.timed_out,
            suspend_ended=c.suspend_ended,
            last_success=health.last_success,
            last_failure=health.last_failure,
            quick_failures=health.quick_failures,
            quarantined=health.quarantined(now),
            quarantined_until=health.until,
            quarantines=health.quarantines,
            **loop,
        )

    def write_status(self, status: HostStatus) -> None:
        try:
            write_status(self.files.status, status)
        except PbqError as err:
            self.on_error(err)

    def load_line(self, m: Measurements) -> str:
        c = self.book.counters
        running = self.book.running_count()
        return (
            f"load {m.foreign + running:.2f} (foreign {m.foreign:.2f}) limit {m.limit:g}: "
            f"{running} running, {len(self.book.in_state(JobState.STOPPED))} stopped, "
            f"{c.done} done, {c.failed} failed"
        )

    def append_history(self, now: float, m: Measurements) -> None:
        c = self.book.counters
        running = self.book.running_count()
        rec = {
            "t": round(now, 1),
            "load": round(m.foreign + running, 3),
            "foreign": round(m.foreign, 3),
            "limit": m.limit,
            "running": running,
            "stopped": len(self.book.in_state(JobState.STOPPED)),
            "done": c.done,
            "failed": c.failed,
            "users": m.active_users,
        }
        path = self.files.history
        try:
            if path.exists() and os.stat(path).st_size > self.cfg.history.max_bytes > 0:
                os.replace(path, path.with_name(path.name + ".1"))
            append_bytes(path, json.dumps(rec).encode() + b"\n")
        except (OSError, PbqError):
            pass  # samples for the report: a lost one is not worth a word
