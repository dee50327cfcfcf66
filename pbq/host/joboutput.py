"""Where each job's stdout and stderr go, and packing them once the job has ended.

No process sits between a job and its output: the job runner opens ``HOST.N.out`` and
``HOST.N.err`` for the job itself (``posix_spawn`` file actions), by default in
``JOBFILE.HOST.output/``.  A reader that dies (a pipe) could SIGPIPE a job; a file cannot.

Once a job's end is on the ledger, its files are packed into ``JOBFILE.HOST.output/
packed.K`` (framed records, ``pbq.sidefiles.output_frame``; a new K every ``PACK_ROTATE``
bytes), so tens of thousands of ended jobs do not leave tens of thousands of small files.
Crash-safe in this order: append the frames, fsync (with ``[jobfile] fsync``), then remove the
files.  After a crash the files, the frames, or both exist; readers prefer the files, and the
next writer cuts off a torn last frame.  Files over ``PACK_MAX_FILE`` are not small: they
stay as they are.  Packing runs at ticks within a time budget and at exit; files left by a
crash or by jobs that ended while no scheduler ran are packed at the next start.

``--output-dir DIR`` keeps the files in DIR, unpacked; ``--output-dir -`` lets jobs inherit
the scheduler's stdout/stderr.  Either way ``JOBFILE.HOST.jobids`` maps each job id to its
line's Seq, for ``pbq log``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from pathlib import Path

from ..errors import PbqError
from ..sidefiles import (
    PACK_PREFIX,
    jobids_header,
    jobids_line,
    output_frame,
    pack_files,
    read_frames,
)
from ..statefiles import HostFiles, append_bytes
from .ledger import Log

PACK_ROTATE = 64 << 20  # bytes: a new packed.K after this
PACK_MAX_FILE = 1 << 20  # bytes: larger output files stay files
PACK_BUDGET = 0.02  # seconds of packing per tick (the rest waits for the next tick)
STREAMS = ("out", "err")


class JobOutput:
    def __init__(self, files: HostFiles, where: Path | None, inherit: bool, fsync: bool,
                 log: Log) -> None:
        self.files = files
        self.host = files.host
        self.packing = where is None and not inherit  # only the host's own directory is packed
        self.home = files.path("output")
        self.directory: Path | None = None if inherit else (where or self.home)
        self.fsync = fsync
        self.log = log
        self.index_fd: int | None = None
        self.queue: deque[tuple[int, int]] = deque()  # (N, Seq) of ended jobs to pack
        self.seq_of: dict[int, int] = {}  # N -> Seq, of jobs started by this run
        self.pack_path: Path | None = None
        self.complained = False

    # -- set-up ----------------------------------------------------------------------

    def open(self, live: set[int]) -> None:
        """Create the directory, open ``.jobids``; queue leftovers of ended jobs (not in
        ``live``, the N of jobs this host still holds) for packing."""
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise PbqError(f"cannot create the output directory: {err.strerror}",
                               path=str(self.directory)) from None
        try:
            self.index_fd = os.open(self.files.path("jobids"),
                                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            os.write(self.index_fd, jobids_header(self.directory))
        except OSError as err:
            raise PbqError(f"cannot write: {err.strerror}",
                           path=str(self.files.path("jobids"))) from None
        if self.packing:
            self._leftovers(live)

    def _leftovers(self, live: set[int]) -> None:
        prefix = self.host + "."
        found: set[int] = set()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.home):
                if name.startswith(prefix) and name.endswith((".out", ".err")):
                    n = name[len(prefix):-4]
                    if n.isdigit() and int(n) not in live:
                        found.add(int(n))
        if not found:
            return
        from ..sidefiles import read_jobids

        seqs = {a.n: a.seq for a in read_jobids(self.files.path("jobids"), self.host)}
        self.queue.extend((n, seqs.get(n, 0)) for n in sorted(found))

    def close(self) -> None:
        self.pack(None)
        if self.index_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.index_fd)
            self.index_fd = None

    # -- per job -------------------------------------------------------------------------

    def started(self, jobs: list[tuple[int, int, float]]) -> None:
        """(N, Seq, start time) of jobs just started: one append to ``.jobids``."""
        if self.index_fd is None or not jobs:
            return
        for n, seq, _ in jobs:
            self.seq_of[n] = seq
        try:
            os.write(self.index_fd, b"".join(jobids_line(n, s, t) for n, s, t in jobs))
        except OSError as err:
            self._complain(f"cannot write {self.files.path('jobids').name}: {err.strerror}")

    def received(self, n: int) -> int:
        """Bytes a job wrote (stdout and stderr), for the joblog's Receive column."""
        if self.directory is None:
            return 0
        total = 0
        base = f"{self.directory}/{self.host}.{n}."
        for stream in STREAMS:
            with contextlib.suppress(OSError):
                total += os.stat(base + stream).st_size
        return total

    def ended(self, n: int) -> None:
        """A job's end is on the ledger: its files may be packed now."""
        if self.packing:
            self.queue.append((n, self.seq_of.pop(n, 0)))
        else:
            self.seq_of.pop(n, None)

    # -- packing ---------------------------------------------------------------------

    def pack(self, budget: float | None = PACK_BUDGET) -> None:
        """Pack queued jobs' files: append their frames, fsync, then remove them."""
        if not self.queue:
            return
        deadline = None if budget is None else time.monotonic() + budget
        done: list[Path] = []
        frames: list[bytes] = []
        while self.queue and (deadline is None or time.monotonic() < deadline):
            n, seq = self.queue.popleft()
            for stream in STREAMS:
                path = self.home / f"{self.host}.{n}.{stream}"
                try:
                    size = os.stat(path).st_size
                    if size == 0:
                        os.unlink(path)  # nothing to keep: no frame
                        continue
                    if size > PACK_MAX_FILE:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                frames.append(output_frame(seq, f"{self.host}.{n}", stream, data))
                done.append(path)
        if frames and not self._append(b"".join(frames)):
            return
        for path in done:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _append(self, data: bytes) -> bool:
        path = self._pack_path()
        try:
            append_bytes(path, data, fsync=self.fsync)  # all or nothing
            if os.path.getsize(path) >= PACK_ROTATE:
                self.pack_path = None
        except (OSError, PbqError) as err:
            self._complain(f"cannot pack job output into {path}: {err}")
            return False
        return True

    def _pack_path(self) -> Path:
        """The stream appended to: the newest, its torn tail (a crash) cut off once."""
        if self.pack_path is not None:
            return self.pack_path
        packs = pack_files(self.home)
        if packs and os.path.getsize(packs[-1]) < PACK_ROTATE:
            path = packs[-1]
            end = 0
            for frame in read_frames(path):
                end = frame[2]
            with contextlib.suppress(OSError):
                if os.path.getsize(path) != end:
                    os.truncate(path, end)
                    self.log(f"{path.name}: cut off a torn last record (a crash while packing)")
        else:
            k = int(packs[-1].name[len(PACK_PREFIX):]) + 1 if packs else 1
            path = self.home / f"{PACK_PREFIX}{k}"
        self.pack_path = path
        return path

    def _complain(self, message: str) -> None:
        if not self.complained:
            self.complained = True
            self.log(message + " (said once)")
