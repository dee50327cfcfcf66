"""Hosts that only fail ("black holes"): a host whose last ``quarantine_after`` jobs all
failed, each within ``quick_fail`` seconds of its start, while another live host of the
same jobfile has had a success meanwhile (since the first of those failures began, or
within the last ``RECENT`` seconds: quick failures come faster than heartbeats), takes no
new jobs for a back-off: 1 minute, doubling on each quarantine in a row up to 1 hour.

When every host fails alike it is the jobs, not a host: a host counts as healthy only
while it is alive, not quarantined and not in a streak of quick failures itself, so nobody
is quarantined then, and the last healthy host never is.  Timeouts, evictions and lines put back
are not failures here (the scheduler does not report them).  After a back-off the host
takes jobs again; one more quick failure puts it back (its last jobs still all failed),
with twice the back-off; a success ends the streak.  ``pbq control cont HOST`` lifts a
quarantine and forgets the streak.

:func:`should_quarantine` decides, a pure function of the host's recent ends, the other
hosts' heartbeats and the clock; :class:`HostHealth` keeps the ends and the back-off;
:func:`read_peers` reads the other hosts' heartbeats for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import PbqError

BACKOFF_MIN = 60.0  # seconds: the first quarantine
BACKOFF_MAX = 3600.0
RECENT = 60.0  # seconds: a success of another host this recent counts as "meanwhile"


@dataclass(frozen=True)
class End:
    """How one of the host's jobs ended."""

    when: float  # wall-clock end
    ok: bool
    runtime: float  # seconds from its start


@dataclass(frozen=True)
class Peer:
    """Another host of the jobfile, as its heartbeat tells."""

    host: str
    alive: bool
    last_success: float | None
    quarantined: bool
    quick_failures: int = 0  # its own streak of quick failures


def backoff(level: int) -> float:
    """The length of the ``level``-th quarantine in a row (1 = the first)."""
    return min(BACKOFF_MAX, BACKOFF_MIN * 2.0 ** max(0, level - 1))


def should_quarantine(recent: Sequence[End], peers: Sequence[Peer], after: int,
                      quick: float) -> str | None:
    """Why the host should take no new jobs now, or None.  ``recent``: its last ends,
    oldest first."""
    if after <= 0 or len(recent) < after:
        return None
    last = list(recent)[-after:]
    if any(e.ok or e.runtime > quick for e in last):
        return None
    since = min(last[0].when - last[0].runtime, last[-1].when - RECENT)
    healthy = sorted(p.host for p in peers if p.alive and not p.quarantined
                     and p.quick_failures < after
                     and p.last_success is not None and p.last_success >= since)
    if not healthy:
        return None  # everybody fails alike (or nobody else runs): it is the jobs
    return (f"its last {after} jobs all failed within {quick:g}s of their start, while "
            f"host {', '.join(healthy)} had successes meanwhile")


class HostHealth:
    """This host's recent ends, streak and back-off."""

    def __init__(self, after: int, quick: float) -> None:
        self.after = after
        self.quick = quick
        self.recent: deque[End] = deque(maxlen=max(1, after))
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self.quick_failures = 0  # jobs in a row that failed quickly
        self.level = 0  # quarantines in a row without a success between
        self.until: float | None = None  # end of the current (or last) quarantine
        self.quarantines = 0

    def ended(self, e: End) -> None:
        self.recent.append(e)
        if e.ok:
            self.last_success = e.when
            self.quick_failures = 0
            self.level = 0
        else:
            self.last_failure = e.when
            self.quick_failures = self.quick_failures + 1 if e.runtime <= self.quick else 0

    def quarantined(self, now: float) -> bool:
        return self.until is not None and now < self.until

    def record_end(self, e: End, now: float, peers: Callable[[], Sequence[Peer]]) -> str | None:
        """Record an end; why the host is quarantined now, if it is (``peers`` is read only
        when this host looks suspect)."""
        self.ended(e)
        if not self.suspect() or self.quarantined(now):
            return None
        return self.check(now, peers())

    def suspect(self) -> bool:
        """Worth asking the other hosts: the last ``after`` ends were quick failures."""
        return self.after > 0 and self.quick_failures >= self.after

    def check(self, now: float, peers: Sequence[Peer]) -> str | None:
        """Quarantine the host if it should be; the reason when it now is."""
        if self.quarantined(now):
            return None
        why = should_quarantine(self.recent, peers, self.after, self.quick)
        if why is None:
            return None
        self.level += 1
        self.until = now + backoff(self.level)
        self.quarantines += 1
        return why

    def lift(self) -> bool:
        """``cont``: take jobs again, with a fresh streak.  True if it was quarantined."""
        was = self.until is not None
        self.until = None
        self.level = 0
        self.quick_failures = 0
        self.recent.clear()
        return was


def read_peers(jobfile: Path, host: str, now: float) -> list[Peer]:
    """The other hosts of ``jobfile``, from their ``.pid`` and ``.status`` (the one liveness
    rule decides who is alive)."""
    from .sidefiles import host_liveness
    from .statefiles import HostFiles, hosts_with

    peers = []
    for name in hosts_with(jobfile, "status"):
        if name == host:
            continue
        try:
            _, status, verdict = host_liveness(HostFiles(jobfile, name), now)
        except PbqError:
            continue  # a newer pbq's files: not a peer this one can judge
        if status is None:
            continue
        held = bool(status.quarantined) and (status.quarantined_until or 0.0) > now
        peers.append(Peer(name, verdict.alive, status.last_success, held, status.quick_failures))
    return peers
