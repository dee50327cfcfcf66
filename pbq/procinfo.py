"""Who a process is: boot id, start time and state, read from /proc.

A pid together with its start time and the boot id names a process for good (a reused
pid has another start time).  Split from sensors.py so that the jobfile lock, which
needs these, does not load psutil: it is imported only where /proc cannot be read.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_boot_id: str | None = None
_boot_time: float | None = None


def boot_id() -> str:
    """An id of this boot of this machine (a pid from an earlier boot is never ours)."""
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot_id = f.read().strip()
        except OSError:
            _boot_id = f"boot-{boot_time():.0f}"
    return _boot_id


def boot_time() -> float:
    """When this machine booted (seconds since the epoch), as psutil.boot_time() says."""
    global _boot_time
    if _boot_time is None:
        try:
            with open("/proc/stat", "rb") as f:
                btime = next(line for line in f if line.startswith(b"btime"))
            _boot_time = float(btime.split()[1])
        except (OSError, ValueError, IndexError, StopIteration):
            import psutil

            _boot_time = psutil.boot_time()
    return _boot_time


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (the first is the state)."""
    # One raw read: a buffered open() adds an fstat, an ioctl and two lseeks, and this is
    # on the path of every job start.  The line is far shorter than the read.
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    return raw[raw.rindex(b")") + 2 :].split()


def process_start(pid: int) -> float | None:
    """Start time of ``pid`` (seconds since the epoch), or None when there is no such process.

    Same value as psutil's create_time(), read directly from /proc on Linux because it is
    on the path of every job start.
    """
    try:
        ticks = int(_stat_fields(pid)[19])
        return round(boot_time() + ticks / CLK_TCK, 2)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        pass
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, OSError):
        return None


def process_state(pid: int) -> str | None:
    """One-letter state from /proc (R, S, D, T, Z...), or None when gone."""
    try:
        return _stat_fields(pid)[0][:1].decode()
    except (OSError, ValueError, IndexError):
        import psutil

        states = {"stopped": "T", "zombie": "Z", "running": "R"}
        try:
            return states.get(psutil.Process(pid).status(), "S")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


def same_process(pid: int, start: float | None) -> bool:
    """True when ``pid`` is alive (not a zombie) and started at ``start``."""
    if start is None:
        return False
    now_start = process_start(pid)
    if now_start is None or abs(now_start - start) > 0.05:
        return False
    return process_state(pid) not in (None, "Z")
