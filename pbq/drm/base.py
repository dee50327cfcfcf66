"""Shared pieces of pbq's DRM layer: the one command runner, resources, states, job scripts.

Everything that executes a command goes through :class:`CommandRunner` (argv lists only, never a
shell string). The per-system modules (``slurm.py``, ``sge.py``, ...) only build argv lists and
parse outputs; the plugins in ``cluster_models/`` glue the two together.

Units (decided once, for every DRM):

* sizes (``mem``, ``vmem``): ``"2G"``, ``"512M"``, ``"1.5g"``, ``"100K"``, ``"1T"``, with an
  optional ``B``/``iB`` (``"2GB"``, ``"2GiB"``); units are binary (1K = 1024 bytes). A bare number
  is **megabytes** (``"2048"`` = 2 GiB), as in Slurm and HTCondor. Each DRM gets the unit it wants
  (rounded up): Slurm ``--mem=NM``, SGE ``NM``, Torque ``Nmb``, LSF kilobytes, HTCondor megabytes.
* walltimes: ``"HH:MM:SS"``, ``"MM:SS"``, ``"D-HH[:MM[:SS]]"``, suffixed numbers ``"90s"``,
  ``"30m"``, ``"2h"``, ``"1d"`` (combinable: ``"1h30m"``); a bare number is **minutes**
  (``"90"`` = 1 h 30 min), as in Slurm and LSF ``-W``.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import re
import shlex
import signal
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from pbq.errors import PbqError

TEMPLATE_DIR = Path(__file__).with_name("templates")

#: Exit code reported for a job the DRM killed (cancel, walltime, removal) without telling which
#: code or signal: as if terminated by SIGTERM, what cancel and walltime kills send first.
KILLED_EXIT = 128 + signal.SIGTERM
#: Exit code reported for a job the DRM says failed without giving a non-zero code.
FAILED_EXIT = 1


class DrmError(PbqError):
    """The DRM refused a request (bad resources, unknown queue, rejected submission)."""


class PluginFailed(DrmError):
    """A plugin call raised: what it did before (maybe submit a job) is unknown."""


class DrmUnavailable(DrmError):
    """The DRM did not answer: command missing, timed out, or its daemon unreachable.

    Nothing about any job may be concluded from it; the caller backs off and asks again.
    """


# --------------------------------------------------------------------------- running commands


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        """stdout and stderr together (for messages that may go to either)."""
        return "\n".join(s for s in (self.stdout.strip(), self.stderr.strip()) if s)

    def describe(self) -> str:
        """One line for an error message: the command, its exit status, its last output line."""
        lines = self.output.splitlines()
        last = lines[-1].strip() if lines else "no output"
        return f"{shlex.join(self.argv)} exited with {self.returncode}: {last}"


class CommandRunner:
    """Runs DRM commands: argv lists only, a timeout per call, failures counted.

    ``consecutive_failures`` counts calls in a row that raised :class:`DrmUnavailable` or exited
    non-zero; a call that exits 0 resets it. :meth:`backoff` turns it into a delay.
    """

    def __init__(self, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        self.timeout = timeout
        self.env = dict(env) if env is not None else None
        self.consecutive_failures = 0

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> CommandResult:
        if isinstance(argv, str | bytes) or not argv:
            raise TypeError("CommandRunner.run takes a non-empty argv list, never a shell string")
        args = tuple(str(a) for a in argv)
        limit = self.timeout if timeout is None else timeout
        env = None if self.env is None else {**os.environ, **self.env}
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            self.consecutive_failures += 1
            raise DrmUnavailable(
                f"{args[0]}: command not found or not executable ({exc.strerror})"
            ) from exc
        try:
            out, err = proc.communicate(stdin, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self.consecutive_failures += 1
            raise DrmUnavailable(f"{shlex.join(args)} did not answer within {limit:g} s") from exc
        if proc.returncode == 0:
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
        return CommandResult(args, proc.returncode, out, err)

    def backoff(self, base: float = 5.0, cap: float = 300.0) -> float:
        """Seconds to wait before asking again: 0, then base, 2*base, 4*base, ... up to cap."""
        n = self.consecutive_failures
        return 0.0 if n == 0 else min(cap, base * 2 ** min(n - 1, 30))


# --------------------------------------------------------------------------- states


class ClusterState(enum.Enum):
    QUEUED = "queued"
    HELD = "held"
    RUNNING = "running"
    SUSPENDED = "suspended"
    #: brief end states (Torque E, Slurm COMPLETING, SGE d*): not a failure, not done yet.
    EXITING = "exiting"
    #: the DRM answered with an error for this job (a negative BioQueue status, an odd value,
    #: an exception for this job only): a verdict only once it persists or the exit file exists.
    ERROR = "error"
    #: finished or left the queue; the exit code is judged separately.
    DONE = "done"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class JobStatus:
    """What the DRM says about one job.

    ``exit_code`` is what the DRM itself reported, when the status query showed it (only for
    DONE); None means "not told here", never success. ``raw`` is the DRM's own state word.
    """

    state: ClusterState
    exit_code: int | None = None
    raw: str = ""


GONE = JobStatus(ClusterState.DONE, None, "gone")
#: ``raw`` of an ERROR status whose value was not a number at all (None, a string).
ODD = "odd value"


def failure_code(code: int | None, killed: bool) -> int:
    """The exit code of a job the DRM reports as failed or killed: never 0."""
    if code:
        return code
    return KILLED_EXIT if killed else FAILED_EXIT


def signal_code(sig: int) -> int:
    """Shell convention for "killed by signal SIG"."""
    return 128 + sig


# --------------------------------------------------------------------------- resources

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """``"2G"`` -> bytes. A bare number is megabytes; ``"100b"`` is bytes. PbqError if bad."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise PbqError(f"bad memory size {text!r}: use e.g. 512M, 2G, 1.5G or 2048 (megabytes)")
    number, unit, suffix = m.group(1), m.group(2).lower(), m.group(3)
    if not unit and not suffix:
        unit = "m"
    value = math.ceil(float(number) * _UNIT[unit])
    if value <= 0:
        raise PbqError(f"bad memory size {text!r}: must be more than zero")
    return value


