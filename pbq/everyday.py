"""Everyday commands: ``pbq wait``, ``pbq add``, ``pbq cancel`` and ``pbq log``.

They speak of jobs by their Seq, the number a job line has in the jobfile's history
(the joblog's first column, ``$PBQ_SEQ``; ``jobfile-append`` and ``pbq add`` print it).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cmdline import SHELL_WORDS
from .config import Config
from .errors import PbqError
from .host.jobs import JobBook, JobState
from .host.ledger import Ledger
from .jobfile import JobQueue, append_file
from .ops import LIVE_CONDITIONS, host_row, status_hosts
from .safety import check_input_file, check_jobfile_directory
from .sidefiles import Attempt, JoblogRow, pack_files, read_frames, read_jobids, read_joblog
from .statefiles import HostFiles, hosts_with

# ------------------------------------------------------------------ pbq add


def argv_line(argv: list[str]) -> bytes:
    """The job line that, run by pbq, executes exactly ``argv``: ``shlex.join``, with a
    first word that the shell would take for an assignment or a keyword quoted (quoted,
    it is a command name for /bin/sh as well)."""
    if not argv:
        raise PbqError("no command given (pbq add JOBFILE -- COMMAND [ARG...])")
    for arg in argv:
        if "\n" in arg or "\0" in arg or "\r" in arg:
            raise PbqError(f"an argument holds a newline or NUL (it would become two lines): "
                           f"{arg!r}")
    first = shlex.quote(argv[0])
    if first == argv[0] and ("=" in first or first in SHELL_WORDS):
        first = f"'{first}'"
    line = " ".join([first, *map(shlex.quote, argv[1:])])
    return line.encode("utf-8", "surrogateescape")


def stdin_records(data: bytes) -> list[str]:
    """``pbq add --stdin``: NUL-separated records if there is a NUL, else lines."""
    sep = b"\0" if b"\0" in data else b"\n"
    parts = data.split(sep)
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def queue_of(jobfile: Path, cfg: Config) -> JobQueue:
    group_ok = cfg.scheduler.allow_group_write
    check_jobfile_directory(jobfile, group_ok)
    check_input_file(jobfile, "jobfile", group_ok)
    return JobQueue(jobfile, lock=cfg.jobfile.lock, fsync=cfg.jobfile.fsync,
                    compact_after=cfg.jobfile.compact_after,
                    stale_lock_after=cfg.jobfile.stale_lock_after, allow_group_write=group_ok)


def add(jobfile: Path, cfg: Config, argv: list[str], records: list[str] | None) -> list[int]:
    """Append one line for ``argv`` (or one per record, appended to ``argv`` as its last
    argument); returns their numbers."""
    lines = [argv_line(argv)] if records is None else [argv_line([*argv, r]) for r in records]
    return append_file(queue_of(jobfile, cfg), lines)


# ------------------------------------------------------------------ what hosts hold


def held_jobs(jobfile: Path, host: str, cfg: Config) -> JobBook:
    """The jobs a host holds, from its write-ahead record (snapshot + journal): exact at
    every commit, unlike ``.running`` (written up to 50 ms later)."""
    files = HostFiles(jobfile, host)
    ledger = Ledger(files, JobBook(host), lambda *a, **k: None, False, time.monotonic)  # type: ignore[arg-type]
    if not files.state.exists():
        return ledger.book
    return ledger.load(cfg.scheduler.allow_group_write)


HOLDING = tuple(s for s in JobState if s is not JobState.SETTLING)


# ------------------------------------------------------------------ pbq wait


@dataclass
class WaitState:
    pending: int
    holding: dict[str, int] = field(default_factory=dict)  # host -> jobs it holds
    dead: list[str] = field(default_factory=list)  # hosts holding jobs whose scheduler is dead
    status: dict[str, str] = field(default_factory=dict)  # host -> condition

    @property
    def done(self) -> bool:
        return self.pending == 0 and not any(self.holding.values())


def wait_state(jobfile: Path, hostfile: Path | None, cfg: Config) -> WaitState:
    """Hosts first, then the pending lines: a line taken in between is held by then."""
    now = time.time()
    holding: dict[str, int] = {}
    dead: list[str] = []
    conds: dict[str, str] = {}
    for host in status_hosts(jobfile, hostfile):
        held = len(held_jobs(jobfile, host, cfg).in_state(*HOLDING))
        cond = str(host_row(jobfile, host, now)["state"])
        conds[host] = cond
        holding[host] = held
        if held and cond not in (*LIVE_CONDITIONS, "stale"):
            dead.append(host)
    with queue_of(jobfile, cfg).transaction(timeout=30) as txn:
        pending = txn.count_pending()
    return WaitState(pending, holding, dead, conds)


def final_attempts(jobfile: Path, hostfile: Path | None) -> dict[int, JoblogRow]:
    """The last attempt of every Seq in all hosts' joblogs."""
    last: dict[int, JoblogRow] = {}
    for host in status_hosts(jobfile, hostfile):
        for row in read_joblog(HostFiles(jobfile, host).joblog):
            have = last.get(row.seq)
            if have is None or (row.start, row.end) >= (have.start, have.end):
                last[row.seq] = row
    return last


