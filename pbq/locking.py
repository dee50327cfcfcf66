"""The jobfile lock, in two kinds.

``flock`` (default): a kernel lock on ``JOBFILE.lock`` through filelock.  Works on local
disks and on NFS (Linux maps flock to NFS byte-range locks).  Released by the kernel when
the holder dies, so it can never go stale.

``soft``: for file systems whose flock is not shared between machines (sshfs, some FUSE
and old NFS setups).  The lock is the existence of ``JOBFILE.lock.soft``, created with
O_CREAT|O_EXCL (atomic on such file systems); it holds the holder's machine, boot id,
pid, process start time and a random token.  Stale-lock rules, none of which can break
a live lock:

* holder on this machine (same boot id): broken only when that pid is gone or now
  belongs to another process (start time differs);
* holder elsewhere: the holder refreshes the file every ``stale_after / 6`` seconds while
  it holds the lock; a waiter breaks it only after watching it stay unchanged for
  ``stale_after`` seconds of the waiter's own monotonic clock (clock skew between
  machines does not matter);
* breaking is serialized by a second O_EXCL file, and the breaker re-reads the lock
  after taking it, so two waiters never both break, and never break a fresh lock.

Waiters take turns: one that has waited ``NEXT_AFTER`` seconds writes
``JOBFILE.lock.soft.next`` (O_EXCL, the same identity), and while that file is there no one
else tries the lock, blocking or not; the next in line polls it every millisecond and
removes the file once it holds the lock.  Without it, waiters poll with a back-off, so
those that have waited longest poll least often, and with 100 hosts some waited 30 s while
the median wait was a third of a second.  The file only orders waiters, it never grants
the lock: one whose writer died (the same rules as above, after ``NEXT_STALE`` seconds
unchanged; its writer refreshes it while waiting) is removed, and two waiters that both
believe they are next only race as everyone did before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock

from .errors import PbqError
from .procinfo import boot_id, process_start

LOCK_KINDS = ("flock", "soft")


class LockBusy(PbqError):
    """The lock was not free within the time given (at once, for ``try_acquire``)."""


class QueueLock:
    """Interface of both lock kinds: a blocking, non-reentrant context manager."""

    path: Path

    def acquire(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def try_acquire(self) -> bool:
        """Take the lock if it is free now; False (not waiting) if someone holds it."""
        try:
            self.acquire(timeout=0.0)
            return True
        except LockBusy:
            return False

    def still_held(self) -> bool:
        """False when a soft lock was broken under us (only after a long freeze)."""
        return True

    def __enter__(self) -> QueueLock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class FlockLock(QueueLock):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        # For waits with a deadline; fallback_to_soft is off because silently mixing lock
        # kinds between hosts would lose mutual exclusion.
        self._lock = filelock.FileLock(
            str(path), poll_interval=0.002, fallback_to_soft=False, thread_local=False
        )

    def acquire(self, timeout: float | None = None) -> None:
        if timeout is None:
            # A plain blocking flock: the kernel queues the waiters and wakes the next one at
            # once (filelock polls, which makes many schedulers convoy on a busy jobfile).
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as err:
                raise PbqError(
                    f"cannot open the lock file: {err.strerror}", path=str(self.path)
                ) from None
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX)
                        break
                    except InterruptedError:
                        continue
            except OSError as err:
                os.close(fd)
                raise PbqError(
                    f"cannot lock ({err.strerror or err}); on a file system without working "
                    "flock use --lock soft",
                    path=str(self.path),
                ) from None
            self._fd = fd
            return
        try:
            self._lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise LockBusy(
                f"timed out after {timeout:g} s waiting for the lock", path=str(self.path)
            ) from None
        except OSError as err:
            raise PbqError(
                f"cannot lock ({err.strerror or err}); on a file system without working "
                "flock use --lock soft",
                path=str(self.path),
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock
            return
        self._lock.release()


class SoftLock(QueueLock):
    def __init__(
        self, path: Path, stale_after: float = 30.0, log: Callable[[str], None] | None = None
    ) -> None:
        self.path = path.with_name(path.name + ".soft")
        self._break_path = path.with_name(path.name + ".soft.break")
        self.stale_after = stale_after
        self._log = log
        self._token: str | None = None
        self._refresher: threading.Thread | None = None
        self._stop_refresh = threading.Event()
        self._me = {
            "machine": socket.gethostname(),
            "boot": boot_id(),
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
        }

    # -- acquiring ---------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> None:
        asked = time.monotonic()
        deadline = None if timeout is None else asked + timeout
        delay = 0.001
        watched: tuple[bytes, float] | None = None  # (content, since) of a remote holder's lock
        turn = NextInLine(self)
        try:
            while True:
                if (turn.mine or not turn.someone_else()) and self._create():
                    return
                watched = self._maybe_break(watched)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise LockBusy(
                        f"timed out after {timeout:g} s waiting for the lock", path=str(self.path)
                    )
                if turn.mine:
                    turn.refresh(now)
                elif now - asked >= NEXT_AFTER:
                    turn.claim(now)
                time.sleep(0.001 if turn.mine else delay)
                delay = min(delay * 2, 0.05)
        finally:
            turn.leave()

    def _create(self) -> bool:
        """Create the lock file (the lock is ours); False when it exists."""
        token = secrets.token_hex(8)
        body = json.dumps({**self._me, "token": token}).encode()
        fd = self._create_exclusive(self.path, "lock file")
        if fd is None:
            return False
        try:
            try:
                if os.write(fd, body) != len(body):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            finally:
                os.close(fd)
        except OSError as err:
            # Disk full: an empty lock file would block everyone for stale_after.
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise PbqError(f"cannot write lock file: {err.strerror}", path=str(self.path)) from None
        self._token = token
        self._start_refresher()
        return True

    @staticmethod
    def _create_exclusive(path: Path, what: str) -> int | None:
        """A descriptor of ``path``, created now; None when it exists already."""
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return None
        except PermissionError:
            # sshfs reports a lost O_EXCL race as EPERM (SFTP has no "exists" error):
            # contention if the file is there, a real permission problem if not.
            if not path.exists():
                raise PbqError(f"cannot create {what}: permission denied", path=str(path)) from None
            return None
        except OSError as err:
            raise PbqError(f"cannot create {what}: {err.strerror}", path=str(path)) from None

    def _read(self, path: Path) -> tuple[bytes, dict[str, Any] | None] | None:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError:
            return b"", None
        try:
            info = json.loads(raw)
            return raw, info if isinstance(info, dict) else None
        except ValueError:
            return raw, None

    def _holder_dead_here(self, info: dict[str, Any] | None) -> bool | None:
        """True/False when the holder is on this machine and its fate is known, else None."""
        if (
            not info
            or info.get("boot") != self._me["boot"]
            or info.get("machine") != self._me["machine"]
        ):
            return None
        pid, start = info.get("pid"), info.get("start")
        if not isinstance(pid, int):
            return None
        now_start = process_start(pid)
        if now_start is None:
            return True
        return start is not None and abs(now_start - start) > 0.05

    def _maybe_break(self, watched: tuple[bytes, float] | None) -> tuple[bytes, float] | None:
        seen = self._read(self.path)
        if seen is None:
            return None
        raw, info = seen
        dead = self._holder_dead_here(info)
        if dead is False:
            return None  # a live holder on this machine: never break
        if dead is None:
            # Remote (or unreadable) holder: stale only after staying unchanged for a while.
            stamp = raw + str(self._mtime(self.path)).encode()
            now = time.monotonic()
            if watched is None or watched[0] != stamp:
                return (stamp, now)
            if now - watched[1] < self.stale_after:
                return watched
        self._break(raw)
        return None

    @staticmethod
    def _mtime(path: Path) -> float | None:
        try:
            return os.stat(path).st_mtime
        except OSError:
            return None

    def _break(self, expected: bytes) -> None:
        """Remove the lock file if it still holds ``expected``, one breaker at a time."""
        try:
            fd = os.open(
                self._break_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
        except FileExistsError:
            # Another waiter is breaking.  A break takes milliseconds; a break file that
            # outlives stale_after belongs to a breaker that died, and is removed.
            mtime = self._mtime(self._break_path)
            if mtime is not None and time.time() - mtime > max(self.stale_after, 5.0):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._break_path)
            return
        except OSError:
            return
        os.close(fd)
        try:
            again = self._read(self.path)
            if again is not None and again[0] == expected:
                os.unlink(self.path)
                if self._log:
                    self._log(
                        f"broke stale lock {self.path} held by {expected.decode(errors='replace')}"
                    )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._break_path)

    # -- holding -----------------------------------------------------------------

    def _start_refresher(self) -> None:
        # Only needed so that waiters on other machines see a live holder; a lock is held
        # for milliseconds, so the thread usually never wakes.
        self._stop_refresh.clear()
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True)
        self._refresher.start()

    def _refresh_loop(self) -> None:
        # stale_after / 6 as documented; a floor above that (it was 0.5 s) let a waiter
        # with a small stale_after break a live lock between two refreshes.
        interval = max(self.stale_after / 6, 0.01)
        while not self._stop_refresh.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def still_held(self) -> bool:
        seen = self._read(self.path)
        if seen is None or seen[1] is None:
            return False
        return seen[1].get("token") == self._token

    def release(self) -> None:
        self._stop_refresh.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        if self._token is not None and self.still_held():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._token = None


NEXT_AFTER = 0.05  # seconds a waiter for a soft lock waits before it asks to be next
NEXT_STALE = 3.0  # ... and a next in line unchanged this long (another machine's) is gone
NEXT_REFRESH = 0.5  # how often the next in line shows it is still waiting


class NextInLine:
    """``JOBFILE.lock.soft.next``: which waiter for a soft lock is next (see the module's
    doc).  Advisory: it orders waiters and never grants the lock."""

    def __init__(self, lock: SoftLock) -> None:
        self.lock = lock
        self.path = lock.path.with_name(lock.path.name + ".next")
        self.token: str | None = None  # ours, while we are next
        self.refreshed = 0.0
        self.watched: tuple[bytes, float] | None = None  # (content, since) of another's

    @property
    def mine(self) -> bool:
        return self.token is not None

    def someone_else(self) -> bool:
        """Another waiter, alive, is next (one whose writer is gone is removed)."""
        seen = self.lock._read(self.path)
        if seen is None:
            return False
        raw, info = seen
        dead = self.lock._holder_dead_here(info)
        if dead is None:  # another machine's (or unreadable): gone once unchanged a while
            stamp = raw + str(self.lock._mtime(self.path)).encode()
            now = time.monotonic()
            if self.watched is None or self.watched[0] != stamp:
                self.watched = (stamp, now)
                return True
            dead = now - self.watched[1] >= NEXT_STALE
        if dead:
            self._remove(raw)
            return False
        return True

    def claim(self, now: float) -> None:
        token = secrets.token_hex(8)
        fd = self.lock._create_exclusive(self.path, "lock turn file")
        if fd is None:
            return
        try:
            os.write(fd, json.dumps({**self.lock._me, "token": token}).encode())
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            return
        finally:
            os.close(fd)
        self.token, self.refreshed = token, now

    def refresh(self, now: float) -> None:
        if now - self.refreshed < NEXT_REFRESH:
            return
        self.refreshed = now
        try:
            os.utime(self.path)
        except OSError:
            self.token = None  # removed as stale (we were frozen): ask again

    def leave(self) -> None:
        """We hold the lock, or stopped waiting: the turn passes on."""
        if self.token is None:
            return
        seen = self.lock._read(self.path)
        if seen is not None and seen[1] is not None and seen[1].get("token") == self.token:
            self._remove(seen[0])
        self.token = None

    def _remove(self, expected: bytes) -> None:
        again = self.lock._read(self.path)
        if again is not None and again[0] == expected:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def local_writers(path: Path) -> bool | None:
    """Whether a process on this machine holds ``path`` open for writing.

    Asks for a read lease (``F_SETLEASE``), which the kernel refuses with EAGAIN while any
    local descriptor of the file is open for writing, and gives it back at once.  None when
    this cannot be told: leases unsupported (NFS, most FUSE), disabled, or the file belongs
    to another user.  Writers on other NFS clients are never seen."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        # A writer opening the file while we hold the lease makes the kernel signal us
        # (SIGIO by default, which kills); SIGURG is ignored unless someone handles it.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as err:
        return True if err.errno == errno.EAGAIN else None
    finally:
        os.close(fd)  # closing the only descriptor gives the lease back
    return False


def make_lock(
    jobfile: Path,
    kind: str = "flock",
    stale_after: float = 30.0,
    log: Callable[[str], None] | None = None,
) -> QueueLock:
    path = jobfile.with_name(jobfile.name + ".lock")
    if kind == "flock":
        return FlockLock(path)
    if kind == "soft":
        return SoftLock(path, stale_after=stale_after, log=log)
    raise PbqError(f"unknown lock kind {kind!r} (choose flock or soft)")
