"""Configuration: ``pbq.toml`` plus environment variables and command-line flags.

Every key is optional.  Precedence, highest first: flag > environment
variable (``PBQ_<SECTION>_<KEY>``) > config file > default.  The config file
is the explicit ``--config`` path, else ``$PBQ_CONFIG``, else ``pbq.toml`` in
the jobfile's directory (if it exists), else none.

:data:`KEYS` is the single table of keys: loading, environment lookup and
``pbq config`` all read it.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pbq.errors import PbqError
from pbq.safety import read_trusted
from pbq.workhours import DAY_NAMES, Calendar, parse_calendar, parse_workdays, parse_workhours

__all__ = [
    "KEYS",
    "Config",
    "KeySpec",
    "Setting",
    "load_config",
    "parse_size",
]

Kind = Literal[
    "float", "int", "bool", "str", "size", "choice", "choices", "days", "hours", "duration",
    "timeout",
]


@dataclass(frozen=True)
class KeySpec:
    """One configuration key: where it lives, its type, default and limits."""

    section: str
    key: str
    kind: Kind
    default: Any
    help: str
    minimum: float | None = None
    # True when the minimum itself is not allowed (interval must be > 0).
    exclusive_min: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def env_name(self) -> str:
        return f"PBQ_{self.section}_{self.key}".upper()

    @property
    def flag_name(self) -> str:
        """The flag named in a Setting's source: ``--key``, or ``--section-key`` if ambiguous."""
        if sum(1 for s in KEYS if s.key == self.key) > 1:
            return f"--{self.section}-{self.key}".replace("_", "-")
        return f"--{self.key}".replace("_", "-")


MIN_INTERVAL = 0.05  # seconds: a shorter tick only busy-loops


def _k(section: str, key: str, kind: Kind, default: Any, help: str, **limits: Any) -> KeySpec:
    return KeySpec(section, key, kind, default, help, **limits)


