"""Where each job's stdout and stderr go, and packing them once the job has ended.

No process sits between a job and its output: the job runner opens the job's two files
for it (``posix_spawn`` file actions).  A reader that dies (a pipe) could SIGPIPE a job; a
file cannot.

By default the files are *slots*, ``JOBFILE.HOST.output/slot.K.out`` and ``.err``, reused
from job to job: creating a file costs a fraction of a millisecond on a journaling file
system, reopening one with O_TRUNC a few microseconds.  ``.jobids`` names each job's slot.
Once a job's end is on the ledger, its output is packed into ``packed.K`` (framed records,
``pbq.sidefiles.output_frame``; a new K every ``PACK_ROTATE`` bytes), so tens of thousands
of ended jobs leave no small files.  Crash-safe in this order: append the frames, fsync
(with ``[jobfile] fsync``), append ``#released N...`` to ``.jobids``, and only then hand the
slot to another job.  A reader takes a slot's bytes as the job's only if the job is not
released after the read.  After a crash the slots of unreleased ended jobs are packed at
the next start; the next writer cuts off a torn last frame.  A slot is reused only if no
process of its job can be left to write to it (the job's cgroup was emptied at its end);
otherwise its files are removed, and its next job gets new ones.  Output over
``PACK_MAX_FILE`` is not small: its slot is renamed ``HOST.N.out``/``.err`` and stays a
file.  Packing runs at ticks within a time budget and at exit.

``--output-dir DIR`` keeps per-job files ``HOST.N.out``/``.err`` in DIR, unpacked (as do
jobs of an older pbq, packed at the next start); ``--output-dir -`` lets jobs inherit
the scheduler's stdout/stderr.  Either way ``JOBFILE.HOST.jobids`` maps each job id to its
line's Seq, for ``pbq log``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..errors import PbqError
from ..sidefiles import (
    PACK_PREFIX,
    SLOT_PREFIX,
    Attempt,
    jobids_header,
    jobids_line,
    output_frame,
    pack_files,
    read_frames,
    read_jobids,
    released_line,
)
from ..statefiles import HostFiles, append_bytes
from .ledger import Log

PACK_ROTATE = 64 << 20  # bytes: a new packed.K after this
PACK_MAX_FILE = 1 << 20  # bytes: larger output files stay files
PACK_BUDGET = 0.02  # seconds of packing per tick (the rest waits for the next tick)
STREAMS = ("out", "err")
JOBIDS_TAIL = 1 << 20  # bytes of .jobids read back at a start to find the slots' owners


@dataclass(frozen=True)
class Ended:
    """A job whose output is to be packed."""

    n: int  # job id HOST.N
    seq: int  # its line's Seq
    slot: int | None  # its slot; None: per-job files HOST.N.out/.err
    reusable: bool  # no process of the job can be left to write to the slot
    empty: bool = False  # it wrote nothing (seen at its end)


class JobOutput:
    def __init__(self, files: HostFiles, where: Path | None, inherit: bool, fsync: bool,
                 log: Log) -> None:
        self.files = files
        self.host = files.host
        self.packing = where is None and not inherit  # only the host's own directory is packed
        self.home = files.path("output")
        self.slot_base = f"{self.home}/{SLOT_PREFIX}"
        self.directory: Path | None = None if inherit else (where or self.home)
        self.fsync = fsync
        self.log = log
        self.index_fd: int | None = None
        self.queue: deque[Ended] = deque()  # ended jobs to pack
        self.seq_of: dict[int, int] = {}  # N -> Seq, of jobs started by this run
        self.slot_of: dict[int, int] = {}  # N -> slot of jobs that hold one
        self.sizes: dict[int, tuple[int, int]] = {}  # N -> output sizes, seen at its end
        self.free: list[int] = []  # slots no job holds (their output is packed)
        self.next_slot = 1
        self.pack_path: Path | None = None
        self.complained = False

    # -- set-up ----------------------------------------------------------------------

    def open(self, live: set[int]) -> None:
        """Create the directory, open ``.jobids``; find each slot's last owner, and queue
        leftovers of ended jobs (not in ``live``, the N of jobs this host still holds)."""
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise PbqError(f"cannot create the output directory: {err.strerror}",
                               path=str(self.directory)) from None
        if self.packing:
            self._leftovers(live)  # before this run's header: the slots' owners
        try:
            self.index_fd = os.open(self.files.path("jobids"),
                                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            os.write(self.index_fd, jobids_header(self.directory))
        except OSError as err:
            raise PbqError(f"cannot write: {err.strerror}",
                           path=str(self.files.path("jobids"))) from None

    def _leftovers(self, live: set[int]) -> None:
        prefix = self.host + "."
        per_job: set[int] = set()
        slots: set[int] = set()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.home):
                if name.startswith(prefix) and name.endswith((".out", ".err")):
                    n = name[len(prefix):-4]
                    if n.isdigit() and int(n) not in live:
                        per_job.add(int(n))
                elif name.startswith(SLOT_PREFIX) and name.endswith((".out", ".err")):
                    num = name[len(SLOT_PREFIX):-4]
                    if num.isdigit():
                        slots.add(int(num))
        if not per_job and not slots:
            return
        attempts = self._recent_attempts(slots, per_job)
        seqs = {a.n: a.seq for a in attempts}
        self.queue.extend(Ended(n, seqs.get(n, 0), None, False) for n in sorted(per_job))
        owner = {a.slot: a for a in attempts if a.slot is not None}  # the last one wins
        for k in sorted(slots):
            a = owner.get(k)
            if a is not None and a.n in live:
                self.slot_of[a.n] = k  # an adopted job writes to it still
            elif a is not None and not a.released:
                # Ended while no scheduler ran (or before its output was packed): pack it;
                # its processes may be anywhere, so the slot is not reused.
                self.queue.append(Ended(a.n, a.seq, k, False))
            else:
                for name in self._names(0, k):  # free slots are kept empty (no O_TRUNC later)
                    try:
                        os.truncate(name, 0)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        with contextlib.suppress(OSError):
                            os.unlink(name)
                self.free.append(k)
        self.next_slot = max(slots, default=0) + 1

    def _recent_attempts(self, slots: set[int], per_job: set[int]) -> list[Attempt]:
        """The attempts at the end of ``.jobids``: enough to name each slot's last owner
        (the file grows with every job; its head is not needed)."""
        path = self.files.path("jobids")
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                tail = JOBIDS_TAIL
                while True:
                    f.seek(max(0, size - tail))
                    data = f.read()
                    if size > tail:
                        data = data[data.find(b"\n") + 1:]  # a torn first line
                    attempts = read_jobids(path, self.host, data=data)
                    owned = {a.slot for a in attempts}
                    named = {a.n for a in attempts}
                    if tail >= size or (slots <= owned and per_job <= named):
                        return attempts
                    tail *= 4
        except OSError:
            return []

    def close(self) -> None:
        self.pack(None)
        if not self.queue:  # packed and released: a stopped host leaves only packed.K
            for k in self.free:
                for stream in STREAMS:
                    with contextlib.suppress(OSError):
                        os.unlink(self.home / f"{SLOT_PREFIX}{k}.{stream}")
            self.free.clear()
        if self.index_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.index_fd)
            self.index_fd = None

    # -- per job -------------------------------------------------------------------------

    def paths(self, n: int) -> tuple[str, str] | None:
        """The files job HOST.N writes its stdout and stderr to; None: inherited."""
        if self.directory is None:
            return None
        if not self.packing:
            return self._names(n, None)
        k = self.slot_of.get(n)
        if k is None:
            if self.free:
                k = self.free.pop()
            else:
                k, self.next_slot = self.next_slot, self.next_slot + 1
            self.slot_of[n] = k
        return self._names(n, k)

    def truncates(self, n: int) -> bool:
        """Whether job HOST.N's files must be opened with O_TRUNC: a slot is empty already
        (kept so when freed), which spares the truncation on the path of every start."""
        return n not in self.slot_of

    def requested(self, jobs: list[tuple[int, int, float]]) -> None:
        """(N, Seq, time) of jobs whose start is about to be asked for: one append to
        ``.jobids``, before the request, so that a job that runs and ends while the
        scheduler dies is still found by its Seq (and its slot packed at the next start)."""
        jobs = [j for j in jobs if j[0] not in self.seq_of]  # a start taken back and asked again
        if self.index_fd is None or not jobs:
            return
        for n, seq, _ in jobs:
            self.seq_of[n] = seq
        data = b"".join(jobids_line(n, s, t, self.slot_of.get(n)) for n, s, t in jobs)
        try:
            os.write(self.index_fd, data)
        except OSError as err:
            self._complain(f"cannot write {self.files.path('jobids').name}: {err.strerror}")

    def not_started(self, ns: list[int]) -> None:
        """Jobs that did not start after all: their slots are released (they wrote nothing)
        and free again."""
        for n in ns:
            seq = self.seq_of.pop(n, 0)
            slot = self.slot_of.pop(n, None)
            if slot is not None and self.packing:
                self.queue.append(Ended(n, seq, slot, True, True))

    def _files(self, n: int, slot: int | None) -> list[tuple[str, Path]]:
        return [(s, Path(path)) for s, path in zip(STREAMS, self._names(n, slot), strict=True)]

    def _names(self, n: int, slot: int | None) -> tuple[str, str]:
        # Strings, not Paths: this runs for every job.
        if slot is not None:
            base = f"{self.slot_base}{slot}."
        else:
            base = f"{self.directory}/{self.host}.{n}."
        return base + "out", base + "err"

    def received(self, n: int) -> int:
        """Bytes a job wrote (stdout and stderr), for the joblog's Receive column."""
        if self.directory is None:
            return 0
        out, err = self._names(n, self.slot_of.get(n))
        try:
            size_out = os.stat(out).st_size
        except OSError:
            size_out = 0
        try:
            size_err = os.stat(err).st_size
        except OSError:
            size_err = 0
        self.sizes[n] = (size_out, size_err)
        return size_out + size_err

    def ended(self, n: int, reusable: bool) -> None:
        """A job's end is on the ledger: its output may be packed now.  ``reusable``: no
        process of it can be left (its cgroup is empty), so its slot may serve another job."""
        seq = self.seq_of.pop(n, 0)
        slot = self.slot_of.pop(n, None)
        sizes = self.sizes.pop(n, None)
        if self.packing:
            # A job that wrote nothing and left no process: nothing to read or stat again.
            empty = reusable and slot is not None and sizes == (0, 0)
            self.queue.append(Ended(n, seq, slot, reusable, empty))

    # -- packing ---------------------------------------------------------------------

    def pack(self, budget: float | None = PACK_BUDGET) -> None:
        """Pack queued jobs' output: append their frames, fsync, release them in
        ``.jobids``, then free their slots (remove per-job files)."""
        if not self.queue:
            return
        deadline = None if budget is None else time.monotonic() + budget
        remove: list[Path] = []
        empty: list[Path] = []
        frames: list[bytes] = []
        done: list[Ended] = []
        while self.queue and (deadline is None or time.monotonic() < deadline):
            e = self.queue.popleft()
            done.append(e)
            if e.empty:
                continue
            for stream, path in self._files(e.n, e.slot):
                try:
                    size = os.stat(path).st_size
                    if size > PACK_MAX_FILE:
                        if e.slot is not None:  # a large output stays a file of its own
                            os.rename(path, self.home / f"{self.host}.{e.n}.{stream}")
                        continue
                    data = path.read_bytes() if size else b""
                except OSError:
                    continue
                if data:
                    frames.append(output_frame(e.seq, f"{self.host}.{e.n}", stream, data))
                if e.slot is None or not e.reusable:
                    remove.append(path)
                elif data:
                    empty.append(path)  # a free slot is empty: its next job opens it as it is
        if frames and not self._append(b"".join(frames)):
            self.queue.extendleft(reversed(done))
            return
        slotted = [e for e in done if e.slot is not None]
        if slotted and self.index_fd is not None:
            try:
                os.write(self.index_fd, released_line(e.n for e in slotted))
            except OSError as err:
                self._complain(f"cannot write {self.files.path('jobids').name}: {err.strerror}")
                self.queue.extendleft(reversed(done))
                return
        for path in empty:
            try:
                os.truncate(path, 0)
            except OSError:
                remove.append(path)
        for path in remove:  # a slot's next job then gets a new file (O_CREAT)
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.free.extend(e.slot for e in slotted if e.slot is not None)

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
