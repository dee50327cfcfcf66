"""``[notify] command``: run when a job fails for good and when this host is drained.

The command runs as an argv (``shlex.split``, no shell) under ``timeout`` (coreutils):
``timeout`` puts itself and the command in a process group of their own and, after
``[notify] timeout`` seconds, sends SIGTERM to that whole group, SIGKILL 5 s later.  It is
started with ``posix_spawn`` in a session of its own and never waited for: the scheduler
is a child subreaper, so whatever it starts -- and whatever that leaves behind, a double
fork included -- is reaped by it in the end anyway.  The LocalExecutor's ``wait4(-1)``
reaps it among the strays and hands its status here (``reaped``); without a subreaper the
tick polls for it (``poll``).  Nothing blocks: a notification that hangs is killed by its
``timeout``, not waited for.  The first failure (an exit status other than 0, a timeout,
a command not found) is logged, once.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Callable

from ..statefiles import line_to_text
from .jobs import Job, Outcome
from .ledger import Log

KILL_AFTER = 5  # seconds between the timeout's SIGTERM and its SIGKILL
# Without coreutils' timeout: the same, in Python (slower to start, same behaviour).
WATCHDOG = """import os, signal, sys, time
t = float(sys.argv[1]); os.setpgid(0, 0)
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
end = time.monotonic() + t
while True:
    got, status = os.waitpid(pid, os.WNOHANG)
    if got:
        sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
    if time.monotonic() >= end:
        os.killpg(0, signal.SIGTERM) if end > 0 else os.killpg(0, signal.SIGKILL)
        end = -1 if end > 0 else end
    time.sleep(0.05)
"""


class Notifier:
    def __init__(self, command: str, timeout: float, host: str, jobfile: str, log: Log) -> None:
        self.argv = shlex.split(command) if command else []
        self.timeout = timeout
        self.host = host
        self.jobfile = jobfile
        self.log = log
        self.pids: set[int] = set()
        self.complained = False
        self.timeout_bin = shutil.which("timeout")
        self.drain_told = True  # "drained" once per drain: after jobs were held again

    def rearm(self) -> None:
        """A job started: the next drain is news again."""
        self.drain_told = False

    def drained_if(self, drained: Callable[[], bool]) -> None:
        """Tell of a drain once (``drained`` is asked only when there is someone to tell)."""
        if self.argv and not self.drain_told and drained():
            self.drain_told = True
            self.notify("drained")

    def job_failed(self, job: Job, out: Outcome) -> None:
        code = out.exit_code if not out.signal else 128 + out.signal
        self.notify("failed", str(job.number), str(code), line_to_text(job.line))

    @property
    def on(self) -> bool:
        return bool(self.argv)

    def notify(self, event: str, job: str = "", exit: str = "", command: str = "") -> None:
        if not self.argv:
            return
        env = dict(os.environ)
        env.update(PBQ_EVENT=event, PBQ_JOB=job, PBQ_EXIT=exit, PBQ_COMMAND=command,
                   PBQ_HOST=self.host, PBQ_JOBFILE=self.jobfile)
        if self.timeout_bin is not None:
            argv = [self.timeout_bin, "-k", str(KILL_AFTER), f"{self.timeout:g}", *self.argv]
        else:
            argv = [sys.executable, "-c", WATCHDOG, f"{self.timeout:g}", *self.argv]
        try:
            pid = os.posix_spawn(argv[0], argv, env, setsid=True,
                                 file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null",
                                                os.O_RDONLY, 0)])
        except OSError as err:
            self._failed(f"cannot start it: {err.strerror}")
            return
        self.pids.add(pid)

    def reaped(self, pid: int, status: int) -> bool:
        """A child was reaped: True if it was a notification (its failure is logged once)."""
        if pid not in self.pids:
            return False
        self.pids.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code == 124:
            self._failed(f"killed after its timeout of {self.timeout:g} s")
        elif code == 127:
            self._failed("command not found")
        elif code != 0:
            self._failed(f"exit status {code}")
        return True

    def poll(self) -> None:
        """Reap finished notifications ourselves (when no stray reaper does)."""
        for pid in list(self.pids):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.pids.discard(pid)  # reaped elsewhere
                continue
            if got:
                self.reaped(pid, status)

    def _failed(self, why: str) -> None:
        if self.complained:
            return
        self.complained = True
        with contextlib.suppress(Exception):
            self.log(f"notify command {shlex.join(self.argv)}: {why} "
                     "(further failures are not logged)")
