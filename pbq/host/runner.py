"""The job runner: a small process, not the scheduler, that is the parent of the jobs.

The containerd-shim / conmon pattern: ``pbq-single`` (the scheduler) starts one runner in a
session of its own and talks to it over a socket pair.  The runner starts each job it is
asked to (``posix_spawn``, a session of its own, nice 19 as a process and as a scheduling
group), reports the start, and reports each end twice: the exit status as soon as the job is
a zombie (before it is reaped, so a runner killed right then leaves the zombie to the
scheduler, a child subreaper, with its status intact), then its resource usage once reaped.

The runner keeps every end until the scheduler acknowledges that its ledger holds it.  When
the scheduler is gone (end of file on the socket, or a failed send), the runner appends the
unacknowledged ends to ``JOBFILE.HOST.exits`` (fsync'ed), goes on reaping -- appending each
end there too -- and exits after its last job; a restarted scheduler adopts the live jobs
and reads those records.  It never holds a terminal: its session is its own from the start.

Messages are pickled tuples with a 4-byte length (both ends are this package, over an
anonymous socket pair)::

    scheduler -> runner   ("start", seq, argv, env_overrides, stdout_path, stderr_path,
                           cgroup, truncate, ahead) (job cgroup, home cgroup) or None;
                                                    truncate: False for an (empty) slot;
                                                    ahead: start it when a job ends
                          ("go", n)                 start the next n queued starts now
                          ("revoke",)               give back every start queued ahead
                          ("ack", [pid, ...])
    runner -> scheduler   ("started", seq, pid, process_start_time, time, contained, refill)
                                                    contained: "" or why not in its cgroup;
                                                    refill: made in the slot of a job whose
                                                    "exited" follows
                          ("failed", seq, exit_code, message)     the command cannot run
                          ("again", seq, message)                 out of processes: retry later
                          ("revoked", seq)          a start queued ahead, given back unmade
                          ("exited", pid, wait_status, time)
                          ("usage", pid, cpu_seconds, maxrss_bytes)
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from . import cgroup as cgroups

HEADER = struct.Struct("!I")

# Signals whose disposition a job must not inherit from Python (SIGPIPE is ignored by
# Python, which breaks pipelines like `yes | head` in jobs).
RESET_SIGNALS = [
    signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGQUIT, signal.SIGCONT,
]


class SpawnError(Exception):
    """A command that could not be started: a failed job, not a scheduler error."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


# -- framing ------------------------------------------------------------------------


