"""What the load policy sees of the machine, measured once per tick."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

from ..activity import Activity, Seen
from ..config import Config
from ..hostfile import Host
from ..policy import load_limit
from ..sensors import Sensors


@dataclass(frozen=True)
class Measurements:
    foreign: float = 0.0  # foreign load of the last interval
    foreign_recent: float = 0.0  # highest foreign load over the last `settle` seconds
    limit: float = 0.0
    active_users: int = 0
    work_time: bool = False
    mem_available: int | None = None
    local_users: int | None = None  # of active_users: at this machine's seat or console
    remote_users: int | None = None  # of active_users: only in remote sessions
    sources: tuple[str, ...] = ()  # the activity sources that answered


class LoadSensing:
    """Foreign load, users at the machine, work hours and free memory -> the limit."""

    def __init__(self, cfg: Config, sensors: Sensors) -> None:
        self.cfg = cfg
        self.sensors = sensors
        self.history: deque[tuple[float, float]] = deque()  # (monotonic time, foreign load)

    def sense(self, now: float, mono: float, host: Host, own_cpu: float | None) -> Measurements:
        """``own_cpu``: CPU seconds of the scheduler and its jobs so far, or None on a
        cluster head node, where max/wday count our jobs queued or running in the DRM."""
        work_time = self.cfg.schedule.calendar.is_work_time(datetime.fromtimestamp(now))
        if own_cpu is None:
            self.history.clear()
            limit = load_limit(host.max, host.wday, 0, work_time, 0)
            return Measurements(limit=limit, work_time=work_time)
        foreign = self.sensors.foreign_load(own_cpu, mono) if self.cfg.scheduler.foreign_load \
            else 0.0
        self.history.append((mono, foreign))
        settle = self.cfg.scheduler.settle
        while self.history and self.history[0][0] < mono - settle - 1e-6:
            self.history.popleft()
        act = self._activity(now)
        users = act.count
        mem = self.sensors.mem_available() if self.cfg.scheduler.memfree else None
        return Measurements(
            foreign=foreign,
            foreign_recent=max(max(f for _, f in self.history), foreign),
            limit=load_limit(host.max, host.wday, host.interactive, work_time, users),
            active_users=users,
            work_time=work_time,
            mem_available=mem,
            local_users=act.local_users,
            remote_users=act.remote_users,
            sources=act.answered,
        )

    def _activity(self, now: float) -> Activity:
        """Who is at the machine, by the configured sources.  A sensors object without
        ``activity`` (a test's fake) answers with a count only."""
        idle = self.cfg.interactive.idle_minutes * 60
        rich = getattr(self.sensors, "activity", None)
        if rich is not None:
            found: Activity = rich(idle, now, self.cfg.interactive.sources)
            return found
        n = self.sensors.active_users(idle, now)
        return Activity(tuple(Seen(f"user{i}", True, "fake") for i in range(n)), ("fake",))


def why_zero(h: Host | None, m: Measurements) -> str:
    """Why the load limit is 0 now (for the log)."""
    assert h is not None
    if m.work_time and h.wday == 0:
        return "wday is 0 and it is work time"
    if not m.work_time and h.max == 0:
        return "max is 0 outside work hours"
    return f"{m.active_users} user(s) active, interactive {h.interactive}"
