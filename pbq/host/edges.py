"""The edges of the work day, as the scheduler applies them when it starts jobs.

Which of the lines it holds may start now (``policy.may_start_before_work`` decides each):
the expected run time of a line is the median running time of earlier successful runs of
its command key (``JOBFILE.usage``).  Lines are taken with a look-ahead
of ``EDGE_LOOKAHEAD`` so that lines held back do not block shorter ones behind them; held-back
lines go back to the front of the jobfile at the end of the pass, for other hosts or for
later, and when nothing could start the slots above ``wday`` take no lines for
``RETRY_AFTER`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ..config import Config
from ..errors import PbqError
from ..hostfile import Host
from ..policy import may_start_before_work
from ..predict import command_key
from ..statefiles import line_to_text
from .intake import Intake
from .jobs import Job, JobBook
from .ledger import Ledger, Log
from .medians import MedianRuntimes

RETRY_AFTER = 30.0  # seconds after a give-back before held-back slots take lines again
EDGE_LOOKAHEAD = 8  # lines taken beyond the free slots, to look past lines held back


class WorkdayEdge:
    def __init__(self, cfg: Config, usage_path: Path) -> None:
        self.calendar = cfg.schedule.calendar
        self.margin = cfg.schedule.start_margin
        self.medians = MedianRuntimes(usage_path, 1)
        self.gave_back_at: float | None = None  # wall-clock time of the last give-back

    def until_work(self, host: Host, work_time: bool, now: float) -> float | None:
        """Seconds until the wday limit comes into force, when it lowers the limit."""
        if work_time or host.wday >= host.max:
            return None
        start = self.calendar.next_start(datetime.fromtimestamp(now))
        return None if start is None else max(0.0, start.timestamp() - now)

    def expected(self, job: Job) -> float | None:
        return self.medians.get(command_key(line_to_text(job.line)))

    def refresh(self) -> None:
        """Re-read the medians if the usage file changed."""
        self.medians.refresh()

    def pick(
        self, jobs: list[Job], n: int, occupied: int, host: Host, until_work: float | None
    ) -> tuple[list[Job], list[Job]]:
        """Up to ``n`` of ``jobs`` (in order) that may start in the slots after the
        ``occupied`` ones, and the ones held back: those that could not start in the next
        free slot.  The others (startable, beyond ``n``) stay taken ahead."""
        start: list[Job] = []
        held: list[Job] = []
        for job in jobs:
            slot = occupied + len(start) + 1
            if not may_start_before_work(
                slot, host.wday, host.max, until_work, self.expected(job), self.margin
            ):
                held.append(job)
            elif len(start) < n:
                start.append(job)
        return start, held

    def holding_off(self, now: float) -> bool:
        """A give-back was recent: slots above wday take no lines for a while."""
        return self.gave_back_at is not None and 0 <= now - self.gave_back_at < RETRY_AFTER

    def choose_batch(
        self,
        claimed: list[Job],
        n: int,
        occupied: int,
        host: Host,
        until: float,
        now: float,
        take: Callable[[int], list[Job]],
    ) -> tuple[list[Job], list[Job]]:
        """Up to ``n`` lines to start now and the ones held back, from those taken ahead
        and, taken with a look-ahead through ``take``, fresh ones; when nothing could start,
        slots above wday take no lines for a while."""
        self.refresh()
        batch, held = self.pick(claimed, n, occupied, host, until)
        want = n - len(batch)
        ahead = EDGE_LOOKAHEAD
        if want > 0 and self.holding_off(now):
            want = min(want, max(0, int(host.wday) - occupied - len(batch)))  # wday slots only
            ahead = 0
        if want > 0:
            more, held_more = self.pick(
                take(want + ahead), want, occupied + len(batch), host, until
            )
            batch += more
            held += held_more
        if held and not batch:
            self.gave_back_at = now
        return batch, held

    def start_before_work(self, claimed: list[Job], n: int, now: float, until: float,
                          host: Host | None, book: JobBook, ledger: Ledger, intake: Intake,
                          log: Log) -> list[Job]:
        """Before work hours: the lines that may start now; held-back lines go back to the
        front of the jobfile, for other hosts or for later."""
        assert host is not None

        def take(k: int) -> list[Job]:
            try:
                return intake.take(k)
            except PbqError as err:
                ledger.disk_problem(err)
                return []

        batch, held = self.choose_batch(claimed, n, book.running_count(), host, until, now, take)
        if held:
            log(self.held_message(held, until, host))
            for job in held:
                book.requeue(job, front=True)  # CLAIMED -> REQUEUE_FRONT
            if ledger.flush(intake.queue):
                intake.changed()
        return batch

    def held_message(self, held: list[Job], until: float, host: Host) -> str:
        first = held[0]
        expected = self.expected(first) or 0.0
        return (
            f"work hours begin in {until:.0f}s: not starting {len(held)} line(s) whose "
            f"expected run time (e.g. {expected:.0f}s, margin {self.margin:g}s) would run "
            f"past it in a slot above wday {host.wday:g}; back to the front of the jobfile: "
            f"{line_to_text(first.line)}"
        )