def encode(msg: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class Reader:
    """Splits what arrives on a stream socket into messages."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self.buf += data
        out = []
        while len(self.buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buf)
            if len(self.buf) < HEADER.size + size:
                break
            out.append(pickle.loads(bytes(self.buf[HEADER.size : HEADER.size + size])))
            del self.buf[: HEADER.size + size]
        return out


# -- starting a job -------------------------------------------------------------------


def spawn(argv: list[bytes], env: dict[str, str], stdout: str | None, stderr: str | None,
          nice: int, truncate: bool = True) -> int:
    """Start ``argv`` in a session of its own; return its pid.

    Raises SpawnError (127 not found, 126 cannot run); OSError EAGAIN/ENOMEM (out of
    processes or memory) is the machine's problem, not the job's, and is raised as it is.
    The niceness is set right after ``posix_spawn`` returns, long before the new program can
    start children of its own (the dynamic loader alone takes far longer).
    """
    if not argv:
        raise SpawnError(127, "empty command")
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    if stdout is not None:
        actions.append((os.POSIX_SPAWN_OPEN, 1, stdout, flags, 0o666))
    if stderr is not None:
        actions.append((os.POSIX_SPAWN_OPEN, 2, stderr, flags, 0o666))
    name = argv[0].decode(errors="replace")
    try:
        pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsid=True,
                              setsigdef=RESET_SIGNALS, setsigmask=())
    except FileNotFoundError:
        raise SpawnError(127, f"{name}: command not found") from None
    except PermissionError:
        raise SpawnError(126, f"{name}: permission denied") from None
    except ValueError as err:  # NUL byte in the line
        raise SpawnError(126, f"cannot run: {err}") from None
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.ENOMEM):
            raise
        if err.errno == errno.E2BIG:
            raise SpawnError(126, "cannot run: command line too long for the kernel") from None
        if err.errno == errno.ENOEXEC:
            raise SpawnError(126, f"{name}: not an executable") from None
        raise SpawnError(126, f"cannot run: {err.strerror}") from None
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        set_autogroup_nice(pid, nice)
    return pid


def set_autogroup_nice(pid: int, nice: int) -> None:
    """Give a new job's session the jobs' niceness as a scheduling group too.

    With ``kernel.sched_autogroup_enabled`` every session is its own scheduling group and
    groups share the CPU equally whatever their processes' nice values: a nice-19 job in a
    session of its own would take as much CPU as another user's nice-0 process.
    """
    try:
        fd = os.open(f"/proc/{pid}/autogroup", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, str(nice).encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def wait_status(si_code: int, si_status: int) -> int:
    """The raw wait status that ``waitid``'s (code, status) pair stands for."""
    if si_code == os.CLD_EXITED:
        return (si_status & 0xFF) << 8
    if si_code == os.CLD_DUMPED:
        return si_status | 0x80
    return si_status


# -- the runner ----------------------------------------------------------------------


class Runner:
    def __init__(self, sock: socket.socket, exits: Path, nice: int) -> None:
        from ..procinfo import process_start  # /proc only: psutil is not loaded in the runner

        self.process_start = process_start
        self.sock = sock
        self.exits = exits
        self.nice = nice
        self.connected = True
        self.reader = Reader()
        self.jobs: dict[int, float | None] = {}  # pid -> start time, of jobs not reaped yet
        self.job_of: dict[int, int] = {}  # pid -> the job number (seq) it was started as
        self.unacked: dict[int, dict[str, Any]] = {}  # pid -> exit record not yet on the ledger
        self.env = dict(os.environ)
        self.mover = cgroups.Mover()
        # Starts asked for ahead: each is made the moment one of the jobs ends, so a short
        # job's slot is refilled without a round trip through the scheduler.
        self.ready: deque[tuple[Any, ...]] = deque()

    def send(self, msg: tuple[Any, ...]) -> None:
        if not self.connected:
            return
        try:
            self.sock.sendall(encode(msg))
        except OSError:
            self.disconnect()

    def disconnect(self) -> None:
        """The scheduler is gone: its unacknowledged ends go to ``.exits`` now."""
        if not self.connected:
            return
        self.connected = False
        self.ready.clear()  # never start a job no scheduler will know of
        with contextlib.suppress(OSError):
            self.sock.close()
        self.save(list(self.unacked.values()))
        self.unacked.clear()

    def save(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        from ..sidefiles import ExitRecord, append_exit_records

        recs = [ExitRecord(r["pid"], r["start"], r["status"], r["time"], r["cpu"], r["maxrss"],
                           r.get("job")) for r in records]
        for _ in range(60):  # a full disk: keep trying for a minute, then give up on these
            try:
                append_exit_records(self.exits, recs, fsync=True)
                return
            except Exception:  # noqa: BLE001 - nothing to report to: the scheduler is gone
                time.sleep(1.0)

    def handle(self, msg: tuple[Any, ...]) -> None:
        if msg[0] == "start":
            if msg[8]:
                self.ready.append(msg)
            else:
                self.start(msg)
        elif msg[0] == "go":
            self.start_ready(msg[1])
        elif msg[0] == "revoke":
            while self.ready:
                self.send(("revoked", self.ready.popleft()[1]))
        elif msg[0] == "ack":
            for pid in msg[1]:
                self.unacked.pop(pid, None)

    def start(self, msg: tuple[Any, ...], refill: bool = False) -> bool:
        """Start one job and answer for it; False if it did not start.  ``refill``: in the
        slot of a job that ended, whose end is reported right after."""
        _, seq, argv, overrides, out, err, cg, truncate, _ = msg
        env = self.env | overrides
        # The job is born in its cgroup: the runner steps into it for the spawn and back
        # out right after (cgroup.Mover).  Moving the pid after posix_spawn returns (after
        # the exec) would leave the job outside while its dynamic loader runs: harmless in
        # practice, as it forks nothing then, but this way there is no such moment at all.
        contained = self.mover.enter(cg[0]) if cg is not None else "no cgroup"
        try:
            pid = spawn(argv, env, out, err, self.nice, truncate)
        except SpawnError as e:
            self.left_cgroup(cg, contained, remove=True)
            self.send(("failed", seq, e.exit_code, e.message))
            return False
        except OSError as e:
            self.left_cgroup(cg, contained, remove=True)
            self.send(("again", seq, e.strerror or str(e)))
            return False
        contained = self.left_cgroup(cg, contained, remove=False)
        now = time.time()
        start = self.process_start(pid)
        self.jobs[pid] = start
        self.job_of[pid] = seq
        self.send(("started", seq, pid, start, now, contained, refill))
        return True

    def left_cgroup(self, cg: tuple[str, str] | None, entered: str, remove: bool) -> str:
        """Back to the runner's own cgroup after a spawn; "" if the job is in its cgroup.

        Should going back ever fail, the job is reported as not contained: the scheduler
        then never kills that cgroup (the runner is in it) and uses process groups for the
        jobs it starts from then on.
        """
        if cg is None or entered:
            return entered
        back = self.mover.leave(cg[1])
        if remove:
            self.mover.remove(cg[0])
        return back

    def reap(self) -> None:
        """Report each ended job: its status while it is a zombie, then reap it."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            status = wait_status(info.si_code, info.si_status)
            now = time.time()
            if pid in self.jobs:
                self.refill()
            self.send(("exited", pid, status, now))
            try:
                _, _, ru = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            cpu, maxrss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024
            rec = {"pid": pid, "start": self.jobs.pop(pid, None), "status": status, "time": now,
                   "cpu": cpu, "maxrss": maxrss, "job": self.job_of.pop(pid, None)}
            if self.connected:
                self.unacked[pid] = rec
                self.send(("usage", pid, cpu, maxrss))
            if not self.connected:
                self.save([rec])

    def refill(self) -> None:
        """A job ended: the next start queued ahead is made now, in its slot.  Its answer is
        sent before the end that freed the slot, so the scheduler never counts the slot free
        (and fills it itself) while this start is on its way.  A revoke sent before a job
        was killed is read first: the scheduler wrote it before the kill."""
        self.read_messages()
        self.start_ready(1, refill=True)

    def start_ready(self, n: int, refill: bool = False) -> None:
        """Start the next ``n`` queued starts (one that fails gives its turn to the next)."""
        while n > 0 and self.ready and self.connected:
            if self.start(self.ready.popleft(), refill):
                n -= 1

    def read_messages(self, wait: bool = False) -> None:
        """Handle what the scheduler sent; without ``wait`` only what is there already."""
        try:
            data = self.sock.recv(1 << 16, 0 if wait else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.disconnect()
            return
        for msg in self.reader.feed(data):
            self.handle(msg)

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda s, f: None)  # a handler, so it reaches the fd
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while self.connected or self.jobs:
            fds = [wake_r, self.sock.fileno()] if self.connected else [wake_r]
            try:
                ready, _, _ = select.select(fds, [], [], 1.0)
            except InterruptedError:
                ready = []
            if wake_r in ready:
                with contextlib.suppress(OSError):
                    while os.read(wake_r, 4096):
                        pass
            if self.connected and self.sock.fileno() in ready:
                self.read_messages(wait=True)
            self.reap()
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fd, exits, nice = int(args[0]), Path(args[1]), int(args[2])
    os.set_inheritable(fd, False)  # jobs must not hold the socket: its end of file is news
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    return Runner(sock, exits, nice).run()


if __name__ == "__main__":
    sys.exit(main())
