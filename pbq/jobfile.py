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
prefix is cut off later by *compaction* (copy the rest to a temp file, rename it over
JOBFILE), and only when that is cheap and safe: the consumed part is at least half of the
file and at least ``compact_min`` bytes (or all of it), so the bytes copied are at most
the bytes consumed; the first take is ``compact_after`` seconds old; JOBFILE has not grown
outside locked appends for ``compact_after`` seconds; its last line is complete; and no
process on this machine holds it open for writing (a read lease, see
:func:`~pbq.locking.local_writers`).

Appends without the lock (``generator >> JOBFILE``, ``echo ... >> JOBFILE``) lose
nothing on this machine: a writer that opened JOBFILE before a rename keeps writing into
the replaced file, so every rename first hard-links the old file to ``.JOBFILE.old-<n>``
and records it in ``JOBFILE.queue`` with how much of it was consumed or copied; its
later lines are taken from there like JOBFILE's own, and it is removed once it is
consumed and quiet.

A line is a job only once it ends with a newline: an unterminated last line (a writer may
be in the middle of it) is never run; it is logged once.  ``jobfile-append`` ends it first.

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
from .locking import QueueLock, local_writers, make_lock
from .lockstats import Histogram
from .rewrite import CHUNK as CHUNK
from .rewrite import OldFile, Rewrite, tail_len, write_all
from .rewrite import is_job_line as is_job_line
from .safety import read_trusted_json
from .statefiles import (
    _describe_os_error,
    atomic_write_json,
    fsync_dir,
    line_to_text,
    unlink_quietly,
)

MARK_BYTES = 32
# Format of JOBFILE.queue.  1 = pbq 0.1.0 ("version": 1, no "format" field); 2 adds the
# "format" field and nothing else, so a queue can be upgraded mid-run and format-1 readers
# still read it.  3 = a record that lists replaced files still holding pending lines
# ("olds", or a rewrite in progress that keeps one): a format-2 reader would drop them and
# lose those lines, so it must refuse.  A record is written in the lowest format that
# describes it (the "epochs" and "grew_at" keys are ignored by format-2 readers).  A newer
# format is refused: its fields may mean what this pbq can't know.
FORMAT = 3
COMPACT_MIN = 1 << 20  # bytes consumed before a partly consumed jobfile is compacted
TAIL_SHOWN = 200  # characters of an unterminated last line quoted in the log


SEQ_MARK = b"#pbq-seq "  # "#pbq-seq N" right before a line put back: the line keeps Seq N
CANCEL_MARK = b"#pbq-cancelled "  # a pending line cancelled in place: it keeps its number


def seq_mark(line: bytes) -> int | None:
    """N of a ``#pbq-seq N`` annotation, else None."""
    if line.startswith(SEQ_MARK):
        num = line[len(SEQ_MARK):].strip()
        if num.isdigit():
            return int(num)
    return None


def seq_annotated(lines: list[bytes], seqs: list[int | None]) -> list[bytes]:
    """Lines to write back into the jobfile, each with its Seq annotation (if it has one)."""
    out: list[bytes] = []
    for line, seq in zip(lines, seqs, strict=True):
        if seq is not None:
            out.append(SEQ_MARK + str(seq).encode())
        out.append(line)
    return out


def error_seq_records(lines: list[bytes], seqs: list[int | None]) -> bytes:
    """``JOBFILE.HOST.errseq``: one ``SEQ KEY`` line per ``.error`` line that has a Seq, so
    that ``requeue-errors`` gives each line back its number (``.error`` stays the lines
    alone, as PBQ's; KEY is :func:`line_key` of the line)."""
    return b"".join(f"{seq} {line_key(line)}\n".encode()
                    for line, seq in zip(lines, seqs, strict=True) if seq is not None)


def error_seqs_by_key(data: bytes) -> dict[str, list[int]]:
    """The Seqs of ``.errseq`` records by line key, oldest first."""
    out: dict[str, list[int]] = {}
    for rec in data.split(b"\n"):
        parts = rec.split()
        if len(parts) == 2 and parts[0].isdigit():
            out.setdefault(parts[1].decode(errors="replace"), []).append(int(parts[0]))
    return out


def numbered(line: bytes) -> bool:
    """Whether a line gets the next number when nothing annotates it: a job line, or a
    pending line cancelled in place (its number stays used, so later ones keep theirs)."""
    return is_job_line(line) or line.startswith(CANCEL_MARK)


