"""Who is at the machine: activity sources, each a small pure parser over what it reads,
merged into the distinct users active within ``idle_minutes``.

Sources (``[interactive] sources``; the default uses both where they answer):

``tty``
    The access time of each logged-in user's terminal (utmp, via psutil): the tty driver
    updates it on input, as HTCondor reads keyboard idleness.  A console ``ttyN`` or a
    pseudo-terminal with a local (``:0``) or empty remote host is local; one with a remote
    host name is remote.
``logind``
    systemd-logind's sessions, read with ``loginctl``.  Graphical sessions (x11, wayland,
    mir) report ``IdleHint``/``IdleSinceHint``, kept by GNOME, KDE and other desktops: the
    keyboard and mouse of a graphical desktop, which no tty time shows.  Text sessions
    report their tty's access time as ``IdleSinceHint``.  Only sessions of class ``user``
    that are not closing count (a lingering ``nohup`` after logout is nobody at the
    machine); a locked screen counts as nobody; a session on a seat (``seat0``) that is
    not ``Remote`` is local, the rest remote.

The access time of ``/dev/input/event*`` does not move on input (the kernel does not
update it for event devices), so it is no source.

A source that cannot be read (no utmp, no ``loginctl``, no logind, a timeout) "did not
answer": it adds nobody, and the heartbeat names only the sources that answered.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SOURCES = ("tty", "logind")
LOGINCTL_TIMEOUT = 2.0  # seconds; a hung logind must not hold up the scheduler's tick
SESSION_PROPERTIES = ("Id", "Name", "Remote", "Seat", "TTY", "IdleHint", "IdleSinceHint",
                      "LockedHint", "Type", "Class", "State")
GRAPHICAL = frozenset({"x11", "wayland", "mir"})


@dataclass(frozen=True)
class Seen:
    """One user's session that was used recently."""

    user: str
    local: bool
    source: str
    where: str = ""  # tty or session id, for messages


@dataclass(frozen=True)
class Activity:
    """The merged answer: who is active, and which sources answered."""

    seen: tuple[Seen, ...] = ()
    answered: tuple[str, ...] = ()

    @property
    def users(self) -> frozenset[str]:
        return frozenset(s.user for s in self.seen)

    @property
    def count(self) -> int:
        return len(self.users)

    @property
    def local_users(self) -> int:
        """Distinct users with an active session on this machine's own seat or console."""
        return len({s.user for s in self.seen if s.local})

    @property
    def remote_users(self) -> int:
        """Distinct active users none of whose active sessions is local."""
        local = {s.user for s in self.seen if s.local}
        return len({s.user for s in self.seen if not s.local} - local)


def merge(results: Iterable[tuple[str, Sequence[Seen] | None]]) -> Activity:
    """``(source, seen or None when it did not answer)`` pairs -> one Activity."""
    seen: list[Seen] = []
    answered: list[str] = []
    for source, found in results:
        if found is None:
            continue
        answered.append(source)
        seen.extend(found)
    return Activity(tuple(seen), tuple(answered))


# ------------------------------------------------------------------ tty


@dataclass(frozen=True)
class Login:
    """One utmp entry: who, on which terminal, from where."""

    user: str
    terminal: str
    host: str = ""


def tty_is_local(terminal: str, host: str) -> bool:
    """A console, or a pseudo-terminal of a local display (``:0``) or of no remote host."""
    host = host.strip()
    return not host or host.startswith(":") or host in ("localhost", "127.0.0.1", "::1") \
        or terminal.startswith(("tty", "/dev/tty"))


def tty_active(logins: Iterable[Login], atimes: Mapping[str, float], idle_seconds: float,
               now: float) -> list[Seen]:
    """The logins whose terminal (by path) was used within ``idle_seconds`` of ``now``."""
    out = []
    for login in logins:
        if not login.terminal:
            continue
        path = tty_path(login.terminal)
        atime = atimes.get(path)
        if atime is not None and now - atime < idle_seconds:
            local = tty_is_local(login.terminal, login.host)
            out.append(Seen(login.user, local, "tty", login.terminal))
    return out


def tty_path(terminal: str) -> str:
    return terminal if terminal.startswith("/") else f"/dev/{terminal}"


# ------------------------------------------------------------------ logind


def parse_list_sessions(text: str) -> list[str]:
    """Session ids from ``loginctl list-sessions --no-legend`` (the first column; later
    systemd versions add columns, and some print a header-less empty line)."""
    ids = []
    for line in text.splitlines():
        parts = line.split()
        if parts and not parts[0].endswith(":"):
            ids.append(parts[0])
    return ids


def parse_show_session(text: str) -> list[dict[str, str]]:
    """``loginctl show-session ID... -p ...`` -> one property dict per session (blocks of
    ``Key=value`` lines, separated by empty lines when several sessions are shown)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, eq, value = line.partition("=")
        if eq:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "1")


def logind_active(sessions: Iterable[Mapping[str, str]], idle_seconds: float,
                  now: float) -> list[Seen]:
    """The sessions of a person who used them within ``idle_seconds`` of ``now``.

    ``IdleSinceHint`` is microseconds since the epoch (0 = unknown).  A graphical session
    that is not idle is in use now; one that is idle was used until its idle hint's time;
    a text session was used at its tty's access time, which logind reports as
    ``IdleSinceHint``.  Sessions of other classes (greeter, manager, background), closing
    or locked ones, and sessions with nothing to go by count as nobody.
    """
    out = []
    for s in sessions:
        user = s.get("Name", "")
        if not user or not s.get("Class", "user").startswith("user"):
            continue
        if s.get("State", "") == "closing" or _yes(s.get("LockedHint")):
            continue
        try:
            since = int(s.get("IdleSinceHint") or 0) / 1e6
        except ValueError:
            since = 0.0
        kind = s.get("Type", "")
        if kind in GRAPHICAL and not _yes(s.get("IdleHint")):
            used = True
        elif since > 0:
            used = now - since < idle_seconds
        else:
            used = False
        if used:
            local = bool(s.get("Seat")) and not _yes(s.get("Remote"))
            out.append(Seen(user, local, "logind", s.get("Id", "")))
    return out


def run_loginctl(args: Sequence[str], timeout: float = LOGINCTL_TIMEOUT) -> str | None:
    """``loginctl ARGS`` (an argv list, no shell) -> its output, or None when it is missing,
    fails, or does not answer within ``timeout`` seconds."""
    try:
        r = subprocess.run(["loginctl", "--no-pager", *args], capture_output=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return r.stdout.decode("utf-8", "replace")


Run = Callable[[Sequence[str]], "str | None"]


@dataclass
class LogindReader:
    """Reads the sessions through ``loginctl`` (``run`` is injectable for tests)."""

    run: Run = field(default=run_loginctl)

    def sessions(self) -> list[dict[str, str]] | None:
        """Every session's properties, or None when logind did not answer."""
        listed = self.run(["list-sessions", "--no-legend"])
        if listed is None:
            return None
        ids = parse_list_sessions(listed)
        if not ids:
            return []
        props = [f"--property={p}" for p in SESSION_PROPERTIES]
        shown = self.run(["show-session", *ids, *props])
        if shown is not None:
            return parse_show_session(shown)
        # One of them may have ended in between: ask for each alone.
        out: list[dict[str, str]] = []
        for sid in ids:
            one = self.run(["show-session", sid, *props])
            if one is not None:
                out.extend(parse_show_session(one))
        return out
