"""Every ``JOBFILE.HOST.*`` record format, writer and reader side by side, and the one rule
that says whether a host's scheduler is alive.

Formats (``FORMAT_VERSION`` is the newest this pbq writes and reads):

``.pid``
    The first line is the bare pid (as PBQ and every daemon write it), then ``key=value``
    lines: ``start``, ``machine``, ``boot``, ``runner``, ``pidns``, ``epoch``, ``format``.
    Format 1 had positional lines instead: pid, start, machine, boot id, keeper pid.
``.exits``
    JSON lines, one per orphaned process that ended: ``pid``, ``start``, ``status`` (the raw
    wait status), ``time``, ``cpu``, ``maxrss``, ``job`` (the host's job number N it was
    started as, so that a job whose pid never reached the ledger is known by it; absent in
    older records), ``format``.  Format 1 had no ``format``.
``.status``
    One JSON object, the heartbeat, replaced whole every tick.
``.joblog``
    GNU Parallel's ``--joblog`` TSV (header, then one row per finished job).  Its layout is
    Parallel's, so it carries no format number.  Receive is the job's output in bytes
    (stdout and stderr), 0 where it is not kept.
``.jobids``
    Which job id each attempt of a line had, and where its output went: lines
    ``N SEQ START [K]`` (job id ``HOST.N``, the line's Seq, start time, and the output slot
    ``K`` when the job wrote to ``output/slot.K.out``/``.err``), after a line ``#output DIR``
    written at each scheduler start (``-``: output inherited, not kept).  ``#released N...``
    says those jobs' output is packed (or was empty): their slots may hold other jobs'
    output from then on.
``.cancel``
    ``pbq cancel``'s requests: one job number (the joblog's Seq) a line, appended.  The
    scheduler applies each to the job of that number whenever it holds one; numbers are
    never reused, so a request never needs to be taken back.
``.output/packed.K``
    Output of ended jobs, packed: frames ``#pbq-output 1 {"seq", "job", "stream",
    "bytes"}\n`` + the bytes + ``\n``; a torn last frame (a crash while appending) is cut
    off by the next writer and skipped by readers.

A record that says it is of a newer format raises FormatError instead of being guessed at:
a half-upgraded fleet must never corrupt a queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import PbqError
from .safety import UntrustedFile, read_trusted, read_trusted_json
from .sensors import boot_id, process_cmdline, process_start, same_process
from .statefiles import HostFiles, append_bytes, atomic_write, line_to_text, read_json

FORMAT_VERSION = 2
FINAL_STATES = ("exited", "terminated")  # a scheduler's last words in its .status
MIN_STALE_AFTER = 60.0  # seconds: a heartbeat younger than this is never stale
STALE_INTERVALS = 10  # ticks without a heartbeat before a remote host counts as stale


class FormatError(PbqError):
    """A file written by a newer pbq, in a format this one does not know."""


def _check_format(value: object, path: Path) -> int:
    """The record's format number (1 when it has none); FormatError when it is too new."""
    if value is None:
        return 1
    try:
        version = int(str(value))
    except ValueError:
        raise FormatError(f"unreadable format {value!r}", path=str(path)) from None
    if version > FORMAT_VERSION:
        raise FormatError(
            f"written in format {version} by a newer pbq; this pbq reads formats up to "
            f"{FORMAT_VERSION}: upgrade pbq on this machine before it touches this queue",
            path=str(path),
        )
    return version


def _float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value: object) -> int | None:
    f = _float(value)
    return None if f is None else int(f)


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _round_start(start: float | None) -> float | None:
    """Start times are compared to 1/100 s, the resolution process_start gives."""
    return None if start is None else round(start, 2)


# ------------------------------------------------------------------ .pid


def this_pidns() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``), or None where there is none."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class PidRecord:
    """Who holds a host: the scheduler's pid, start time, machine, boot and PID namespace.

    ``runner`` is the job runner, the parent of the jobs, which records their ends while
    no scheduler runs (format 1: the keeper); ``epoch`` counts the takeovers of the host.
    """

    pid: int
    start: float | None
    machine: str
    boot: str
    pidns: str | None
    runner: int | None
    epoch: int = 0

    @classmethod
    def current(cls, runner: int | None, epoch: int = 0) -> PidRecord:
        me = os.getpid()
        return cls(
            me, process_start(me), socket.gethostname(), boot_id(), this_pidns(), runner, epoch
        )