@dataclass(frozen=True)
class PendingLine:
    line: bytes  # without the newline (and without a trailing CR)
    end: int  # offset in JOBFILE just after the line
    seq: int = 0  # its number in the jobfile's history (Seq): see Txn.take


@dataclass
class QueueState:
    offset: int = 0  # bytes of JOBFILE already consumed
    size: int = 0  # JOBFILE's size when a lock holder last looked
    mark: str = ""  # hex of the bytes just before ``offset`` (a mismatch means rewritten)
    ops: dict[str, int] = field(default_factory=dict)  # last committed operation per host
    taken_since: float | None = None  # wall time of the oldest take not yet compacted away
    pending: dict[str, Any] | None = None  # a JOBFILE change in progress, for crash recovery
    epochs: dict[str, int] = field(default_factory=dict)  # per host, see Txn.bump_epoch
    olds: list[OldFile] = field(default_factory=list)  # replaced files with pending lines
    grew_at: float | None = None  # wall time JOBFILE was last seen grown by unlocked appends
    lines: int = 0  # job lines numbered so far: the next new line's Seq is lines + 1

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
            s.epochs = {str(k): int(v) for k, v in dict(obj.get("epochs") or {}).items()}
            s.olds = [OldFile.from_json(o) for o in list(obj.get("olds") or [])]
            g = obj.get("grew_at")
            s.grew_at = float(g) if g is not None else None
            s.lines = int(obj.get("lines", 0) or 0)
        except (TypeError, ValueError, AttributeError, KeyError):
            return cls()
        return s

    def format(self) -> int:
        """The lowest format that describes this state (see FORMAT)."""
        keeps_old = self.pending is not None and self.pending.get("old") is not None
        return 3 if self.olds or keeps_old else 2

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format(),
            "offset": self.offset,
            "size": self.size,
            "mark": self.mark,
            "ops": self.ops,
            "taken_since": self.taken_since,
            "pending": self.pending,
            "epochs": self.epochs,
        }
        if self.olds:
            out["olds"] = [o.to_json() for o in self.olds]
        if self.grew_at is not None:
            out["grew_at"] = self.grew_at
        if self.lines:
            out["lines"] = self.lines
        return out