KEYS: tuple[KeySpec, ...] = (
    _k("schedule", "workdays", "days", ("Mon", "Tue", "Wed", "Thu", "Fri"),
       "days on which work hours apply (the host's wday limit); [] = never"),
    _k("schedule", "workhours", "hours", "08:00-20:00",
       "work hours 'HH:MM-HH:MM'; '00:00-24:00' = all day; start > end wraps past midnight"),
    _k("schedule", "start_margin", "duration", 0.0,
       "before work hours, a job above the wday slots starts only if its expected run time "
       "plus this margin ends before work time begins, e.g. '10m'"),
    _k("interactive", "idle_minutes", "float", 10.0,
       "a logged-in user counts as active if their terminal was used within this many minutes",
       minimum=0),
    _k("interactive", "sources", "choices", ("tty", "logind"),
       "where active users are seen: 'tty' (terminal access times), 'logind' (sessions, incl. "
       "graphical ones); those of these that answer here are used; [] = none",
       choices=("tty", "logind")),
    _k("scheduler", "interval", "float", 1.0,
       f"seconds between scheduler ticks (at least {MIN_INTERVAL:g}: less only burns CPU)",
       minimum=MIN_INTERVAL),
    _k("scheduler", "hysteresis", "float", 0.5,
       "load margin around the limit before jobs are stopped or started", minimum=0),
    _k("scheduler", "nice", "int", 19, "nice value jobs run at (0..19)", minimum=0, maximum=19),
    _k("scheduler", "foreign_load", "bool", True,
       "count other processes' CPU use as load (PBQ's rule); false on a node that runs "
       "only pbq's jobs, or in a container with a CPU quota of its own"),
    _k("scheduler", "memfree", "size", "",
       "keep at least this much memory free, e.g. '2G'; '' = off"),
    _k("scheduler", "retries", "int", 0, "times a failed job is re-run", minimum=0),
    _k("scheduler", "settle", "float", 2.0,
       "seconds a lower load must persist before stopped jobs are continued", minimum=0),
    _k("scheduler", "term_grace", "float", 10.0,
       "seconds between SIGTERM and SIGKILL when terminating jobs", minimum=0),
    _k("scheduler", "stop_after", "duration", 0.0,
       "foreign load must stay over the limit this long before jobs are stopped, e.g. '30s'"),
    _k("scheduler", "max_suspend", "duration", 0.0,
       "a job stopped by the load policy longer than this is ended and its line goes back "
       "to the front of the jobfile, e.g. '30m'; '0' = never"),
    _k("scheduler", "timeout", "timeout", "",
       "time limit of a job: an absolute duration ('2h') or a percentage of the median run "
       "time of earlier successful runs of the same command ('300%'); '' = none"),
    _k("scheduler", "timeout_floor", "duration", 10.0,
       "a percentage timeout is never shorter than this"),
    _k("scheduler", "quarantine_after", "int", 5,
       "a host whose last this many jobs all failed quickly, while another host succeeds, "
       "takes no new jobs for a back-off (1 min, doubling up to 1 h); 0 = off", minimum=0),
    _k("scheduler", "quick_fail", "duration", 5.0,
       "a failure within this many seconds of the start counts towards quarantine_after"),
    _k("scheduler", "output_dir", "str", "",
       "directory for per-job output files; '' = JOBFILE.HOST.output/ (packed once a job "
       "has ended); '-' = jobs inherit the scheduler's stdout/stderr"),
    _k("scheduler", "exit_when_empty", "bool", False, "exit once the jobfile has no jobs left"),
    _k("scheduler", "allow_group_write", "bool", False,
       "accept a jobfile that is group-writable"),
    _k("scheduler", "containment", "choice", "auto",
       "how a job's processes are found: 'cgroup' (v2), 'process-group', or 'auto'",
       choices=("auto", "cgroup", "process-group")),
    _k("jobfile", "lock", "choice", "flock", "jobfile locking: 'flock' or 'soft' (lock file)",
       choices=("flock", "soft")),
    _k("jobfile", "compact_after", "float", 2.0,
       "seconds to wait before compacting the jobfile", minimum=0),
    _k("jobfile", "fsync", "bool", True, "fsync the jobfile after every rewrite"),
    _k("jobfile", "stale_lock_after", "float", 30.0,
       "seconds after which a soft lock is considered stale", minimum=0, exclusive_min=True),
    _k("log", "max_bytes", "size", "10M", "rotate the .log at this size; 0 = never"),
    _k("log", "backups", "int", 3, "rotated .log files kept", minimum=0),
    _k("log", "load_every", "float", 60.0, "seconds between load lines in the .log",
       minimum=0, exclusive_min=True),
    _k("history", "every", "float", 60.0, "seconds between history samples",
       minimum=0, exclusive_min=True),
    _k("history", "max_bytes", "size", "5M", "rotate the history file at this size; 0 = never"),
    _k("control", "timeout", "float", 30.0, "seconds to wait for a scheduler to answer",
       minimum=0, exclusive_min=True),
    _k("notify", "command", "str", "",
       "run (split like a shell would, no shell) when a job fails for good and when this host "
       "has nothing left to do, with PBQ_EVENT, PBQ_JOB, PBQ_EXIT, PBQ_COMMAND, PBQ_HOST, "
       "PBQ_JOBFILE set; '' = off"),
    _k("notify", "timeout", "float", 30.0,
       "seconds the notify command may run before it is killed (its process group)",
       minimum=0, exclusive_min=True),
    _k("cluster", "cpu", "int", 1, "default CPUs per cluster job", minimum=1),
    _k("cluster", "mem", "str", "", "default memory per cluster job, as the DRM spells it"),
    _k("cluster", "vmem", "str", "", "default virtual memory per cluster job"),
    _k("cluster", "queue", "str", "", "default cluster queue/partition"),
    _k("cluster", "walltime", "str", "", "default wall-clock limit per cluster job"),
    _k("cluster", "poll_interval", "float", 15.0, "seconds between cluster status polls",
       minimum=0, exclusive_min=True),
    _k("cluster", "predict", "bool", False, "predict cluster job resources from history"),
    _k("cluster", "plugin_dir", "str", "", "extra directory searched for DRM plugins"),
    _k("cluster", "submit_tries", "int", 3, "refused submissions of a line before it fails",
       minimum=1),
    _k("cluster", "error_polls", "int", 3, "polls a job's error status must last to be a verdict",
       minimum=1),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in KEYS))