_PID_KEYS = ("start", "machine", "boot", "runner")  # format 1: lines 2-5, in this order


def write_pidfile(path: Path, rec: PidRecord, fsync: bool) -> None:
    lines = [
        str(rec.pid),
        f"start={'' if rec.start is None else rec.start}",
        f"machine={rec.machine}",
        f"boot={rec.boot}",
        f"runner={'' if rec.runner is None else rec.runner}",
        f"pidns={rec.pidns or ''}",
        f"epoch={rec.epoch}",
        f"format={FORMAT_VERSION}",
    ]
    atomic_write(path, ("\n".join(lines) + "\n").encode(), fsync=fsync)


def read_pidfile(path: Path) -> PidRecord | None:
    """The ``.pid`` record, or None when there is none (missing, empty, no pid).

    Lines after the first are ``key=value``; a line without ``=`` is positional, as in
    format 1 (start, machine, boot id, keeper pid), so old files read the same.
    """
    try:
        lines = path.read_text().split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        pid = int(lines[0])
    except ValueError:
        return None
    values: dict[str, str] = {}
    for i, line in enumerate(lines[1:]):
        key, eq, value = line.partition("=")
        if eq:
            values[key.strip()] = value.strip()
        elif i < len(_PID_KEYS) and line.strip():
            values.setdefault(_PID_KEYS[i], line.strip())
    _check_format(values.get("format"), path)
    return PidRecord(
        pid=pid,
        start=_float(values.get("start")),
        machine=values.get("machine", ""),
        boot=values.get("boot", ""),
        pidns=values.get("pidns") or None,
        runner=_int(values.get("runner")),
        epoch=_int(values.get("epoch")) or 0,
    )


# ------------------------------------------------------------------ .exits


@dataclass(frozen=True)
class ExitRecord:
    """How a job ended while no scheduler could take note, as the job runner reaped it."""

    pid: int
    start: float | None
    status: int  # the raw wait status
    time: float
    cpu: float
    maxrss: int  # bytes
    job: int | None = None  # job id HOST.N it was started as

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def signal(self) -> int:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else 0

    @property
    def key(self) -> tuple[int, float | None]:
        return (self.pid, _round_start(self.start))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "format": FORMAT_VERSION}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ExitRecord | None:
        pid, status = _int(obj.get("pid")), _int(obj.get("status"))
        if pid is None or status is None:
            return None
        return cls(
            pid,
            _float(obj.get("start")),
            status,
            _float(obj.get("time")) or 0.0,
            _float(obj.get("cpu")) or 0.0,
            _int(obj.get("maxrss")) or 0,
            _int(obj.get("job")),
        )


def append_exit_records(path: Path, records: Iterable[ExitRecord], fsync: bool = True) -> None:
    """Append the records with one write: all of them or, on failure, none."""
    data = b"".join(json.dumps(r.to_json()).encode() + b"\n" for r in records)
    if data:
        append_bytes(path, data, fsync=fsync)


def read_exit_records(
    path: Path, allow_group_write: bool = False
) -> dict[tuple[int, float | None], ExitRecord]:
    """The records of ``.exits`` keyed by ``(pid, start rounded to 1/100 s)``; a later record
    of the same process wins.  Torn and garbage lines are skipped.  A file someone else could
    have written is refused (UntrustedFile): it decides which jobs failed."""
    raw = read_trusted(path, "exit record file", allow_group_write)
    if raw is None:
        return {}
    out: dict[tuple[int, float | None], ExitRecord] = {}
    for line in raw.splitlines():
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue  # torn by a crash mid-write, or not ours
        if not isinstance(obj, dict):
            continue
        _check_format(obj.get("format"), path)
        rec = ExitRecord.from_json(obj)
        if rec is not None:
            out[rec.key] = rec
    return out


