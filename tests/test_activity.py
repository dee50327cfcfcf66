"""Who is at the machine: each activity source's parser on recorded output, and the merge.

The loginctl outputs in tests/data/loginctl are as systemd 249 and 256 print them (the
columns of ``list-sessions`` differ; ``show-session`` prints blocks of properties)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from pbq.activity import (
    Activity,
    Login,
    LogindReader,
    Seen,
    logind_active,
    merge,
    parse_list_sessions,
    parse_show_session,
    run_loginctl,
    tty_active,
)
from pbq.config import load_config
from pbq.errors import PbqError
from pbq.host.sensing import LoadSensing
from pbq.hostfile import Host
from pbq.sensors import Sensors

DATA = Path(__file__).parent / "data" / "loginctl"
NOW = 1795428660.0  # 40 s after bob's last keystroke in show-session-desktop.txt
TEN_MINUTES = 600.0
HOST = Host("h1", "linux", 4, 2, 1, {}, 1)


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def test_list_sessions_takes_the_first_column_of_either_layout() -> None:
    assert parse_list_sessions(recorded("list-sessions-v249.txt")) == ["2", "15", "c1", "117"]
    assert parse_list_sessions(recorded("list-sessions-v256.txt")) == ["3", "21", "c1", "c4"]
    assert parse_list_sessions("") == []
    assert parse_list_sessions("\n\n") == []


def test_show_session_gives_one_block_per_session() -> None:
    blocks = parse_show_session(recorded("show-session-desktop.txt"))
    assert [b["Id"] for b in blocks] == ["2", "15", "c1", "117"]
    assert blocks[1] == {"Id": "15", "Name": "bob", "TTY": "pts/1", "Remote": "yes", "Seat": "",
                         "Type": "tty", "Class": "user", "State": "active", "IdleHint": "no",
                         "IdleSinceHint": "1795428620000000", "LockedHint": "no"}


def test_a_busy_desktop_and_a_typing_ssh_user_count_greeters_and_closing_sessions_do_not() -> None:
    seen = logind_active(parse_show_session(recorded("show-session-desktop.txt")), TEN_MINUTES, NOW)
    assert [(s.user, s.local) for s in seen] == [("alice", True), ("bob", False)]


def test_idle_locked_and_long_untouched_sessions_are_nobody() -> None:
    sessions = parse_show_session(recorded("show-session-idle.txt"))
    assert logind_active(sessions, TEN_MINUTES, NOW) == []
    # alice's desktop went idle 71 minutes ago: within two hours she counts again.
    assert [s.user for s in logind_active(sessions, 7200.0, NOW)] == ["alice"]


def test_a_session_without_an_idle_hint_or_tty_time_is_nobody() -> None:
    s = {"Id": "5", "Name": "erin", "Type": "unspecified", "Class": "user", "State": "active",
         "IdleHint": "no", "IdleSinceHint": "0", "Remote": "no", "Seat": ""}
    assert logind_active([s], TEN_MINUTES, NOW) == []
    assert logind_active([{**s, "IdleSinceHint": "garbage"}], TEN_MINUTES, NOW) == []


class FakeLoginctl:
    """Answers like loginctl from the recorded outputs; records the argv lists."""

    def __init__(self, listing: str | None, shown: str | None, fail_many: bool = False) -> None:
        self.listing, self.shown, self.fail_many = listing, shown, fail_many
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> str | None:
        self.calls.append(list(args))
        if args[0] == "list-sessions":
            return self.listing
        ids = [a for a in args[1:] if not a.startswith("--")]
        if len(ids) > 1 and self.fail_many:
            return None  # one of them ended in between
        if self.shown is None:
            return None
        blocks = recorded(self.shown).split("\n\n")
        return "\n\n".join(b for b in blocks if any(f"Id={i}\n" in b + "\n" for i in ids))


def test_the_reader_asks_for_all_sessions_at_once_then_one_by_one_when_that_fails() -> None:
    fake = FakeLoginctl(recorded("list-sessions-v249.txt"), "show-session-desktop.txt")
    sessions = LogindReader(fake).sessions()
    assert sessions is not None and [s["Id"] for s in sessions] == ["2", "15", "c1", "117"]
    assert fake.calls[1][:5] == ["show-session", "2", "15", "c1", "117"]
    assert "--property=IdleSinceHint" in fake.calls[1]
    fake = FakeLoginctl(recorded("list-sessions-v249.txt"), "show-session-desktop.txt", True)
    sessions = LogindReader(fake).sessions()
    assert sessions is not None and [s["Id"] for s in sessions] == ["2", "15", "c1", "117"]
    assert len(fake.calls) == 2 + 4


def test_a_missing_or_failing_loginctl_did_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LogindReader(FakeLoginctl(None, None)).sessions() is None
    assert LogindReader(FakeLoginctl("", None)).sessions() == []  # answered: nobody logged in
    monkeypatch.setenv("PATH", "/nonexistent")
    assert run_loginctl(["list-sessions", "--no-legend"]) is None
    assert LogindReader().sessions() is None


def test_tty_times_tell_local_consoles_from_remote_terminals() -> None:
    logins = [Login("alice", "tty2"), Login("bob", "pts/1", "laptop.example.org"),
              Login("carol", "pts/2", ":0"), Login("dave", "pts/3", "far.example.org"),
              Login("erin", "")]
    atimes = {"/dev/tty2": NOW - 30, "/dev/pts/1": NOW - 10, "/dev/pts/2": NOW - 5,
              "/dev/pts/3": NOW - 3600}
    seen = tty_active(logins, atimes, TEN_MINUTES, NOW)
    assert [(s.user, s.local) for s in seen] == [("alice", True), ("bob", False), ("carol", True)]


def test_merge_counts_distinct_users_and_names_the_sources_that_answered() -> None:
    act = merge([
        ("tty", [Seen("bob", False, "tty"), Seen("alice", False, "tty")]),
        ("logind", [Seen("alice", True, "logind"), Seen("bob", False, "logind")]),
    ])
    assert act.count == 2 and act.local_users == 1 and act.remote_users == 1
    assert act.answered == ("tty", "logind")
    act = merge([("tty", []), ("logind", None)])
    assert act.count == 0 and act.answered == ("tty",)


class RichFakeSensors:
    """Sensors with an ``activity`` answer; records what it was asked."""

    def __init__(self, act: Activity) -> None:
        self.act = act
        self.asked: list[tuple[float, tuple[str, ...]]] = []

    def foreign_load(self, own_cpu_seconds: float, now_mono: float) -> float:
        return 0.0

    def active_users(self, idle_seconds: float, now: float) -> int:
        raise AssertionError("the richer method is used when there is one")

    def activity(self, idle_seconds: float, now: float, sources: Sequence[str]) -> Activity:
        self.asked.append((idle_seconds, tuple(sources)))
        return self.act

    def mem_available(self) -> int:
        return 1 << 30


def test_sensing_asks_the_configured_sources_and_lowers_the_limit() -> None:
    cfg = load_config(environ={"PBQ_INTERACTIVE_SOURCES": "logind",
                               "PBQ_INTERACTIVE_IDLE_MINUTES": "5", "PBQ_SCHEDULE_WORKDAYS": ""})
    act = merge([("logind", [Seen("alice", True, "logind"), Seen("bob", False, "logind")])])
    fake = RichFakeSensors(act)
    m = LoadSensing(cfg, fake).sense(NOW, 100.0, HOST, own_cpu=0.0)  # type: ignore[arg-type]
    assert fake.asked == [(300.0, ("logind",))]
    assert (m.active_users, m.local_users, m.remote_users, m.sources) == (2, 1, 1, ("logind",))
    assert m.limit == 3.0  # max 4 - min(interactive 1, 2 users)


def test_sources_must_be_known_names() -> None:
    assert load_config(environ={"PBQ_INTERACTIVE_SOURCES": ""}).interactive.sources == ()
    assert load_config(environ={}).interactive.sources == ("tty", "logind")
    with pytest.raises(PbqError, match="sources"):
        load_config(environ={"PBQ_INTERACTIVE_SOURCES": "tty,keyboard"})


def test_the_real_sensors_answer_with_tty_at_least() -> None:
    act = Sensors().activity(TEN_MINUTES, NOW, ("tty",))
    if os.path.exists("/var/run/utmp") or os.path.exists("/run/utmp"):
        assert act.answered == ("tty",)
    assert act.count >= 0


class BusyMachine(RichFakeSensors):
    def foreign_load(self, own_cpu_seconds: float, now_mono: float) -> float:
        return 1.5


@pytest.mark.parametrize(("setting", "foreign"), [("true", 1.5), ("false", 0.0)])
def test_foreign_load_can_be_left_out_on_a_node_pbq_has_to_itself(setting: str,
                                                                    foreign: float) -> None:
    cfg = load_config(environ={"PBQ_SCHEDULER_FOREIGN_LOAD": setting,
                               "PBQ_INTERACTIVE_SOURCES": "logind"})
    fake = BusyMachine(merge([("logind", [])]))
    m = LoadSensing(cfg, fake).sense(NOW, 100.0, HOST, own_cpu=0.0)  # type: ignore[arg-type]
    assert (m.foreign, m.foreign_recent) == (foreign, foreign)
