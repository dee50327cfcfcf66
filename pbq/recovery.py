"""Putting jobs back by hand: ``pbq control ... recover HOST`` and ``requeue-errors``.

Both are exactly-once under crashes, like everything that changes the jobfile: what is
about to go back is put on record first, and the jobfile's commit record
(``JOBFILE.queue``) says whether it went back.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

from .config import Config
from .errors import PbqError
from .host.jobs import UNKNOWN_EXIT, Job, JobBook, JobState, Outcome, outcome_of
from .host.ledger import Ledger
from .host.outcomes import Outcomes
from .hostlog import HostLog
from .jobfile import JobQueue, Txn, error_seqs_by_key, is_job_line, line_key, seq_annotated
from .safety import check_input_file, check_jobfile_directory, read_trusted
from .sidefiles import (
    ExitRecord,
    Liveness,
    exit_records_by_job,
    host_liveness,
    read_exit_records,
)
from .statefiles import (
    HostFiles,
    atomic_write,
    hosts_with,
    read_json,
    unlink_quietly,
)


def _queue(jobfile: Path, cfg: Config) -> JobQueue:
    """The jobfile's queue, once the jobfile and its directory are safe to put lines in."""
    group_ok = cfg.scheduler.allow_group_write
    check_jobfile_directory(jobfile, group_ok)
    check_input_file(jobfile, "jobfile", group_ok)
    return JobQueue(
        jobfile,
        lock=cfg.jobfile.lock,
        fsync=cfg.jobfile.fsync,
        compact_after=cfg.jobfile.compact_after,
        stale_lock_after=cfg.jobfile.stale_lock_after,
        allow_group_write=group_ok,
    )


def _job_lines(path: Path, what: str, cfg: Config) -> list[bytes]:
    """The job lines of a side file that is to go back into the jobfile: only from a file
    that is yours and closed to others (UntrustedFile otherwise)."""
    data = read_trusted(path, what, cfg.scheduler.allow_group_write) or b""
    return [ln for ln in data.split(b"\n") if ln.strip()]


RECOVER_STALE_AFTER = 600.0  # seconds of silence before recover takes a remote host's jobs


def recover_hosts(
    jobfile: Path, hosts: list[str], cfg: Config, stale_after: float = RECOVER_STALE_AFTER
) -> list[str]:
    """Requeue the running and stopped jobs of hosts whose scheduler is dead.

    A scheduler elsewhere counts as dead once its heartbeat is ``stale_after`` seconds old
    (or it said it exited); one on this machine only once its process is gone.
    """
    out = []
    queue = _queue(jobfile, cfg)
    for host in hosts:
        files = HostFiles(jobfile, host)
        _info, _status, verdict = host_liveness(files, time.time(), threshold=stale_after)
        if verdict.state is Liveness.ALIVE:
            if verdict.exact:
                why = f"its scheduler ({verdict.reason}) is alive; stop it first (quit or term)"
            else:
                why = (
                    f"its scheduler may be alive ({verdict.reason}); refusing while it may be "
                    f"alive (--stale-after {stale_after:g})"
                )
            raise PbqError(f"host {host}: {why}")
        with queue.transaction() as txn:
            raw = read_json(files.state)
            if raw is None and not files.state.exists():
                # No state file (an old PBQ-style host): trust .running/.stopped.
                lines = []
                for ext in ("running", "stopped"):
                    lines += _job_lines(files.path(ext), f".{ext} file", cfg)
                if lines:
                    key = f"recover:{host}"
                    txn.prepend(lines, key, txn.state.ops.get(key, 0) + 1)
                for ext in ("running", "stopped"):
                    if files.path(ext).exists():
                        atomic_write(files.path(ext), b"")
                out.append(f"{host}: put {len(lines)} job(s) back at the front of the jobfile")
                unlink_quietly(files.pid)
                continue
            count = _put_back_host(files, txn, cfg, queue)
            for ext in ("running", "stopped"):
                atomic_write(files.path(ext), b"")
            unlink_quietly(files.pid)
        out.append(f"{host}: put {count} job(s) back at the front of the jobfile")
    return out


def _settle_or_requeue(job: Job, records: dict[tuple[int, float | None], ExitRecord],
                       outcomes: Outcomes, log: HostLog) -> None:
    """A job of a dead host: if its job runner recorded its end, that is its outcome (it
    never runs again); only a job whose end is truly unknown goes back, named in the log."""
    if job.pid is not None:
        rec = records.get((job.pid, None if job.pid_start is None else round(job.pid_start, 2)))
    else:  # asked to start, its pid never on the ledger: the runner's record names the job
        rec = exit_records_by_job(records.values()).get(job.seq)
    jid = outcomes.book.job_id(job)
    line = job.line.decode(errors="replace")
    if job.state is JobState.CANCELLING:  # cancelled: never runs again, whatever its end
        log(f"recover: job {jid} was being cancelled when its host went down: {line}")
        exit_of = (outcome_of(rec.status, rec.cpu, rec.maxrss, "exit status recorded by the job "
                              "runner") if rec is not None
                   else Outcome(UNKNOWN_EXIT, note="its end was not recorded"))
        outcomes.finish(job, exit_of, when=rec.time if rec is not None else None)
        return
    if rec is not None and job.state in (JobState.STARTING, JobState.RUNNING, JobState.STOPPED,
                                         JobState.TIMING_OUT):
        log(f"recover: job {jid} ended while its host was down; recording its end: {line}")
        outcomes.finish(job, outcome_of(rec.status, rec.cpu, rec.maxrss, "exit status recorded by "
                                        "the job runner"), when=rec.time)
        return
    log(f"recover: putting job {jid} back at the front (POSSIBLE DUPLICATE if it had run): {line}")
    outcomes.book.requeue(job, front=True)


