"""What the load policy sees of the machine, measured once per tick."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

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
            return Measurements(limit=load_limit(host.max, host.wday, 0, work_time, 0), work_time=work_time)
        foreign = self.sensors.foreign_load(own_cpu, mono)
        self.history.append((mono, foreign))
        settle = self.cfg.scheduler.settle
        while self.history and self.history[0][0] < mono - settle - 1e-6:
            self.history.popleft()
        users = self.sensors.active_users(self.cfg.interactive.idle_minutes * 60, now)
        mem = self.sensors.mem_available() if self.cfg.scheduler.memfree else None
        return Measurements(
            foreign=foreign,
            foreign_recent=max(max(f for _, f in self.history), foreign),
            limit=load_limit(host.max, host.wday, host.interactive, work_time, users),
            active_users=users,
            work_time=work_time,
            mem_available=mem,
        )
