"""Replacing JOBFILE: a new file (the put-back or kept lines, the pending part, what was
appended meanwhile) is renamed over it, and the old one is kept under a hidden name
``.JOBFILE.old-<n>`` for writers that still hold it open: what they append there is taken
from there.  Each replacement is first decided in the queue record, so the next lock holder
finishes one a crash interrupted (``Rewrite.finish``).  Replaced files are removed once
drained and quiet (``Rewrite.tend_olds``).  Used by ``jobfile.Txn``, which holds the lock.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .locking import local_writers
from .statefiles import _describe_os_error, fsync_dir, unlink_quietly

CHUNK = 1 << 16
# Seconds a drained replaced file is kept after its last growth when a lease can't tell
# whether anyone on this machine still writes to it (NFS, files of another user).
OLD_KEEP_BLIND = 600.0


class Holder(Protocol):
    """What a rewrite needs of the transaction that holds the jobfile lock."""

    q: Any  # the JobQueue: paths, fsync, clock, log
    state: Any  # the QueueState being changed

    def size(self) -> int: ...
    def source(self) -> io.BufferedReader | None: ...
    def save(self) -> None: ...
    def forget_size(self) -> None: ...


def is_job_line(line: bytes) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith(b"#")


@dataclass
class OldFile:
    """A replaced JOBFILE kept under a hidden name: writers that opened JOBFILE before the
    rename append to it.  Its lines after ``done`` are pending like JOBFILE's own."""

    name: str  # beside the jobfile
    done: int  # bytes consumed, or copied into the JOBFILE that replaced it
    size: int  # its size when a lock holder last looked
    seen: float  # wall time it last grew (or was made)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "done": self.done, "size": self.size, "seen": self.seen}

    @classmethod
    def from_json(cls, obj: Any) -> OldFile:
        name = str(obj["name"])
        if "/" in name:
            raise ValueError(name)  # only ever a name beside the jobfile
        return cls(name, int(obj["done"]), int(obj.get("size", 0)), float(obj.get("seen", 0)))