_BY_NAME: dict[tuple[str, str], KeySpec] = {(s.section, s.key): s for s in KEYS}


# --- section objects ---------------------------------------------------------
# Field names must match KEYS (construction with **values fails loudly otherwise);
# they exist so cfg.scheduler.interval is typed for readers and tools.


@dataclass(frozen=True)
class ScheduleSection:
    workdays: tuple[str, ...]
    workhours: str
    start_margin: float

    @property
    def calendar(self) -> Calendar:
        # Both values were validated at load, so this cannot fail.
        return parse_calendar(self.workdays, self.workhours)


@dataclass(frozen=True)
class InteractiveSection:
    idle_minutes: float
    sources: tuple[str, ...]


@dataclass(frozen=True)
class SchedulerSection:
    interval: float
    hysteresis: float
    nice: int
    foreign_load: bool
    memfree: int
    retries: int
    settle: float
    term_grace: float
    stop_after: float
    max_suspend: float
    timeout: str
    timeout_floor: float
    quarantine_after: int
    quick_fail: float
    output_dir: str
    exit_when_empty: bool
    allow_group_write: bool
    containment: str


@dataclass(frozen=True)
class JobfileSection:
    lock: str
    compact_after: float
    fsync: bool
    stale_lock_after: float


@dataclass(frozen=True)
class LogSection:
    max_bytes: int
    backups: int
    load_every: float


@dataclass(frozen=True)
class HistorySection:
    every: float
    max_bytes: int


@dataclass(frozen=True)
class ControlSection:
    timeout: float


@dataclass(frozen=True)
class NotifySection:
    command: str
    timeout: float


@dataclass(frozen=True)
class ClusterSection:
    cpu: int
    mem: str
    vmem: str
    queue: str
    walltime: str
    poll_interval: float
    predict: bool
    plugin_dir: str
    submit_tries: int = 3
    error_polls: int = 3


_SECTION_TYPES: dict[str, type] = {
    "schedule": ScheduleSection,
    "interactive": InteractiveSection,
    "scheduler": SchedulerSection,
    "jobfile": JobfileSection,
    "log": LogSection,
    "history": HistorySection,
    "control": ControlSection,
    "notify": NotifySection,
    "cluster": ClusterSection,
}


@dataclass(frozen=True)
class Setting:
    """One resolved value and where it came from."""

    section: str
    key: str
    value: Any
    source: str  # "default", "config file PATH", "environment PBQ_X_Y", "flag --name"


@dataclass(frozen=True)
class Config:
    """Resolved configuration; sections are attributes (``cfg.scheduler.interval``)."""

    schedule: ScheduleSection
    interactive: InteractiveSection
    scheduler: SchedulerSection
    jobfile: JobfileSection
    log: LogSection
    history: HistorySection
    control: ControlSection
    notify: NotifySection
    cluster: ClusterSection
    path: Path | None
    _settings: tuple[Setting, ...]

    def get(self, section: str, key: str) -> Any:
        spec = _lookup(section, key, None, None)
        return getattr(getattr(self, spec.section), spec.key)

    def settings(self) -> list[Setting]:
        """Every key with its value and source, in KEYS order."""
        return list(self._settings)


# --- value conversion ----------------------------------------------------------


