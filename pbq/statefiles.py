"""Files beside the jobfile: their names, and writes that survive a crash.

Every file that describes state (``.state``, ``.running``, ``.stopped``, ``.status``,
the queue's ``.queue``) is replaced whole: written to a temporary file in the same
directory, optionally fsync'ed, then renamed over the old one.  A reader therefore
sees either the old or the new content, never half of it, and a crash leaves at
worst a stray temporary file.  Logs and ``.error``/``.joblog`` are appended.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import PbqError

# Extensions of the per-host files, JOBFILE.HOST.<ext>.
HOST_EXTENSIONS = (
    "pid",  # first line the scheduler's pid (as PBQ), then key=value: start, machine, boot...
    "log",  # human-readable log, rotated by size
    "running",  # exactly the lines of running jobs
    "stopped",  # exactly the lines of stopped jobs
    "error",  # appended: lines of jobs that failed
    "joblog",  # GNU Parallel --joblog TSV
    "status",  # JSON heartbeat, rewritten every tick
    "state",  # JSON write-ahead record of the host's jobs (the source of truth)
    "journal",  # JSON lines: what changed since the last .state snapshot
    "control",  # JSON request left by `pbq control` for schedulers on other machines
    "exits",  # JSON lines: exit statuses of orphaned jobs, written by the job runner
    # (the record formats of .pid, .exits, .status and .joblog are in pbq.sidefiles)
    "history",  # JSON lines: one sample per minute, for `pbq report`
    "out",  # output of a scheduler started by `pbq start`
    "jobids",  # lines N SEQ START: job id HOST.N of each attempt, for `pbq log`
    "output",  # directory: HOST.N.out/.err of jobs, packed.K of ended jobs' output
)


class HostFiles:
    """The names of one host's files beside a jobfile: ``JOBFILE.HOST.<ext>``."""

    def __init__(self, jobfile: Path, host: str) -> None:
        self.jobfile = jobfile
        self.host = host
        self._paths: dict[str, Path] = {}

    def path(self, ext: str) -> Path:
        p = self._paths.get(ext)
        if p is None:
            p = self._paths[ext] = self.jobfile.with_name(f"{self.jobfile.name}.{self.host}.{ext}")
        return p

    def __getattr__(self, ext: str) -> Path:
        if ext in HOST_EXTENSIONS:
            return self.path(ext)
        raise AttributeError(ext)


def hosts_with(jobfile: Path, ext: str) -> list[str]:
    """Host names that have a ``JOBFILE.HOST.<ext>`` file, sorted."""
    prefix, suffix = jobfile.name + ".", "." + ext
    try:
        names = os.listdir(jobfile.parent)
    except OSError:
        return []
    hosts = {
        n[len(prefix) : -len(suffix)]
        for n in names
        if n.startswith(prefix) and n.endswith(suffix) and len(n) > len(prefix) + len(suffix)
    }
    return sorted(h for h in hosts if h and not h.startswith("."))


