"""The cgroup v2 of each local job, where one is writable (``cgroup.py`` does the file work).

One place decides, once, whether jobs get cgroups (``[scheduler] containment``), keeps which
job is in which cgroup, and removes them: the executor asks it by job number and falls back
to process groups wherever it answers None.
"""

from __future__ import annotations

from ..errors import PbqError
from . import cgroup as cgroups
from .ledger import Log


class JobCgroups:
    def __init__(self, host: str, jobfile: str, mode: str, log: Log) -> None:
        self.host = host
        self.log = log
        self.cg: cgroups.Cgroups | None = None  # None: process groups only
        self.new_in_cgroup = False  # new jobs get a cgroup (off after a failed move)
        self.job_cg: dict[int, str] = {}  # seq -> the job's cgroup
        self.unremoved: list[str] = []  # cgroups of recorded jobs, still busy
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

    def for_new_job(self, job_id: str) -> tuple[str, str] | None:
        """(the job's cgroup, the runner's own) for a job about to start, or None."""
        if self.cg is None or not self.new_in_cgroup:
            return None
        return self.cg.path(job_id), self.cg.home

    def started(self, seq: int, job_id: str, why_not: str) -> None:
        """The runner's word on a new job: in its cgroup (""), or why not."""
        if self.cg is None or not self.new_in_cgroup:
            return
        if not why_not:
            self.job_cg[seq] = self.cg.path(job_id)
            return
        self.new_in_cgroup = False
        self.log(f"job containment: process groups from now on ({job_id}: {why_not})")

    def find(self, seq: int, job_id: str, pid: int) -> None:
        """The cgroup of a job of an earlier run (adopted, or found after a lost answer)."""
        if self.cg is not None:
            where = self.cg.find(job_id, pid)
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
            cgroups.wait_empty(where, cgroups.EMPTY_WAIT)  # so it can be removed once recorded
        return cgroups.cpu_seconds(where)

    def recorded(self, seq: int) -> bool:
        """The job's end is on record: its cgroup goes.  True when it was empty (no process
        of the job is left anywhere)."""
        where = self.job_cg.pop(seq, None)
        if where is None:
            return False
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
        return cgroups.cpu_seconds(where) if where is not None else None

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
        self.cg.close()  # only if no job cgroup is left (jobs live on after `kill`)
