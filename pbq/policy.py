"""The scheduling policy: pure functions of what was measured, no clock, no I/O.

Load limit (README, "The load limit")::

    base  = wday   during work hours, else max
    limit = max(0, base - min(interactive, active_users))

Decision, with ``load = foreign + running`` (own running jobs count one each) and
``h`` the hysteresis:

* stopped by the user: stop every running job, start nothing;
* ``load > limit + h`` for at least ``stop_after`` seconds: stop the fewest running jobs
  (newest first) that bring ``load <= limit + h`` (before that: start and continue
  nothing, stop nothing);
* otherwise continue stopped jobs (oldest first), then start new ones, while
  ``foreign_recent + running + 1 <= limit + h``, where ``foreign_recent`` is the highest
  foreign load of the last ``settle`` seconds: stopping reacts to a load at once,
  continuing waits until it has stayed low, so a steady foreign load does not make jobs
  flap.  Starting and stopping use the same bound, so a start never causes a stop.
* memory (``memfree`` set): start nothing while available memory is below ``memfree``;
  below half of it, evict (kill and requeue) the newest job, one per ``settle`` seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum


class Mode(StrEnum):
    RUN = "running"
    PAUSED = "stopped"  # `pbq control stop`: every job stopped, nothing starts
    QUIT = "quitting"  # `quit`: nothing new starts, jobs finish under the load policy
    TERM = "terminating"  # `term`: jobs are being terminated


def load_limit(
    max_load: float, wday: float, interactive: int, work_time: bool, active_users: int
) -> float:
    base = wday if work_time else max_load
    return max(0.0, base - min(interactive, active_users))


@dataclass(frozen=True)
class View:
    mode: Mode
    limit: float
    foreign: float  # foreign load of the last interval
    foreign_recent: float  # highest foreign load over the last `settle` seconds
    running: int
    stopped_by_load: int  # jobs the policy stopped (it may continue them)
    stopped_by_user: int  # jobs stopped by `pbq control stop` (continued on `cont`)
    pending: bool  # the jobfile may have lines to take
    hysteresis: float = 0.5
    mem_available: int | None = None
    memfree: int = 0  # bytes; 0 = off
    since_evict: float = math.inf  # seconds since the last eviction
    settle: float = 2.0
    over_for: float = math.inf  # seconds the load has been over limit + hysteresis
    stop_after: float = 0.0  # patience: stop jobs only once the load was over this long


@dataclass(frozen=True)
class Decision:
    stop: int = 0  # stop this many running jobs, newest first
    cont: int = 0  # continue this many stopped jobs, oldest first
    start: int = 0  # take and start this many new jobs
    evict: int = 0  # kill and requeue this many jobs, newest first

    def __bool__(self) -> bool:
        return bool(self.stop or self.cont or self.start or self.evict)


def decide(v: View) -> Decision:
    if v.mode is Mode.TERM:
        return Decision()
    if v.mode is Mode.PAUSED:
        return Decision(stop=v.running)
    evict = 0
    low_memory = v.memfree > 0 and v.mem_available is not None and v.mem_available < v.memfree
    if (
        low_memory
        and v.mem_available is not None
        and v.mem_available < v.memfree / 2
        and v.running + v.stopped_by_load + v.stopped_by_user > 0
        and v.since_evict >= v.settle
    ):
        evict = 1
    load = v.foreign + v.running
    excess = load - v.limit
    if excess > v.hysteresis + 1e-9:
        if v.over_for < v.stop_after:
            return Decision(evict=evict)  # over the limit, but not for long yet: hold still
        stop = min(v.running, math.ceil(excess - v.hysteresis - 1e-9))
        return Decision(stop=stop, evict=evict)
    if evict:
        return Decision(evict=evict)  # let memory settle before anything else moves
    room = math.floor(v.limit + v.hysteresis - (v.foreign_recent + v.running) + 1e-9)
    room = max(0, room)
    # Jobs the user stopped are continued by `cont` (mode RUN again) like load-stopped ones.
    stopped = v.stopped_by_load + v.stopped_by_user
    cont = min(stopped, room)
    start = 0
    if v.mode is Mode.RUN and v.pending and not low_memory:
        start = room - cont
    return Decision(cont=cont, start=start, evict=evict)


def may_refill(v: View) -> bool:
    """Would a job that ended now be replaced at once, and nothing else change?  Then a
    start may be queued ahead with the job runner, which makes it the moment a job ends
    (short jobs refill their slots without waiting for the scheduler's next pass)."""
    if v.mode is not Mode.RUN or v.running < 1:
        return False
    d = decide(replace(v, running=v.running - 1, pending=True))
    return d.start >= 1 and not (d.stop or d.cont or d.evict)


@dataclass(frozen=True)
class Candidate:
    """What ``choose`` needs to know of one of the host's jobs."""

    seq: int
    started: float  # wall-clock start (0 when unknown)
    stopped: bool


@dataclass(frozen=True)
class Choice:
    stop: tuple[int, ...] = ()  # seqs, newest first: the oldest is nearest to done
    cont: tuple[int, ...] = ()  # oldest stopped first
    evict: tuple[int, ...] = ()  # newest first
    start: int = 0


def choose(jobs: list[Candidate], d: Decision) -> Choice:
    """Which jobs the decision's counts apply to.  Order: (start time, seq)."""
    ordered = sorted(jobs, key=lambda j: (j.started, j.seq))
    evict = tuple(j.seq for j in reversed(ordered))[: max(0, d.evict)]
    running = [j for j in ordered if not j.stopped and j.seq not in evict]
    stop = tuple(j.seq for j in reversed(running))[: max(0, d.stop)]
    stopped = [j for j in ordered if j.stopped and j.seq not in evict]
    cont = tuple(j.seq for j in stopped[: max(0, d.cont)])
    return Choice(stop=stop, cont=cont, evict=evict, start=d.start)


def may_start_before_work(
    slot: int,
    wday: float,
    max_load: float,
    until_work: float | None,
    expected: float | None,
    margin: float = 0.0,
) -> bool:
    """The edge of the work day: may a job start now in ``slot`` (1 = the first of the
    host's own jobs), with ``until_work`` seconds until the ``wday`` limit comes into force
    (None: it does not, e.g. it is work time already or there are no workdays)?

    Where ``wday < max``, a job that would occupy a slot above ``wday`` starts only if its
    ``expected`` run time plus ``margin`` ends before work time begins: otherwise it would
    be stopped when the limit drops, holding its line for a work day.  The first ``wday``
    slots start anything, so no job is starved; a job with no expected run time (no
    successful run of its command yet) starts, as before.
    """
    if until_work is None or expected is None or wday >= max_load or slot <= wday:
        return True
    return expected + margin <= until_work