class _Invalid(ValueError):
    """A bad value; the caller adds section, key and source."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def _size(value: object) -> int:
    bad = f"expected a size like '2G', '512M' or '1000000' (bytes), got {_show(value)}"
    if isinstance(value, bool):
        raise _Invalid(bad)
    if isinstance(value, int):
        if value < 0:
            raise _Invalid(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise _Invalid(bad)
    text = value.strip()
    if not text:
        return 0
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise _Invalid(bad)
    number, unit = m.groups()
    whole, _, frac = number.partition(".")
    if len(whole) > 18:
        raise _Invalid(f"size is too large: {_show(value)}")
    # Exact arithmetic so "1.5G" is exactly 1610612736; fractions of a byte are dropped.
    # (Annotated: to a type checker int ** int may be a float.)
    scale: int = 1024 ** _UNITS[unit.upper()]
    frac = frac[:30]
    denominator: int = 10 ** len(frac)
    return (int(whole or "0") * scale) + (int(frac or "0") * scale) // denominator


_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from ``"30s"``, ``"30m"``, ``"2h"``, ``"1d"``, ``"90"`` or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if m is None:
            raise _Invalid(f"expected a duration like '30s', '30m' or '2h', got {_show(value)}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    else:
        raise _Invalid(f"expected a duration like '30s', '30m' or '2h', got {_show(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise _Invalid(f"a duration must be a finite number >= 0, got {_show(value)}")
    return seconds


def parse_timeout(value: str) -> tuple[float | None, float | None]:
    """``"2h"`` -> (7200, None); ``"300%"`` -> (None, 3.0); ``""`` -> (None, None)."""
    text = value.strip()
    if not text:
        return None, None
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise _Invalid(f"expected a percentage like '300%', got {_show(value)}") from None
        if not math.isfinite(percent) or percent <= 0:
            raise _Invalid(f"a percentage timeout must be > 0, got {_show(value)}")
        return None, percent / 100.0
    seconds = parse_duration(text)
    if seconds <= 0:
        raise _Invalid(f"a timeout must be > 0 (or '' for none), got {_show(value)}")
    return seconds, None


def parse_size(text: str | int, source: str) -> int:
    """Bytes from ``"2G"``, ``"512M"``, ``"1.5G"``, ``"1000000"`` or an int.

    Units K M G T are powers of 1024 (case-insensitive, optional ``B``/``iB``);
    ``""`` is 0, meaning off.
    """
    try:
        return _size(text)
    except _Invalid as e:
        raise PbqError(str(e), source) from None


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise _Invalid(f"expected a finite number, got {_show(value)}")
    return value


def _choices(spec: KeySpec, value: Any) -> tuple[str, ...]:
    """A list of names from ``spec.choices`` (a string is split on commas, as in the
    environment); each once, in the order given."""
    items = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _Invalid(f"expected a list of {', '.join(spec.choices)}, got {_show(value)}")
    out: list[str] = []
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else item
        if name not in spec.choices:
            raise _Invalid(f"expected one of {', '.join(spec.choices)}, got {_show(item)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _convert(spec: KeySpec, value: Any, from_string: bool) -> Any:
    """Check and normalise one value; strings from the environment are parsed first."""
    # Long but flat: one branch per kind of value -- parse, check, then the bounds.
    kind = spec.kind
    if from_string and isinstance(value, str):
        text = value.strip()
        if kind == "float":
            if not _FLOAT_RE.fullmatch(text):
                raise _Invalid(f"expected a number, got {_show(value)}")
            value = float(text)
        elif kind == "int":
            if not _INT_RE.fullmatch(text):
                raise _Invalid(f"expected an integer, got {_show(value)}")
            value = int(text)
        elif kind == "bool":
            if text.lower() in _TRUE:
                value = True
            elif text.lower() in _FALSE:
                value = False
            else:
                raise _Invalid(f"expected true/false (1/0, yes/no, on/off), got {_show(value)}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"expected a number, got {_show(value)}")
        value = _finite(float(value))
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_show(value)}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _Invalid(f"expected true or false, got {_show(value)}")
    elif kind == "size":
        value = _size(value)
    elif kind == "duration":
        value = parse_duration(value)
    elif kind == "choices":
        value = _choices(spec, value)
    elif kind == "timeout":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = f"{value:g}"
        if not isinstance(value, str):
            raise _Invalid(
                f"expected a duration like '2h' or a percentage like '300%', got {_show(value)}"
            )
        value = value.strip()
        if value:
            parse_timeout(value)
    elif kind in ("str", "choice", "hours"):
        if not isinstance(value, str):
            raise _Invalid(f"expected a string, got {_show(value)}")
        if "\0" in value:
            raise _Invalid("must not contain a NUL character")
        if kind == "choice":
            value = value.strip().lower()
            if value not in spec.choices:
                raise _Invalid(f"expected one of {', '.join(spec.choices)}, got {_show(value)}")
    if kind in ("float", "int"):
        if spec.minimum is not None and (
            value < spec.minimum or (spec.exclusive_min and value == spec.minimum)
        ):
            op = ">" if spec.exclusive_min else ">="
            raise _Invalid(f"must be {op} {spec.minimum:g}, got {_show(value)}")
        if spec.maximum is not None and value > spec.maximum:
            raise _Invalid(f"must be <= {spec.maximum:g}, got {_show(value)}")
    return value


def _resolve(spec: KeySpec, value: Any, from_string: bool, where: str, line: int | None) -> Any:
    """_convert with errors turned into PbqErrors naming section, key and source."""
    try:
        if spec.kind == "days":
            days = parse_workdays(value, where)
            return tuple(DAY_NAMES[d] for d in sorted(days))
        value = _convert(spec, value, from_string)
        if spec.kind == "hours":
            parse_workhours(value, where)
            return value.strip()
        return value
    except _Invalid as e:
        raise PbqError(f"[{spec.section}] {spec.key}: {e}", where, line) from None
    except PbqError as e:
        # workhours.py words its own "[schedule] ..." messages but knows no line.
        if e.line is None:
            e.line = line
        raise


def _lookup(section: str, key: str, where: str | None, line: int | None) -> KeySpec:
    spec = _BY_NAME.get((section, key))
    if spec is not None:
        return spec
    if section not in SECTIONS:
        sections = ", ".join(SECTIONS)
        raise PbqError(f"unknown section [{section}]; known sections: {sections}", where, line)
    known = ", ".join(s.key for s in KEYS if s.section == section)
    raise PbqError(f"[{section}] unknown key {key!r}; known keys: {known}", where, line)


# --- the config file -------------------------------------------------------------

_HEADER_RE = re.compile(r"\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(?:#.*)?$")
_ASSIGN_RE = re.compile(r"\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")


def _norm_key(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


def _locate(text: str, section: str, key: str | None) -> int | None:
    """Best-effort line of ``[section]`` or of ``key`` in it (tomllib gives no positions)."""
    target = section if key is None else f"{section}.{key}"

    def hit(name: str) -> bool:
        return name == target or name.startswith(target + ".")

    current = ""
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _HEADER_RE.match(line)
        if m and not line.lstrip().startswith("[["):
            current = _norm_key(m.group(1))
            if hit(current):
                return lineno
            continue
        m = _ASSIGN_RE.match(line)
        if m:
            name = _norm_key(m.group(1))
            if hit(f"{current}.{name}" if current else name):
                return lineno
    return None


def _read_file(
    path: Path, trusted_only: bool, allow_group_write: bool
) -> tuple[dict[str, Any], str]:
    shown = str(path)
    try:
        if trusted_only:
            # Found beside the jobfile, in a directory others may share: its plugin_dir is
            # imported, so it must be yours, like the jobfile.
            found = read_trusted(path, "config file", allow_group_write)
            if found is None:
                raise FileNotFoundError
            data = found
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise PbqError("config file not found", shown) from None
    except OSError as e:
        raise PbqError(f"cannot read config file: {e.strerror or e}", shown) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PbqError("not valid UTF-8", shown, line) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise PbqError(f"invalid TOML: {e}", shown) from None


def _file_values(
    path: Path, trusted_only: bool, allow_group_write: bool
) -> dict[tuple[str, str], Any]:
    table, text = _read_file(path, trusted_only, allow_group_write)
    shown = str(path)
    values: dict[tuple[str, str], Any] = {}
    for section, body in table.items():
        if section not in SECTIONS:
            _lookup(section, "", shown, _locate(text, section, None))
        if not isinstance(body, dict):
            where = _locate(text, section, None)
            raise PbqError(f"[{section}] must be a table, got {_show(body)}", shown, where)
        for key, value in body.items():
            where = _locate(text, section, key)
            spec = _lookup(section, key, shown, where)
            values[(section, key)] = _resolve(spec, value, False, shown, where)
    return values


def _find_config_file(
    jobfile: str | os.PathLike[str] | None,
    explicit: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
) -> tuple[Path | None, bool]:
    """The config file, and whether it was found beside the jobfile (not named by you)."""
    if explicit is not None and os.fspath(explicit) != "":
        return Path(explicit), False
    env = environ.get("PBQ_CONFIG", "")
    if env:
        return Path(env), False
    if jobfile is not None:
        beside = Path(jobfile).parent / "pbq.toml"
        # Only a missing file is fine here; an unreadable one is still an error.
        if os.path.lexists(beside):
            return beside, True
    return None, False


def _check_environment_keys(environ: Mapping[str, str]) -> None:
    """``PBQ_<SECTION>_<KEY>`` with a known section but an unknown key is a typo, refused
    like one in the file.  Other ``PBQ_*`` variables (those pbq gives jobs) are not config."""
    for name in environ:
        for section in SECTIONS:
            prefix = f"PBQ_{section.upper()}_"
            if name.startswith(prefix) and name[len(prefix):]:
                _lookup(section, name[len(prefix):].lower(), f"environment {name}", None)


def _early_allow_group_write(
    flags: Mapping[tuple[str, str], Any], environ: Mapping[str, str]
) -> bool:
    """allow_group_write before the config file is read (the file cannot vouch for itself)."""
    spec = _BY_NAME[("scheduler", "allow_group_write")]
    flag = flags.get((spec.section, spec.key))
    if flag is not None:
        return bool(_resolve(spec, flag, True, f"flag {spec.flag_name}", None))
    if spec.env_name in environ:
        source = f"environment {spec.env_name}"
        return bool(_resolve(spec, environ[spec.env_name], True, source, None))
    return False


def load_config(
    jobfile: str | os.PathLike[str] | None = None,
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """Resolve every key: flag > environment > config file > default.

    ``environ`` defaults to ``os.environ``.  ``PBQ_<SECTION>_<KEY>`` variables of a
    known section must name a known key; other ``PBQ_*`` variables are ignored (jobs
    carry their own); unknown flag keys are errors.  A flag value of None means the
    flag was not given.  A ``pbq.toml`` found beside the jobfile is read only if it
    is yours and closed to others (see pbq.safety).
    """
    env = os.environ if environ is None else environ
    _check_environment_keys(env)
    path, beside_jobfile = _find_config_file(jobfile, explicit, env)
    from_file: dict[tuple[str, str], Any] = {}
    if path is not None:
        group_ok = _early_allow_group_write(flags or {}, env)
        from_file = _file_values(path, beside_jobfile, group_ok)
    flag_values: dict[tuple[str, str], Any] = {}
    for (section, key), value in (flags or {}).items():
        if value is None:
            continue
        spec = _lookup(section, key, "flags", None)
        # Flags arrive typed, but a string for a typed key is parsed like the environment's.
        flag_values[(section, key)] = _resolve(spec, value, True, f"flag {spec.flag_name}", None)

    settings: list[Setting] = []
    by_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for spec in KEYS:
        ident = (spec.section, spec.key)
        if ident in flag_values:
            value, source = flag_values[ident], f"flag {spec.flag_name}"
        elif spec.env_name in env:
            source = f"environment {spec.env_name}"
            value = _resolve(spec, env[spec.env_name], True, source, None)
        elif ident in from_file:
            value, source = from_file[ident], f"config file {path}"
        else:
            value, source = _resolve(spec, spec.default, False, "default", None), "default"
        settings.append(Setting(spec.section, spec.key, value, source))
        by_section[spec.section][spec.key] = value

    sections = {name: _SECTION_TYPES[name](**by_section[name]) for name in SECTIONS}
    return Config(**sections, path=path, _settings=tuple(settings))
