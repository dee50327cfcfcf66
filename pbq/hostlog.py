"""The human-readable ``.log``, rotated by size.  (Record formats, the joblog among them,
are in ``pbq.sidefiles``.)"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .statefiles import append_bytes


class HostLog:
    """Timestamped lines, buffered within one scheduler pass and written with one append.

    When the file grows past ``max_bytes`` it is renamed to ``.log.1`` (older ones shift
    to ``.log.2`` ... ``.log.<backups>``).  If the log cannot be written (disk full), the
    message goes to standard error instead: the scheduler keeps working.
    """

    def __init__(
        self, path: Path, max_bytes: int = 10 << 20, backups: int = 3, echo: bool = False
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.echo = echo
        self._buf: list[str] = []
        try:
            self._size = os.stat(path).st_size
        except OSError:
            self._size = 0
        self._failed = False

    def __call__(self, message: str, when: float | None = None) -> None:
        t = time.time() if when is None else when
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
        self._buf.append(f"{stamp} {message}\n")
        if self.echo:
            sys.stderr.write(f"{stamp} {message}\n")

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "surrogateescape")
        self._buf.clear()
        if self.max_bytes and self._size + len(data) > self.max_bytes and self._size > 0:
            self._rotate()
        try:
            append_bytes(self.path, data)
            self._size += len(data)
            self._failed = False
        except Exception as err:  # noqa: BLE001 - a log must never stop the scheduler
            if not self._failed:
                sys.stderr.write(f"pbq: cannot write {self.path}: {err}\n")
                self._failed = True
            sys.stderr.write(data.decode("utf-8", "replace"))

    def _rotate(self) -> None:
        try:
            for i in range(self.backups - 1, 0, -1):
                old = self.path.with_name(f"{self.path.name}.{i}")
                if old.exists():
                    os.replace(old, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.backups > 0:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                os.unlink(self.path)
        except OSError:
            pass
        self._size = 0