def exit_records_by_job(records: Iterable[ExitRecord]) -> dict[int, ExitRecord]:
    """The records that name their job, by its number N."""
    return {r.job: r for r in records if r.job is not None}


# ------------------------------------------------------------------ .status


@dataclass(frozen=True)
class HostStatus:
    """A scheduler's heartbeat.  The JSON keys are the field names (``pbq status --json``
    and scripts read them), plus ``format``."""

    host: str
    machine: str
    pid: int | None
    state: str | None  # running, stopped, quitting, terminating, exited, terminated
    time: float | None  # when it was written
    boot_id: str | None = None
    start: float | None = None
    runner_pid: int | None = None  # the job runner (format 1: keeper_pid, the keeper)
    pidns: str | None = None
    jobfile: str | None = None
    interval: float | None = None
    load: float | None = None
    foreign: float | None = None
    limit: float | None = None
    work_time: bool | None = None
    active_users: int | None = None
    running: int = 0
    stopped: int = 0
    stopped_by_user: int = 0
    claimed: int = 0
    done: int = 0
    failed: int = 0
    timed_out: int = 0  # jobs ended by [scheduler] timeout
    suspend_ended: int = 0  # jobs ended by [scheduler] max_suspend (their lines went back)
    epoch: int = 0  # the writer's ownership of the host: an older epoch's heartbeat is stale
    mem_available: int | None = None
    quitting: bool | None = None  # quit was asked for (the state may still say stopped)
    control_ack: str | None = None
    error: str | None = None
    started: float | None = None
    drm: str | None = None
    local_users: int | None = None  # of active_users: at this machine's seat or console
    remote_users: int | None = None  # of active_users: in remote sessions only
    sources: tuple[str, ...] | None = None  # the activity sources that answered
    last_success: float | None = None  # when a job of this host last ended well
    last_failure: float | None = None  # when a job of this host last failed
    quick_failures: int = 0  # jobs in a row that failed within [scheduler] quick_fail
    quarantined: bool | None = None  # taking no new jobs: its jobs only fail, others' succeed
    quarantined_until: float | None = None
    quarantines: int = 0  # times this host was quarantined
    lock_wait: tuple[int, ...] | None = None  # pbq.lockstats histogram: waits for the lock
    lock_wait_start: tuple[int, ...] | None = None  # ... at start-up (kept out of lock_wait)
    lock_hold: tuple[int, ...] | None = None  # ... and how long it was held
    version: int = 1  # the layout's number before ``format`` existed; kept for old readers
    format: int = field(default=FORMAT_VERSION, compare=False)

    @property
    def final(self) -> bool:
        """The scheduler said it has exited."""
        return self.state in FINAL_STATES

    @classmethod
    def of_this_process(cls, **values: Any) -> HostStatus:
        """A heartbeat of the running scheduler: its identity filled in, the rest given."""
        me = os.getpid()
        return cls(
            machine=socket.gethostname(),
            boot_id=boot_id(),
            pid=me,
            start=process_start(me),
            pidns=this_pidns(),
            **values,
        )

    def to_json(self) -> dict[str, Any]:
        # Every field is a number, a string or a tuple of them: a shallow copy is the same
        # as asdict's deep one, at a twentieth of its cost (it runs every tick).
        return {name: getattr(self, name) for name in STATUS_KEYS}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> HostStatus:
        """Lenient: a missing or mistyped value reads as unknown (None), a count as 0."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = obj.get(f.name)
            if f.type == "int":  # counts: a missing one is the default
                n = _int(raw)
                values[f.name] = f.default if n is None else n
            else:
                values[f.name] = _STATUS_READERS[str(f.type)](raw)
        values["format"] = _int(obj.get("format")) or 1  # no number at all: format 1
        return cls(**values)


# How HostStatus.from_json reads a value of each field type (annotations are strings here).
_STATUS_READERS: dict[str, Callable[[object], object]] = {
    "str": lambda v: "" if v is None else str(v),
    "str | None": _str,
    "int | None": _int,
    "float | None": _float,
    "bool | None": lambda v: v if isinstance(v, bool) else None,
    "tuple[str, ...] | None": lambda v: tuple(str(x) for x in v) if isinstance(v, list) else None,
    "tuple[int, ...] | None": lambda v: (
        tuple(n for n in (_int(x) for x in v) if n is not None) if isinstance(v, list) else None
    ),
}


STATUS_KEYS = tuple(f.name for f in fields(HostStatus))


def write_status(path: Path, st: HostStatus, fsync: bool = False) -> None:
    """The heartbeat, replaced every tick; volatile: after a crash of the machine it may be
    empty, which readers take as no heartbeat."""
    data = json.dumps(st.to_json(), separators=(",", ":")).encode() + b"\n"
    atomic_write(path, data, fsync=fsync, volatile=True)


def read_status(path: Path) -> HostStatus | None:
    """The heartbeat, or None when there is none (missing, empty, torn, not an object)."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        return None
    _check_format(obj.get("format"), path)
    return HostStatus.from_json(obj)