class Rewrite:
    def __init__(self, t: Holder) -> None:
        self.t = t

    def replace(
        self, prefix: bytes, host: str | None, op: int | None, suffix: bytes = b"",
        body: tuple[bytes, int] | None = None,
    ) -> None:
        """Rename ``prefix`` + the pending lines + ``suffix`` over JOBFILE.  The old file is
        linked to a hidden name first and recorded with how far it was copied, so what a
        writer still appends to it (or the rest of an unterminated last line) is taken
        from there."""
        # Kept whole: copy, unterminated last line, then the record that decides the change.
        tmp = self.t.q.compact_tmp
        old = self.link_old()
        src = self.t.source()
        copied = self.t.state.offset
        try:
            mode = os.stat(self.t.q.jobfile).st_mode & 0o7777 if src is not None else 0o666
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, prefix)  # write(2) may write less than asked
                tail = b""
                if src is not None and body is not None:
                    write_all(fd, body[0])  # the pending part, edited (cancel_pending)
                    src.seek(body[1])
                    copied = body[1]
                    while chunk := src.read(CHUNK * 16):  # what was written since
                        write_all(fd, chunk)
                        copied += len(chunk)
                elif src is not None:
                    src.seek(copied)
                    while chunk := src.read(CHUNK * 16):
                        write_all(fd, chunk)
                        copied += len(chunk)
                    cut = tail_len(src, self.t.state.offset, copied)
                    if cut:
                        # An unterminated last line stays last, and its writer (if any)
                        # finishes it in the old file: it is taken from there.  When nobody
                        # here writes to JOBFILE it is a hand-written line: kept in view.
                        if old is None or local_writers(self.t.q.jobfile) is False:
                            src.seek(copied - cut)
                            tail = src.read(cut)
                        else:
                            copied -= cut
                        os.ftruncate(fd, os.fstat(fd).st_size - cut)
                        os.lseek(fd, 0, os.SEEK_END)
                write_all(fd, suffix)  # before an unterminated last line, never glued to it
                write_all(fd, tail)
                os.fchmod(fd, mode)
                if self.t.q.fsync:
                    os.fsync(fd)
                new_size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError as err:
            unlink_quietly(tmp)
            raise _describe_os_error(self.t.q.jobfile, err, "rewrite") from None
        finally:
            if src is not None:
                src.close()
        # From here on the change is decided: the next lock holder redoes the rename.
        self.t.state.pending = {"kind": "replace", "size": new_size, "host": host, "op": op}
        if old is not None:
            self.t.state.pending.update(old=old, done=copied)
        self.t.save()
        self.finish()

    def link_old(self) -> str | None:
        """Link JOBFILE to a new hidden name ``.JOBFILE.old-<n>`` (None: no JOBFILE, or
        hard links unsupported).  A link a crash left unrecorded is removed first."""
        if not self.t.q.jobfile.exists():
            return None
        known = {o.name for o in self.t.state.olds}
        prefix = self.t.q.old_prefix
        top = 0
        try:
            names = [n for n in os.listdir(self.t.q.jobfile.parent) if n.startswith(prefix)]
            here = os.stat(self.t.q.jobfile)
        except OSError:
            return None
        for name in names:
            num = name[len(prefix) :]
            if not num.isdigit():
                continue
            path = self.t.q.jobfile.with_name(name)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if name not in known and (st.st_ino, st.st_dev) == (here.st_ino, here.st_dev):
                    os.unlink(path)  # linked, then the holder died before deciding
                    continue
            top = max(top, int(num))
        name = f"{prefix}{top + 1}"
        try:
            os.link(self.t.q.jobfile, self.t.q.jobfile.with_name(name))
        except OSError as err:
            self.t.q.log(
                f"cannot keep the replaced jobfile ({err.strerror}): a process still "
                f"appending to it without the lock loses those lines"
            )
            return None
        return name

    def finish(self) -> None:
        p = self.t.state.pending or {}
        if self.t.q.compact_tmp.exists():
            try:
                os.replace(self.t.q.compact_tmp, self.t.q.jobfile)
            except OSError as err:
                raise _describe_os_error(self.t.q.jobfile, err, "rewrite") from None
            if self.t.q.fsync:
                fsync_dir(self.t.q.jobfile.parent)
        old = p.get("old")
        if isinstance(old, str) and not any(o.name == old for o in self.t.state.olds):
            with contextlib.suppress(OSError, ValueError):
                size = os.stat(self.t.q.jobfile.with_name(old)).st_size
                self.t.state.olds.append(
                    OldFile.from_json({"name": old, "done": int(p.get("done", size)),
                                       "size": size, "seen": self.t.q.clock()})
                )
        self.t.state.offset = 0
        self.t.state.mark = ""
        self.t.state.taken_since = None
        self.t.state.pending = None
        self.t.forget_size()
        self.t.state.size = self.t.size()
        if p.get("host") is not None and p.get("op") is not None:
            self.t.state.ops[str(p["host"])] = int(p["op"])
        self.t.save()

    def tend_olds(self) -> None:
        """Note the growth of replaced files; remove those consumed and quiet: nobody on
        this machine has them open for writing and they have not grown for
        ``compact_after`` seconds (``OLD_KEEP_BLIND`` when a lease can't tell)."""
        if not self.t.state.olds:
            return
        now = self.t.q.clock()
        keep: list[OldFile] = []
        changed = False
        for old in self.t.state.olds:
            path = self.t.q.old_path(old)
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                changed = True  # removed by a holder that died before recording it
                continue
            except OSError:
                keep.append(old)
                continue
            if size != old.size:
                old.size, old.seen = size, now
                changed = True
            elif nothing_left(path, old.done):
                writers = local_writers(path)
                wait = self.t.q.compact_after if writers is False else OLD_KEEP_BLIND
                if not writers and now - old.seen >= wait:
                    unlink_quietly(path)
                    changed = True
                    continue
            keep.append(old)
        if changed:
            self.t.state.olds = keep
            self.t.save()



def tail_len(f: io.BufferedReader, start: int, end: int) -> int:
    """How many bytes of ``f`` before ``end`` (and after ``start``) follow its last newline."""
    pos = end
    while pos > start:
        step = min(CHUNK, pos - start)
        f.seek(pos - step)
        j = f.read(step).rfind(b"\n")
        if j >= 0:
            return end - (pos - step + j + 1)
        pos -= step
    return end - start


def nothing_left(path: Path, done: int) -> bool:
    """Whether ``path`` holds nothing after ``done`` but complete blank and comment lines."""
    try:
        with open(path, "rb") as f:
            f.seek(done)
            rest = f.read(CHUNK + 1)
    except OSError:
        return False
    if len(rest) > CHUNK or (rest and not rest.endswith(b"\n")):
        return False
    return not any(is_job_line(line) for line in rest.split(b"\n"))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
