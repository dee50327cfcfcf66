"""The median running time of earlier successful runs per command key, from
``JOBFILE.usage``, read again only when the file changed (a stat per use, not a read)."""

from __future__ import annotations

import os
from pathlib import Path

from ..predict import ResourceStore


class MedianRuntimes:
    def __init__(self, usage_path: Path, min_runs: int) -> None:
        self.store = ResourceStore(usage_path)
        self.min_runs = min_runs
        self.medians: dict[str, float] = {}
        self._seen: tuple[int, int] | None = None  # (size, mtime) of the usage file read

    def refresh(self) -> None:
        try:
            st = os.stat(self.store.path)
        except OSError:
            return
        seen = (st.st_size, st.st_mtime_ns)
        if seen != self._seen:
            self._seen = seen
            self.medians = self.store.median_runtimes(self.min_runs)

    def get(self, key: str) -> float | None:
        return self.medians.get(key)