def _put_back_host(files: HostFiles, txn: Txn, cfg: Config, queue: JobQueue) -> int:
    """Every job the dead host held goes back to the front, exactly once (its ledger's
    put-back, under the lock the caller holds)."""
    log = HostLog(files.log, cfg.log.max_bytes, cfg.log.backups)
    ledger = Ledger(files, JobBook(files.host), log, cfg.jobfile.fsync, time.monotonic)
    book = ledger.load(cfg.scheduler.allow_group_write)
    committed = txn.state.ops.get(files.host, 0)
    records = read_exit_records(files.exits, cfg.scheduler.allow_group_write)
    usage = files.jobfile.with_name(files.jobfile.name + ".usage")
    outcomes = Outcomes(book, ledger, log, cfg, usage, time.time)
    for job in book:
        if job.state in (JobState.REQUEUE_FRONT, JobState.REQUEUE_END):
            if job.putback_op is not None and job.putback_op <= committed:
                book.drop(job)  # its put-back committed: the line is pending again
            else:
                job.putback_op = None  # redo the put-back now
        elif job.state in (JobState.STARTING, JobState.CLAIMED) and job.op > committed:
            book.drop(job)  # a take that never committed: the line is still pending
        elif job.state is not JobState.SETTLING:
            _settle_or_requeue(job, records, outcomes, log)
    txn.bump_epoch(files.host)  # a scheduler of that host that was only frozen is fenced off
    # joblog rows and .error lines of the ends the runner kept, then the put-backs
    count = ledger.flush(queue, txn)
    if ledger.disk_error is not None:
        raise PbqError(f"host {files.host}: {ledger.disk_error}")
    ledger.paused = False  # the host was declared dead: its next scheduler starts afresh
    ledger.save(fsync=cfg.jobfile.fsync)
    log.flush()
    return count


_REQUEUE_RE = re.compile(r"\.error\.requeue-(\d+)$")


def _leftovers(files: HostFiles) -> list[Path]:
    """``.error`` files of a requeue that a crash interrupted."""
    prefix = files.error.name + ".requeue-"
    directory = files.jobfile.parent
    return [directory / name for name in sorted(os.listdir(directory)) if name.startswith(prefix)]


def _with_seqs(lines: list[bytes], seqs_path: Path) -> list[bytes]:
    """The ``.error`` lines, each with the Seq it had (``#pbq-seq N`` before it) when
    ``.errseq`` knows it: a requeued line keeps its number in the joblog."""
    try:
        by_key = error_seqs_by_key(seqs_path.read_bytes())
    except OSError:
        by_key = {}
    seqs: list[int | None] = []
    for line in lines:
        known = by_key.get(line_key(line)) if is_job_line(line) else None
        seqs.append(known.pop(0) if known else None)
    return seq_annotated(lines, seqs)


def requeue_errors(jobfile: Path, hosts: list[str] | None, cfg: Config) -> list[str]:
    """Append the ``.error`` lines back to the jobfile and empty those files (under the lock)."""
    out = []
    queue = _queue(jobfile, cfg)
    targets = hosts or hosts_with(jobfile, "error")
    for host in targets:
        # Every file first: a planted one refuses the whole command before anything moves.
        for path in [HostFiles(jobfile, host).error, *_leftovers(HostFiles(jobfile, host))]:
            _job_lines(path, "error file", cfg)
    for host in targets:
        files = HostFiles(jobfile, host)
        key = f"errors:{host}"
        with queue.transaction() as txn:
            # Finish a requeue that a crash interrupted: the file name carries its op.
            count = 0
            for path in _leftovers(files):
                m = _REQUEUE_RE.search(path.name)
                if not m:
                    continue
                op = int(m.group(1))
                errseq = files.path("errseq")
                seqs_path = errseq.with_name(f"{errseq.name}.requeue-{op}")
                if txn.state.ops.get(key, 0) < op:
                    lines = _job_lines(path, "error file", cfg)
                    txn.append(_with_seqs(lines, seqs_path), key, op)
                    count += sum(1 for ln in lines if is_job_line(ln))
                unlink_quietly(path)
                unlink_quietly(seqs_path)
            if files.error.exists():
                op = txn.state.ops.get(key, 0) + 1
                moving = files.error.with_name(f"{files.error.name}.requeue-{op}")
                errseq = files.path("errseq")
                seqs_path = errseq.with_name(f"{errseq.name}.requeue-{op}")
                with contextlib.suppress(OSError):
                    os.replace(errseq, seqs_path)  # first: a record written now is the next's
                os.replace(files.error, moving)  # a scheduler appending now starts a new .error
                lines = _job_lines(moving, "error file", cfg)
                txn.append(_with_seqs(lines, seqs_path), key, op)
                unlink_quietly(moving)
                unlink_quietly(seqs_path)
                count += sum(1 for ln in lines if is_job_line(ln))
                atomic_write(files.error, b"")
        out.append(f"{host}: appended {count} failed job(s) to the jobfile")
    return out