def to_kb(nbytes: int) -> int:
    return max(1, math.ceil(nbytes / 1024))


def to_mb(nbytes: int) -> int:
    return max(1, math.ceil(nbytes / (1 << 20)))


_WALL_SUFFIX_RE = re.compile(r"(\d+(?:\.\d*)?)\s*([dhms])", re.IGNORECASE)
_WALL_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_walltime(text: str) -> int:
    """Walltime text -> seconds (see the module docstring). PbqError if bad."""
    s = str(text).strip()
    bad = PbqError(f"bad walltime {text!r}: use HH:MM:SS, D-HH:MM:SS, 90 (minutes), 90m, 2h or 1d")
    if not s:
        raise bad
    try:
        if re.fullmatch(r"\d+", s):
            seconds = int(s) * 60
        elif re.fullmatch(r"(?:\d+(?:\.\d*)?\s*[dhms]\s*)+", s, re.IGNORECASE):
            seconds = math.ceil(
                sum(float(n) * _WALL_SECONDS[u.lower()] for n, u in _WALL_SUFFIX_RE.findall(s))
            )
        else:
            days = 0
            rest = s
            if "-" in s:
                d, rest = s.split("-", 1)
                days = int(d)
                parts = [int(p) for p in rest.split(":")]  # D-HH[:MM[:SS]]
                if not 1 <= len(parts) <= 3:
                    raise ValueError(s)
                parts += [0] * (3 - len(parts))
            else:
                parts = [int(p) for p in rest.split(":")]  # MM:SS or HH:MM:SS
                if len(parts) == 2:
                    parts = [0, *parts]
                if len(parts) != 3:
                    raise ValueError(s)
            h, mi, se = parts
            if mi >= 60 or se >= 60 or min(h, mi, se, days) < 0:
                raise ValueError(s)
            seconds = days * 86400 + h * 3600 + mi * 60 + se
    except ValueError:
        raise bad from None
    if seconds <= 0:
        raise PbqError(f"bad walltime {text!r}: must be more than zero")
    return seconds


