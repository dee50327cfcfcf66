"""The host's write-ahead record: what it holds must be on disk before the jobfile gives
its line away, and a job leaves it only once its outcome is written or its line is back.

``JOBFILE.HOST.state`` is a snapshot of the :class:`JobBook`, replaced whole (temp file +
rename) at most every ``SNAPSHOT_EVERY`` seconds while jobs churn; in between, the few facts
that must be on record before the next snapshot (lines taken, jobs being started, their
pids, jobs that ended) are appended to ``JOBFILE.HOST.journal``, tagged with the snapshot
generation they follow.  A take is written ahead as one journal record synced to disk (one
fsync while the jobfile lock is held, where a snapshot costs two), so the snapshot the
record follows must itself be on disk first: :meth:`Ledger.make_durable`, before the lock.
Outcomes go out in a fixed order -- joblog and ``.error`` first, then put-backs, then the
state -- so a crash in between repeats a record rather than losing a job.  On a full disk
the buffers keep what could not be written and the host takes nothing new.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import PbqError
from ..jobfile import JobQueue, Txn, error_seq_records, seq_annotated
from ..safety import read_trusted_json, read_trusted_json_lines
from ..sidefiles import append_joblog_rows
from ..statefiles import HostFiles, append_bytes, atomic_write_json, fsync_dir, sync_file
from .jobs import Job, JobBook, JobState

SNAPSHOT_EVERY = 2.0  # seconds between state snapshots while jobs churn (the journal fills in)
JOURNAL_CUT = 1 << 16  # bytes of obsolete journal records before the file is emptied
STATE_FORMAT = 2  # 1: the first release (flags in "extra"); 2: every state a JobState
# A journal record's format: 3 = the "claimed" record (lines taken, written ahead).  A reader
# of format 2 would skip it and lose those lines after a crash, so it must refuse the file.
CLAIM_FORMAT = 3


class Replaced(RuntimeError):
    """Another scheduler took this host over (a newer epoch in the queue record): this one
    must not signal, reap, record or take anything again.  Not a PbqError, so that no
    handler of a full disk or a refused file mistakes it for something to retry."""


class Log(Protocol):
    def __call__(self, message: str, when: float | None = None) -> None: ...
    def flush(self) -> None: ...


def check_format(obj: object, path: Path, current: int) -> None:
    """Refuse a record written by a newer, incompatible pbq: a half-upgraded fleet must
    never rewrite what it does not understand."""
    if isinstance(obj, dict):
        fmt = obj.get("format", 1)
        if isinstance(fmt, int) and fmt > current:
            raise PbqError(
                f"written by a newer pbq (format {fmt}, this one reads up to {current}); "
                "upgrade pbq on this machine",
                path=str(path),
            )


class Ledger:
    def __init__(
        self, files: HostFiles, book: JobBook, log: Log, fsync: bool, mono: Callable[[], float]
    ) -> None:
        self.files = files
        self.book = book
        self.log = log
        self.fsync = fsync
        self.mono = mono
        self.gen = 0  # snapshot generation: journal records of another generation are obsolete
        self.ended_seqs: list[int] = []  # dropped since the last snapshot (journaled)
        self.next_snapshot = -float("inf")
        self.journal_used = True  # an old journal may exist: its records are of older generations
        self.journal_bytes = 1 << 20  # so the first snapshot cuts it
        self.durable_gen = -1  # the snapshot generation known to be on disk (fsync'ed)
        self.journal_durable = False  # the journal's name is on disk (its directory synced)
        self.journal_due: list[bytes] = []  # records that may wait for the pass's next write
        self.joblog_rows: list[str] = []
        self.error_lines: list[bytes] = []
        self.error_seqs: list[int | None] = []  # their Seqs, for .errseq (see requeue-errors)
        self.disk_error: str | None = None
        self._said: set[str] = set()
        self.paused = False  # a user's `stop` is kept across restarts until `cont`
        self.epoch = 0  # the owner's epoch, written into every snapshot
        self.fence: Callable[[Txn | None], None] | None = None  # raises when no longer the owner
        # The same check, made again only if the pass's own is some time old: a scheduler
        # frozen (SIGSTOP, a hung machine) in the middle of a pass and resumed after another
        # took the host over must not write its snapshot, journal or joblog over the new
        # owner's.
        self.recheck: Callable[[float], None] | None = None

    # -- start-up -------------------------------------------------------------

    def load(self, allow_group_write: bool = False) -> JobBook:
        """The book as the last run left it: the snapshot plus the journal after it.

        Both decide which lines run and go back to the jobfile, so a file that someone
        other than you could have written (or planted) is refused: UntrustedFile."""
        raw = read_trusted_json(self.files.state, "state file", allow_group_write)
        check_format(raw, self.files.state, STATE_FORMAT)
        self.book.load_json(raw)  # in place: the loop's parts hold this book
        self.gen = int(raw.get("gen", 0)) if isinstance(raw, dict) else 0
        self.paused = bool(raw.get("paused", False)) if isinstance(raw, dict) else False
        self.replay(read_trusted_json_lines(self.files.journal, "journal", allow_group_write))
        return self.book

    def replay(self, records: list[Any]) -> None:
        """Apply the journal's records of the snapshot's generation (crash recovery)."""
        book = self.book
        for rec in records:
            check_format(rec, self.files.journal, CLAIM_FORMAT)
            if not isinstance(rec, dict) or rec.get("g") != self.gen:
                continue
            self._replay_claims(rec)
            for seq in rec.get("starting", []):
                job = book.get(seq)
                if job is not None and job.state is JobState.CLAIMED:
                    book.starting(job)
            for seq, cid, started in rec.get("submitted", []):
                job = book.get(seq)
                if job is not None and job.state is JobState.STARTING:
                    book.started(job, started, cluster_id=cid)
            for seq, pid, pid_start, started in rec.get("started", []):
                job = book.get(seq)
                if job is not None and job.state is JobState.STARTING:
                    book.started(job, started, pid=pid, pid_start=pid_start)
                elif job is not None and job.state is JobState.TERMINATING and job.pid is None:
                    job.pid, job.pid_start, job.started = pid, pid_start, started
            for seq in rec.get("ended", []):
                job = book.get(seq)
                if job is not None:
                    book.drop(job)
            if "done" in rec:
                book.counters.done, book.counters.failed = int(rec["done"]), int(rec["failed"])

    def _replay_claims(self, rec: dict[str, Any]) -> None:
        """Lines a take wrote ahead: CLAIMED jobs (recovery keeps those whose operation the
        jobfile's record reached, see plan_recovery), and the counters past them."""
        claimed = rec.get("claimed")
        if not isinstance(claimed, list):
            return
        c = self.book.counters
        for raw in claimed:
            job = Job.from_json(raw)
            if self.book.get(job.seq) is None:
                self.book.restore(job)
            c.next_seq = max(c.next_seq, job.seq + 1)
            c.next_op = max(c.next_op, job.op + 1)

    # -- snapshot and journal -----------------------------------------------------

    def save(self, fsync: bool = False) -> None:
        """Write a new snapshot; the journal before it is obsolete."""
        self._still_owner()
        # The journal is emptied only after a snapshot that is on disk: it may hold takes.
        cut = self.journal_used and self.journal_bytes > JOURNAL_CUT
        fsync = fsync or (cut and self.fsync)
        self.gen += 1
        doc = {
            "format": STATE_FORMAT,
            "host": self.book.host,
            "gen": self.gen,
            "paused": self.paused,
            "epoch": self.epoch,
            **self.book.to_json(),
        }
        try:
            atomic_write_json(self.files.state, doc, fsync=fsync)
        except PbqError:
            self.gen -= 1  # the journal must keep following the snapshot on disk
            raise
        if fsync:
            self.durable_gen = self.gen
        self.book.changed = False
        self.ended_seqs = []
        self.journal_due = []  # the snapshot holds what they say (replay skips them anyway)
        self.next_snapshot = self.mono() + SNAPSHOT_EVERY
        if not self.journal_used:
            self.journal_bytes = 0
        elif cut:
            with contextlib.suppress(OSError):
                os.truncate(self.files.journal, 0)
            self.journal_used = False
            self.journal_bytes = 0

    def save_if_changed(self) -> None:
        """End of a pass: a snapshot at most every SNAPSHOT_EVERY seconds; in between, the
        jobs that ended go to the journal (a small append instead of a rewrite)."""
        if not self.book.changed:
            return
        try:
            if self.mono() >= self.next_snapshot:
                self.save()
            elif self.ended_seqs:
                c = self.book.counters
                self.journal({"ended": self.ended_seqs, "done": c.done, "failed": c.failed},
                             defer=True)
                self.ended_seqs = []
        except PbqError as err:
            self.disk_problem(err)

    def snapshot_soon(self) -> None:
        self.next_snapshot = -float("inf")

    def journal(self, rec: dict[str, Any], defer: bool = False) -> None:
        """Put a fact on record before the next snapshot (one small append).

        A ``defer``red record (a pid, an end not acknowledged yet) goes with the next write
        of the pass (``flush_journal``, or a record that may not wait): one append per pass
        instead of three per job.  Raises PbqError; deferred records are then kept."""
        rec["g"] = self.gen
        rec["format"] = STATE_FORMAT
        data = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        if defer:
            self.journal_due.append(data)
            return
        self._append_journal([*self.journal_due, data])
        self.journal_due = []

    def make_durable(self) -> None:
        """Before a take, outside the jobfile lock: the snapshot its record will follow, and
        the journal's name, on disk (nothing to do while they are; with ``fsync = false``
        nothing is ever synced).  Raises PbqError."""
        if not self.fsync:
            return
        if self.durable_gen != self.gen:
            self._still_owner()
            sync_file(self.files.state)
            self.durable_gen = self.gen
        if not self.journal_durable:
            append_bytes(self.files.journal, b"")  # create it (empty) if it is not there
            fsync_dir(self.files.journal.parent)
            self.journal_durable = True

    def journal_claims(self, jobs: list[Job]) -> None:
        """The write-ahead record of a take, synced: these lines are ours, before the
        jobfile's record gives them away.  Deferred records go with it.  Raises PbqError."""
        self.make_durable()  # (done before the lock already: nothing to do here)
        c = self.book.counters
        rec = {"g": self.gen, "format": CLAIM_FORMAT, "claimed": [j.to_json() for j in jobs],
               "next_seq": c.next_seq, "next_op": c.next_op}
        data = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        self._append_journal([*self.journal_due, data], fsync=self.fsync)
        self.journal_due = []

    def flush_journal(self) -> None:
        """Write the deferred records: before the ends they name are acknowledged, and at
        the end of each pass."""
        if self.journal_due:
            try:
                self._append_journal(self.journal_due)
                self.journal_due = []
            except PbqError as err:
                self.disk_problem(err)

    def _still_owner(self) -> None:
        if self.recheck is not None:
            self.recheck(self.mono())  # raises Replaced

    def _append_journal(self, records: list[bytes], fsync: bool = False) -> None:
        self._still_owner()
        data = b"".join(records)
        append_bytes(self.files.journal, data, fsync=fsync)
        self.journal_used = True
        self.journal_bytes += len(data)

    def drop(self, job: Job) -> None:
        self.book.drop(job)
        self.ended_seqs.append(job.seq)

    # -- outcomes -------------------------------------------------------------------

    def record(
        self, row: str | None = None, error_line: bytes | None = None, error_seq: int | None = None
    ) -> None:
        if row is not None:
            self.joblog_rows.append(row)
        if error_line is not None:
            self.error_lines.append(error_line)
            self.error_seqs.append(error_seq)

    def pending(self) -> bool:
        """Outcomes or put-backs not written yet (a full disk): the host must not exit."""
        unsettled = self.book.in_state(
            JobState.REQUEUE_FRONT, JobState.REQUEUE_END, JobState.SETTLING
        )
        return bool(self.joblog_rows or self.error_lines or unsettled)

    def flush(self, queue: JobQueue, txn: Txn | None = None) -> int:
        """Write what ended: joblog and .error first, then put-backs.  Returns how many lines
        went back into the jobfile.  Buffers are cleared only once written."""
        if self.joblog_rows or self.error_lines:
            self._still_owner()
        if self.joblog_rows:
            try:
                append_joblog_rows(self.files.joblog, self.joblog_rows)
                self.joblog_rows.clear()
            except PbqError as err:
                self.disk_problem(err)
        if self.error_lines:
            try:
                append_bytes(self.files.error, b"".join(line + b"\n" for line in self.error_lines))
                with contextlib.suppress(PbqError):  # without it, requeued lines get new Seqs
                    append_bytes(
                        self.files.path("errseq"),
                        error_seq_records(self.error_lines, self.error_seqs),
                    )
                self.error_lines.clear()
                self.error_seqs.clear()
            except PbqError as err:
                self.disk_problem(err)
        if not self.book.in_state(JobState.REQUEUE_FRONT, JobState.REQUEUE_END, JobState.SETTLING):
            return 0
        try:
            if txn is not None:
                return self.put_back(txn)
            with queue.transaction() as t:
                return self.put_back(t)
        except PbqError as err:
            self.disk_problem(err)  # the jobs stay in the book: retried next pass
            return 0

    def put_back(self, txn: Txn) -> int:
        """Under the jobfile lock: lines back into the jobfile, retry counts cleared.

        The put-back is written ahead (state, fsync'ed) under a new operation number, so a
        crash before the jobfile's commit record redoes it and one after it does not."""
        if self.fence is not None:
            self.fence(txn)  # a replaced owner puts nothing back: its jobs are the new owner's
        front = [j for j in self.book.in_state(JobState.REQUEUE_FRONT) if j.putback_op is None]
        end = [j for j in self.book.in_state(JobState.REQUEUE_END) if j.putback_op is None]
        settling = self.book.in_state(JobState.SETTLING)
        host = self.book.host
        if front or end:
            # One operation per side: each commits on its own, so a crash between the two
            # redoes exactly the one that did not commit.
            ops = {
                id(j): op
                for group in (front, end)
                if group
                for op in [self.book.new_op()]
                for j in group
            }
            for job in front + end:
                job.putback_op = ops[id(job)]
            try:
                self.save(fsync=True)
                self.log.flush()  # the log names every put-back before it commits
                for job in end:
                    txn.set_retries(job.line, job.tries)
                # Each line keeps its Seq: "#pbq-seq N" before it (see pbq.jobfile.take).
                if front:
                    txn.prepend(
                        seq_annotated([j.line for j in front], [j.line_seq for j in front]),
                        host,
                        front[0].putback_op or 0,
                    )
                if end:
                    txn.append(
                        seq_annotated([j.line for j in end], [j.line_seq for j in end]),
                        host,
                        end[0].putback_op or 0,
                    )
            except PbqError:
                for job in front + end:
                    if job.putback_op is not None and job.putback_op > txn.state.ops.get(host, 0):
                        job.putback_op = None  # not committed: the next pass puts it back anew
                raise
        for job in settling:
            txn.set_retries(job.line, 0)
        for job in front + end + settling:
            self.drop(job)
        return len(front) + len(end)

    # -- a full disk ------------------------------------------------------------------

    def disk_problem(self, err: PbqError) -> None:
        msg = str(err)
        if msg not in self._said:  # each message once per episode, not every tick
            self._said.add(msg)
            self.log(f"ERROR: {msg}; not taking new jobs until it is fixed")
            sys.stderr.write(f"pbq-single: {msg}\n")
        self.disk_error = msg

    def retry_disk(self, queue: JobQueue) -> None:
        try:
            self.save()
        except PbqError:
            return
        self.flush(queue)
        if self.joblog_rows or self.error_lines:
            return
        self.disk_error = None
        self._said.clear()
        self.log("file system writable again: resuming")
