"""The lock-time histograms a scheduler keeps in its .status."""

from __future__ import annotations

from pathlib import Path

import pytest
from pbqtest import FAST_CONFIG, config, hostfile, jobfile, start_scheduler, status, wait_exit

from pbq.lockstats import BASE, BUCKETS, Histogram, bucket, upper


@pytest.mark.parametrize("seconds", [0.0, 1e-6, BASE, 2e-5, 1e-4, 0.0123, 0.05, 1.0, 30.0])
def test_a_figure_falls_in_the_bucket_whose_bounds_hold_it(seconds: float) -> None:
    i = bucket(seconds)
    assert seconds <= upper(i)
    assert i == 0 or seconds > upper(i - 1)


def test_huge_figures_go_to_the_last_bucket() -> None:
    assert bucket(1e9) == BUCKETS - 1


def test_quantiles_and_merging() -> None:
    a, b = Histogram(), Histogram()
    for _ in range(98):
        a.add(0.001)
    b.add(0.2)
    b.add(0.2)
    assert a.quantile(0.5) == upper(bucket(0.001))
    merged = Histogram().merge([a, b])
    assert merged.total == 100
    assert merged.quantile(0.5) == upper(bucket(0.001))
    assert merged.quantile(0.99) == upper(bucket(0.2))
    assert Histogram().quantile(0.5) is None
    assert Histogram(merged.as_tuple()).counts == merged.counts
    assert Histogram().as_tuple() is None


def test_a_scheduler_reports_its_lock_times_in_its_status(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["true"] * 20)
    hf = hostfile(tmp_path)
    assert wait_exit(start_scheduler(hf, jf, "--exit-when-empty"), 60) == 0
    st = status(jf, "h1")
    wait, hold = Histogram(st["lock_wait"]), Histogram(st["lock_hold"])
    start = Histogram(st["lock_wait_start"])
    assert start.total >= 2, "the start-up's claim and first take, kept apart"
    assert wait.total >= 1 and hold.total == wait.total + start.total
    p99 = hold.quantile(0.99)
    assert p99 is not None and p99 < 60
