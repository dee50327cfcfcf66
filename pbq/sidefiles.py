"""(temporary shim; replaced by the side-file formats module)"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .sensors import boot_id, process_start
from .statefiles import append_bytes, atomic_write

FORMAT_VERSION = 2


def _pidns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class PidRecord:
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
        return cls(me, process_start(me), socket.gethostname(), boot_id(), _pidns(), runner, epoch)


def write_pidfile(path: Path, rec: PidRecord, fsync: bool) -> None:
    body = f"{rec.pid}\n{rec.start}\n{rec.machine}\n{rec.boot}\n{rec.runner or ''}\n"
    atomic_write(path, body.encode(), fsync=fsync)


def read_pidfile(path: Path) -> PidRecord | None:
    try:
        lines = path.read_text().split("\n")
        pid = int(lines[0])
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        return None
    rest = [*lines[1:], "", "", "", ""]
    try:
        start = float(rest[0]) if rest[0].strip() not in ("", "None") else None
    except ValueError:
        start = None
    try:
        runner = int(rest[3]) if rest[3].strip() else None
    except ValueError:
        runner = None
    return PidRecord(pid, start, rest[1].strip(), rest[2].strip(), None, runner)


@dataclass(frozen=True)
class ExitRecord:
    pid: int
    start: float | None
    status: int
    time: float
    cpu: float
    maxrss: int

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def signal(self) -> int:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else 0


def append_exit_records(path: Path, records: list[ExitRecord], fsync: bool = True) -> None:
    data = b"".join(
        json.dumps({"format": FORMAT_VERSION, "pid": r.pid, "start": r.start, "status": r.status,
                    "time": r.time, "cpu": r.cpu, "maxrss": r.maxrss}).encode() + b"\n"
        for r in records
    )
    append_bytes(path, data, fsync=fsync)


def read_exit_records(path: Path) -> dict[tuple[int, float | None], ExitRecord]:
    out: dict[tuple[int, float | None], ExitRecord] = {}
    try:
        raw = path.read_bytes()
    except OSError:
        return out
    for line in raw.splitlines():
        try:
            d = json.loads(line)
            start = None if d.get("start") is None else round(float(d["start"]), 2)
            rec = ExitRecord(int(d["pid"]), start, int(d.get("status", 0)), float(d.get("time", 0)),
                             float(d.get("cpu", 0)), int(d.get("maxrss", 0)))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        out[(rec.pid, start)] = rec
    return out
