"""Jobs of one host and the states they go through.

    (jobfile line) --take--> CLAIMED --> STARTING --spawned--> RUNNING <--stop/cont--> STOPPED
                                               |                    |                      |
                                               |                    +--------ended---------+--> joblog/.error (gone)
                                               +-- could not start: failed job (exit 127/126)
    RUNNING/STOPPED --evicted (memory) / retry / restart finds it gone--> REQUEUE --> (jobfile)

The whole list is the host's write-ahead record, ``JOBFILE.HOST.state``: a job enters it
before the jobfile gives its line away, and leaves it only after its outcome is written
(or its line is back in the jobfile).  Between two snapshots of that file, the few facts
that must be on record before the next snapshot (a job is being started; its pid) are
appended to ``JOBFILE.HOST.journal``, tagged with the snapshot generation they follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .statefiles import line_to_text, text_to_line


class JobState(StrEnum):
    CLAIMED = "claimed"  # taken from the jobfile, not started yet (short jobs are taken ahead)
    STARTING = "starting"  # being started: if the scheduler dies now, it may have run
    RUNNING = "running"
    STOPPED = "stopped"
    REQUEUE = "requeue"  # its line is being put back into the jobfile (operation ``op``)


@dataclass
class Job:
    seq: int  # per-host sequence number: the job id is HOST.seq
    line: bytes
    op: int  # the operation that took it (or that puts it back, in REQUEUE)
    state: JobState = JobState.STARTING
    pid: int | None = None
    pid_start: float | None = None  # process start time: pid + start time name the process
    started: float | None = None  # wall-clock start
    stopped_by: str | None = None  # "load", "user" or "memory" while STOPPED
    tries: int = 0  # earlier failed attempts of this line
    adopted: bool = False  # started by an earlier run of this host's scheduler
    gone_since: float | None = None  # monotonic time an adopted job's process was seen gone
    evicting: bool = False  # killed to free memory: goes back to the jobfile, not to .error
    requeue_front: bool = True
    cluster_id: str | None = None  # on a DRM host: the resource manager's job id
    cpu_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {
            "seq": self.seq,
            "line": line_to_text(self.line),
            "op": self.op,
            "state": self.state.value,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "started": self.started,
            "stopped_by": self.stopped_by,
            "tries": self.tries,
            "evicting": self.evicting,
            "requeue_front": self.requeue_front,
            "cluster_id": self.cluster_id,
        }
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_json(cls, d: dict) -> Job:
        return cls(
            seq=int(d["seq"]),
            line=text_to_line(str(d["line"])),
            op=int(d["op"]),
            state=JobState(d.get("state", "starting")),
            pid=d.get("pid"),
            pid_start=d.get("pid_start"),
            started=d.get("started"),
            stopped_by=d.get("stopped_by"),
            tries=int(d.get("tries", 0)),
            evicting=bool(d.get("evicting", False)),
            requeue_front=bool(d.get("requeue_front", True)),
            cluster_id=d.get("cluster_id"),
            extra=dict(d.get("extra") or {}),
        )


@dataclass
class HostState:
    """Everything a host must remember across a crash."""

    host: str
    gen: int = 0  # snapshot generation: journal records of an older generation are obsolete
    next_seq: int = 1
    next_op: int = 1
    done: int = 0
    failed: int = 0
    jobs: list[Job] = field(default_factory=list)

    def new_op(self) -> int:
        op = self.next_op
        self.next_op += 1
        return op

    def new_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def apply_journal(self, records: list) -> None:
        """Apply what ``JOBFILE.HOST.journal`` recorded after this snapshot (crash recovery).

        Records of other generations are ignored: older ones are already in the snapshot.
        """
        by_seq = {j.seq: j for j in self.jobs}
        for rec in records:
            if not isinstance(rec, dict) or rec.get("g") != self.gen:
                continue
            for seq in rec.get("starting", []):
                job = by_seq.get(seq)
                if job is not None and job.state is JobState.CLAIMED:
                    job.state = JobState.STARTING
            for seq, cid, started in rec.get("submitted", []):
                job = by_seq.get(seq)
                if job is not None and job.cluster_id is None:
                    job.cluster_id, job.started, job.state = cid, started, JobState.RUNNING
            for seq, pid, pid_start, started in rec.get("started", []):
                job = by_seq.get(seq)
                if job is not None and job.pid is None:
                    job.pid, job.pid_start, job.started = pid, pid_start, started
                    job.state = JobState.RUNNING
            ended = set(rec.get("ended", []))
            if ended:
                self.jobs = [j for j in self.jobs if j.seq not in ended]
                by_seq = {j.seq: j for j in self.jobs}
            if "done" in rec:
                self.done, self.failed = int(rec["done"]), int(rec["failed"])

    def in_state(self, *states: JobState) -> list[Job]:
        return [j for j in self.jobs if j.state in states]

    def to_json(self) -> dict:
        return {
            "version": 1,
            "host": self.host,
            "gen": self.gen,
            "next_seq": self.next_seq,
            "next_op": self.next_op,
            "done": self.done,
            "failed": self.failed,
            "jobs": [j.to_json() for j in self.jobs],
        }

    @classmethod
    def from_json(cls, host: str, d: object) -> HostState:
        if not isinstance(d, dict):
            return cls(host)
        return cls(
            host=host,
            gen=int(d.get("gen", 0)),
            next_seq=int(d.get("next_seq", 1)),
            next_op=int(d.get("next_op", 1)),
            done=int(d.get("done", 0)),
            failed=int(d.get("failed", 0)),
            jobs=[Job.from_json(j) for j in d.get("jobs", [])],
        )
