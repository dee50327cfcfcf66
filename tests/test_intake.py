"""Taking lines: how many ahead (the prefetch), and not waiting for a busy lock while the
host's jobs still run (taking ahead, compaction at a tick)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ledger import ListLog, make_ledger
from test_locking import HOLD, child, wait_for

from pbq.host.intake import PREFETCH_MAX, Intake
from pbq.host.jobs import JobBook, JobState
from pbq.jobfile import JobQueue


def intake(tmp_path: Path, lines: int = 10, compact_after: float = 60.0) -> Intake:
    jf = tmp_path / "jobfile"
    jf.write_text("".join(f"echo {i}\n" for i in range(lines)))
    jf.chmod(0o644)
    book = JobBook("h1")
    ledger, _ = make_ledger(tmp_path, book)
    queue = JobQueue(jf, fsync=False, compact_after=compact_after)
    return Intake(queue, book, ledger, ListLog(), False, 0)


@pytest.mark.parametrize(
    ("avg", "limit", "cost", "expected"),
    [
        (None, 2, 0.0, 0),  # no run time known yet
        (0.6, 2, 0.0, 0),  # long jobs: nothing ahead
        (0.1, 1, 0.0, 5),  # half a second of work
        (0.1, 2, 0.0, 10),  # ... for each slot
        (0.1, 1, 2.0, 40),  # a take costs 2 s lately: twice that
        (0.1, 1, 60.0, 50),  # at most 5 s of work
        (0.001, 2, 0.0, PREFETCH_MAX),
    ],
)
def test_prefetch(tmp_path: Path, avg: float | None, limit: float, cost: float,
                  expected: int) -> None:
    it = intake(tmp_path)
    it.take_cost = cost
    assert it.prefetch(avg, limit) == expected


def test_a_take_that_may_not_wait_takes_nothing_from_a_busy_jobfile(tmp_path: Path) -> None:
    it = intake(tmp_path)
    ready = tmp_path / "ready"
    with child(HOLD, "flock", it.queue.jobfile, ready, 30) as p:
        wait_for(ready.exists, what="another process to hold the lock")
        assert it.take(3, wait=False) == []
        assert not it.book.in_state(JobState.CLAIMED) and it.may_have_lines()
        it.compact_if_due(1e12)  # due, but the lock is busy: not waited for
        assert p.poll() is None and it.take_cost == 0.0
        assert p.stdin is not None
        p.stdin.close()
        assert p.wait(timeout=10) == 0
    jobs = it.take(3, wait=False)
    assert [j.line for j in jobs] == [b"echo 0", b"echo 1", b"echo 2"]
    assert it.take_cost > 0.0, "what the take cost is remembered"
