"""Everything pbq reads about the machine: with procinfo.py, the only modules that talk
to psutil and /proc.

The scheduler gets a ``Sensors`` object and never reads the machine itself, so tests can
hand it a fake one.  The load signal is CPU time, not the load average:

    foreign load = (non-idle CPU seconds of the whole machine
                    - CPU seconds of our own jobs' processes) / elapsed seconds

measured over the last tick (about a second).  It reacts within a tick, where the
1-minute load average lags by a minute, and it does not count our own jobs twice: they
are counted as one each by the policy.  Our jobs run at nice 19, so other people's
processes get the CPU first and their demand shows up in full (up to the number of cores).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil

from .activity import (
    SOURCES,
    Activity,
    Login,
    LogindReader,
    Seen,
    logind_active,
    merge,
    tty_active,
    tty_path,
)
from .procinfo import CLK_TCK

# Re-exported: process identity lives in procinfo.py (no psutil needed there).
from .procinfo import boot_id as boot_id
from .procinfo import process_start as process_start
from .procinfo import process_state as process_state
from .procinfo import same_process as same_process

LOGIND_EVERY = 5.0  # seconds between reads of logind's sessions
LOGIND_RETRY = 60.0  # seconds before asking again where logind did not answer


def process_parent(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return None


def process_cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return []


def process_environ(pid: int) -> dict[str, str]:
    try:
        return psutil.Process(pid).environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return {}


def pids_with_env(key: str, value: str, user_uid: int | None = None) -> list[int]:
    """Pids of our user's processes whose environment has ``key=value`` (used once, at restart)."""
    uid = os.getuid() if user_uid is None else user_uid
    found = []
    for p in psutil.process_iter(["uids"]):
        try:
            if p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            if p.environ().get(key) == value:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


@dataclass
class ProcSample:
    """CPU seconds and states of the processes in a set of sessions."""

    cpu_seconds: float
    running: int  # processes in state R
    members: dict[int, list[int]]  # session id -> pids in it
    cpu_by_sid: dict[int, float] = field(default_factory=dict)