def heartbeat_age(status: HostStatus | None, now: float) -> float | None:
    if status is None or status.time is None:
        return None
    return max(0.0, now - status.time)


# ------------------------------------------------------------------ .joblog

JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


@dataclass(frozen=True)
class JoblogRow:
    seq: int
    host: str
    start: float
    runtime: float
    exitval: int
    signal: int
    command: str

    @property
    def end(self) -> float:
        return self.start + self.runtime

    @property
    def failed(self) -> bool:
        return self.exitval != 0 or self.signal != 0


def joblog_row(
    seq: int,
    host: str,
    start: float,
    runtime: float,
    exitval: int,
    signal: int,
    command: bytes,
    receive: int = 0,
) -> str:
    """One TSV row; tabs and newlines of the command become spaces (a row is one line)."""
    cmd = line_to_text(command).replace("\t", " ").replace("\n", " ")
    return (f"{seq}\t{host}\t{start:.3f}\t{runtime:.3f}\t0\t{receive}\t{exitval}\t{signal}"
            f"\t{cmd}\n")


# ------------------------------------------------------------------ job output


OUTPUT_HEADER = "#output "
PACK_MAGIC = b"#pbq-output 1 "
PACK_PREFIX = "packed."
SLOT_PREFIX = "slot."
RELEASED = b"#released "


@dataclass(frozen=True)
class Attempt:
    """One attempt of a line on a host, from ``.jobids``."""

    host: str
    n: int  # job id HOST.N
    seq: int  # the line's Seq
    start: float
    directory: str | None  # where its HOST.N.out/.err are; None: inherited, not kept
    slot: int | None = None  # it wrote to slot.K.out/.err in the directory
    released: bool = False  # its output is packed (or empty); the slot is not its any more

    @property
    def job_id(self) -> str:
        return f"{self.host}.{self.n}"

    def slot_file(self, stream: str) -> Path | None:
        if self.slot is None or self.directory is None:
            return None
        return Path(self.directory) / f"{SLOT_PREFIX}{self.slot}.{stream}"


def jobids_header(directory: Path | None) -> bytes:
    return f"{OUTPUT_HEADER}{directory if directory is not None else '-'}\n".encode(
        "utf-8", "surrogateescape")


def jobids_line(n: int, seq: int, start: float, slot: int | None = None) -> bytes:
    if slot is None:
        return f"{n} {seq} {start:.3f}\n".encode()
    return f"{n} {seq} {start:.3f} {slot}\n".encode()


def released_line(ns: Iterable[int]) -> bytes:
    return RELEASED + " ".join(map(str, ns)).encode() + b"\n"