class JobQueue:
    """One jobfile and its lock.  Use ``with queue.transaction() as txn:``."""

    def __init__(
        self,
        jobfile: Path,
        *,
        lock: str = "flock",
        fsync: bool = True,
        compact_after: float = 2.0,
        compact_min: int = COMPACT_MIN,
        stale_lock_after: float = 30.0,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        allow_group_write: bool = False,
    ) -> None:
        self.jobfile = Path(jobfile)
        self.lock_wait = Histogram()  # seconds each transaction waited for the lock
        self.lock_wait_start = Histogram()  # ... those of a scheduler's start-up
        self.lock_hold = Histogram()  # ... and held it
        self.allow_group_write = allow_group_write  # for .queue and .retries (pbq.safety)
        self.state_path = self.jobfile.with_name(self.jobfile.name + ".queue")
        self.retries_path = self.jobfile.with_name(self.jobfile.name + ".retries")
        self.compact_tmp = self.jobfile.with_name(f".{self.jobfile.name}.compact.tmp")
        self.fsync = fsync
        self.compact_after = compact_after
        self.compact_min = compact_min
        self.old_prefix = f".{self.jobfile.name}.old-"
        self.log = log or (lambda msg: None)
        self.tail_logged: bytes | None = None  # the unterminated last line logged last
        self._sig_key: tuple[int, int] | None = None
        self._sig_olds: list[str] = []
        self.clock = clock
        self.lock: QueueLock = make_lock(self.jobfile, lock, stale_lock_after, log=self.log)

    @contextlib.contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[Txn]:
        asked = time.perf_counter()
        self.lock.acquire(timeout)
        with self._held(time.perf_counter() - asked) as txn:
            yield txn

    @contextlib.contextmanager
    def try_transaction(self) -> Iterator[Txn | None]:
        """A transaction if the lock is free now, else None at once (no wait): for a
        scheduler that takes lines ahead while its jobs still run."""
        if not self.lock.try_acquire():
            yield None
            return
        with self._held(0.0) as txn:
            yield txn

    @contextlib.contextmanager
    def _held(self, waited: float) -> Iterator[Txn]:
        """The lock is ours: finish what a crashed holder left, and time the hold."""
        got = time.perf_counter()
        txn: Txn | None = None
        try:
            txn = Txn(self)
            txn._recover()
            yield txn
        finally:
            self.lock.release()
            self.lock_wait.add(waited)
            self.lock_hold.add(time.perf_counter() - got)
            if txn is not None and txn.dir_sync_due:
                # The commit's rename made durable after the lock is free, before the taker
                # starts a job of it (see commit_take): one fsync less while others wait.
                fsync_dir(self.jobfile.parent)

    def start_up_over(self) -> None:
        """The waits so far were a scheduler's start-up (its claim of the host and its first
        take: a fleet started at once queues for the lock once): kept apart from those of
        its running."""
        self.lock_wait_start, self.lock_wait = self.lock_wait, Histogram()

    def lock_stats(self) -> dict[str, tuple[int, ...] | None]:
        """The lock histograms, as ``.status`` keeps them."""
        return {"lock_wait": self.lock_wait.as_tuple(), "lock_hold": self.lock_hold.as_tuple(),
                "lock_wait_start": self.lock_wait_start.as_tuple()}

    def peek_state(self) -> QueueState:
        """The committed state without taking the lock (for status displays)."""
        return QueueState.from_json(self.read_record(self.state_path), self.state_path)

    def read_record(self, path: Path) -> Any | None:
        """``.queue`` or ``.retries``: they decide what runs, so only if they are yours."""
        return read_trusted_json(path, "queue record", self.allow_group_write)

    def old_path(self, old: OldFile) -> Path:
        return self.jobfile.with_name(old.name)

    def signature(self) -> tuple[int | float, ...]:
        """Changes whenever JOBFILE, its commit record or a replaced file still holding
        pending lines changes (grows, is replaced, is committed to); no lock, no write.
        A missing file counts as a value too, so that a queue without a record yet still
        notices its first append."""
        sig: list[int | float] = []
        for path in (self.jobfile, self.state_path):
            try:
                st = os.stat(path)
                sig += [st.st_ino, st.st_size, st.st_mtime_ns]
            except OSError:
                sig += [-1, -1, -1]
        key = (int(sig[4]), int(sig[5]))
        if key != self._sig_key:  # re-read the record only when it changed
            self._sig_key = key
            try:
                self._sig_olds = [o.name for o in self.peek_state().olds]
            except PbqError:
                self._sig_olds = []
        for name in self._sig_olds:
            try:
                st = os.stat(self.jobfile.with_name(name))
                sig += [st.st_size, st.st_mtime_ns]
            except OSError:
                sig += [-1, -1]
        return tuple(sig)

    def partial_tail(self) -> bytes | None:
        """An unterminated last line of a job (not run until it ends with a newline)."""
        with self.transaction() as txn:
            return txn.find_tail()


