"""The cgroup v2 of each local job, where one is writable (``cgroup.py`` does the file work).

One place decides, once, whether jobs get cgroups (``[scheduler] containment``), keeps which
job is in which cgroup, and removes them: the executor asks it by job number and falls back
to process groups wherever it answers None.

A job's cgroup, empty once its end is on record, is kept for a later job instead of removed
(``rmdir`` and ``mkdir`` of a cgroup cost some 100 us of CPU together, a tenth of a short
job's whole cost): the cgroups are named ``j1``, ``j2``... under the scheduler's, and a
job's CPU time is what ``cpu.stat`` counted since it was handed the cgroup.  Which job is in
which cgroup lives here (and, for an adopted job, in ``/proc/PID/cgroup``).
"""

from __future__ import annotations

import os
import re

from ..errors import PbqError
from . import cgroup as cgroups
from .ledger import Log

POOL_MAX = 64  # empty job cgroups kept for later jobs; more are removed
NAME = re.compile(r"j(\d+)")


class JobCgroups:
    def __init__(self, host: str, jobfile: str, mode: str, log: Log) -> None:
        self.host = host
        self.log = log
        self.cg: cgroups.Cgroups | None = None  # None: process groups only
        self.new_in_cgroup = False  # new jobs get a cgroup (off after a failed move)
        self.job_cg: dict[int, str] = {}  # seq -> the job's cgroup
        self.unremoved: list[str] = []  # cgroups of recorded jobs, still busy
        self.assigned: dict[int, str] = {}  # seq -> the cgroup a start request names
        self.free: list[str] = []  # empty job cgroups, kept for later jobs
        self.base: dict[str, float] = {}  # cgroup -> CPU seconds it counted before its job
        self.used: dict[int, float] = {}  # seq -> the cgroup's CPU seconds at the job's end
        self.next_name: int | None = None  # the number of the next new cgroup
        if mode == "process-group":
            log("job containment: process groups (containment = process-group)")
            return
        found = cgroups.probe(host, jobfile)
        if isinstance(found, str):
            if mode == "cgroup":
                raise PbqError(f"containment = cgroup, but no writable cgroup v2: {found}")
            log(f"job containment: process groups (no writable cgroup v2: {found})")
            return
        self.cg, self.new_in_cgroup = found, True
        log(f"job containment: cgroup v2 at {found.describe()}")

    def of(self, seq: int) -> str | None:
        return self.job_cg.get(seq) if self.cg is not None else None

    def for_new_job(self, seq: int) -> tuple[str, str] | None:
        """(the job's cgroup, the runner's own) for a job about to start, or None."""
        if self.cg is None or not self.new_in_cgroup:
            return None
        if self.free:
            where = self.free.pop()
        else:
            if self.next_name is None:  # above every name in use (adopted jobs' included)
                taken = [int(m.group(1)) for c in self.cg.children()
                         if (m := NAME.fullmatch(os.path.basename(c)))]
                self.next_name = max(taken, default=0) + 1
            where = self.cg.path(f"j{self.next_name}")
            self.next_name += 1
        self.assigned[seq] = where
        return where, self.cg.home

    def started(self, seq: int, job_id: str, why_not: str) -> None:
        """The runner's word on a new job: in its cgroup (""), or why not."""
        where = self.assigned.pop(seq, None)
        if self.cg is None or not self.new_in_cgroup or where is None:
            return
        if not why_not:
            self.job_cg[seq] = where
            return
        self.base.pop(where, None)  # the runner removed it
        self.new_in_cgroup = False
        self.log(f"job containment: process groups from now on ({job_id}: {why_not})")

    def not_started(self, seq: int) -> None:
        """The job did not start: the cgroup it was to have goes (the runner removes it too,
        but a runner that died may have left it)."""
        where = self.assigned.pop(seq, None)
        if where is not None:
            self.base.pop(where, None)
            cgroups.remove(where)

    def unassign(self, seq: int) -> None:
        """A start taken back before it was made: its cgroup is free again."""
        where = self.assigned.pop(seq, None)
        if where is not None:
            self.free.append(where)

    def find(self, seq: int, pid: int) -> None:
        """The cgroup of a job of an earlier run (adopted, or found after a lost answer)."""
        self.assigned.pop(seq, None)
        if self.cg is not None:
            where = self.cg.find(pid)
            if where is not None:
                self.job_cg[seq] = where

    def thaw(self, seq: int) -> bool:
        where = self.of(seq)
        return where is not None and cgroups.thaw(where)

    def leader_ended(self, seq: int) -> float | None:
        """A job's leader exited: what it left running is killed now; its CPU seconds, daemons
        included (None without a cgroup)."""
        where = self.of(seq)
        if where is None or self.cg is None:
            return None
        left = cgroups.kill(self.cg, where)
        if left:
            self.log(f"job {self.host}.{seq} left {left} process(es) running: killed")
            cgroups.wait_empty(where, cgroups.EMPTY_WAIT)  # so it can be reused once recorded
        used = cgroups.cpu_seconds(where)
        if used is None:
            return None
        self.used[seq] = used
        return max(0.0, used - self.base.get(where, 0.0))

    def recorded(self, seq: int) -> bool:
        """The job's end is on record: its cgroup is free for a later job (or goes).  True
        when it was empty (no process of the job is left anywhere)."""
        where = self.job_cg.pop(seq, None)
        used = self.used.pop(seq, None)
        if where is None:
            return False
        if cgroups.populated(where):
            self.base.pop(where, None)
            self.unremoved.append(where)
            return False
        if len(self.free) < POOL_MAX and NAME.fullmatch(os.path.basename(where)):
            if used is None:
                used = cgroups.cpu_seconds(where) or 0.0
            self.base[where] = used
            self.free.append(where)
            return True
        self.base.pop(where, None)
        if cgroups.remove(where):
            return True
        self.unremoved.append(where)
        return False

    def remove_unremoved(self) -> None:
        """Cgroups of recorded jobs whose last (killed) process had not quite gone yet."""
        if not self.unremoved:
            return
        busy = [w for w in self.unremoved if not cgroups.remove(w)]
        if busy and self.cg is not None:
            live = set(self.job_cg.values())
            for where in busy:
                if where not in live:  # never a running job's, whatever the names say
                    cgroups.kill(self.cg, where)
        self.unremoved = busy

    def signal(self, seq: int, sig: int, freeze: bool) -> int | None:
        """Signal every process of the job's cgroup: how many; None if it has no cgroup."""
        where = self.of(seq)
        if where is None or self.cg is None:
            return None
        return cgroups.signal_all(self.cg, where, sig, freeze)

    def kill(self, seq: int) -> int | None:
        """SIGKILL every process of the job's cgroup: how many; None if it has no cgroup."""
        where = self.of(seq)
        if where is None or self.cg is None:
            return None
        return cgroups.kill(self.cg, where)

    def busy(self, seq: int, hard: bool) -> bool | None:
        """Whether a process of the job is left (SIGKILLed with ``hard``); None without a
        cgroup."""
        where = self.of(seq)
        if where is None or self.cg is None:
            return None
        if not cgroups.populated(where):
            return False
        if hard:
            cgroups.kill(self.cg, where)
        return True

    def cpu(self, seq: int) -> float | None:
        where = self.of(seq)
        used = cgroups.cpu_seconds(where) if where is not None else None
        return None if used is None else max(0.0, used - self.base.get(str(where), 0.0))

    def clean(self) -> None:
        """At start, after adoption: job cgroups of this scheduler that no live job owns are
        leftovers of jobs that ended while no scheduler watched (their leftover processes are
        killed, as at any job's end) or of a crash; removed."""
        if self.cg is None:
            return
        owned = set(self.job_cg.values())
        for where in self.cg.children():
            if where in owned:
                continue
            left = cgroups.kill(self.cg, where)
            if left:
                self.log(f"killed {left} leftover process(es) of an ended job ({where})")
            if not cgroups.remove(where):
                self.unremoved.append(where)

    def close(self) -> None:
        if self.cg is None:
            return
        for where in self.unremoved:
            cgroups.wait_empty(where, cgroups.EMPTY_WAIT)
            cgroups.remove(where)
        for where in self.job_cg.values():  # ends not recorded (term) or jobs left running
            cgroups.remove(where)  # only if empty: a live job keeps its cgroup for adoption
        for where in self.free:
            cgroups.remove(where)
        self.free.clear()
        self.cg.close()  # only if no job cgroup is left (jobs live on after `kill`)