def read_jobids(path: Path, host: str, seq: int | None = None,
                data: bytes | None = None) -> list[Attempt]:
    """The attempts ``.jobids`` lists (only those of ``seq`` if given), in the order they
    started; torn lines skipped.  ``data``: the file's bytes, if read already."""
    if data is None:
        try:
            data = path.read_bytes()
        except OSError:
            return []
    out: list[Attempt] = []
    released: set[int] = set()
    directory: str | None = None
    want = None if seq is None else f" {seq} ".encode()
    for raw in data.split(b"\n"):
        if raw.startswith(b"#"):
            if raw.startswith(OUTPUT_HEADER.encode()):
                d = raw[len(OUTPUT_HEADER):].decode("utf-8", "surrogateescape")
                directory = None if d == "-" else d
            elif raw.startswith(RELEASED):
                released.update(int(w) for w in raw[len(RELEASED):].split() if w.isdigit())
            continue
        if want is not None and want not in raw:
            continue
        parts = raw.split()
        if len(parts) not in (3, 4):
            continue
        try:
            slot = int(parts[3]) if len(parts) == 4 else None
            out.append(Attempt(host, int(parts[0]), int(parts[1]), float(parts[2]), directory,
                               slot))
        except ValueError:
            continue
    return [dataclasses.replace(a, released=a.n in released) if a.slot is not None else a
            for a in out if seq is None or a.seq == seq]


def output_frame(seq: int, job_id: str, stream: str, data: bytes) -> bytes:
    head = json.dumps({"seq": seq, "job": job_id, "stream": stream, "bytes": len(data)})
    return PACK_MAGIC + head.encode() + b"\n" + data + b"\n"


def read_frames(path: Path) -> Iterable[tuple[dict[str, Any], int, int]]:
    """(header, offset of the bytes, end of the frame) of each whole frame, in order; stops at
    a torn or garbled frame."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return
    with f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            f.seek(pos)
            line = f.readline(4096)
            if not line.startswith(PACK_MAGIC) or not line.endswith(b"\n"):
                return
            try:
                head = json.loads(line[len(PACK_MAGIC):])
                n = int(head["bytes"])
            except (ValueError, KeyError, TypeError):
                return
            data_at = pos + len(line)
            end = data_at + n + 1
            if end > size:
                return
            f.seek(end - 1)
            if f.read(1) != b"\n":
                return
            yield head, data_at, end
            pos = end


def pack_files(directory: Path) -> list[Path]:
    """The packed output streams in a host's output directory, oldest first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    nums = sorted(int(n[len(PACK_PREFIX):]) for n in names
                  if n.startswith(PACK_PREFIX) and n[len(PACK_PREFIX):].isdigit())
    return [directory / f"{PACK_PREFIX}{k}" for k in nums]


def append_joblog_rows(path: Path, rows: Sequence[str], fsync: bool = False) -> None:
    """Append rows made by joblog_row, with the header first when the file is new."""
    data = "".join(rows)
    if not data:
        return
    if not path.exists():
        data = JOBLOG_HEADER + data
    append_bytes(path, data.encode("utf-8", "surrogateescape"), fsync=fsync)


def parse_joblog_line(line: str) -> JoblogRow | None:
    """A row, or None for the header, a torn line or garbage."""
    parts = line.rstrip("\r\n").split("\t", 8)
    if len(parts) < 9 or parts[0] == "Seq":
        return None
    try:
        seq, start, runtime = int(parts[0]), float(parts[2]), float(parts[3])
        return JoblogRow(seq, parts[1], start, runtime, int(parts[6]), int(parts[7]), parts[8])
    except ValueError:
        return None


def read_joblog(path: Path) -> list[JoblogRow]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    rows = (parse_joblog_line(ln) for ln in data.decode("utf-8", "replace").split("\n"))
    return [r for r in rows if r is not None]


