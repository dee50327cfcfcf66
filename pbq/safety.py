"""Who may decide what runs as you: checks on the jobfile, the hostfile and control files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import PbqError


def check_input_file(path: Path, what: str, allow_group_write: bool = False) -> None:
    """Refuse a jobfile/hostfile that someone other than its owner (you or root) can change.

    Its lines are run as you, so whoever can write it can run commands as you.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # the caller reports a missing file in its own words
    except OSError as err:
        raise PbqError(f"cannot read {what}: {err.strerror}", path=str(path)) from None
    if st.st_mode & stat.S_IWOTH:
        raise PbqError(
            f"refusing a world-writable {what}: anyone could add commands that run as you "
            f"(fix with: chmod o-w {path})",
            path=str(path),
        )
    if st.st_mode & stat.S_IWGRP and not allow_group_write:
        raise PbqError(
            f"refusing a group-writable {what}: members of its group could add commands that "
            f"run as you (fix with: chmod g-w {path}, or pass --allow-group-write for a "
            "group-shared queue)",
            path=str(path),
        )
    if st.st_uid not in (os.getuid(), 0):
        raise PbqError(
            f"refusing a {what} owned by another user (uid {st.st_uid}): they could add "
            "commands that run as you",
            path=str(path),
        )


def check_queue_files(hostfile: Path, jobfile: Path, allow_group_write: bool) -> None:
    """Before starting a scheduler: both files safe to run from, and the jobfile there."""
    check_input_file(hostfile, "hostfile", allow_group_write)
    check_input_file(jobfile, "jobfile", allow_group_write)
    if not jobfile.exists():
        raise PbqError(
            f"no such jobfile (create it, e.g. with: touch {jobfile})", path=str(jobfile)
        )


def control_file_trusted(st: os.stat_result) -> str | None:
    """None when a control request may be honoured, else why not."""
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by this scheduler's user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by others"
    return None