def failed_seqs(jobfile: Path, hostfile: Path | None, first: int = 1) -> list[int]:
    return sorted(seq for seq, row in final_attempts(jobfile, hostfile).items()
                  if seq >= first and row.failed)


def wait(jobfile: Path, hostfile: Path | None, cfg: Config, timeout: float | None,
         progress: Callable[[WaitState], None] | None = None,
         every: float = 0.5) -> tuple[str, WaitState]:
    """Block until no line is pending and no host holds a job ("done"), a host holding
    jobs is dead ("dead"), or ``timeout`` passed ("timeout")."""
    deadline = None if timeout is None else time.monotonic() + timeout
    confirmed = False
    while True:
        st = wait_state(jobfile, hostfile, cfg)
        if progress is not None:
            progress(st)
        if st.done:
            if confirmed:
                return "done", st
            confirmed = True  # once more: a put-back (a retry) may have been in flight
            time.sleep(min(every, 0.2))
            continue
        confirmed = False
        if st.dead:
            return "dead", st
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout", st
        time.sleep(every if deadline is None else max(0.0, min(every, deadline - time.monotonic())))


# ------------------------------------------------------------------ pbq cancel


def cancel_pending(jobfile: Path, cfg: Config, seqs: set[int]) -> dict[int, bytes]:
    """Remove pending lines by Seq under the lock; returns what was removed."""
    with queue_of(jobfile, cfg).transaction(timeout=30) as txn:
        return txn.cancel_pending(seqs)


def holder_of(jobfile: Path, hostfile: Path | None, cfg: Config, seq: int) -> str | None:
    for host in status_hosts(jobfile, hostfile):
        for job in held_jobs(jobfile, host, cfg):
            if job.number == seq and job.state in HOLDING:
                return host
    return None


def cancel_running(jobfile: Path, cfg: Config, host: str, seq: int) -> str:
    """Cancel a job a scheduler holds, on this machine or any other: its number goes into
    ``JOBFILE.HOST.cancel``, which the scheduler reads at every tick; it ends the job whole
    (SIGTERM, SIGKILL after ``term_grace``; on a cluster host the DRM's cancel) and records
    it as cancelled (no retry, not in ``.error``).  Waits until the job has left the host's
    book; PbqError when the scheduler is down or has not ended it in time."""
    from .sidefiles import host_liveness, request_cancel

    files = HostFiles(jobfile, host)
    request_cancel(files.path("cancel"), seq, cfg.scheduler.allow_group_write)
    _info, _status, verdict = host_liveness(files, time.time())
    if not verdict.alive:
        raise PbqError(f"job {seq} is held by host {host}, whose scheduler is not running "
                       f"({verdict.reason}): it is cancelled when that scheduler starts again, "
                       "or put back by pbq control ... recover")
    # A tick to read the request, term_grace for the job to end, a tick to record it.
    wait = cfg.scheduler.term_grace + 2 * cfg.scheduler.interval + 5.0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not any(j.number == seq and j.state in HOLDING for j in held_jobs(jobfile, host, cfg)):
            return f"{seq}: cancelled on {host}"
        time.sleep(0.1)
    raise PbqError(f"job {seq} on host {host}: cancel requested, but it has not ended after "
                   f"{wait:g} s (see JOBFILE.{host}.log)")


