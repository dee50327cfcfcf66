"""Who may decide what runs as you: the checks on every file pbq reads that can lead to
running something (jobfile, hostfile, the config beside the jobfile, the host's side files,
control requests, plugin folders).

The rule, the same everywhere: the file is a regular file that belongs to you (or root) and
nobody else can write -- group-writable is accepted with ``--allow-group-write`` (a
group-shared queue) or when the group is the owner's private group (Debian's user private
groups with umask 002, as Debian's OpenSSH accepts them).  Side files are opened without
following symlinks and judged by ``fstat`` of the open descriptor, so what is checked is what
is read.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from .errors import PbqError

READ_CHUNK = 1 << 20


class UntrustedFile(PbqError):
    """A file someone other than you could have written; ``reason`` is the short why."""

    def __init__(self, reason: str, path: Path) -> None:
        super().__init__(f"refusing {reason}", path=str(path))
        self.reason = reason


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def is_private_group(st: os.stat_result) -> bool:
    """The file's group is its owner's own: the owner's primary group, bearing the owner's
    name, listing no other member (Debian's user private groups)."""
    try:
        owner = pwd.getpwuid(st.st_uid)
        group = grp.getgrgid(st.st_gid)
    except KeyError:
        return False
    return (
        owner.pw_gid == st.st_gid
        and group.gr_name == owner.pw_name
        and all(member == owner.pw_name for member in group.gr_mem)
    )


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, for messages."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def untrusted_reason(
    st: os.stat_result, what: str, allow_group_write: bool, directory: bool = False
) -> str | None:
    """Why a file (or, with ``directory``, a folder) must not be trusted, worded to follow
    "refusing "; None if it may be."""
    if directory and not stat.S_ISDIR(st.st_mode):
        return f"the {what}: it is {file_kind(st.st_mode)}, not a directory"
    if not directory and not stat.S_ISREG(st.st_mode):
        return f"the {what}: it is {file_kind(st.st_mode)}, not a regular file"
    if st.st_uid not in (os.getuid(), 0):
        return (
            f"a {what} owned by another user, {user_name(st.st_uid)} (uid {st.st_uid}), "
            "who could make it run commands as you"
        )
    if st.st_mode & stat.S_IWOTH:
        return f"a world-writable {what}: anyone could make it run commands as you"
    if st.st_mode & stat.S_IWGRP and not allow_group_write and not is_private_group(st):
        return (
            f"a group-writable {what}: members of group {group_name(st.st_gid)} could make it "
            "run commands as you (pass --allow-group-write for a group-shared queue)"
        )
    return None


def read_trusted(path: Path, what: str, allow_group_write: bool = False) -> bytes | None:
    """The bytes of ``path``, or None when it does not exist; UntrustedFile when it is a
    symlink, not a regular file, or could have been written by someone other than you.

    Opened with O_NOFOLLOW (a planted symlink is not followed) and O_NONBLOCK (a FIFO does
    not hang the open); the checks are made on the open descriptor, so no one can swap the
    file between check and read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UntrustedFile(f"the {what}: it is a symbolic link (not followed)", path) from None
        raise PbqError(f"cannot read the {what}: {err.strerror or err}", path=str(path)) from None
    try:
        why = untrusted_reason(os.fstat(fd), what, allow_group_write)
        if why is not None:
            raise UntrustedFile(why, path)
        chunks = []
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise PbqError(f"cannot read the {what}: {err.strerror or err}", path=str(path)) from None
    finally:
        os.close(fd)


def read_trusted_json(path: Path, what: str, allow_group_write: bool = False) -> Any | None:
    """The JSON in a trusted file; None when it is missing, empty or not JSON."""
    data = read_trusted(path, what, allow_group_write)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def read_trusted_json_lines(path: Path, what: str, allow_group_write: bool = False) -> list[Any]:
    """Every parseable JSON line of a trusted file (a torn last line is skipped)."""
    out = []
    for line in (read_trusted(path, what, allow_group_write) or b"").splitlines():
        with contextlib.suppress(ValueError, RecursionError):
            out.append(json.loads(line))
    return out


def check_input_file(path: Path, what: str, allow_group_write: bool = False) -> None:
    """Refuse a jobfile/hostfile that is not a regular file or that someone other than you
    (or root) can change: its lines are run as you.  A symlink is followed (a jobfile may
    be one); what it points to is judged."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # the caller reports a missing file in its own words
    except OSError as err:
        raise PbqError(f"cannot read {what}: {err.strerror}", path=str(path)) from None
    why = untrusted_reason(st, what, allow_group_write)
    if why is None:
        return
    if why.startswith("a world-writable"):
        why += f" (fix with: chmod o-w {path})"
    elif why.startswith("a group-writable"):
        why += f" (fix with: chmod g-w {path})"
    raise PbqError(f"refusing {why}", path=str(path))


def check_jobfile_directory(jobfile: Path, allow_group_write: bool = False) -> None:
    """Refuse a jobfile whose directory others can write without the sticky bit: they could
    rename any of your files there over the jobfile or its side files."""
    directory = jobfile.parent
    try:
        st = os.stat(directory)
    except OSError:
        return  # reported when the jobfile is opened
    if st.st_mode & stat.S_ISVTX:
        return  # others may add files but not replace yours; those files are checked
    others = bool(st.st_mode & stat.S_IWOTH)
    group = bool(st.st_mode & stat.S_IWGRP) and not allow_group_write and not is_private_group(st)
    if others or group:
        who = "anyone" if others else f"members of group {group_name(st.st_gid)}"
        raise PbqError(
            f"refusing the jobfile's directory: {who} can write it and it has no sticky bit, "
            f"so they could replace the jobfile or its side files (fix with: chmod +t {directory})",
            path=str(directory),
        )


def check_plugin_dir(folder: Path) -> None:
    """A folder of DRM plugins is Python that pbq imports: it must be yours and closed."""
    try:
        st = os.stat(folder)
    except OSError:
        return  # the registry reports a missing folder
    why = untrusted_reason(st, "DRM plugin folder", False, directory=True)
    if why is not None:
        raise UntrustedFile(why, folder)


def check_queue_files(hostfile: Path, jobfile: Path, allow_group_write: bool) -> None:
    """Before starting a scheduler: both files safe to run from, and the jobfile there."""
    check_input_file(hostfile, "hostfile", allow_group_write)
    check_jobfile_directory(jobfile, allow_group_write)
    check_input_file(jobfile, "jobfile", allow_group_write)
    if not jobfile.exists():
        raise PbqError(
            f"no such jobfile (create it, e.g. with: touch {jobfile})", path=str(jobfile)
        )