class Txn:
    """What may be done with the jobfile while its lock is held."""

    def __init__(self, queue: JobQueue) -> None:
        self.q = queue
        self.state = QueueState.from_json(queue.read_record(queue.state_path), queue.state_path)
        # Only names pbq makes: a doctored record must not make us read or remove other files.
        self.state.olds = [
            o for o in self.state.olds
            if o.name.startswith(queue.old_prefix) and o.name[len(queue.old_prefix) :].isdigit()
        ]
        self._size: int | None = None
        # What the last take() saw: its end and how far it read each replaced file, so
        # that commit_take(end) consumes exactly those lines.
        self._plan: tuple[int, dict[str, int], int] | None = None
        self.partial_tail: bytes | None = None  # an unterminated last line the take saw
        self.rewrite = Rewrite(self)  # renames of a new JOBFILE over the old, and the old
        self.dir_sync_due = False  # a commit's rename is to be made durable once unlocked

    # -- reading -------------------------------------------------------------------

    def source(self) -> io.BufferedReader | None:
        """JOBFILE opened for reading (None when it does not exist)."""
        return self._open()

    def save(self) -> None:
        self._save()

    def forget_size(self) -> None:
        self._size = None

    def _open(self, path: Path | None = None) -> io.BufferedReader | None:
        path = path or self.q.jobfile
        try:
            return open(path, "rb")  # noqa: SIM115 - closed by callers
        except FileNotFoundError:
            return None
        except OSError as err:
            raise _describe_os_error(path, err, "read") from None

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
        """The next ``n`` job lines -- first those of replaced files still being written
        to, then JOBFILE's after the consumed offset -- and the offset in JOBFILE after the
        last line read (skipped blank and comment lines included).  Nothing is committed;
        ``commit_take(end)`` commits exactly these lines.  A last line without a newline is
        not taken (see ``partial_tail``).

        Each line comes with its Seq: the number a ``#pbq-seq N`` line right before it
        gives (a line put back keeps its number), else the next one of the record's
        counter (``lines``), which ``commit_take`` advances."""
        out: list[PendingLine] = []
        olds: dict[str, int] = {}
        self.partial_tail = None
        end = self.state.offset
        number = self.state.lines
        if n > 0:
            for old in self.state.olds:
                if len(out) >= n:
                    break
                got, old_end, number = self._scan(self.q.old_path(old), old.done,
                                                  n - len(out), number)
                out += got
                if old_end > old.done:
                    olds[old.name] = old_end
            if len(out) < n:
                got, end, number = self._scan(self.q.jobfile, end, n - len(out), number)
                out += got
        self._plan = (end, olds, number)
        return out, end

    def _scan(
        self, path: Path, pos: int, n: int, number: int
    ) -> tuple[list[PendingLine], int, int]:
        """Up to ``n`` complete job lines of ``path`` from ``pos``, the offset after them,
        and the last number given (``number`` is the last one before them)."""
        out: list[PendingLine] = []
        end = pos
        f = self._open(path)
        if f is None:
            return out, end, number
        with f:
            f.seek(pos)
            buf = b""
            buf_start = pos
            mark: int | None = None
            while len(out) < n:
                chunk = f.read(CHUNK)
                if not chunk:
                    if buf:
                        self._saw_tail(path, buf)
                    break
                buf += chunk
                i = 0
                while len(out) < n:
                    j = buf.find(b"\n", i)
                    if j < 0:
                        break
                    line = buf[i:j].rstrip(b"\r")
                    line_end = buf_start + j + 1
                    if is_job_line(line):
                        if mark is None:
                            number += 1
                        out.append(PendingLine(line, line_end, number if mark is None else mark))
                        mark = None
                    else:
                        mark = seq_mark(line.strip())
                        number += line.startswith(CANCEL_MARK)
                    end = line_end
                    i = j + 1
                buf = buf[i:]
                buf_start += i
        return out, end, number

    def _saw_tail(self, path: Path, tail: bytes) -> None:
        """An unterminated last line: never run (its writer may be in the middle of it --
        ``rm -rf /scratch/me/tmp`` must not run as ``rm -rf /scratch/me``); logged once."""
        if not is_job_line(tail):
            return
        self.partial_tail = tail
        if tail != self.q.tail_logged:
            self.q.tail_logged = tail
            text = line_to_text(tail.rstrip(b"\r"))
            if len(text) > TAIL_SHOWN:
                text = text[:TAIL_SHOWN] + "..."
            self.q.log(
                f"{path.name}: the last line has no newline yet; it is not run until it "
                f"ends with one (if nothing is writing it any more, append a newline): {text}"
            )

    def find_tail(self) -> bytes | None:
        """The unterminated last job line of JOBFILE or of a replaced file, if any."""
        self.partial_tail = None
        for path, start in [(self.q.old_path(o), o.done) for o in self.state.olds] + [
            (self.q.jobfile, self.state.offset)
        ]:
            tail = _tail_of(path, start)
            if tail:
                self._saw_tail(path, tail)
        return self.partial_tail

    def _pending_files(self) -> Iterator[tuple[Path, int, io.BufferedReader]]:
        """Each file holding pending lines, replaced ones first, open at its first one."""
        for path, start in [(self.q.old_path(o), o.done) for o in self.state.olds] + [
            (self.q.jobfile, self.state.offset)
        ]:
            f = self._open(path)
            if f is None:
                continue
            with f:
                f.seek(start)
                yield path, start, f

    def pending_numbered(self) -> Iterator[tuple[Path, int, int, bytes, int, bool]]:
        """Every complete pending job line in the order it will be taken, as (file, start
        of its annotation or of the line, end, line, Seq, annotated).  Reads the rest of
        each file; a cancelled line uses up its number but is not listed."""
        number = self.state.lines
        for path, start, f in self._pending_files():
            pos = start
            mark: tuple[int, int] | None = None  # (Seq, where the annotation starts)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # an unterminated last line: not a job yet
                line = raw[:-1].rstrip(b"\r")
                if is_job_line(line):
                    if mark is None:
                        number += 1
                        yield path, pos, pos + len(raw), line, number, False
                    else:
                        yield path, mark[1], pos + len(raw), line, mark[0], True
                    mark = None
                else:
                    m = seq_mark(line.strip())
                    mark = None if m is None else (m, pos)
                    number += line.startswith(CANCEL_MARK)
                pos += len(raw)

    def cancel_pending(self, seqs: set[int]) -> dict[int, bytes]:
        """Remove the pending lines numbered ``seqs`` from JOBFILE (a rewrite of its pending
        part): each becomes a ``#pbq-cancelled N`` comment, so the lines after it keep
        their numbers.  Returns the lines removed, by Seq (lines still in a replaced file
        that someone writes to are not touched)."""
        found: dict[int, tuple[int, int, bytes, bool]] = {}
        for path, start, end, line, seq, annotated in self.pending_numbered():
            if seq in seqs and path == self.q.jobfile and seq not in found:
                found[seq] = (start, end, line, annotated)
        if not found:
            return {}
        with open(self.q.jobfile, "rb") as f:
            f.seek(self.state.offset)
            rest = f.read()
        rest = rest[: rest.rfind(b"\n") + 1]  # an unterminated line stays where it is written
        out = bytearray()
        pos = self.state.offset
        for seq, (start, end, line, annotated) in sorted(found.items(), key=lambda kv: kv[1][0]):
            out += rest[pos - self.state.offset : start - self.state.offset]
            text = line.replace(b"\r", b" ")
            # A put-back line's number comes from its annotation: its comment counts nothing.
            out += (b"#pbq-cancelled-put-back " if annotated else CANCEL_MARK)
            out += str(seq).encode() + b": " + text + b"\n"
            pos = end
        out += rest[pos - self.state.offset :]
        self.rewrite.replace(b"", None, None, body=(bytes(out), self.state.offset + len(rest)))
        return {seq: v[2] for seq, v in found.items()}

    def has_pending(self) -> bool:
        lines, _ = self.take(1)
        return bool(lines)

    def count_pending(self) -> int:
        """Complete job lines not consumed yet (reads the rest of each file)."""
        count = 0
        for _path, _start, f in self._pending_files():
            data = f.read()
            for line in data.split(b"\n")[:-1]:  # the last piece is unterminated (or empty)
                count += is_job_line(line)
        return count

    # -- committing ------------------------------------------------------------------

    def _save(self, sync_dir: bool = True) -> None:
        atomic_write_json(self.q.state_path, self.state.to_json(), fsync=self.q.fsync,
                          sync_dir=sync_dir)
        if self.q.fsync:
            self.dir_sync_due = not sync_dir  # a directory sync covers every earlier rename

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

    def _observe_growth(self) -> bool:
        """Note JOBFILE grown by something other than a locked change (an unlocked append):
        compaction waits until that has stopped for ``compact_after`` seconds."""
        size = self.size()
        if size == self.state.size:
            return False
        if size > self.state.size:
            self.state.grew_at = self.q.clock()
        self.state.size = size
        return True

    def commit_take(self, end: int, host: str, op: int) -> None:
        """Give away the lines the last ``take`` returned (``end`` is the offset it gave):
        the commit point of a take.  The caller has already recorded them durably as its
        own under operation ``op``."""
        if end < self.state.offset:
            raise ValueError("cannot move the consumed offset backwards")
        plan = self._plan
        if plan is not None and plan[0] == end:
            for old in self.state.olds:
                old.done = max(old.done, plan[1].get(old.name, old.done))
            self.state.lines = max(self.state.lines, plan[2])
        self._plan = None
        if self.state.taken_since is None and end > self.state.offset:
            self.state.taken_since = self.q.clock()  # compaction is due compact_after from now
        self._observe_growth()
        self.state.offset = end
        self.state.mark = self._mark_at(end)
        self.state.ops[host] = op
        # The record's data is on disk before the rename; the rename itself is made durable
        # once the lock is free.  Until then a crash of the machine may bring back the
        # previous record, a consistent one: the take did not happen, and its lines are
        # still pending -- the taker keeps only takes whose operation the record names, and
        # starts none of them before the directory is synced.  A later taker's record, once
        # durable, includes this one.
        self._save(sync_dir=False)

    def commit_op(self, host: str, op: int) -> None:
        """Record operation ``op`` of ``host`` as done when it changed nothing in JOBFILE."""
        self.state.ops[host] = op
        self._save()

    # -- host epochs -------------------------------------------------------------------

    def epoch_of(self, host: str) -> int:
        """The committed epoch of ``host`` (0 if it never had one)."""
        return self.state.epochs.get(host, 0)

    def bump_epoch(self, host: str) -> int:
        """Increment and commit the epoch of ``host``; returns the new epoch."""
        epoch = self.epoch_of(host) + 1
        self.state.epochs[host] = epoch
        self._save()
        return epoch

    # -- changing JOBFILE ----------------------------------------------------------------

    def append(
        self,
        lines: list[bytes],
        host: str | None = None,
        op: int | None = None,
        *,
        end_last_line: bool = False,
    ) -> None:
        """Append lines at the end, all or nothing.

        An unterminated last line is somebody's half-written line or a hand-written last
        line.  With ``end_last_line`` (``jobfile-append``) it is ended with a newline
        first, unless a process on this machine holds JOBFILE open for writing; otherwise
        (and always for a scheduler putting jobs back) the lines go in before it, by a
        rewrite, and it stays last -- in the replaced file, if someone is writing it."""
        data = b"".join(line + b"\n" for line in lines)
        if not data and host is None:
            return
        self._observe_growth()
        size = self.size()
        unterminated = data and size > self.state.offset and self._byte_at(size - 1) != b"\n"
        # (the lease is asked before opening: our own descriptor would count as a writer)
        if unterminated and (not end_last_line or local_writers(self.q.jobfile)):
            self.rewrite.replace(b"", host, op, suffix=data)
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.q.jobfile, flags, 0o666)
        except OSError as err:
            raise _describe_os_error(self.q.jobfile, err, "append to") from None
        try:
            size0 = os.fstat(fd).st_size
            if data and size0 > 0 and self._byte_at(size0 - 1) != b"\n":
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
            write_all(fd, data)
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
        self.rewrite.replace(b"".join(line + b"\n" for line in lines), host, op)

    def maybe_compact(self, force: bool = False) -> bool:
        """Cut off the consumed prefix when that is due (see the module's doc); ``force``
        skips the age, share and quiet rules, never the safety ones (a complete last line,
        no writer on this machine)."""
        s = self.state
        if s.offset <= 0:
            return False
        if self._observe_growth():
            self._save()  # so that every host waits for the same quiet spell
        now = self.q.clock()
        size = self.size()
        if not force:
            if now - (s.taken_since or 0.0) < self.q.compact_after:
                return False
            if s.grew_at is not None and now - s.grew_at < self.q.compact_after:
                return False
            if s.offset < size and (2 * s.offset < size or s.offset < self.q.compact_min):
                return False  # copying the rest would cost more than what was consumed
        if size > s.offset and self._byte_at(size - 1) != b"\n":
            return False  # a writer may be in the middle of the last line
        if local_writers(self.q.jobfile):
            return False  # someone here holds it open for writing: it will grow
        self.rewrite.replace(b"", None, None)
        return True

    # -- recovery ----------------------------------------------------------------------

    def _recover(self) -> None:
        """Finish or undo what a holder that died left half done; notice hand edits."""
        p = self.state.pending
        if p is None:
            if self.q.compact_tmp.exists():
                unlink_quietly(self.q.compact_tmp)  # written, never decided on: ignore
        elif p.get("kind") == "replace":
            self.q.log("finishing a jobfile rewrite interrupted by a crash")
            self.rewrite.finish()
        elif p.get("kind") == "append":
            self._recover_append(p)
        else:
            self.state.pending = None
        self._notice_rewrite()
        self.rewrite.tend_olds()

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


def _tail_of(path: Path, start: int) -> bytes | None:
    """The bytes after the last newline of ``path`` (from ``start`` on), or None."""
    try:
        with open(path, "rb") as f:
            end = os.fstat(f.fileno()).st_size
            n = tail_len(f, start, end) if end > start else 0
            if n <= 0:
                return None
            f.seek(end - n)
            return f.read(n)
    except OSError:
        return None


def line_key(line: bytes) -> str:
    return hashlib.sha1(line).hexdigest()[:16]


def append_file(queue: JobQueue, lines: list[bytes]) -> list[int]:
    """``jobfile-append``: append lines under the lock, all or none; returns the numbers
    (Seq) the job lines among them get.  Exact unless someone appends without the lock at
    the same moment."""
    with queue.transaction() as txn:
        txn.append(lines, end_last_line=True)
        prev: bytes = b""
        count = 0
        for line in lines:
            count += is_job_line(line) and seq_mark(prev.strip()) is None
            prev = line
        if not count:
            return []
        mine = [seq for *_, seq, annotated in txn.pending_numbered() if not annotated]
    return mine[-count:]
