"""The PBQ hostfile: which machines exist and how much load each may carry.

Format, one host per line::

    # name   arch   max  wday  interactive  [key=value ...]
    alpha    linux  8    4     1
    headnode linux  50   50    0   drm=slurm queue=debug cpu=1 mem=2G vmem= walltime=01:00:00
    *        linux  2    1     1

``#`` starts a comment (whole line or trailing); blank lines are skipped.
``max`` is the load limit outside work hours and ``wday`` the limit during
work hours (see :mod:`pbq.workhours`); both are non-negative numbers and
``wday`` may exceed ``max``: the limit is simply whichever one the calendar
picks at the moment.  ``interactive`` is a non-negative integer.  The
``key=value`` extras (value may be empty) are kept in order for the cluster
backends.  A host named ``*`` applies to every machine not listed by name.
"""

from __future__ import annotations

import math
import os
import re
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from pbq.errors import PbqError
from pbq.safety import file_kind

__all__ = ["Host", "find_host", "load_hostfile", "machine_name", "parse_hostfile"]

WILDCARD = "*"
_SYNTAX = "'name arch max wday interactive [key=value ...]'"
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A token that starts like key=value ends the positional fields, so
# "h linux 2 2 drm=slurm" reports a missing field rather than a bad integer.
_KEYVALUE_START_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# ASCII digits only: str.isdigit()/float() would accept other scripts and "1_0".
_NUMBER_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_INT_RE = re.compile(r"[0-9]+")
# Python refuses int() of very long digit strings; nobody needs more than this.
_MAX_INT_DIGITS = 18
# Only space and tab separate fields; other Unicode "whitespace" is rejected
# as unprintable instead of silently splitting a name.
_SEP_RE = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class Host:
    """One hostfile line."""

    name: str
    arch: str
    max: float
    wday: float
    interactive: int
    # Read-only view; excluded from the hash because mapping proxies are unhashable.
    fields: Mapping[str, str] = field(hash=False)
    line: int

    @property
    def drm(self) -> str | None:
        """The cluster backend named by ``drm=``, lower-cased; None for a plain machine."""
        value = self.fields.get("drm")
        return value.lower() if value else None

    @property
    def is_wildcard(self) -> bool:
        return self.name == WILDCARD


def _short(name: str) -> str:
    return name.split(".", 1)[0].lower()


def _show(token: str) -> str:
    """repr() of a token, shortened so one bad line cannot flood the terminal."""
    if len(token) > 40:
        token = token[:37] + "..."
    return repr(token)


def _check_printable(token: str, what: str, path: str, line: int) -> None:
    if not token.isprintable():
        raise PbqError(
            f"{what} contains a control or non-printable character: {_show(token)}", path, line
        )


def _parse_number(token: str, what: str, path: str, line: int) -> float:
    if _NUMBER_RE.fullmatch(token):
        value = float(token)
        if math.isfinite(value):
            return value
    raise PbqError(f"{what} must be a non-negative number, got {_show(token)}", path, line)


def _parse_int(token: str, what: str, path: str, line: int) -> int:
    if _INT_RE.fullmatch(token) and len(token.lstrip("0")) <= _MAX_INT_DIGITS:
        return int(token)
    raise PbqError(f"{what} must be a non-negative integer, got {_show(token)}", path, line)