# ------------------------------------------------------------------ pbq log


def attempts_of(jobfile: Path, hostfile: Path | None, seq: int) -> list[Attempt]:
    """Every attempt of line ``seq`` on any host (``JOBFILE.HOST.jobids``), oldest first."""
    hosts = dict.fromkeys([*status_hosts(jobfile, hostfile), *hosts_with(jobfile, "jobids")])
    found = [a for h in hosts for a in read_jobids(HostFiles(jobfile, h).path("jobids"), h, seq)]
    return sorted(found, key=lambda a: (a.start, a.host, a.n))


def _output_file(a: Attempt, stream: str) -> Path | None:
    return None if a.directory is None else Path(a.directory) / f"{a.job_id}.{stream}"


def _packed(jobfile: Path, a: Attempt, stream: str) -> tuple[Path, int, int] | None:
    """Where the attempt's packed output is: (pack file, offset, length)."""
    for pack in pack_files(HostFiles(jobfile, a.host).path("output")):
        for head, at, end in read_frames(pack):
            if head.get("job") == a.job_id and head.get("stream") == stream:
                return pack, at, end - at - 1
    return None


def _read_from(path: Path, offset: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return None


def _released(jobfile: Path, a: Attempt) -> bool:
    """Whether the attempt's output has left its slot (packed, or moved to a file)."""
    now = read_jobids(HostFiles(jobfile, a.host).path("jobids"), a.host, a.seq)
    return any(b.n == a.n and b.released for b in now)


def read_output(jobfile: Path, a: Attempt, stream: str, offset: int = 0) -> bytes | None:
    """An attempt's stdout ("out") or stderr ("err") from ``offset`` on: its file while there
    is one, else its packed copy; b"" when there is neither (no output); None when its output
    was not kept."""
    path = _output_file(a, stream)
    if path is None:
        return None
    data = _read_from(path, offset)
    if data is not None:
        return data
    slot = a.slot_file(stream)
    if slot is not None and not a.released:
        # The slot is the job's until it is released; a later job may write to it then, so
        # what was read counts only if the job was still not released after the read.
        data = _read_from(slot, offset)
        if data is not None and not _released(jobfile, a):
            return data
        data = _read_from(path, offset)  # a large output moved out of its slot
        if data is not None:
            return data
    found = _packed(jobfile, a, stream)
    if found is None:
        return b""
    pack, at, n = found
    with open(pack, "rb") as f:
        f.seek(at + min(offset, n))
        return f.read(max(0, n - offset))


def is_pending(jobfile: Path, cfg: Config, seq: int) -> bool:
    """Whether line ``seq`` waits in the jobfile (not taken yet)."""
    with queue_of(jobfile, cfg).transaction(timeout=30) as txn:
        return any(n == seq for *_, n, _annotated in txn.pending_numbered())


def attempt_running(jobfile: Path, cfg: Config, a: Attempt) -> bool:
    return any(j.seq == a.n and j.state in HOLDING for j in held_jobs(jobfile, a.host, cfg))


def follow_output(jobfile: Path, cfg: Config, a: Attempt, streams: list[str],
                  write: Callable[[bytes], None], every: float = 0.2) -> None:
    """Write what the attempt writes as it comes, until it has ended and all is written."""
    offsets = dict.fromkeys(streams, 0)
    while True:
        running = attempt_running(jobfile, cfg, a)  # before reading: its last bytes are read
        for stream in streams:
            data = read_output(jobfile, a, stream, offsets[stream])
            if data:
                offsets[stream] += len(data)
                write(data)
        if not running:
            return
        time.sleep(every)