def _describe_os_error(path: Path, err: OSError, what: str) -> PbqError:
    if err.errno == errno.ENOSPC:
        reason = "the disk is full"
    elif err.errno == errno.EDQUOT:
        reason = "the disk quota is exceeded"
    elif err.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif err.errno == errno.EROFS:
        reason = "the file system is read-only"
    else:
        reason = err.strerror or str(err)
    return PbqError(f"cannot {what}: {reason}", path=str(path))


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (ignored where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_file(path: Path) -> None:
    """Make ``path`` (written and renamed into place earlier) durable: its data, then its
    name.  Raises PbqError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise _describe_os_error(path, err, "write") from None
    fsync_dir(path.parent)


def temp_name(path: Path) -> Path:
    """A hidden, unique temporary name beside ``path`` (same file system, so rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(
    path: Path, data: bytes, *, fsync: bool = False, mode: int = 0o666, sync_dir: bool = True,
    volatile: bool = False,
) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + optional fsync + rename).

    With ``fsync`` the data is on disk before the rename, and the rename is made durable
    too unless ``sync_dir`` is False: then the caller syncs the directory (once, later --
    until then a crash of the machine may bring back the old file, never a torn one).
    ``volatile``: a file rewritten every few seconds whose content nobody needs after a
    crash of the machine (a heartbeat, a view; it may then be empty): swapped in rather
    than renamed over (``swap_in``).  ``mode`` is filtered by the umask, as for any new
    file.  Raises PbqError with a clear reason (disk full, permission denied) and leaves
    the old file untouched on failure.
    """
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as err:
        raise _describe_os_error(path, err, "write") from None
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if volatile and not fsync:
            swap_in(tmp, path)
        else:
            os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _describe_os_error(path, err, "write") from None
    if fsync and sync_dir:
        fsync_dir(path.parent)


RENAME_EXCHANGE = 2  # renameat2(2): swap two names atomically; both must exist
AT_FDCWD = -100
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
_no_exchange_in: set[int] = set()  # devices whose file system refused an exchange
_renameat2: Callable[[bytes, bytes, int], None] | None = None


def _libc_renameat2(old: bytes, new: bytes, flags: int) -> None:
    """renameat2(2) through the C library; OSError as os.rename raises it."""
    global _renameat2
    if _renameat2 is None:
        import ctypes  # only a scheduler writes volatile files: commands never pay for it

        fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
        if fn is None:  # a C library older than glibc 2.28
            def missing(old: bytes, new: bytes, flags: int) -> None:
                raise OSError(errno.ENOSYS, "renameat2 is missing")
            _renameat2 = missing
        else:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]

            def call(old: bytes, new: bytes, flags: int) -> None:
                if fn(AT_FDCWD, old, AT_FDCWD, new, flags) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
            _renameat2 = call
    _renameat2(old, new, flags)


def swap_in(tmp: Path, path: Path) -> None:
    """Put ``tmp`` in ``path``'s place: exchange the two names (readers see the old file or
    the new one, never none), then unlink the old content, now under ``tmp``.

    Renaming over an existing file makes ext4 write the new one out at once (its
    ``auto_da_alloc`` guard for programs that rename without fsync): some 100 us of CPU
    and a disk write per heartbeat, every second, on every host.  An exchange is not a
    replace, so a file that is soon replaced again never reaches the disk.  Where the file
    system cannot exchange (NFS, most FUSE mounts) or ``path`` does not exist yet, a plain
    rename (which also reports any other error).  Raises OSError."""
    try:
        dev = os.stat(tmp).st_dev
    except OSError:
        dev = -1
    if dev not in _no_exchange_in:
        try:
            _libc_renameat2(os.fsencode(tmp), os.fsencode(path), RENAME_EXCHANGE)
        except OSError as err:  # the rename below raises what is really wrong
            if err.errno in _NO_EXCHANGE:
                _no_exchange_in.add(dev)
        else:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
    os.replace(tmp, path)


def atomic_write_json(
    path: Path, obj: Any, *, fsync: bool = False, mode: int = 0o666, sync_dir: bool = True
) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    atomic_write(path, data, fsync=fsync, mode=mode, sync_dir=sync_dir)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing, empty or unreadable as JSON."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _describe_os_error(path, err, "read") from None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: garbage nested too deep
        return None


def append_bytes(path: Path, data: bytes, *, fsync: bool = False, mode: int = 0o666) -> None:
    """Append ``data`` to ``path`` (creating it), all or nothing.

    A write cut short (disk full) is undone, so a retry never leaves half a line glued
    to a whole one.  Meant for files with one writer (a host's own files).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
    except OSError as err:
        raise _describe_os_error(path, err, "append to") from None
    try:
        size0 = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fdatasync(fd)  # the data and the size; not the times
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size0)
            raise _describe_os_error(path, err, "append to") from None
    finally:
        os.close(fd)


def read_json_lines(path: Path) -> list[Any]:
    """Every parseable JSON line of ``path`` (a torn last line is skipped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def line_to_text(line: bytes) -> str:
    """A job line as text for JSON; bytes that aren't UTF-8 survive the round trip."""
    return line.decode("utf-8", "surrogateescape")


def text_to_line(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")
