"""Processes: start jobs, signal their groups, reap them; and the keeper.

Jobs are started with ``posix_spawn`` (no fork of the Python interpreter) in a session
of their own (so the job's pid is its session and process-group id, and every process it
starts is signalled with it), with stdin from /dev/null and the signal dispositions reset.
Niceness: set on the new process right after ``posix_spawn`` returns (see ``Spawner``), and
on its session's scheduling group (autogroup), where the kernel has those.

The keeper: ``pbq-single`` forks once at start.  The parent (the keeper) becomes a child
subreaper and waits; the child is the scheduler.  If the scheduler dies (``pbq control
kill``, SIGKILL, a crash), its jobs are re-parented to the keeper, which reaps them and
appends each job's exit status to ``JOBFILE.HOST.exits``, so a restarted scheduler can
record their real outcome.  The keeper exits when the scheduler has exited and no orphan
is left.  It forwards TERM, HUP, USR1, USR2 and CONT to the scheduler.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .sensors import process_start

# Signals whose disposition a child must not inherit from Python (SIGPIPE is ignored by
# Python, which breaks pipelines like `yes | head` in jobs).
_RESET_SIGNALS = [
    s
    for s in (
        signal.SIGPIPE,
        signal.SIGXFSZ,
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
        signal.SIGQUIT,
        signal.SIGCONT,
    )
]


class SpawnError(Exception):
    """A command that could not be started: a failed job, not a scheduler error."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


@dataclass(frozen=True)
class Exit:
    """How a process ended."""

    pid: int
    status: int  # raw wait status
    cpu_seconds: float
    maxrss_bytes: int

    @property
    def exit_code(self) -> int | None:
        return os.waitstatus_to_exitcode(self.status) if os.WIFEXITED(self.status) else None

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


class Spawner:
    """Starts jobs at the jobs' niceness, as a process and as a scheduling group.

    ``posix_spawn`` returns once the child has exec'd; its niceness is set right then, long
    before the new program can start children of its own (the dynamic loader alone takes
    far longer than the one system call in between).  The scheduler itself keeps its normal
    priority, so it reacts promptly on a busy machine.
    """

    def __init__(self, nice: int = 19) -> None:
        self.nice = nice

    def spawn(
        self,
        argv: list[bytes],
        env: dict[str, str],
        stdout: Path | None = None,
        stderr: Path | None = None,
    ) -> int:
        """Start ``argv``; return its pid.  Raises SpawnError (127 not found, 126 cannot run)."""
        pid = self._spawn(argv, env, stdout, stderr)
        if self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, self.nice)
            except OSError:
                pass
            set_autogroup_nice(pid, self.nice)
        return pid

    @staticmethod
    def _spawn(argv: list[bytes], env: dict[str, str], stdout: Path | None, stderr: Path | None) -> int:
        actions: list[tuple] = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        if stdout is not None:
            actions.append((os.POSIX_SPAWN_OPEN, 1, str(stdout), flags, 0o666))
        if stderr is not None:
            actions.append((os.POSIX_SPAWN_OPEN, 2, str(stderr), flags, 0o666))
        if not argv:
            raise SpawnError(127, "empty command")
        try:
            return os.posix_spawnp(
                argv[0], argv, env, file_actions=actions, setsid=True, setsigdef=_RESET_SIGNALS, setsigmask=()
            )
        except FileNotFoundError:
            return _raise(127, f"{argv[0].decode(errors='replace')}: command not found")
        except PermissionError:
            return _raise(126, f"{argv[0].decode(errors='replace')}: permission denied")
        except ValueError as err:  # NUL byte in the line
            return _raise(126, f"cannot run: {err}")
        except OSError as err:
            if err.errno == errno.E2BIG:
                return _raise(126, "cannot run: command line too long for the kernel")
            if err.errno == errno.ENOEXEC:
                return _raise(126, f"{argv[0].decode(errors='replace')}: not an executable")
            if err.errno in (errno.EAGAIN, errno.ENOMEM):
                raise  # out of processes or memory: a scheduler problem, not the job's
            return _raise(126, f"cannot run: {err.strerror}")

    def close(self) -> None:
        pass


def set_autogroup_nice(pid: int, nice: int) -> None:
    """Give a new job's session the jobs' niceness as a scheduling group too.

    With ``kernel.sched_autogroup_enabled`` (the default on many distributions) every
    session is its own scheduling group and groups share the CPU equally whatever their
    processes' nice values: a nice-19 job in a session of its own would take as much CPU as
    another user's nice-0 process.  The group's niceness applies to every process of the
    session, including the ones the job starts later.  Where autogroup is off or absent
    this does nothing.
    """
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


def _raise(code: int, message: str) -> int:
    raise SpawnError(code, message)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a job's whole process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def peek_exit(pid: int) -> tuple[int | None, int] | None:
    """How child ``pid`` ended -- (exit code or None, signal) -- without reaping it, or None
    while it runs.  The zombie stays until ``collect(pid)``: if the scheduler dies in
    between, the keeper inherits it and records its exit status."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (ChildProcessError, InterruptedError):
        return None
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return (info.si_status, 0)
    return (None, info.si_status)  # CLD_KILLED / CLD_DUMPED: the signal


def collect(pid: int) -> Exit | None:
    """Reap child ``pid`` (after peek_exit) and return its resource usage."""
    try:
        _, status, ru = os.wait4(pid, 0)
    except ChildProcessError:
        return None
    return Exit(pid, status, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024)


def reap() -> list[Exit]:
    """Collect every child that has ended, without blocking."""
    out = []
    while True:
        try:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == 0:
            break
        out.append(Exit(pid, status, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024))
    return out


# -- the keeper ----------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36
_FORWARD = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)


def _set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def run_with_keeper(exits_path: Callable[[], Path | None], main: Callable[[], int]) -> int:
    """Run ``main`` in a child process while this process keeps its orphans.

    Returns main's exit code in the caller.  Where subreapers don't exist (not Linux),
    ``main`` runs in this process and outcomes of jobs orphaned by a crash stay unknown.
    """
    if not _set_subreaper():
        return main()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            code = main()
        finally:
            os._exit(code)
    return _keep(child, exits_path)


def _keep(scheduler: int, exits_path: Callable[[], Path | None]) -> int:
    for sig in _FORWARD:
        signal.signal(sig, lambda s, _f: _forward(scheduler, s))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's ^C reaches the scheduler itself
    code = 1
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if info is None:
            continue
        pid = info.si_pid
        start = process_start(pid)  # a zombie still has its start time
        try:
            _, status, ru = os.wait4(pid, 0)
        except ChildProcessError:
            continue
        if pid == scheduler:
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                code = 128 - code
            continue
        # Every other child is an orphan of the scheduler (a job, or something a job left
        # behind): record it; the restarted scheduler matches records by pid and start time.
        path = exits_path()
        if path is None:
            continue
        rec = {
            "pid": pid,
            "start": start,
            "status": status,
            "time": time.time(),
            "cpu": ru.ru_utime + ru.ru_stime,
            "maxrss": ru.ru_maxrss * 1024,
        }
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, json.dumps(rec).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    return code


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass
