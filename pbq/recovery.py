"""Putting jobs back by hand: ``pbq control ... recover HOST`` and ``requeue-errors``.

Both are exactly-once under crashes, like everything that changes the jobfile: what is
about to go back is put on record first, and the jobfile's commit record
(``JOBFILE.queue``) says whether it went back.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from .config import Config
from .errors import PbqError
from .jobfile import JobQueue
from .model import HostState, JobState
from .scheduler import is_local, read_pidfile
from .sensors import same_process
from .statefiles import (
    HostFiles,
    atomic_write,
    atomic_write_json,
    hosts_with,
    read_json,
    read_json_lines,
    unlink_quietly,
)


def _queue(jobfile: Path, cfg: Config) -> JobQueue:
    return JobQueue(
        jobfile,
        lock=cfg.jobfile.lock,
        fsync=cfg.jobfile.fsync,
        compact_after=cfg.jobfile.compact_after,
        stale_lock_after=cfg.jobfile.stale_lock_after,
    )


def recover_hosts(jobfile: Path, hosts: list[str], cfg: Config, stale_after: float = 600.0) -> list[str]:
    """Requeue the running and stopped jobs of hosts whose scheduler is dead."""
    out = []
    queue = _queue(jobfile, cfg)
    for host in hosts:
        files = HostFiles(jobfile, host)
        info = read_pidfile(files.pid)
        status = read_json(files.status)
        status = status if isinstance(status, dict) else {}
        if info is not None:
            if is_local(info):
                if same_process(info["pid"], info.get("start")):
                    raise PbqError(f"host {host}: its scheduler (pid {info['pid']}) is alive; stop it first (quit or term)")
            else:
                age = time.time() - float(status.get("time", 0) or 0)
                if status.get("state") not in ("exited", "terminated") and age < stale_after:
                    raise PbqError(
                        f"host {host}: its heartbeat is only {age:.0f} s old (machine "
                        f"{info.get('machine')}); refusing while it may be alive "
                        f"(--stale-after {stale_after:g})"
                    )
        with queue.transaction() as txn:
            raw = read_json(files.state)
            if raw is None and not files.state.exists():
                # No state file (an old PBQ-style host): trust .running/.stopped.
                lines = []
                for ext in ("running", "stopped"):
                    try:
                        lines += [ln for ln in files.path(ext).read_bytes().split(b"\n") if ln.strip()]
                    except OSError:
                        pass
                if lines:
                    txn.prepend(lines, f"recover:{host}", txn.state.ops.get(f"recover:{host}", 0) + 1)
                for ext in ("running", "stopped"):
                    if files.path(ext).exists():
                        atomic_write(files.path(ext), b"")
                out.append(f"{host}: put {len(lines)} job(s) back at the front of the jobfile")
                unlink_quietly(files.pid)
                continue
            state = HostState.from_json(host, raw)
            state.apply_journal(read_json_lines(files.journal))  # what ended after the snapshot
            state.gen += 1  # the snapshots written below supersede that journal
            committed = txn.state.ops.get(host, 0)
            back = [
                j
                for j in state.jobs
                if (j.state in (JobState.RUNNING, JobState.STOPPED) or (j.state in (JobState.STARTING, JobState.CLAIMED) and j.op <= committed))
                or (j.state is JobState.REQUEUE and j.op > committed)
            ]
            if back:
                op = max(state.next_op, committed + 1)
                state.next_op = op + 1
                for job in back:
                    job.state, job.op = JobState.REQUEUE, op
                atomic_write_json(files.state, state.to_json(), fsync=cfg.jobfile.fsync)
                txn.prepend([j.line for j in back], host, op)
            ids = {id(j) for j in back}
            state.jobs = [j for j in state.jobs if id(j) not in ids and j.state is not JobState.REQUEUE]
            atomic_write_json(files.state, state.to_json(), fsync=cfg.jobfile.fsync)
            for ext in ("running", "stopped"):
                atomic_write(files.path(ext), b"")
            unlink_quietly(files.pid)
        out.append(f"{host}: put {len(back)} job(s) back at the front of the jobfile")
    return out


_REQUEUE_RE = re.compile(r"\.error\.requeue-(\d+)$")


def requeue_errors(jobfile: Path, hosts: list[str] | None, cfg: Config) -> list[str]:
    """Append the ``.error`` lines back to the jobfile and empty those files (under the lock)."""
    out = []
    queue = _queue(jobfile, cfg)
    for host in hosts or hosts_with(jobfile, "error"):
        files = HostFiles(jobfile, host)
        key = f"errors:{host}"
        with queue.transaction() as txn:
            # Finish a requeue that a crash interrupted: the file name carries its op.
            prefix = files.error.name + ".requeue-"
            leftovers = sorted(p for p in os.listdir(jobfile.parent) if p.startswith(prefix))
            count = 0
            for name in leftovers:
                m = _REQUEUE_RE.search(name)
                if not m:
                    continue
                op = int(m.group(1))
                path = jobfile.parent / name
                if txn.state.ops.get(key, 0) < op:
                    lines = [ln for ln in path.read_bytes().split(b"\n") if ln.strip()]
                    txn.append(lines, key, op)
                    count += len(lines)
                unlink_quietly(path)
            if files.error.exists():
                op = txn.state.ops.get(key, 0) + 1
                moving = files.error.with_name(f"{files.error.name}.requeue-{op}")
                os.replace(files.error, moving)  # a scheduler appending now starts a new .error
                lines = [ln for ln in moving.read_bytes().split(b"\n") if ln.strip()]
                txn.append(lines, key, op)
                unlink_quietly(moving)
                count += len(lines)
                atomic_write(files.error, b"")
        out.append(f"{host}: appended {count} failed job(s) to the jobfile")
    return out