def recent_joblog_rows(path: Path, since: float) -> list[JoblogRow]:
    """Rows of ``path`` that ended at or after ``since``, reading only as much of the file's
    end as needed (rows are appended as jobs end)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return []
    with f:
        size = os.fstat(f.fileno()).st_size
        chunk = 64 << 10
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read(size - start)
            lines = data.decode("utf-8", "replace").split("\n")
            if start > 0:
                lines = lines[1:]  # probably cut
            rows = [r for r in map(parse_joblog_line, lines) if r is not None]
            if start == 0 or (rows and rows[0].end < since - 60):
                return [r for r in rows if r.end >= since]
            chunk *= 4


def first_joblog_start(path: Path) -> float | None:
    try:
        with open(path, "rb") as f:
            head = f.read(8192).decode("utf-8", "replace").split("\n")
    except OSError:
        return None
    for ln in head[:-1] if len(head) > 1 else head:
        row = parse_joblog_line(ln)
        if row is not None:
            return row.start
    return None


# ------------------------------------------------------------------ .control

CONTROL_COMMANDS = ("stop", "cont", "quit", "term", "kill")


class ControlInbox:
    """A host's ``.control`` requests, as the scheduler takes them: each is read (not
    through a symlink, only if it is yours and closed to others), removed, and returned
    when valid; anything else is logged once and ignored."""

    def __init__(self, path: Path, allow_group_write: bool) -> None:
        self.path = path
        self.allow_group_write = allow_group_write
        self._refused: tuple[int, int, int] | None = None  # (dev, ino, mtime) said once

    def take(self, log: Callable[[str], None]) -> dict[str, Any] | None:
        try:
            st = os.lstat(self.path)
        except OSError:
            return None
        try:
            req = read_trusted_json(self.path, "control request", self.allow_group_write)
        except PbqError as err:
            why = err.reason if isinstance(err, UntrustedFile) else err.message
            self._ignore(st, log, why)
            return None
        self._unlink()
        if not isinstance(req, dict) or req.get("command") not in CONTROL_COMMANDS:
            log(f"ignoring unreadable control request {self.path.name}")
            return None
        return req

    def _ignore(self, st: os.stat_result, log: Callable[[str], None], why: str) -> None:
        seen = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if seen != self._refused:  # another user's file we may not remove: say it once
            log(f"ignoring control request {self.path.name}: {why}")
            self._refused = seen
        self._unlink()

    def _unlink(self) -> None:
        # In a sticky directory another user's file cannot be removed; it is ignored.
        with contextlib.suppress(OSError):
            os.unlink(self.path)


# ------------------------------------------------------------------ .cancel


def request_cancel(path: Path, seq: int, allow_group_write: bool) -> None:
    """Ask the host's scheduler to cancel job number ``seq`` (one write: appends from
    several ``pbq cancel`` at once do not interleave)."""
    mode = 0o660 if allow_group_write else 0o600
    append_bytes(path, f"{seq}\n".encode(), fsync=True, mode=mode)


class CancelInbox:
    """A host's ``.cancel`` requests as its scheduler reads them: every number once, the
    first time from the start of the file (a request made while no scheduler ran counts)."""

    def __init__(self, path: Path, allow_group_write: bool) -> None:
        self.path = path
        self.allow_group_write = allow_group_write
        self._seen: tuple[int, int, int] | None = None  # (ino, size, mtime) last read
        self._refused: tuple[int, int, int] | None = None

    def take(self, log: Callable[[str], None]) -> set[int]:
        """Every number asked for; empty when the file has not changed since the last call."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return set()
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return set()
        try:
            data = read_trusted(self.path, "cancel requests", self.allow_group_write) or b""
        except PbqError as err:
            if seen != self._refused:  # someone else's file: said once, never obeyed
                why = err.reason if isinstance(err, UntrustedFile) else err.message
                log(f"ignoring cancel requests {self.path.name}: {why}")
                self._refused = seen
            return set()
        self._seen = seen
        # A torn last line (no newline yet) is read again next time.
        return {int(w) for w in data.split(b"\n")[:-1] if w.strip().isdigit()}


# ------------------------------------------------------------------ liveness


class Liveness(enum.Enum):
    ALIVE = "alive"
    STALE = "stale"  # on another machine, boot or PID namespace, and silent: may be alive
    DEAD = "dead"


@dataclass(frozen=True)
class HostLiveness:
    state: Liveness
    reason: str
    exact: bool  # decided by looking at the process itself (same machine, boot, namespace)
    heartbeat_age: float | None = None

    @property
    def alive(self) -> bool:
        return self.state is Liveness.ALIVE


@dataclass(frozen=True)
class Probe:
    """What liveness needs to know about this machine and its processes (injectable)."""

    machine: str
    boot: str
    pidns: str | None
    same_process: Callable[[int, float | None], bool]
    cmdline: Callable[[int], Sequence[str]]

    @classmethod
    def system(cls) -> Probe:
        return cls(socket.gethostname(), boot_id(), this_pidns(), same_process, process_cmdline)