def _parse_line(text: str, path: str, lineno: int) -> Host | None:
    if "\0" in text:
        raise PbqError("contains a NUL byte", path, lineno)
    text = text.split("#", 1)[0].strip(" \t")
    if not text:
        return None
    tokens = _SEP_RE.split(text)
    npos = len(tokens)
    for i, token in enumerate(tokens):
        if _KEYVALUE_START_RE.match(token):
            npos = i
            break
    if npos < 5:
        before = f" before {_show(tokens[npos])}" if npos < len(tokens) else ""
        raise PbqError(
            f"expected {_SYNTAX}, got {npos} field{'s' if npos != 1 else ''}{before}", path, lineno
        )
    name, arch, max_s, wday_s, inter_s = tokens[:5]
    _check_printable(name, "host name", path, lineno)
    _check_printable(arch, "arch", path, lineno)
    max_v = _parse_number(max_s, "max", path, lineno)
    wday_v = _parse_number(wday_s, "wday", path, lineno)
    inter_v = _parse_int(inter_s, "interactive", path, lineno)
    extras: dict[str, str] = {}
    for token in tokens[5:]:
        key, eq, value = token.partition("=")
        if not eq or not _KEY_RE.fullmatch(key):
            raise PbqError(
                "expected key=value after interactive (key is [A-Za-z_][A-Za-z0-9_]*), "
                f"got {_show(token)}",
                path,
                lineno,
            )
        _check_printable(value, f"value of {key}", path, lineno)
        if key in extras:
            raise PbqError(f"duplicate field {key!r}", path, lineno)
        extras[key] = value
    return Host(name, arch, max_v, wday_v, inter_v, MappingProxyType(extras), lineno)


def parse_hostfile(data: bytes | str, path: str = "hostfile") -> list[Host]:
    """Parse hostfile contents; any problem is a PbqError naming ``path`` and the line."""
    if isinstance(data, str):
        raw_lines: list[str | bytes] = list(data.split("\n"))
    else:
        raw_lines = list(data.split(b"\n"))
    hosts: list[Host] = []
    seen: dict[str, Host] = {}
    for lineno, raw in enumerate(raw_lines, 1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PbqError("not valid UTF-8", path, lineno) from None
        else:
            text = raw
        if text.endswith("\r"):  # tolerate files written on Windows
            text = text[:-1]
        if lineno == 1 and text.startswith("\ufeff"):  # and editors that add a BOM
            text = text[1:]
        host = _parse_line(text, path, lineno)
        if host is None:
            continue
        folded = host.name.lower()
        if folded in seen:
            raise PbqError(
                f"duplicate host {host.name!r} (already defined on line {seen[folded].line})",
                path,
                lineno,
            )
        seen[folded] = host
        hosts.append(host)
    return hosts


def load_hostfile(path: str | os.PathLike[str]) -> list[Host]:
    """Read and parse a hostfile; a missing or unreadable file is a PbqError."""
    shown = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO must get an answer, not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise PbqError(f"cannot read hostfile: {e.strerror or e}", shown) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PbqError(f"cannot read hostfile: it is {file_kind(mode)}, not a regular file", shown)
    with open(fd, "rb") as f:
        try:
            data = f.read()
        except OSError as e:
            raise PbqError(f"cannot read hostfile: {e.strerror or e}", shown) from None
    return parse_hostfile(data, shown)


def find_host(hosts: Sequence[Host], name: str, path: str = "hostfile") -> Host:
    """The entry for machine ``name``.

    Exact name first, then a case-insensitive match of the short names (the
    part before the first dot) so ``alpha`` finds ``Alpha.example.org`` and
    vice versa, then the ``*`` entry.  Several different hosts sharing the
    short name is an error rather than a guess.
    """
    for host in hosts:
        if host.name == name:
            return host
    for host in hosts:
        if host.name.lower() == name.lower():
            return host
    short = _short(name)
    matches = [h for h in hosts if not h.is_wildcard and _short(h.name) == short]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        listed = ", ".join(f"{h.name} (line {h.line})" for h in matches)
        raise PbqError(f"host {name!r} is ambiguous in hostfile {path}: matches {listed}")
    for host in hosts:
        if host.is_wildcard:
            return host
    known = ", ".join(h.name for h in hosts) or "(none)"
    raise PbqError(
        f"host {name!r} is not in hostfile {path} and it has no '*' entry; known hosts: {known}"
    )


def machine_name() -> str:
    """This machine's name as PBQ saw it: $HOSTNAME, else the kernel's; lower-case short name."""
    name = os.environ.get("HOSTNAME") or socket.gethostname()
    return _short(name)
