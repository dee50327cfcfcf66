"""Tests for pbq.config: lookup, precedence, types, validation errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbq import config as config_mod
from pbq.config import KEYS, Config, Setting, load_config, parse_size
from pbq.errors import PbqError
from pbq.workhours import DEFAULT_CALENDAR


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def source_of(cfg: Config, section: str, key: str) -> str:
    (setting,) = [s for s in cfg.settings() if (s.section, s.key) == (section, key)]
    return setting.source


# --- the table and defaults ----------------------------------------------------------


def test_keys_table_matches_section_objects() -> None:
    for section, cls in config_mod._SECTION_TYPES.items():
        table = [s.key for s in KEYS if s.section == section]
        assert [f.name for f in dataclasses.fields(cls)] == table
    assert len({(s.section, s.key) for s in KEYS}) == len(KEYS)
    assert all(s.help for s in KEYS)


def test_defaults() -> None:
    cfg = load_config(environ={})
    assert cfg.path is None
    assert cfg.schedule.workdays == ("Mon", "Tue", "Wed", "Thu", "Fri")
    assert cfg.schedule.workhours == "08:00-20:00"
    assert cfg.schedule.calendar == DEFAULT_CALENDAR
    assert cfg.interactive.idle_minutes == 10.0
    s = cfg.scheduler
    assert (s.interval, s.hysteresis, s.nice, s.memfree, s.retries) == (1.0, 0.5, 19, 0, 0)
    assert (s.settle, s.term_grace, s.output_dir) == (2.0, 10.0, "")
    assert (s.exit_when_empty, s.allow_group_write) == (False, False)
    j = cfg.jobfile
    assert (j.lock, j.compact_after, j.fsync, j.stale_lock_after) == ("flock", 2.0, True, 30.0)
    assert (cfg.log.max_bytes, cfg.log.backups, cfg.log.load_every) == (10 * 2**20, 3, 60.0)
    assert (cfg.history.every, cfg.history.max_bytes) == (60.0, 5 * 2**20)
    assert cfg.control.timeout == 30.0
    c = cfg.cluster
    assert (c.cpu, c.mem, c.vmem, c.queue, c.walltime) == (1, "", "", "", "")
    assert (c.poll_interval, c.predict, c.plugin_dir) == (15.0, False, "")
    assert [(s.section, s.key) for s in cfg.settings()] == [(k.section, k.key) for k in KEYS]
    assert {s.source for s in cfg.settings()} == {"default"}
    assert cfg.get("scheduler", "nice") == 19
    assert isinstance(cfg.scheduler.interval, float)


def test_config_is_read_only() -> None:
    cfg = load_config(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.scheduler.interval = 3.0  # type: ignore[misc]


def test_get_unknown() -> None:
    cfg = load_config(environ={})
    with pytest.raises(PbqError, match=r"unknown section \[nope\]; known sections: schedule, "):
        cfg.get("nope", "x")
    with pytest.raises(PbqError, match=r"\[scheduler\] unknown key 'nope'; known keys: interval, "):
        cfg.get("scheduler", "nope")


# --- precedence ------------------------------------------------------------------------


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "pbq.toml",
        "[scheduler]\ninterval = 2\nnice = 5\nretries = 1\n[cluster]\nqueue = 'long'\n",
    )
    jobfile = tmp_path / "jobs"
    env = {"PBQ_SCHEDULER_NICE": "7", "PBQ_SCHEDULER_RETRIES": "2", "PBQ_CLUSTER_CPU": "4"}
    flags: dict[tuple[str, str], Any] = {
        ("scheduler", "retries"): 3,
        ("scheduler", "memfree"): None,
    }
    cfg = load_config(jobfile, environ=env, flags=flags)
    assert cfg.path == toml
    expected = {
        ("scheduler", "hysteresis"): (0.5, "default"),
        ("scheduler", "interval"): (2.0, f"config file {toml}"),
        ("cluster", "queue"): ("long", f"config file {toml}"),
        ("scheduler", "nice"): (7, "environment PBQ_SCHEDULER_NICE"),
        ("cluster", "cpu"): (4, "environment PBQ_CLUSTER_CPU"),
        ("scheduler", "retries"): (3, "flag --retries"),
        ("scheduler", "memfree"): (0, "default"),  # a None flag was not given
    }
    for (section, key), (value, source) in expected.items():
        assert cfg.get(section, key) == value
        assert source_of(cfg, section, key) == source
    assert Setting("scheduler", "retries", 3, "flag --retries") in cfg.settings()


def test_flag_names_disambiguate_repeated_keys() -> None:
    flags = {("log", "max_bytes"): "1M", ("history", "max_bytes"): 100, ("jobfile", "lock"): "soft"}
    cfg = load_config(environ={}, flags=flags)
    assert (cfg.log.max_bytes, cfg.history.max_bytes, cfg.jobfile.lock) == (2**20, 100, "soft")
    assert source_of(cfg, "log", "max_bytes") == "flag --log-max-bytes"
    assert source_of(cfg, "history", "max_bytes") == "flag --history-max-bytes"
    assert source_of(cfg, "jobfile", "lock") == "flag --lock"


def test_config_file_lookup_order(tmp_path: Path) -> None:
    beside = write(tmp_path / "pbq.toml", "[scheduler]\nnice = 1\n")
    via_env = write(tmp_path / "env.toml", "[scheduler]\nnice = 2\n")
    explicit = write(tmp_path / "explicit.toml", "[scheduler]\nnice = 3\n")
    jobfile = tmp_path / "jobs"
    env = {"PBQ_CONFIG": str(via_env)}
    assert load_config(jobfile, explicit, env).scheduler.nice == 3
    assert load_config(jobfile, explicit, env).path == explicit
    assert load_config(jobfile, None, env).scheduler.nice == 2
    assert load_config(jobfile, None, {"PBQ_CONFIG": ""}).scheduler.nice == 1
    assert load_config(str(jobfile), None, {}).path == beside
    assert load_config(None, None, {}).path is None


def test_missing_config_beside_jobfile_is_fine(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "jobs", environ={})
    assert cfg.path is None


def test_relative_jobfile_looks_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "pbq.toml", "[log]\nbackups = 9\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("jobs", environ={})
    assert cfg.log.backups == 9
    assert source_of(cfg, "log", "backups") == "config file pbq.toml"


@pytest.mark.parametrize("how", ["explicit", "env"])
def test_missing_explicit_config_is_an_error(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PbqError) as info:
        if how == "explicit":
            load_config(explicit=missing, environ={})
        else:
            load_config(environ={"PBQ_CONFIG": str(missing)})
    assert str(info.value) == f"{missing}: config file not found"


def test_unreadable_config_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pbq.toml").mkdir()
    with pytest.raises(PbqError, match=r"pbq\.toml: refusing the config file: it is a directory"):
        load_config(tmp_path / "jobs", environ={})


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBQ_CONTROL_TIMEOUT", "5")
    monkeypatch.delenv("PBQ_CONFIG", raising=False)
    assert load_config().control.timeout == 5.0


def test_variables_pbq_gives_jobs_are_not_config() -> None:
    job_env = {"PBQ_JOB_ID": "h1.3", "PBQ_HOST": "h1", "PBQ_ARCH": "linux", "PBQ_SEQ": "3",
               "PBQ_JOBFILE": "/x/jobs", "PBQ_OTHER_THING": "x"}
    cfg = load_config(environ=job_env)
    assert cfg.scheduler.interval == 1.0


def test_unknown_key_of_a_known_section_in_the_environment_is_an_error() -> None:
    with pytest.raises(PbqError) as info:
        load_config(environ={"PBQ_SCHEDULER_INTERVALL": "2"})
    assert str(info.value).startswith(
        "environment PBQ_SCHEDULER_INTERVALL: [scheduler] unknown key 'intervall'; known keys: "
    )


# --- values from every source ------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "text", "value"),
    [
        ("scheduler", "interval", "0.5", 0.5),
        ("scheduler", "interval", " 2 ", 2.0),
        ("scheduler", "interval", "1e-1", 0.1),
        ("scheduler", "nice", "+0", 0),
        ("scheduler", "memfree", "1.5G", 1610612736),
        ("scheduler", "exit_when_empty", "yes", True),
        ("scheduler", "exit_when_empty", "ON", True),
        ("scheduler", "exit_when_empty", "1", True),
        ("jobfile", "fsync", "off", False),
        ("jobfile", "fsync", "False", False),
        ("jobfile", "fsync", "0", False),
        ("jobfile", "fsync", "no", False),
        ("jobfile", "lock", "Soft", "soft"),
        ("scheduler", "output_dir", "/tmp/out", "/tmp/out"),
        ("scheduler", "output_dir", "", ""),
        ("schedule", "workdays", "Mon,Tue", ("Mon", "Tue")),
        ("schedule", "workdays", "sat, sun,", ("Sat", "Sun")),
        ("schedule", "workdays", "Mon-Wed", ("Mon", "Tue", "Wed")),
        ("schedule", "workdays", "", ()),
        ("schedule", "workhours", "00:00-24:00", "00:00-24:00"),
    ],
)
def test_environment_values(section: str, key: str, text: str, value: Any) -> None:
    env_name = f"PBQ_{section}_{key}".upper()
    cfg = load_config(environ={env_name: text})
    assert cfg.get(section, key) == value
    assert source_of(cfg, section, key) == f"environment {env_name}"


def test_calendar_from_env_and_file(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", '[schedule]\nworkdays = ["Sat", "sunday"]\n')
    cfg = load_config(explicit=toml, environ={"PBQ_SCHEDULE_WORKHOURS": "20:00-08:00"})
    assert cfg.schedule.workdays == ("Sat", "Sun")
    assert cfg.schedule.calendar.describe() == "Sat,Sun 20:00-08:00 (overnight)"


def test_all_toml_types(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "pbq.toml",
        """\
