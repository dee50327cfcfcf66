"""Job containment with cgroup v2: each job in a cgroup of its own.

A job that leaves its process group (``set -m`` in a script, a ``setsid`` daemon) is out of
reach of ``killpg``, but it cannot leave its cgroup: children are born in their parent's
cgroup, and only a privileged process may move them.  So where the kernel offers cgroup v2
and pbq may create cgroups (root; or a delegated subtree, e.g. under
``systemd-run --user --scope -p Delegate=yes``), every process of a job is found by one read
of its cgroup's ``cgroup.procs`` -- the way Slurm's proctrack/cgroup and HTCondor track
jobs.

Layout: the scheduler's own cgroup (``/proc/self/cgroup``, line ``0::/path``, under the
cgroup2 mount from ``/proc/self/mountinfo``) gets one child per scheduler,
``pbq-HOST-HASH`` (the hash names the jobfile: two schedulers with one host name and two
jobfiles do not share it), and that gets one child per job, named by the job id
(``HOST.SEQ``), so a restarted scheduler finds its jobs' cgroups again.  No controller is
ever enabled, so cgroup v2's "no internal processes" rule does not apply: creating children
of a cgroup that has processes (the scheduler's own) is fine.

Only the standard library here: the job runner imports this module too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import select
import signal
import time
from dataclasses import dataclass

MODES = ("auto", "cgroup", "process-group")
FREEZE_WAIT = 0.5  # seconds to wait for a cgroup to be frozen (a D-state process delays it)
EMPTY_WAIT = 0.5  # seconds to wait for killed processes to leave their cgroup
SIGNAL_ROUNDS = 10  # without cgroup.freeze: signal until no new process shows up, this often


def find_mount(mountinfo: str) -> tuple[str, str] | None:
    """(mount point, root inside the hierarchy) of the cgroup2 mount, from mountinfo text.

    The unified layout has it at /sys/fs/cgroup, the hybrid one at /sys/fs/cgroup/unified.
    """
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, fstype = head.split(), tail.split()[:1]
        if sep and fstype == ["cgroup2"] and len(fields) >= 5:
            return _unescape(fields[4]), _unescape(fields[3])
    return None


def own_path(proc_cgroup: str) -> str | None:
    """The cgroup2 path (``0::/path``) in a /proc/PID/cgroup text."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_raw(path: str) -> bytes:
    """A small kernfs file in one read: these run once per job, and ``open()``'s buffered
    reader costs four more system calls than ``os.open`` + ``os.read`` (fstat, isatty, lseeks)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 1 << 16)
        if len(data) < 1 << 12:  # a seq_file read may stop short of a long file's end
            return data
        parts = [data]
        while chunk := os.read(fd, 1 << 16):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def locate(pid: int | str = "self") -> tuple[str, str] | str:
    """(cgroup2 mount point, directory of the process's cgroup), or why there is none."""
    try:
        mount = find_mount(_read("/proc/self/mountinfo"))
        rel = own_path(_read(f"/proc/{pid}/cgroup"))
    except OSError as err:
        return f"cannot read /proc: {err.strerror}"
    if mount is None:
        return "no cgroup2 file system mounted"
    if rel is None:
        return "the process is in no cgroup v2"
    point, root = mount
    if root != "/" and rel != root and not rel.startswith(root + "/"):
        return f"its cgroup {rel} is outside the mounted part {root}"
    rel = rel[len(root):] if root != "/" else rel
    return point, os.path.normpath(point + "/" + rel.lstrip("/"))


def parent_name(host: str, jobfile: str) -> str:
    digest = hashlib.sha1(os.path.realpath(jobfile).encode(errors="surrogateescape")).hexdigest()
    return f"pbq-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}-{digest[:8]}"


@dataclass
class Cgroups:
    """The cgroups of one scheduler's jobs.  Paths are strings: these run once per job."""

    home: str  # the scheduler's own cgroup (the runner's too)
    parent: str  # pbq-HOST-HASH, the jobs' cgroups are its children
    freeze: bool  # cgroup.freeze (kernel >= 5.2)
    kill_file: bool  # cgroup.kill (kernel >= 5.14)

    def describe(self) -> str:
        have = [name for name, ok in (("freeze", self.freeze), ("kill", self.kill_file)) if ok]
        return f"{self.parent} ({', '.join(have) or 'signals only'})"

    def path(self, job_id: str) -> str:
        return f"{self.parent}/{job_id}"

    def find(self, pid: int) -> str | None:
        """The cgroup of an adopted job's leader, if it is a job cgroup of this scheduler's
        (the previous run may have lived in another cgroup of its own)."""
        found = locate(pid)
        if isinstance(found, str):
            return None
        where = found[1]
        if os.path.basename(os.path.dirname(where)) == os.path.basename(self.parent):
            return where
        return None

    def children(self) -> list[str]:
        try:
            return [e.path for e in os.scandir(self.parent) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    def close(self) -> None:
        """Remove the scheduler's cgroup if no job cgroup is left in it."""
        with contextlib.suppress(OSError):
            os.rmdir(self.parent)


def probe(host: str, jobfile: str) -> Cgroups | str:
    """This scheduler's job cgroups, created if need be; or why there are none.

    Each needed file is looked at once, here.
    """
    found = locate()
    if isinstance(found, str):
        return found
    _, home = found
    try:
        kind = _read(f"{home}/cgroup.type").strip()
    except FileNotFoundError:
        kind = "domain"  # the root cgroup has no cgroup.type
    except OSError as err:
        return f"cannot read {home}/cgroup.type: {err.strerror}"
    if kind != "domain":
        return f"the scheduler's cgroup {home} is {kind!r}, not a domain"
    if not os.access(f"{home}/cgroup.procs", os.W_OK):
        return f"{home}/cgroup.procs is not writable (no delegated cgroup)"
    parent = f"{home}/{parent_name(host, jobfile)}"
    try:
        os.mkdir(parent)
    except FileExistsError:
        pass
    except OSError as err:
        return f"cannot create a cgroup in {home}: {err.strerror}"
    if not os.path.exists(f"{parent}/cgroup.procs"):
        with contextlib.suppress(OSError):
            os.rmdir(parent)
        return f"{home} is not a cgroup2 directory"
    return Cgroups(home, parent, os.path.exists(f"{parent}/cgroup.freeze"),
                   os.path.exists(f"{parent}/cgroup.kill"))


# -- the job runner's side ----------------------------------------------------------------


class Mover:
    """The job runner's side: it steps into a job's cgroup for a spawn and back out right
    after, so that the job is born there (the effect of clone3's CLONE_INTO_CGROUP, which
    posix_spawn does not offer) with no moment in which it runs outside.

    The scheduler reuses emptied job cgroups, so the ``cgroup.procs`` descriptors stay open:
    a move is then one write (some 5 us) instead of open + write + close (some 30 us).  A
    descriptor of a cgroup removed meanwhile fails (ENODEV) and is opened anew."""

    MAX_OPEN = 256  # descriptors kept; past that all are closed (they reopen on use)

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def enter(self, job_dir: str) -> str:
        """Move the calling process (the runner) into ``job_dir``, created if need be; ""
        when done, else why not."""
        try:
            self._move(job_dir, create=True)
            return ""
        except OSError as err:
            self.remove(job_dir)
            return f"cannot enter {job_dir}: {err.strerror}"

    def leave(self, home: str) -> str:
        """Move the calling process back to ``home``; "" when done."""
        try:
            self._move(home, create=False)
            return ""
        except OSError as err:
            return f"cannot go back to {home}: {err.strerror}"

    def remove(self, job_dir: str) -> None:
        """A job cgroup that got no job (its start failed) goes."""
        self._forget(job_dir)
        remove(job_dir)

    def close(self) -> None:
        for d in list(self.fds):
            self._forget(d)

    def _move(self, where: str, create: bool) -> None:
        fd = self.fds.get(where)
        if fd is not None:
            try:
                os.write(fd, b"0")  # 0: the writing process
                return
            except OSError:
                self._forget(where)  # removed (and perhaps made again) since: anew
        if create:
            try:
                os.mkdir(where)
            except FileExistsError:
                pass
            except FileNotFoundError:  # the scheduler's cgroup was removed under it
                os.makedirs(where, exist_ok=True)
        fd = os.open(f"{where}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        except OSError:
            os.close(fd)
            raise
        if len(self.fds) >= self.MAX_OPEN:
            self.close()
        self.fds[where] = fd

    def _forget(self, where: str) -> None:
        fd = self.fds.pop(where, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


# -- the scheduler's side: one job's cgroup ------------------------------------------------


def pids(job_dir: str) -> list[int]:
    """Every process in a job's cgroup (exited ones are not listed: zombies leave at once)."""
    try:
        return [int(x) for x in _read_raw(f"{job_dir}/cgroup.procs").split()]
    except (OSError, ValueError):
        return []


def populated(job_dir: str) -> bool:
    try:
        return b"populated 1" in _read_raw(f"{job_dir}/cgroup.events")
    except OSError:
        return False


def cpu_seconds(job_dir: str) -> float | None:
    """CPU time used by every process that ever ran in the cgroup (``cpu.stat``)."""
    try:
        first = _read_raw(f"{job_dir}/cpu.stat").split(b"\n", 1)[0]  # usage_usec N
        return int(first.split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def _send(targets: list[int], sig: int) -> int:
    n = 0
    for pid in targets:
        try:
            os.kill(pid, sig)
            n += 1
        except (ProcessLookupError, PermissionError):
            pass
    return n


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


def wait_empty(job_dir: str, timeout: float) -> bool:
    """Until no process is left in the cgroup (killed processes take a moment to go)."""
    return _wait_event(job_dir, b"populated 0", timeout)


def _wait_event(job_dir: str, event: bytes, timeout: float) -> bool:
    """Until ``cgroup.events`` says ``event``, at most ``timeout`` seconds."""
    try:
        fd = os.open(f"{job_dir}/cgroup.events", os.O_RDONLY)
    except OSError:
        return False
    try:
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLPRI)  # kernfs notifies changes of cgroup.events
        while True:
            if event in os.pread(fd, 512, 0):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(min(left, 0.01) * 1000)
    except OSError:
        return False
    finally:
        os.close(fd)


def signal_all(cg: Cgroups, job_dir: str, sig: int, freeze: bool = True) -> int:
    """Send ``sig`` to every process of the job; how many got it.

    With ``freeze``, the cgroup is frozen first so that nothing forks away between the read
    of ``cgroup.procs`` and the signals, and thawed after (a SIGSTOP sent to a frozen process
    takes effect when it is thawed: it ends up stopped, state T).  Without cgroup.freeze the
    list is read and signalled again until no new process shows up.
    """
    if freeze and cg.freeze and _write(f"{job_dir}/cgroup.freeze", "1"):
        try:
            # Only once it is frozen can no process be half-way through a fork that the
            # read of cgroup.procs would miss.
            _wait_event(job_dir, b"frozen 1", FREEZE_WAIT)
            return _send(pids(job_dir), sig)
        finally:
            _write(f"{job_dir}/cgroup.freeze", "0")
    done: set[int] = set()
    for _ in range(SIGNAL_ROUNDS if freeze else 1):
        new = [p for p in pids(job_dir) if p not in done]
        if not new:
            break
        _send(new, sig)
        done.update(new)
    return len(done)


def thaw(job_dir: str) -> bool:
    """Thaw a job cgroup left frozen (a scheduler killed while it stopped the job); True
    if it was frozen.  A frozen job neither runs nor ends, and SIGCONT does not wake it."""
    try:
        frozen = _read(f"{job_dir}/cgroup.freeze").strip() == "1"
    except OSError:
        return False
    return frozen and _write(f"{job_dir}/cgroup.freeze", "0")


def kill(cg: Cgroups, job_dir: str) -> int:
    """SIGKILL every process of the job at once; how many there were."""
    there = pids(job_dir)
    if not there:
        return 0
    if cg.kill_file and _write(f"{job_dir}/cgroup.kill", "1"):
        return len(there)
    signal_all(cg, job_dir, signal.SIGKILL)  # frozen processes die of SIGKILL too
    return len(there)


def remove(job_dir: str) -> bool:
    """Remove an empty job cgroup; False while a process is still in it."""
    try:
        os.rmdir(job_dir)
        return True
    except FileNotFoundError:
        return True
    except OSError as err:
        # EBUSY: a process is left; anything else (EACCES...) is not worth retrying
        return err.errno not in (errno.EBUSY, errno.ENOTEMPTY)
