"""This host's line of the hostfile (max, wday, interactive, drm and resources), read at
start and again whenever the hostfile changes (or on SIGHUP)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import PbqError
from ..hostfile import Host, find_host, load_hostfile
from ..safety import check_input_file
from .ledger import Log


class HostEntry:
    def __init__(self, hostfile: Path, host: str, allow_group_write: bool, log: Log) -> None:
        self.hostfile = hostfile
        self.host = host
        self.allow_group_write = allow_group_write
        self.log = log
        self.entry: Host | None = None
        self.mtime: float | None = None

    def load(self) -> Host:
        check_input_file(self.hostfile, "hostfile", self.allow_group_write)
        hosts = load_hostfile(self.hostfile)
        self.entry = find_host(hosts, self.host, str(self.hostfile))
        with contextlib.suppress(OSError):
            self.mtime = os.stat(self.hostfile).st_mtime
        return self.entry

    def reload(self, force: bool = False) -> None:
        """Read it again if it changed; a broken or executor-changing edit keeps the old."""
        try:
            mtime = os.stat(self.hostfile).st_mtime
        except OSError:
            return
        if not force and mtime == self.mtime:
            return
        old = self.entry
        try:
            h = self.load()
        except PbqError as err:
            self.mtime = mtime
            self.log(f"hostfile changed but is not usable, keeping the old settings: {err}")
            return
        if old is not None and bool(old.drm) != bool(h.drm):
            self.entry = old  # a running scheduler does not change executors
            self.log("hostfile changed this host's drm= field: restart the scheduler for that")
            return
        if old != h:
            self.log(f"hostfile reloaded: max {h.max:g} wday {h.wday:g} "
                     f"interactive {h.interactive}")
