"""How long a scheduler waits for the jobfile lock and holds it: two histograms of
logarithmic buckets, kept in its ``.status`` so that figures of many hosts add up (a
percentile of percentiles would not)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

BUCKETS = 48
BASE = 1e-5  # seconds: the upper bound of bucket 0
STEP = math.sqrt(2.0)  # each bucket's bound is this times the last: figures within 41 %


def bucket(seconds: float) -> int:
    if seconds <= BASE:
        return 0
    return min(BUCKETS - 1, math.ceil(math.log(seconds / BASE, STEP) - 1e-9))


def upper(i: int) -> float:
    """The upper bound of bucket ``i``, in seconds."""
    return BASE * STEP**i


class Histogram:
    def __init__(self, counts: Sequence[int] | None = None) -> None:
        self.counts = [0] * BUCKETS
        if counts is not None:
            for i, c in enumerate(list(counts)[:BUCKETS]):
                self.counts[i] = max(0, int(c))

    def add(self, seconds: float) -> None:
        self.counts[bucket(seconds)] += 1

    def merge(self, others: Iterable[Histogram]) -> Histogram:
        for h in others:
            for i, c in enumerate(h.counts):
                self.counts[i] += c
        return self

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket that holds the ``q`` quantile; None when empty."""
        total = self.total
        if not total:
            return None
        want = q * total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= want:
                return upper(i)
        return upper(BUCKETS - 1)

    def as_tuple(self) -> tuple[int, ...] | None:
        """What ``.status`` keeps: the counts without trailing zeros; None when empty."""
        last = max((i for i, c in enumerate(self.counts) if c), default=-1)
        return tuple(self.counts[: last + 1]) if last >= 0 else None
