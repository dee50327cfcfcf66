"""What an earlier run of this host left behind for a restarted scheduler: its job runner,
which may still be reaping jobs and recording their ends, and those records in
``JOBFILE.HOST.exits``.  Every crash leftover of the local executor is read here, in one
place: which saved jobs still live, how the gone ones ended, and -- for jobs adopted -- how
they end later.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..sensors import (
    pids_with_env,
    process_cmdline,
    process_environ,
    process_parent,
    process_start,
    process_state,
    same_process,
)
from ..sidefiles import ExitRecord, exit_records_by_job, read_exit_records
from .jobs import UNKNOWN_EXIT, Job, JobState, Outcome, outcome_of
from .recovery import Probe

RECORD_WAIT = 2.0  # at start-up, seconds to wait for a live old runner to record an end
RECORDED = "exit status recorded by the job runner"
ADOPTED_EXIT_WAIT = 5.0  # seconds to wait for the old runner's record of an adopted job's end
# The saved states whose process may be out there.
PROBED = (JobState.STARTING, JobState.RUNNING, JobState.STOPPED, JobState.EVICTING,
          JobState.TERMINATING, JobState.CANCELLING)


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)


class EarlierRun:
    def __init__(self, host: str, jobfile: Path, exits: Path, allow_group_write: bool,
                 old_runner: int | None) -> None:
        self.host = host
        self.jobfile = jobfile
        self.exits = exits
        self.allow_group_write = allow_group_write  # whether a group-writable .exits is trusted
        self.old_runner = old_runner  # the previous run's runner, which may still record ends
        self.gone_since: dict[int, float] = {}  # adopted jobs gone, no record of their end yet

    def runner_alive(self) -> bool:
        pid = self.old_runner
        return bool(pid and pid > 1 and process_state(pid) not in (None, "Z")
                    and "pbq" in " ".join(process_cmdline(pid)))

    def records(self) -> dict[tuple[int, float | None], ExitRecord]:
        return read_exit_records(self.exits, self.allow_group_write)

    @staticmethod
    def record_of(job: Job, records: dict[tuple[int, float | None], ExitRecord],
                  by_job: dict[int, ExitRecord]) -> ExitRecord | None:
        """The runner's record of this job's end: by its process, or -- when its pid never
        reached the ledger -- by its job number."""
        if job.pid is None:
            return by_job.get(job.seq)
        return records.get((job.pid, _round(job.pid_start)))

    @staticmethod
    def alive(job: Job) -> bool:
        """An adopted job's process (pid and start time) still exists."""
        return job.pid is not None and same_process(job.pid, job.pid_start)

    def ended(self, adopted: list[Job], now: float, mono: float
              ) -> list[tuple[Job, Outcome, float]]:
        """Adopted jobs (nobody's children here) whose process is gone, how and when they
        ended: the old runner's record, else -- none came for ``ADOPTED_EXIT_WAIT`` s --
        unknown."""
        out: list[tuple[Job, Outcome, float]] = []
        records: dict[tuple[int, float | None], ExitRecord] | None = None
        by_job: dict[int, ExitRecord] = {}
        for job in adopted:
            if self.alive(job):
                continue
            if records is None:
                records = self.records()
                by_job = exit_records_by_job(records.values())
            rec = self.record_of(job, records, by_job)
            if rec is not None:
                out.append((job, outcome_of(rec.status, rec.cpu, rec.maxrss, RECORDED), rec.time))
            elif mono - self.gone_since.setdefault(job.seq, mono) >= ADOPTED_EXIT_WAIT:
                note = "adopted job ended with no recorded exit status"
                out.append((job, Outcome(UNKNOWN_EXIT, note=note), now))
        for job, _, _ in out:
            self.gone_since.pop(job.seq, None)
        return out

    def probe(self, jobs: list[Job]) -> dict[int, Probe]:
        """Before the lock: which saved jobs live, and how the gone ones ended.  A job whose
        end the old runner may still be writing is given ``RECORD_WAIT`` seconds (here, with
        no lock held)."""
        records = self.records()
        by_job = exit_records_by_job(records.values())
        out: dict[int, Probe] = {}
        waiting: list[Job] = []
        for job in jobs:
            if job.state not in PROBED:
                continue
            pid, start = job.pid, job.pid_start
            if pid is None:
                # Its start was asked for, its pid never reached the ledger: a live process
                # started as this job, or the old runner's record of the job's end.
                found = self.find_job(f"{self.host}.{job.seq}")
                if found:
                    pid, start = found[0], process_start(found[0])
            if pid is not None and (same_process(pid, start) or self._ending(pid, start)):
                out[job.seq] = Probe(alive=True, stopped=process_state(pid) == "T", pid=pid,
                                     pid_start=start)
                continue
            rec = self.record_of(job, records, by_job) if job.pid is None \
                else records.get((pid or 0, _round(start)))
            if rec is None and self.runner_alive():
                waiting.append(job)
            if rec is not None or pid is not None:
                out[job.seq] = self._gone(rec, pid, start)
        deadline = time.monotonic() + RECORD_WAIT
        while waiting and time.monotonic() < deadline and self.runner_alive():
            time.sleep(0.05)
            records = self.records()
            by_job = exit_records_by_job(records.values())
            for job in list(waiting):
                rec = self.record_of(job, records, by_job)
                if rec is not None:
                    out[job.seq] = self._gone(rec, rec.pid, rec.start)
                    waiting.remove(job)
        return out

    def find_job(self, job_id: str) -> list[int]:
        """Session leaders started as this job of this jobfile (found by their environment)."""
        out = []
        for pid in pids_with_env("PBQ_JOB_ID", job_id):
            with contextlib.suppress(OSError):
                ours = str(self.jobfile)
                if os.getsid(pid) == pid and process_environ(pid).get("PBQ_JOBFILE") == ours:
                    out.append(pid)
        return out

    @staticmethod
    def _gone(rec: ExitRecord | None, pid: int | None, start: float | None) -> Probe:
        if rec is None:
            return Probe(pid=pid, pid_start=start)
        return Probe(pid=rec.pid if pid is None else pid,
                     pid_start=rec.start if pid is None else start, ended_at=rec.time,
                     exit=outcome_of(rec.status, rec.cpu, rec.maxrss, RECORDED))

    def _ending(self, pid: int, start: float | None) -> bool:
        """A zombie the live old runner is about to reap and record: adopt it, and the
        adoption poll waits for the record."""
        if process_state(pid) != "Z" or process_start(pid) != start or self.old_runner is None:
            return False
        return process_parent(pid) == self.old_runner and self.runner_alive()

    def forget_records(self) -> None:
        """Recovery has read every record, and nothing adopted can still get one: the file
        starts afresh (it stays bounded)."""
        with contextlib.suppress(OSError):
            os.truncate(self.exits, 0)