def format_hms(seconds: int) -> str:
    """Seconds -> ``HH:MM:SS`` (hours may exceed 24)."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


@dataclass(frozen=True)
class Resources:
    """What one job asks of the DRM. Empty strings mean "no limit / not passed".

    ``pe`` is the Grid Engine parallel environment used for ``cpu > 1`` (hostfile ``pe=smp``);
    other DRMs ignore it. Values are checked when the object is made (PbqError if bad).
    """

    cpu: int = 1
    mem: str = ""
    vmem: str = ""
    queue: str = ""
    walltime: str = ""
    pe: str = ""

    def __post_init__(self) -> None:
        cpu = self.cpu
        if isinstance(cpu, str):
            cpu = cpu.strip() or "1"
            if not cpu.isdigit():
                raise PbqError(f"bad cpu count {self.cpu!r}: must be a whole number >= 1")
            object.__setattr__(self, "cpu", int(cpu))
        if isinstance(self.cpu, bool) or not isinstance(self.cpu, int) or self.cpu < 1:
            raise PbqError(f"bad cpu count {self.cpu!r}: must be a whole number >= 1")
        for name in ("mem", "vmem", "queue", "walltime", "pe"):
            value = getattr(self, name)
            value = "" if value is None else str(value).strip()
            object.__setattr__(self, name, value)
        if self.mem:
            parse_size(self.mem)
        if self.vmem:
            parse_size(self.vmem)
        if self.walltime:
            parse_walltime(self.walltime)
        for name in ("queue", "pe"):
            if re.search(r"\s", getattr(self, name)):
                raise PbqError(f"bad {name} {getattr(self, name)!r}: no spaces allowed")

    @classmethod
    def merged(cls, *layers: Mapping[str, object]) -> Resources:
        """Later layers override earlier ones key by key (an empty value overrides too: "no
        limit"). Unknown keys are ignored, so a whole hostfile field dict can be passed."""
        values: dict[str, object] = {}
        for layer in layers:
            for key in ("cpu", "mem", "vmem", "queue", "walltime", "pe"):
                if key in layer:
                    values[key] = layer[key]
        if values.get("cpu") in ("", None):
            values.pop("cpu", None)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def mem_bytes(self) -> int | None:
        return parse_size(self.mem) if self.mem else None

    @property
    def vmem_bytes(self) -> int | None:
        return parse_size(self.vmem) if self.vmem else None

    @property
    def walltime_seconds(self) -> int | None:
        return parse_walltime(self.walltime) if self.walltime else None


# --------------------------------------------------------------------------- job scripts


@dataclass(frozen=True)
class JobFiles:
    """The files of one submission: ``DIR/STEM.sh`` (job script), ``STEM.exit`` (exit code),
    ``STEM.usage`` (peak memory, CPU time). DIR is normally ``<workspace>/.pbq-drm``.

    ``stem`` is unique per submission, so a retried job never reads an earlier exit code.
    """

    dir: Path
    stem: str

    @classmethod
    def new(cls, workspace: Path, key: str) -> JobFiles:
        return cls(Path(workspace) / STATE_DIR, f"{safe_name(key)}.{uuid.uuid4().hex[:8]}")

    @classmethod
    def from_exit_file(cls, exit_file: str | os.PathLike[str]) -> JobFiles:
        path = Path(exit_file)
        if path.suffix != ".exit":
            raise PbqError(f"exit-code file {path} must end in .exit")
        return cls(path.parent, path.stem)

    def path(self, suffix: str) -> Path:
        return self.dir / f"{self.stem}{suffix}"

    @property
    def script(self) -> Path:
        return self.path(".sh")

    @property
    def exit_file(self) -> Path:
        return self.path(".exit")

    @property
    def usage_file(self) -> Path:
        return self.path(".usage")

    @property
    def claim_file(self) -> Path:
        """Made with O_EXCL by the first cluster job of the attempt that starts."""
        return self.path(".claim")

    @property
    def dup_file(self) -> Path:
        """Where a second cluster job of the same attempt says that it did not run."""
        return self.path(".dup")

    def all_paths(self) -> list[Path]:
        return [self.script, self.exit_file, self.usage_file, self.claim_file, self.dup_file,
                *(self.path(s) for s in (".sub", ".condor.log"))]


#: hidden folder of the workspace where pbq keeps job scripts, exit-code and usage files.
STATE_DIR = ".pbq-drm"


def safe_name(text: str, limit: int = 48) -> str:
    """A job key made safe for file and job names: [A-Za-z0-9._-] only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-")
    return (cleaned or "job")[:limit]


def load_template(name: str) -> Template:
    path = TEMPLATE_DIR / f"{name}.tpl"
    try:
        return Template(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PbqError(f"job script template {path} cannot be read: {exc.strerror}") from exc


def render_job_script(
    system: str,
    *,
    command: str,
    workspace: Path | str,
    exit_file: Path | str,
    usage_file: Path | str,
    job_name: str,
    directives: Sequence[str] = (),
    claim_file: Path | str | None = None,
    dup_file: Path | str | None = None,
) -> str:
    """The job script for SYSTEM: ``templates/<system>.tpl`` around ``templates/job.tpl``.

    The script enters the workspace, runs COMMAND with ``/bin/sh -c``, records peak memory and
    CPU time with GNU ``/usr/bin/time`` when present, writes the exit status to EXIT_FILE
    atomically (tmp + mv) and exits with it. First of all it claims CLAIM_FILE (default: beside
    EXIT_FILE) with O_EXCL: a second cluster job of the same attempt finds it taken, notes that
    in DUP_FILE and exits 0 without running the command.
    """
    q = shlex.quote
    stem = str(exit_file)[: -len(".exit")] if str(exit_file).endswith(".exit") else str(exit_file)
    claim = str(claim_file) if claim_file is not None else f"{stem}.claim"
    dup = str(dup_file) if dup_file is not None else f"{stem}.dup"
    body = load_template("job").substitute(
        job_name=job_name,
        workspace=q(str(workspace)),
        command=q(command),
        exit_file=q(str(exit_file)),
        exit_tmp=q(f"{exit_file}.tmp"),
        usage_file=q(str(usage_file)),
        usage_tmp=q(f"{usage_file}.tmp"),
        claim_file=q(claim),
        dup_file=q(dup),
    )
    return load_template(system).substitute(
        job_name=job_name, directives="\n".join(directives), body=body
    )


def write_script(path: Path, text: str) -> None:
    """Write a job script (mode 0755) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


@dataclass(frozen=True)
class JobUsage:
    """What ``/usr/bin/time`` measured for one job (None where not measured)."""

    peak_rss_bytes: int | None
    cpu_seconds: float | None
    runtime: float | None


def parse_usage(text: str) -> JobUsage | None:
    """Parse the usage file the job script wrote (``pbq-usage maxrss_kb=... user_s=...``)."""
    for line in text.splitlines():
        if line.startswith("pbq-usage "):
            fields = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
            try:
                rss = int(fields["maxrss_kb"]) * 1024 if "maxrss_kb" in fields else None
                user = float(fields.get("user_s", "nan"))
                sys_ = float(fields.get("sys_s", "nan"))
                cpu = None if math.isnan(user + sys_) else user + sys_
                run = float(fields["elapsed_s"]) if "elapsed_s" in fields else None
            except ValueError:
                return None
            return JobUsage(rss, cpu, run)
    return None


def read_exit_file(path: Path) -> int | None:
    """The exit code in an exit-code file; None when missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None