# every section once
[schedule]
workdays = []
workhours = "09:00-17:00"
[interactive]
idle_minutes = 0
[scheduler]
interval = 0.25
memfree = 1048576
exit_when_empty = true
[jobfile]
lock = "soft"
[log]
max_bytes = "0"
[history]
max_bytes = "1KiB"
[control]
timeout = 1
[cluster]
cpu = 8
mem = "4G"
predict = true
plugin_dir = "/opt/pbq"
""",
    )
    cfg = load_config(explicit=toml, environ={})
    assert cfg.schedule.workdays == ()
    assert not cfg.schedule.calendar.workdays
    assert cfg.interactive.idle_minutes == 0.0
    assert (cfg.scheduler.interval, cfg.scheduler.memfree, cfg.scheduler.exit_when_empty) == (
        0.25,
        2**20,
        True,
    )
    assert (cfg.jobfile.lock, cfg.log.max_bytes, cfg.history.max_bytes) == ("soft", 0, 1024)
    assert cfg.control.timeout == 1.0 and isinstance(cfg.control.timeout, float)
    assert (cfg.cluster.cpu, cfg.cluster.mem, cfg.cluster.predict) == (8, "4G", True)
    assert cfg.cluster.plugin_dir == "/opt/pbq"


def test_inline_and_dotted_tables(tmp_path: Path) -> None:
    toml = write(tmp_path / "pbq.toml", "scheduler = { nice = 4 }\nlog.backups = 1\n")
    cfg = load_config(explicit=toml, environ={})
    assert (cfg.scheduler.nice, cfg.log.backups) == (4, 1)


# --- sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("", 0),
        ("  ", 0),
        ("0", 0),
        ("1000000", 1000000),
        (1000000, 1000000),
        (0, 0),
        ("512", 512),
        ("512B", 512),
        ("1K", 1024),
        ("1k", 1024),
        ("1KB", 1024),
        ("1KiB", 1024),
        ("512M", 512 * 2**20),
        ("512 M", 512 * 2**20),
        ("2G", 2 * 2**30),
        ("2g", 2 * 2**30),
        ("2GiB", 2 * 2**30),
        ("1.5G", 1610612736),
        (".5K", 512),
        ("1.", 1),
        ("1T", 2**40),
        ("1.0000001K", 1024),  # fractions of a byte are dropped
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text, "test") == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2X", "expected a size like '2G', '512M' or '1000000' (bytes), got '2X'"),
        ("G", "got 'G'"),
        ("-1G", "got '-1G'"),
        ("1.5.5G", "got '1.5.5G'"),
        ("1P", "got '1P'"),
        ("1 G B", "got '1 G B'"),
        ("inf", "got 'inf'"),
        ("9" * 30, "too large"),
        (-5, "size must not be negative, got -5"),
        (True, "got True"),
        (1.5, "got 1.5"),
        ([1], "got [1]"),
    ],
)
def test_parse_size_errors(text: Any, message: str) -> None:
    with pytest.raises(PbqError) as info:
        parse_size(text, "somewhere")
    assert str(info.value).startswith("somewhere: ")
    assert message in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=20), st.integers()))
def test_fuzz_parse_size(text: str | int) -> None:
    try:
        assert parse_size(text, "fuzz") >= 0
    except PbqError as e:
        assert str(e).startswith("fuzz: ")


# --- validation errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "line", "message"),
    [
        (
            "[scheduler]\ninterval = 'fast'\n",
            2,
            "[scheduler] interval: expected a number, got 'fast'",
        ),
        ("[scheduler]\ninterval = true\n", 2, "[scheduler] interval: expected a number, got True"),
        ("[scheduler]\ninterval = 0\n", 2, "[scheduler] interval: must be >= 0.05, got 0.0"),
        ("[scheduler]\ninterval = -1\n", 2, "[scheduler] interval: must be >= 0.05, got -1.0"),
        (
            "[scheduler]\ninterval = nan\n",
            2,
            "[scheduler] interval: expected a finite number, got nan",
        ),
        ("[scheduler]\ninterval = inf\n", 2, "[scheduler] interval: expected a finite number"),
        ("[scheduler]\nhysteresis = -0.1\n", 2, "[scheduler] hysteresis: must be >= 0, got -0.1"),
        ("[scheduler]\nnice = 20\n", 2, "[scheduler] nice: must be <= 19, got 20"),
        ("[scheduler]\nnice = -1\n", 2, "[scheduler] nice: must be >= 0, got -1"),
        ("[scheduler]\nnice = 5.0\n", 2, "[scheduler] nice: expected an integer, got 5.0"),
        ("[scheduler]\nnice = 1" + "0" * 40 + "\n", 2, "[scheduler] nice: must be <= 19"),
        ("[scheduler]\nretries = -1\n", 2, "[scheduler] retries: must be >= 0"),
        ("[scheduler]\nmemfree = '2X'\n", 2, "[scheduler] memfree: expected a size like"),
        ("[scheduler]\nmemfree = -1\n", 2, "[scheduler] memfree: size must not be negative"),
        ("[scheduler]\noutput_dir = 3\n", 2, "[scheduler] output_dir: expected a string, got 3"),
        (
            '[scheduler]\noutput_dir = "a\\u0000b"\n',
            2,
            "[scheduler] output_dir: must not contain a NUL",
        ),
        (
            "[scheduler]\nexit_when_empty = 'yes'\n",
            2,
            "[scheduler] exit_when_empty: expected true or false, got 'yes'",
        ),
        ("[scheduler]\nexit_when_empty = 1\n", 2, "expected true or false, got 1"),
        (
            "[jobfile]\nlock = 'fcntl'\n",
            2,
            "[jobfile] lock: expected one of flock, soft, got 'fcntl'",
        ),
        ("[jobfile]\nstale_lock_after = 0\n", 2, "[jobfile] stale_lock_after: must be > 0"),
        ("[cluster]\ncpu = 0\n", 2, "[cluster] cpu: must be >= 1, got 0"),
        ("[cluster]\nmem = 4\n", 2, "[cluster] mem: expected a string, got 4"),
        ("[log]\nload_every = 0\n", 2, "[log] load_every: must be > 0"),
        ("[history]\nmax_bytes = [1]\n", 2, "[history] max_bytes: expected a size like"),
        ("[control]\ntimeout = '30'\n", 2, "[control] timeout: expected a number, got '30'"),
        ("[schedule]\nworkdays = ['Mon', 'Moon']\n", 2, "[schedule] workdays: unknown day 'Moon'"),
        (
            "[schedule]\nworkdays = 5\n",
            2,
            "[schedule] workdays: expected a list of day names, got 5",
        ),
        (
            "[schedule]\nworkhours = '8-20'\n",
            2,
            "[schedule] workhours: expected 'HH:MM-HH:MM', got '8-20'",
        ),
        ("[schedule]\nworkhours = 8\n", 2, "[schedule] workhours: expected a string, got 8"),
        (
            "\n[schedul]\nworkdays = []\n",
            2,
            "unknown section [schedul]; known sections: "
            "schedule, interactive, scheduler, jobfile, log, history, control, notify, cluster",
        ),
        (
            "[scheduler]\n# c\nintervall = 1\n",
            3,
            "[scheduler] unknown key 'intervall'; known keys: interval, hysteresis, nice,",
        ),
        ("[log]\n\n[scheduler]\n\n  nicety  =  1\n", 5, "[scheduler] unknown key 'nicety'"),
        ("scheduler.nicety = 1\n", 1, "[scheduler] unknown key 'nicety'"),
        ("[scheduler.sub]\nx = 1\n", 1, "[scheduler] unknown key 'sub'"),
        ("top = 1\n", 1, "unknown section [top]"),
        (
            "[scheduler]\nnice = 1\n[cluster]\ncpu = 'many'\n",
            4,
            "[cluster] cpu: expected an integer, got 'many'",
        ),
    ],
)
def test_file_validation_errors(tmp_path: Path, toml: str, line: int, message: str) -> None:
    path = write(tmp_path / "pbq.toml", toml)
    with pytest.raises(PbqError) as info:
        load_config(tmp_path / "jobs", environ={})
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert message in str(info.value)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path / "pbq.toml", "scheduler = 3\n")
    with pytest.raises(PbqError) as info:
        load_config(explicit=path, environ={})
    assert str(info.value) == f"{path}:1: [scheduler] must be a table, got 3"


@pytest.mark.parametrize(
    "toml",
    ["[scheduler\n", "[scheduler]\ninterval = \n", "a = 1\na = 2\n", "x = 1 2\n"],
)
def test_bad_toml_keeps_position(tmp_path: Path, toml: str) -> None:
    path = write(tmp_path / "pbq.toml", toml)
    with pytest.raises(PbqError) as info:
        load_config(explicit=path, environ={})
    text = str(info.value)
    assert text.startswith(f"{path}: invalid TOML: ")
    assert "line" in text and "column" in text


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "pbq.toml"
    path.write_bytes(b"[scheduler]\n# caf\xe9\n")
    with pytest.raises(PbqError) as info:
        load_config(explicit=path, environ={})
    assert str(info.value) == f"{path}:2: not valid UTF-8"


@pytest.mark.parametrize(
    ("env_name", "text", "message"),
    [
        ("PBQ_SCHEDULER_INTERVAL", "fast", "[scheduler] interval: expected a number, got 'fast'"),
        ("PBQ_SCHEDULER_INTERVAL", "", "[scheduler] interval: expected a number, got ''"),
        ("PBQ_SCHEDULER_INTERVAL", "nan", "expected a number, got 'nan'"),
        ("PBQ_SCHEDULER_INTERVAL", "1e9999", "expected a finite number"),
        ("PBQ_SCHEDULER_INTERVAL", "0", "must be >= 0.05, got 0.0"),
        ("PBQ_SCHEDULER_NICE", "1.5", "[scheduler] nice: expected an integer, got '1.5'"),
        ("PBQ_SCHEDULER_NICE", "99", "[scheduler] nice: must be <= 19, got 99"),
        ("PBQ_SCHEDULER_NICE", "9" * 5000, "expected an integer"),
        (
            "PBQ_JOBFILE_FSYNC",
            "maybe",
            "[jobfile] fsync: expected true/false (1/0, yes/no, on/off), got 'maybe'",
        ),
        ("PBQ_JOBFILE_LOCK", "none", "[jobfile] lock: expected one of flock, soft, got 'none'"),
        ("PBQ_LOG_MAX_BYTES", "10 MB B", "[log] max_bytes: expected a size like"),
        ("PBQ_SCHEDULE_WORKDAYS", "Mon;Tue", "[schedule] workdays: unknown day 'Mon;Tue'"),
        (
            "PBQ_SCHEDULE_WORKHOURS",
            "08:00-08:00",
            "[schedule] workhours: start and end are the same",
        ),
        ("PBQ_CLUSTER_QUEUE", "a\0b", "[cluster] queue: must not contain a NUL"),
    ],
)
def test_environment_errors(env_name: str, text: str, message: str) -> None:
    with pytest.raises(PbqError) as info:
        load_config(environ={env_name: text})
    assert str(info.value).startswith(f"environment {env_name}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {("scheduler", "interval"): 0},
            "flag --interval: [scheduler] interval: must be >= 0.05, got 0.0",
        ),
        (
            {("scheduler", "interval"): "x"},
            "flag --interval: [scheduler] interval: expected a number, got 'x'",
        ),
        (
            {("scheduler", "nice"): True},
            "flag --nice: [scheduler] nice: expected an integer, got True",
        ),
        (
            {("scheduler", "memfree"): "lots"},
            "flag --memfree: [scheduler] memfree: expected a size like",
        ),
        (
            {("log", "max_bytes"): -1},
            "flag --log-max-bytes: [log] max_bytes: size must not be negative",
        ),
        (
            {("scheduler", "exit_when_empty"): 2},
            "flag --exit-when-empty: [scheduler] exit_when_empty: expected true or false, got 2",
        ),
        ({("scheduler", "nope"): 1}, "flags: [scheduler] unknown key 'nope'"),
        ({("nope", "x"): 1}, "flags: unknown section [nope]"),
    ],
)
def test_flag_errors(flags: dict[tuple[str, str], Any], message: str) -> None:
    with pytest.raises(PbqError) as info:
        load_config(environ={}, flags=flags)
    assert str(info.value).startswith(message), str(info.value)


def test_bad_file_value_is_reported_even_when_overridden(tmp_path: Path) -> None:
    # A broken config file should not hide behind an environment override.
    path = write(tmp_path / "pbq.toml", "[scheduler]\ninterval = 'fast'\n")
    with pytest.raises(PbqError, match="interval: expected a number"):
        load_config(explicit=path, environ={"PBQ_SCHEDULER_INTERVAL": "1"})