def stale_after(interval: float | None) -> float:
    """Seconds of silence after which a scheduler elsewhere counts as stale."""
    return max(STALE_INTERVALS * (interval or 1.0), MIN_STALE_AFTER)


def is_local(rec: PidRecord, probe: Probe | None = None) -> bool:
    """The pid is one this process can look at: same machine, boot and PID namespace.

    A format-1 record has no namespace; machine and boot decide, as they did then.
    """
    p = probe or Probe.system()
    same_ns = rec.pidns is None or rec.pidns == p.pidns
    return rec.machine == p.machine and rec.boot == p.boot and same_ns


def looks_like_scheduler(
    pid: int, jobfile: Path, cmdline: Callable[[int], Sequence[str]] = process_cmdline
) -> bool:
    cmd = " ".join(cmdline(pid))
    return "pbq" in cmd and jobfile.name in cmd


def _same_run(status: HostStatus, rec: PidRecord) -> bool:
    """The heartbeat was written by the scheduler of the pid file (not an earlier run)."""
    if status.pid != rec.pid or (status.machine and status.machine != rec.machine):
        return False
    return status.start is None or rec.start is None or abs(status.start - rec.start) <= 0.05


def liveness(
    pid: PidRecord | None,
    status: HostStatus | None,
    now: float,
    jobfile: Path,
    *,
    probe: Probe | None = None,
    threshold: float | None = None,
) -> HostLiveness:
    """Is the host's scheduler alive?  The one rule every command uses.

    On this machine, boot and PID namespace the answer is exact: alive iff the recorded
    process runs, with its start time, and is a pbq scheduler for ``jobfile`` -- else dead
    at once (a restart right after kill -9 is never refused).  Elsewhere only the heartbeat
    can tell: alive while younger than ``threshold`` (default ``stale_after(interval)``),
    stale after that, dead once it says the scheduler exited.
    """
    if pid is None:
        return HostLiveness(Liveness.DEAD, "not running (no .pid file)", exact=False)
    p = probe or Probe.system()
    if is_local(pid, p):
        if not p.same_process(pid.pid, pid.start):
            return HostLiveness(Liveness.DEAD, f"pid {pid.pid} is gone", exact=True)
        if not looks_like_scheduler(pid.pid, jobfile, p.cmdline):
            why = f"pid {pid.pid} is not a pbq scheduler for {jobfile.name}"
            return HostLiveness(Liveness.DEAD, why, exact=True)
        return HostLiveness(Liveness.ALIVE, f"pid {pid.pid} is running", exact=True)
    where = f"pid {pid.pid} on machine {pid.machine or '?'}"
    heartbeat = status if status is not None and _same_run(status, pid) else None
    if heartbeat is not None and heartbeat.final:
        return HostLiveness(Liveness.DEAD, f"{where} said it {heartbeat.state}", exact=False)
    limit = threshold
    if limit is None:
        limit = stale_after(heartbeat.interval if heartbeat else None)
    if heartbeat is not None and heartbeat.time is not None:
        age = max(0.0, now - heartbeat.time)
        said = f"heartbeat {age:.0f} s ago"
    elif pid.start is not None:  # started, not yet beating: its start time stands in
        age = max(0.0, now - pid.start)
        said = f"no heartbeat yet, started {age:.0f} s ago"
    else:
        return HostLiveness(Liveness.STALE, f"{where}: no heartbeat", exact=False)
    state = Liveness.ALIVE if age < limit else Liveness.STALE
    return HostLiveness(state, f"{where}: {said}", exact=False, heartbeat_age=age)


def host_liveness(
    files: HostFiles, now: float, *, threshold: float | None = None
) -> tuple[PidRecord | None, HostStatus | None, HostLiveness]:
    """Read a host's ``.pid`` and ``.status`` and judge them."""
    rec = read_pidfile(files.pid)
    status = read_status(files.status)
    return rec, status, liveness(rec, status, now, files.jobfile, threshold=threshold)
