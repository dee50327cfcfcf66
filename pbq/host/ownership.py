"""Who holds a host: the pid file and the fencing epoch.

A scheduler that starts for a host refuses to when another one is alive (the one liveness
rule of ``pbq.sidefiles``), else takes the host over by bumping the host's epoch in the
queue record under the jobfile lock (Chubby's sequencer, a fencing token) and writing
``.pid``.  Before each pass acts, and under the lock before every take and put-back, it
checks that the record still names its epoch: one that was frozen or partitioned while
another took over finds a newer epoch there and stops before it writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import PbqError
from ..jobfile import JobQueue, Txn
from ..sidefiles import PidRecord, liveness, read_pidfile, read_status, write_pidfile
from ..statefiles import HostFiles, unlink_quietly
from .ledger import Ledger, Log, Replaced

EPOCH_CHECK_EVERY = 0.1  # seconds; a frozen scheduler resumed checks before its next pass acts


class Ownership:
    def __init__(self, files: HostFiles, queue: JobQueue, ledger: Ledger, log: Log,
                 clock: Callable[[], float], fsync: bool) -> None:
        self.files = files
        self.host = files.host
        self.jobfile: Path = files.jobfile
        self.queue = queue
        self.ledger = ledger
        self.log = log
        self.clock = clock
        self.fsync = fsync
        self.epoch = 0  # this scheduler's ownership of the host
        self.runner_pid: int | None = None  # written into .pid once the runner exists
        self.checked = -float("inf")  # monotonic time of the last check outside the lock

    def claim(self, txn: Txn) -> None:
        """Refuse a second scheduler for this host and jobfile; else take the host over with
        a new epoch and write ``.pid``.  Runs under the jobfile lock, so two schedulers
        starting at once can't both win."""
        info = read_pidfile(self.files.pid)
        verdict = liveness(info, read_status(self.files.status), self.clock(), self.jobfile)
        if info is not None and verdict.alive:
            if verdict.exact:
                how = f"stop it first (pbq control ... quit {self.host})"
            else:
                how = "stop it there, or wait until its heartbeat is old"
            raise PbqError(
                f"a scheduler for host {self.host} is already running ({verdict.reason}); {how}",
                path=str(self.files.pid),
            )
        if info is not None:
            how = "recovering" if verdict.exact else "taking over"
            self.log(f"found stale {self.files.pid.name} ({verdict.reason}): {how}")
        self.epoch = txn.bump_epoch(self.host)
        self.ledger.epoch = self.epoch
        self.write_pidfile()

    def write_pidfile(self) -> None:
        rec = PidRecord.current(runner=self.runner_pid, epoch=self.epoch)
        write_pidfile(self.files.pid, rec, fsync=self.fsync)

    def runner_started(self, pid: int) -> None:
        self.runner_pid = pid
        try:
            self.write_pidfile()
        except PbqError as err:
            self.ledger.disk_problem(err)

    def fence(self, txn: Txn | None = None) -> None:
        """Raise Replaced when the queue record names a newer owner of this host."""
        if txn is not None:
            epoch = txn.epoch_of(self.host)
        else:
            epoch = self.queue.peek_state().epochs.get(self.host, 0)
        if epoch != self.epoch:
            raise Replaced(
                f"host {self.host} was taken over by another scheduler (epoch {epoch}, "
                f"this one has {self.epoch}); exiting without touching its jobs"
            )

    def fence_now(self, mono: float) -> None:
        """Before a pass acts: check the epoch, at most every EPOCH_CHECK_EVERY seconds."""
        if mono - self.checked >= EPOCH_CHECK_EVERY:
            self.fence()
            self.checked = mono

    def release(self) -> None:
        """A clean exit: ``.pid`` goes, if it is still ours."""
        info = read_pidfile(self.files.pid)
        if info is not None and info.pid == os.getpid():
            unlink_quietly(self.files.pid)
