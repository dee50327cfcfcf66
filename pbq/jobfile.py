"""The shared jobfile: taking, appending and putting back lines, exactly once.

Files (all beside the jobfile)::

    JOBFILE         the pending lines (plus, for a short while, lines already taken)
    JOBFILE.queue   JSON: how many bytes of JOBFILE are consumed, and the last
                    committed operation of each host (the commit point of every change);
                    its "format" is FORMAT (pbq 0.1.0 wrote "version": 1 and no format)
    JOBFILE.lock    the lock every reader and writer takes (see locking.py)
    JOBFILE.retries JSON: how often each line was retried

Taking a job costs the same for a 100-line and a 100,000-line jobfile: the taker reads
from the consumed offset and commits a new offset; nothing is rewritten.  The consumed
prefix is cut off later by *compaction* (rewrite the rest to a temp file, rename it over
JOBFILE), at most every ``compact_after`` seconds, so ``cat JOBFILE`` shows the pending
lines plus at most the lines taken in the last ``compact_after`` seconds.

Crash safety (write-ahead, a crash at any instant loses nothing):

* a host records the lines it takes in its own state file (fsync'ed) *before* the offset
  that gives them away is committed, together with an operation number; after a crash
  the host keeps exactly the takes whose number reached ``JOBFILE.queue``;
* every change of JOBFILE itself (append, put back at the front, compaction) first
  writes what it is about to do into ``JOBFILE.queue``; the next holder of the lock
  finishes or undoes it.  An append is all or nothing; a rename is redone.

Lines are bytes: a jobfile in any encoding, with any bytes, is passed through unchanged.
Blank lines and lines whose first non-blank character is ``#`` are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PbqError
from .locking import QueueLock, make_lock
from .safety import read_trusted_json
from .statefiles import _describe_os_error, atomic_write_json, fsync_dir, unlink_quietly

CHUNK = 1 << 16
MARK_BYTES = 32
# Format of JOBFILE.queue.  1 = pbq 0.1.0 ("version": 1, no "format" field); 2 adds the
# "format" field and nothing else, so a queue can be upgraded mid-run and format-1 readers
# still read it.  A newer format is refused: its fields may mean what this pbq can't know.
FORMAT = 2


def is_job_line(line: bytes) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith(b"#")


@dataclass(frozen=True)
class PendingLine:
    line: bytes  # without the newline (and without a trailing CR)
    end: int  # offset in JOBFILE just after the line


@dataclass
class QueueState:
    offset: int = 0  # bytes of JOBFILE already consumed
    size: int = 0  # JOBFILE's size at the last commit (a smaller file was rewritten by hand)
    mark: str = ""  # hex of the bytes just before ``offset`` (a mismatch means rewritten)
    ops: dict[str, int] = field(default_factory=dict)  # last committed operation per host
    taken_since: float | None = None  # wall time of the oldest take not yet compacted away
    pending: dict[str, Any] | None = None  # a JOBFILE change in progress, for crash recovery

    @classmethod
    def from_json(cls, obj: object, path: Path) -> QueueState:
        """The state recorded in ``obj``, read from ``path``.

        Missing or malformed fields give the empty state (as a missing file does); a
        record of a newer format raises PbqError, and nothing is written."""
        if not isinstance(obj, dict):
            return cls()
        fmt = obj.get("format", obj.get("version", 1))
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise PbqError(
                f"written by a newer pbq (format {fmt}); upgrade pbq on this machine",
                path=str(path),
            )
        s = cls()
        try:
            s.offset = int(obj.get("offset", 0))
            s.size = int(obj.get("size", 0))
            s.mark = str(obj.get("mark", ""))
            s.ops = {str(k): int(v) for k, v in dict(obj.get("ops", {})).items()}
            ts = obj.get("taken_since")
            s.taken_since = float(ts) if ts is not None else None
            p = obj.get("pending")
            s.pending = p if isinstance(p, dict) else None
        except (TypeError, ValueError, AttributeError):
            return cls()
        return s

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "offset": self.offset,
            "size": self.size,
            "mark": self.mark,
            "ops": self.ops,
            "taken_since": self.taken_since,
            "pending": self.pending,
        }


class JobQueue:
    """One jobfile and its lock.  Use ``with queue.transaction() as txn:``."""

    def __init__(
        self,
        jobfile: Path,
        *,
        lock: str = "flock",
        fsync: bool = True,
        compact_after: float = 2.0,
        stale_lock_after: float = 30.0,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        allow_group_write: bool = False,
    ) -> None:
        self.jobfile = Path(jobfile)
        self.allow_group_write = allow_group_write  # for .queue and .retries (pbq.safety)
        self.state_path = self.jobfile.with_name(self.jobfile.name + ".queue")
        self.retries_path = self.jobfile.with_name(self.jobfile.name + ".retries")
        self.compact_tmp = self.jobfile.with_name(f".{self.jobfile.name}.compact.tmp")
        self.fsync = fsync
        self.compact_after = compact_after
        self.log = log or (lambda msg: None)
        self.clock = clock
        self.lock: QueueLock = make_lock(self.jobfile, lock, stale_lock_after, log=self.log)

    @contextlib.contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[Txn]:
        self.lock.acquire(timeout)
        try:
            txn = Txn(self)
            txn._recover()
            yield txn
        finally:
            self.lock.release()

    def peek_state(self) -> QueueState:
        """The committed state without taking the lock (for status displays)."""
        return QueueState.from_json(self.read_record(self.state_path), self.state_path)

    def read_record(self, path: Path) -> Any | None:
        """``.queue`` or ``.retries``: they decide what runs, so only if they are yours."""
        return read_trusted_json(path, "queue record", self.allow_group_write)


class Txn:
    """What may be done with the jobfile while its lock is held."""

    def __init__(self, queue: JobQueue) -> None:
        self.q = queue
        self.state = QueueState.from_json(queue.read_record(queue.state_path), queue.state_path)
        self._size: int | None = None

    # -- reading -------------------------------------------------------------------

    def _open(self) -> io.BufferedReader | None:
        try:
            return open(self.q.jobfile, "rb")  # noqa: SIM115 - closed by callers
        except FileNotFoundError:
            return None
        except OSError as err:
            raise _describe_os_error(self.q.jobfile, err, "read") from None

    def size(self) -> int:
        if self._size is None:
            try:
                # open+fstat rather than stat: on NFS an open revalidates cached attributes.
                with open(self.q.jobfile, "rb") as f:
                    self._size = os.fstat(f.fileno()).st_size
            except FileNotFoundError:
                self._size = 0
            except OSError as err:
                raise _describe_os_error(self.q.jobfile, err, "read") from None
        return self._size

    def exists(self) -> bool:
        return self.q.jobfile.exists()

    def take(self, n: int) -> tuple[list[PendingLine], int]:
        """The next ``n`` job lines after the consumed offset, and the offset after the
        last line read (skipped blank and comment lines included).  Nothing is committed."""
        out: list[PendingLine] = []
        pos = self.state.offset
        end = pos
        if n <= 0:
            return out, end
        f = self._open()
        if f is None:
            return out, end
        with f:
            f.seek(pos)
            buf = b""
            buf_start = pos
            while len(out) < n:
                chunk = f.read(CHUNK)
                if not chunk:
                    if buf:  # a last line without a newline is still a line
                        if is_job_line(buf):
                            out.append(PendingLine(buf.rstrip(b"\r"), buf_start + len(buf)))
                        end = buf_start + len(buf)
                    break
                buf += chunk
                i = 0
                while len(out) < n:
                    j = buf.find(b"\n", i)
                    if j < 0:
                        break
                    line = buf[i:j]
                    line_end = buf_start + j + 1
                    if is_job_line(line):
                        out.append(PendingLine(line.rstrip(b"\r"), line_end))
                    end = line_end
                    i = j + 1
                buf = buf[i:]
                buf_start += i
        return out, end

    def has_pending(self) -> bool:
        lines, _ = self.take(1)
        return bool(lines)

    def count_pending(self) -> int:
        """Job lines after the consumed offset (reads the rest of the file)."""
        f = self._open()
        if f is None:
            return 0
        count = 0
        with f:
            f.seek(self.state.offset)
            data = f.read()
        for line in data.split(b"\n"):
            count += is_job_line(line)
        return count

    # -- committing ------------------------------------------------------------------

    def _save(self) -> None:
        atomic_write_json(self.q.state_path, self.state.to_json(), fsync=self.q.fsync)

    def _mark_at(self, offset: int) -> str:
        if offset <= 0:
            return ""
        f = self._open()
        if f is None:
            return ""
        with f:
            start = max(0, offset - MARK_BYTES)
            f.seek(start)
            return f.read(offset - start).hex()

    def commit_take(self, end: int, host: str, op: int) -> None:
        """Give away the lines before ``end``: the commit point of a take.  The caller has
        already recorded them durably as its own under operation ``op``."""
        if end < self.state.offset:
            raise ValueError("cannot move the consumed offset backwards")
        if self.state.taken_since is None and end > self.state.offset:
            self.state.taken_since = self.q.clock()  # compaction is due compact_after from now
        self.state.offset = end
        self.state.size = max(self.size(), end)
        self.state.mark = self._mark_at(end)
        self.state.ops[host] = op
        self._save()

    def commit_op(self, host: str, op: int) -> None:
        """Record operation ``op`` of ``host`` as done when it changed nothing in JOBFILE."""
        self.state.ops[host] = op
        self._save()

    def append(self, lines: list[bytes], host: str | None = None, op: int | None = None) -> None:
        """Append lines at the end, all or nothing."""
        data = b"".join(line + b"\n" for line in lines)
        if not data and host is None:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.q.jobfile, flags, 0o666)
        except OSError as err:
            raise _describe_os_error(self.q.jobfile, err, "append to") from None
        try:
            size0 = os.fstat(fd).st_size
            if size0 > 0 and self._byte_at(size0 - 1) != b"\n":
                data = b"\n" + data  # never glue a job onto an unterminated last line
            self.state.pending = {
                "kind": "append",
                "size": size0,
                "length": len(data),
                "host": host,
                "op": op,
            }
            self._save()
            self._write_or_undo(fd, data, size0)
        finally:
            os.close(fd)
        self.state.pending = None
        self.state.size = size0 + len(data)
        if host is not None and op is not None:
            self.state.ops[host] = op
        self._size = None
        self._save()

    def _byte_at(self, offset: int) -> bytes:
        with open(self.q.jobfile, "rb") as f:
            f.seek(offset)
            return f.read(1)

    def _write_or_undo(self, fd: int, data: bytes, size0: int) -> None:
        """Write an append; if that fails (disk full), cut the file back to ``size0`` and
        forget the pending append before reporting: all or nothing."""
        try:
            _write_all(fd, data)
            if self.q.fsync:
                os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size0)
            self.state.pending = None
            with contextlib.suppress(PbqError):
                self._save()
            raise _describe_os_error(self.q.jobfile, err, "append to") from None

    def prepend(self, lines: list[bytes], host: str, op: int) -> None:
        """Put lines back at the front of the pending part (rewrites the rest)."""
        self._replace(b"".join(line + b"\n" for line in lines), host, op)

    def maybe_compact(self, force: bool = False) -> bool:
        """Cut off the consumed prefix if it is old enough (or ``force``)."""
        if self.state.offset <= 0:
            return False
        age = self.q.clock() - (self.state.taken_since or 0.0)
        if not force and age < self.q.compact_after:
            return False
        self._replace(b"", None, None)
        return True

    def _replace(self, prefix: bytes, host: str | None, op: int | None) -> None:
        tmp = self.q.compact_tmp
        src = self._open()
        try:
            mode = os.stat(self.q.jobfile).st_mode & 0o7777 if src is not None else 0o666
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, prefix)  # write(2) may write less than asked
                if src is not None:
                    src.seek(self.state.offset)
                    while chunk := src.read(CHUNK * 16):
                        _write_all(fd, chunk)
                os.fchmod(fd, mode)
                if self.q.fsync:
                    os.fsync(fd)
                new_size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError as err:
            unlink_quietly(tmp)
            raise _describe_os_error(self.q.jobfile, err, "rewrite") from None
        finally:
            if src is not None:
                src.close()
        # From here on the change is decided: the next lock holder redoes the rename.
        self.state.pending = {"kind": "replace", "size": new_size, "host": host, "op": op}
        self._save()
        self._finish_replace()

    def _finish_replace(self) -> None:
        p = self.state.pending or {}
        if self.q.compact_tmp.exists():
            try:
                os.replace(self.q.compact_tmp, self.q.jobfile)
            except OSError as err:
                raise _describe_os_error(self.q.jobfile, err, "rewrite") from None
            if self.q.fsync:
                fsync_dir(self.q.jobfile.parent)
        self.state.offset = 0
        self.state.mark = ""
        self.state.taken_since = None
        self.state.pending = None
        self._size = None
        self.state.size = self.size()
        if p.get("host") is not None and p.get("op") is not None:
            self.state.ops[str(p["host"])] = int(p["op"])
        self._save()

    # -- recovery ----------------------------------------------------------------------

    def _recover(self) -> None:
        """Finish or undo what a holder that died left half done; notice hand edits."""
        p = self.state.pending
        if p is None:
            if self.q.compact_tmp.exists():
                unlink_quietly(self.q.compact_tmp)  # written, never decided on: ignore
        elif p.get("kind") == "replace":
            self.q.log("finishing a jobfile rewrite interrupted by a crash")
            self._finish_replace()
        elif p.get("kind") == "append":
            self._recover_append(p)
        else:
            self.state.pending = None
        self._notice_rewrite()

    def _recover_append(self, pending: dict[str, Any]) -> None:
        """Keep an append that reached the disk whole; cut off one that did not."""
        size0, length = int(pending.get("size", 0)), int(pending.get("length", 0))
        if self.size() < size0 + length:
            written = self.size() - size0
            self.q.log(f"undoing an append interrupted by a crash ({written} of {length} bytes)")
            with contextlib.suppress(OSError), open(self.q.jobfile, "r+b") as f:
                f.truncate(size0)
            self._size = None
        elif pending.get("host") is not None and pending.get("op") is not None:
            self.state.ops[str(pending["host"])] = int(pending["op"])
        self.state.pending = None
        self.state.size = self.size()
        self._save()

    def _notice_rewrite(self) -> None:
        """Treat all of JOBFILE as pending when its consumed part was changed by hand."""
        size = self.size()
        s = self.state
        # The consumed part must be unchanged: the bytes just before the offset are as
        # recorded.  (Pending lines may be edited or deleted; that is no rewrite.)
        rewritten = s.offset > size
        if not rewritten and s.offset > 0 and self._mark_at(s.offset) != s.mark:
            rewritten = True
        if rewritten:
            self.q.log(
                f"{self.q.jobfile} was rewritten by something other than pbq; "
                "treating all of it as pending"
            )
            s.offset, s.mark, s.taken_since = 0, "", None
            s.size = size
            self._save()

    # -- retry counts --------------------------------------------------------------------

    def _retries(self) -> dict[str, int]:
        data = self.q.read_record(self.q.retries_path)
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def retries_of(self, line: bytes) -> int:
        return self._retries().get(line_key(line), 0)

    def set_retries(self, line: bytes, count: int) -> None:
        data = self._retries()
        key = line_key(line)
        if count > 0:
            data[key] = count
        elif key in data:
            del data[key]
        else:
            return
        atomic_write_json(self.q.retries_path, data, fsync=self.q.fsync)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def line_key(line: bytes) -> str:
    return hashlib.sha1(line).hexdigest()[:16]


def append_file(queue: JobQueue, lines: list[bytes]) -> int:
    """``jobfile-append``: append job lines under the lock; returns how many were appended."""
    with queue.transaction() as txn:
        txn.append(lines)
    return len(lines)
