"""Ends of jobs: what each outcome means for the job (done, failed, a retry, back in the
jobfile) and what is written for it (joblog row, ``.error`` line, log line, usage)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..errors import PbqError
from ..sidefiles import joblog_row
from ..statefiles import line_to_text
from .executor import Ended
from .jobs import ASKED, UNKNOWN_EXIT, Job, JobBook, JobState, Outcome
from .ledger import Ledger, Log


class Outcomes:
    def __init__(
        self,
        book: JobBook,
        ledger: Ledger,
        log: Log,
        cfg: Config,
        usage_path: Path,
        clock: Callable[[], float],
    ) -> None:
        self.book = book
        self.ledger = ledger
        self.log = log
        self.cfg = cfg
        self.usage_path = usage_path
        self.clock = clock
        self.avg_runtime: float | None = None  # moving average of job run times
        self.ok_by_seq: dict[int, bool] = {}  # ended, usage not reported yet
        self.usage_buf: list[
            tuple[bytes, int, float, float, bool]
        ] = []  # line, rss, cpu, runtime, ok
        self.receive: Callable[[int], int] | None = None  # bytes of output of job HOST.N
        self.on_failed: Callable[[Job, Outcome], None] | None = None  # failed for good

    def ended(self, e: Ended, terminating: bool) -> None:
        """A job's process (or cluster job) ended; ``terminating``: the host is in `term`."""
        job = e.job
        if job.state is JobState.TERMINATING:
            self.book.terminated(job)  # TERMINATING -> TERMINATED
            if not terminating:  # terminated by an earlier run: its line goes back now
                self.book.requeue(job, front=True)
            return
        if job.state is JobState.EVICTING:
            self.book.requeue(job, front=True)  # EVICTING -> REQUEUE_FRONT
            self.log(
                f"job {self.book.job_id(job)} ended by pbq (killed to free memory, or stopped too "
                "long): back at the front of the jobfile"
            )
            return
        if job.state is JobState.CANCELLING:
            self.finish(job, e.outcome, when=e.when)  # CANCELLING -> (gone): "cancelled"
            return
        if job.state is JobState.TIMING_OUT:
            out = e.outcome
            out.note = "timed out" + (f"; {out.note}" if out.note else "")
            self.book.counters.timed_out += 1
            self.finish(job, out, when=e.when, retry=False)  # TIMING_OUT -> .error
            return
        if job.state in (JobState.RUNNING, JobState.STOPPED, *ASKED):
            self.finish(job, e.outcome, when=e.when)

    def finish(self, job: Job, out: Outcome, when: float | None = None, retry: bool = True) -> None:
        """Its joblog row, .error line and log line; then the job leaves the book, settles
        its retry count, or goes back for a retry."""
        # Kept whole: what is recorded, and in which order, is the same for every outcome.
        end = when or self.clock()
        runtime = max(0.0, end - (job.started or end))
        self.avg_runtime = (
            runtime if self.avg_runtime is None else 0.8 * self.avg_runtime + 0.2 * runtime
        )
        if out.maxrss or out.cpu_seconds:
            self.usage_buf.append(
                (job.line, out.maxrss, out.cpu_seconds, job.running_time(end), out.ok)
            )
        elif job.pid is not None:
            self.ok_by_seq[job.seq] = out.ok  # for the usage the job runner reports next
        cancelled = job.state in (JobState.CANCELLING, JobState.CLAIMED)
        if cancelled:
            out.note = "cancelled" + (f"; {out.note}" if out.note else "")
        host = self.book.host
        host_col = f"{host}:{job.cluster_id}" if job.cluster_id else host
        host_col = "_".join(host_col.split()) or "_"  # GNU Parallel refuses a Host with spaces
        got = self.receive(job.seq) if self.receive is not None and job.pid is not None else 0
        self.ledger.record(
            row=joblog_row(
                job.number,
                host_col,
                job.started or end,
                runtime,
                out.exit_code,
                out.signal,
                job.line,
                got,
            )
        )
        how = f"exit {out.exit_code}" if not out.signal else f"signal {out.signal}"
        if out.exit_code == UNKNOWN_EXIT and not out.signal:
            how = "outcome UNKNOWN"
        note = f" ({out.note})" if out.note else ""
        who = (
            f"pid {job.pid}"
            if job.pid
            else f"cluster id {job.cluster_id}"
            if job.cluster_id
            else "never started"
        )
        jid = self.book.job_id(job)
        self.log(f"finished {jid} {who} {how} after {runtime:.1f}s{note}: {line_to_text(job.line)}")
        retries = self.cfg.scheduler.retries
        if cancelled:  # `pbq cancel`: not retried, not in .error (requeue-errors skips it)
            self.book.counters.cancelled += 1
            if job.tries:
                self.book.settling(job)
            else:
                self.ledger.drop(job)
            return
        if retry and not out.ok and job.tries < retries and out.exit_code != UNKNOWN_EXIT:
            job.tries += 1
            self.book.requeue(job, front=False)
            self.log(f"retry {job.tries}/{retries} of {jid}: back at the end of the jobfile")
            return
        c = self.book.counters
        if out.ok:
            c.done += 1
        else:
            c.failed += 1
            self.ledger.record(error_line=job.line, error_seq=job.number)
            if self.on_failed is not None:
                self.on_failed(job, out)
        if job.tries:
            self.book.settling(job)  # its retry count is cleared under the next lock
        else:
            self.ledger.drop(job)

    def usage(self, job: Job, cpu: float, maxrss: int, now: float) -> None:
        ok = self.ok_by_seq.pop(job.seq, False)
        self.usage_buf.append((job.line, maxrss, cpu, job.running_time(now), ok))

    def flush_usage(self) -> None:
        """Peak memory and CPU time of finished jobs, for resource prediction."""
        if not self.usage_buf:
            return
        from ..predict import ResourceStore, Run, command_key

        batch, self.usage_buf = self.usage_buf, []
        now = round(self.clock(), 3)
        try:
            ResourceStore(self.usage_path).record_many(
                [
                    Run(
                        command_key(line_to_text(line)),
                        rss or None,
                        round(cpu, 3),
                        round(rt, 3),
                        now,
                        ok,
                    )
                    for line, rss, cpu, rt, ok in batch
                ]
            )
        except (OSError, PbqError, ValueError):
            pass  # information for prediction: never worth stopping for