class Sensors:
    """The real machine.  Tests substitute an object with the same methods."""

    def __init__(self) -> None:
        self.ncpus = psutil.cpu_count() or 1
        self._meter = ForeignLoadMeter()
        self._logind_reader = LogindReader()
        self._logind: list[dict[str, str]] | None = None
        self._logind_at: float | None = None

    def foreign_load(self, own_cpu_seconds: float, now_mono: float) -> float:
        """Foreign load of the last interval, given the CPU seconds used so far by the
        scheduler and its own jobs (a running total, continuous across job ends)."""
        return self._meter.update(now_mono, self.busy_cpu_seconds(), own_cpu_seconds)

    def busy_cpu_seconds(self) -> float:
        """Non-idle CPU seconds of the whole machine since boot (steal and guest excluded)."""
        try:
            with open("/proc/stat", "rb") as f:
                first = f.readline().split()
            user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in first[1:8])
            return (user + nice + system + irq + softirq) / CLK_TCK
        except (OSError, ValueError):
            t = psutil.cpu_times()
            return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def sessions(self, sids: Iterable[int]) -> ProcSample:
        """CPU seconds (including reaped children) of every process in the given sessions."""
        wanted = set(sids)
        total = 0.0
        running = 0
        members: dict[int, list[int]] = {}
        by_sid: dict[int, float] = {}
        if not wanted:
            return ProcSample(0.0, 0, members)
        try:
            entries = os.listdir("/proc")
        except OSError:
            return self._sessions_psutil(wanted)
        for name in entries:
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            close = raw.rfind(b")")
            fields = raw[close + 2 :].split()
            # fields[0] is state (field 3); session is field 6, utime..cstime fields 14-17.
            try:
                sid = int(fields[3])
            except (IndexError, ValueError):
                continue
            if sid not in wanted:
                continue
            members.setdefault(sid, []).append(int(name))
            cpu = sum(int(x) for x in fields[11:15]) / CLK_TCK
            total += cpu
            by_sid[sid] = by_sid.get(sid, 0.0) + cpu
            if fields[0] == b"R":
                running += 1
        return ProcSample(total, running, members, by_sid)

    def _sessions_psutil(self, wanted: set[int]) -> ProcSample:
        total, running = 0.0, 0
        members: dict[int, list[int]] = {}
        by_sid: dict[int, float] = {}
        for p in psutil.process_iter():
            try:
                sid = os.getsid(p.pid)
                if sid not in wanted:
                    continue
                t = p.cpu_times()
                cpu = t.user + t.system + t.children_user + t.children_system
                total += cpu
                by_sid[sid] = by_sid.get(sid, 0.0) + cpu
                members.setdefault(sid, []).append(p.pid)
                running += p.status() == psutil.STATUS_RUNNING
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
        return ProcSample(total, running, members, by_sid)

    def active_users(self, idle_seconds: float, now: float) -> int:
        """Distinct users active within ``idle_seconds``, by every source that answers."""
        return self.activity(idle_seconds, now).count

    def activity(
        self, idle_seconds: float, now: float, sources: Sequence[str] = SOURCES
    ) -> Activity:
        """Who used this machine within ``idle_seconds``, by the sources named (see
        activity.py); a source that cannot be read here adds nobody and is not named as
        having answered."""
        results: list[tuple[str, list[Seen] | None]] = []
        for source in sources:
            if source == "tty":
                results.append((source, self._tty_activity(idle_seconds, now)))
            elif source == "logind":
                sessions = self._logind_sessions()
                found = None if sessions is None else logind_active(sessions, idle_seconds, now)
                results.append((source, found))
        return merge(results)

    def _tty_activity(self, idle_seconds: float, now: float) -> list[Seen] | None:
        """Terminal use: the tty's access time, as HTCondor reads keyboard idleness."""
        try:
            users = psutil.users()
        except OSError:
            return None
        logins = [Login(u.name, u.terminal or "", u.host or "") for u in users]
        atimes: dict[str, float] = {}
        for login in logins:
            if not login.terminal:
                continue
            path = tty_path(login.terminal)
            with contextlib.suppress(OSError):
                atimes[path] = os.stat(path).st_atime
        return tty_active(logins, atimes, idle_seconds, now)

    def _logind_sessions(self) -> list[dict[str, str]] | None:
        """logind's sessions, read at most every LOGIND_EVERY seconds (two loginctl runs),
        or every LOGIND_RETRY seconds while it does not answer."""
        mono = time.monotonic()
        every = LOGIND_EVERY if self._logind is not None else LOGIND_RETRY
        if self._logind_at is None or mono - self._logind_at >= every:
            self._logind_at = mono
            self._logind = self._logind_reader.sessions()
        return self._logind

    def mem_available(self) -> int:
        try:
            with open("/proc/meminfo", "rb") as f:
                for line in f:
                    if line.startswith(b"MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return psutil.virtual_memory().available

    def loadavg(self) -> float:
        return os.getloadavg()[0]


class ForeignLoadMeter:
    """Turns CPU-time samples into the foreign load of the last interval.

    Own CPU seconds must be continuous across a job's end: the scheduler adds the CPU
    time of reaped jobs (from wait4) to ``finished_cpu`` when it reaps them.
    """

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None  # (monotonic, busy, own)
        self.value = 0.0

    def update(self, now_mono: float, busy: float, own: float) -> float:
        if self._last is not None:
            t0, b0, o0 = self._last
            dt = now_mono - t0
            if dt >= 0.05:
                self.value = max(0.0, ((busy - b0) - (own - o0)) / dt)
                self._last = (now_mono, busy, own)
        else:
            self._last = (now_mono, busy, own)
        return self.value

    def reset(self) -> None:
        self._last = None


def wall_clock() -> float:
    return time.time()
