#!/usr/bin/env python3
"""pbq benchmark (run it as ``bench/run``; ``bench/run --help`` lists the options).

Sections (``--only`` takes their names):

dispatch  N trivial jobs (``true``), two at a time: pbq-single --exit-when-empty (full
          bookkeeping) vs ``parallel -j2 --joblog`` vs ``xargs -P2`` (one ``sh -c LINE``
          per line, as a jobfile's lines are command lines).  Wall time of whole runs,
          Python start-up included; the joblog's first start to last end as a 2nd figure.
scaling   one take (lock, take(1), commit_take, maybe_compact: what the scheduler does)
          from the top of a 1,000-line vs a 100,000-line jobfile, through the library,
          with a virtual clock that makes compaction fall due every 100 takes.
reaction  2 CPU-bound jobs on a host with max = wday = 2; 2 foreign busy loops start
          (nice 0, each in a session of its own): seconds until both jobs are SIGSTOPped;
          the loops end: seconds until both run again (job states from /proc/PID/stat,
          polled every 20 ms).  Then stop/continue events per minute under a steady
          foreign load of 1 busy loop.  Default config (interval 1, settle 2, hysteresis
          0.5); --quick uses a fast one (interval 0.25) to stay short.  When a load from
          outside the benchmark keeps the jobs from running, the section is skipped.
idle      CPU (utime+stime of scheduler and its job runner, from /proc) of an idle scheduler
          (empty jobfile) over a window, and its peak RSS (VmHWM); the same with 50 jobs
          stopped by ``pbq control stop``.  Both schedulers are measured at the same time.
hosts     8 schedulers (different --host) draining one jobfile vs 1 scheduler: throughput
          ratio; every job records its id (``echo ID >> rec``), each must be seen exactly
          once.  Two more figures tell the causes apart: the same with roomy hosts (max =
          wday = 20, so co-located schedulers do not hold back for each other's load), and
          8 vs 1 processes doing nothing but lock + take(1) + commit (the lock alone).
stress    8 schedulers vs 1 on a bigger jobfile (default 10,000 jobs) while
          ``jobfile-append`` adds half of the jobs concurrently: jobs/s, lost, duplicated.
commands  pbq status, pbq control check, jobfile-append and pbq add against the start of
          the same interpreter (``python3 -c pass``), alternately.
fleet     100 schedulers x 1 slot (distinct --host names) vs 1 x 100 draining short
          recording jobs while two appenders add half, with flock and --lock soft: jobs/s,
          exactly once, lock wait/hold from the schedulers' histograms, CPU per job; the
          same with 10 schedulers and with jobs of 0.5 s; and the lock alone: 100
          processes taking 64 lines at a time, at twice one scheduler's pace.
bigfile   5,000 jobs from the head of a 1 GB vs a 10 MB jobfile: jobs/s, bytes written.
profile   (only when named) cProfile of an in-process Scheduler.run() draining N jobs:
          the top functions by cumulative time, per job.

Every comparison alternates its tools within each round (the order rotates) and reports
medians over the rounds; the machine is noisy, so the ratios are the figures.  All work
happens in a temporary directory; every process started is killed at the end of its
section, and on failure or Ctrl-C (process groups, and a sweep for every process whose
environment carries this run's marker).  Exit status: 0, also when targets are missed;
1 when a section failed or a job was lost or run twice; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
PY = sys.executable
sys.path.insert(0, str(ROOT))  # the package's own readers of its files, from this checkout

from pbq.sidefiles import read_joblog as read_joblog_rows  # noqa: E402
from pbq.sidefiles import read_pidfile  # noqa: E402
from pbq.statefiles import HostFiles  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTIONS = ("dispatch", "scaling", "reaction", "idle", "hosts", "stress", "commands", "fleet",
            "bigfile")
EXTRA_SECTIONS = ("profile",)
TITLES = {
    "dispatch": "1. dispatch overhead",
    "scaling": "2. jobfile scaling",
    "reaction": "3. reaction to foreign load",
    "idle": "4. idle cost",
    "hosts": "5. 8 schedulers on ONE 2-core machine, one jobfile (each sees the others' jobs)",
    "stress": "6. stress: exactly once under concurrent appends",
    "commands": "7. commands a person types (vs the interpreter's own start)",
    "fleet": "8. a fleet: many schedulers (as on many machines) on one jobfile",
    "bigfile": "9. a huge jobfile",
    "profile": "profile of pbq's dispatch",
}
MARK_ENV = "PBQBENCH_DIR"  # every process we start carries it: the cleanup sweep finds them
BUSY_LOOP = ["sh", "-c", "while :; do :; done"]
HOSTLINE = "* linux 2 2 0"
DEFAULT_TOML = """\
[scheduler]
interval = 1.0
settle = 2.0
hysteresis = 0.5
[jobfile]
compact_after = 2.0
"""
# --quick only checks that the reaction code path works: a fast scheduler keeps it short.
QUICK_TOML = """\
[scheduler]
interval = 0.25
settle = 0.5
hysteresis = 0.5
[jobfile]
compact_after = 2.0
"""

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class BenchError(Exception):
    """A measurement that could not be made (a tool failed, a timeout)."""


class Skip(Exception):  # noqa: N818 - a reason, not an error
    """A measurement that cannot be made here and now (e.g. the machine is too busy)."""


# ---------------------------------------------------------------------- settings, rows


@dataclass
class Settings:
    quick: bool
    rounds: int
    n: int  # dispatch and hosts: jobs per run
    stress_n: int
    schedulers: int = 8
    takes: int = 500
    small_lines: int = 1_000
    big_lines: int = 100_000
    idle_window: float = 60.0
    flap_window: float = 60.0
    stopped_jobs: int = 50
    fleet_hosts: int = 100
    fleet_n: int = 100_000
    small_file: int = 10_000_000  # bytes
    big_file: int = 1_000_000_000
    bigfile_jobs: int = 5_000
    start_timeout: float = 30.0  # seconds for a scheduler to get its jobs going
    install: bool = True
    keep: bool = False


@dataclass
class Row:
    section: str
    measure: str
    pbq: str
    other: str = "-"
    ratio: str = "-"
    target: str = "-"
    ok: bool | None = None  # None: no target (information) or skipped
    skipped: str = ""
    error: bool = False
    data: dict[str, Any] = field(default_factory=dict)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"  # NaN -> "-"


def ratio_cell(x: float) -> str:
    return "-" if x != x else f"{x:.2f}x"


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------- /proc


def proc_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (fields[0] is the state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 :].split()


def proc_state(pid: int) -> str | None:
    f = proc_fields(pid)
    return f[0].decode() if f else None


def proc_cpu(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (its own, not its children's)."""
    f = proc_fields(pid)
    if not f:
        return None
    return (int(f[11]) + int(f[12])) / CLK_TCK


def proc_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy / CLK_TCK, sum(v) / CLK_TCK


def busy_share(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over the next ``seconds``."""
    b0, t0 = machine_busy()
    time.sleep(seconds)
    b1, t1 = machine_busy()
    return (b1 - b0) / max(t1 - t0, 1e-9)


# ---------------------------------------------------------------------- processes


class Bench:
    """The run's temporary directory and every process started in it."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.env = {**os.environ, MARK_ENV: str(workdir)}
        self.env.pop("PBQ_CONFIG", None)
        # Like an installed pbq, run from compiled bytecode: cache it in the temporary directory
        # (not in the checkout), even where PYTHONDONTWRITEBYTECODE is set.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.samples: dict[str, Any] = {}
        self.parallel: str | None = None
        self.parallel_why = ""
        self.parallel_version = ""

    def mkdir(self, *parts: str) -> Path:
        d = self.workdir.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def popen(
        self,
        argv: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        out: Path | None = None,
        stdin: Any = subprocess.DEVNULL,
    ) -> subprocess.Popen:
        """Start ``argv`` in a session (and process group) of its own."""
        outf = open(out, "ab") if out is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            p = subprocess.Popen(
                [str(a) for a in argv],
                cwd=cwd or self.workdir,
                env=self.env,
                stdin=stdin,
                stdout=outf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if out is not None:
                outf.close()
        with self.lock:
            self.procs.append(p)
        return p

    def wait(self, p: subprocess.Popen, timeout: float, what: str) -> int:
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(p)
            raise BenchError(f"{what} did not finish within {timeout:g} s") from None

    def run(
        self,
        argv: Sequence[str | Path],
        timeout: float,
        what: str,
        cwd: Path | None = None,
        out: Path | None = None,
    ) -> int:
        return self.wait(self.popen(argv, cwd=cwd, out=out), timeout, what)

    def kill(self, p: subprocess.Popen) -> None:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            with contextlib.suppress(OSError):
                os.killpg(p.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)

    def cleanup(self) -> None:
        """Kill every process of this run: our process groups, then whatever carries the marker
        (pbq jobs run in sessions of their own, so killing a scheduler's group leaves them)."""
        with self.lock:
            procs, self.procs = self.procs, []
        for p in procs:
            if p.poll() is None:
                self.kill(p)
        sweep(f"{MARK_ENV}={self.workdir}".encode())
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2)


def sweep(marker: bytes) -> int:
    """SIGKILL (and SIGCONT) every process whose environment holds ``marker``."""
    me = os.getpid()
    killed = 0
    for _ in range(20):
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if marker in env.split(b"\0"):
                found.append(int(name))
        if not found:
            break
        for pid in found:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
        killed += len(found)
        time.sleep(0.05)
    return killed


def pbq_argv(hf: Path, jf: Path, host: str, *extra: str) -> list[str]:
    return [PY, str(BIN / "pbq-single"), "--host", host, *extra, str(hf), str(jf)]


def host_file(jf: Path, host: str, ext: str) -> Path:
    return HostFiles(jf, host).path(ext)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def read_joblog(path: Path) -> list[tuple[float, float, int]]:
    """(start, runtime, exitval) of each row of a joblog (pbq's or GNU Parallel's: one format)."""
    return [(r.start, r.runtime, r.exitval) for r in read_joblog_rows(path)]


def joblog_span(rows: list[tuple[float, float, int]]) -> float:
    if not rows:
        return float("nan")
    return max(s + r for s, r, _ in rows) - min(s for s, _, _ in rows)


def wait_until(pred: Callable[[], Any], timeout: float, every: float = 0.02) -> float | None:
    """Seconds until ``pred()`` is true, or None after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(every)


def scheduler_pid(jf: Path, host: str) -> int | None:
    rec = read_pidfile(host_file(jf, host, "pid"))
    return rec.pid if rec is not None else None


def runner_pids(scheduler: int) -> list[int]:
    """The scheduler's job runner (its child started as ``#pbq-runner``), if it has one."""
    try:  # its children, where the kernel lists them (a scan of /proc per host is slow)
        with open(f"/proc/{scheduler}/task/{scheduler}/children", "rb") as f:
            kids = [int(x) for x in f.read().split()]
    except FileNotFoundError:
        kids = None
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc") if kids is None else map(str, kids):
        if not name.isdigit():
            continue
        fields = proc_fields(int(name))
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if fields is not None and int(fields[1]) == scheduler and b"#pbq-runner" in cmd:
            out.append(int(name))
    return out


def job_pids(jf: Path, host: str) -> list[int]:
    """The host's job pids from ``JOBFILE.HOST.state`` (jobs[].pid), falling back to the
    session leaders whose environment names this jobfile and host."""
    state = read_json(host_file(jf, host, "state")) or {}
    pids = [j["pid"] for j in state.get("jobs", []) if isinstance(j, dict) and j.get("pid")]
    if pids:
        return pids
    want = {f"PBQ_JOBFILE={jf}".encode(), f"PBQ_HOST={host}".encode()}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
            if want <= env and os.getsid(int(name)) == int(name):
                pids.append(int(name))
        except OSError:
            continue
    return sorted(pids)


# ---------------------------------------------------------------------- GNU Parallel


def gnu_parallel_version(path: str) -> str | None:
    try:
        r = subprocess.run(
            [path, "--version"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = r.stdout.decode(errors="replace").splitlines()[:1]
    return first[0].strip() if first and "GNU parallel" in first[0] else None


def ensure_parallel(b: Bench) -> None:
    path = shutil.which("parallel")
    if path:
        version = gnu_parallel_version(path)
        if version:
            b.parallel, b.parallel_version = path, version
            return
        b.parallel_why = f"{path} is not GNU Parallel (moreutils' parallel?)"
        return
    if not b.s.install:
        b.parallel_why = "GNU Parallel is not installed (--no-install)"
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        b.parallel_why = "GNU Parallel is not installed, and installing it needs root and apt-get"
        return
    say("installing GNU Parallel (Debian package parallel)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-qq", "--no-install-recommends"]
    ok = False
    for step in (
        [[*apt, "install", "parallel"]],
        [[*apt, "update"], [*apt, "install", "parallel"]],
    ):
        try:
            ok = all(
                subprocess.run(
                    cmd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=900,
                ).returncode
                == 0
                for cmd in step
            )
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            break
    path = shutil.which("parallel")
    version = gnu_parallel_version(path) if ok and path else None
    if version and path:
        b.parallel, b.parallel_version = path, version
    else:
        b.parallel_why = "installing the Debian package parallel failed"


# ---------------------------------------------------------------------- 1. dispatch


NO_OUTPUT = '[scheduler]\noutput_dir = "-"\n'
PROCESS_GROUPS = '[scheduler]\noutput_dir = "-"\ncontainment = "process-group"\n'
VARIANTS = {"pbq-noout": NO_OUTPUT, "pbq-pg": PROCESS_GROUPS}


def text_of_log(b: Bench, section: str) -> str:
    """The .log lines of the first pbq run of a section (which containment it used)."""
    for path in sorted(b.mkdir(section).glob("r*/pbq/jobfile.*.log")):
        try:
            return path.read_text(errors="replace")
        except OSError:
            continue
    return ""


def drain_pbq(
    b: Bench,
    d: Path,
    lines: list[str],
    hosts: int = 1,
    hostline: str = HOSTLINE,
    timeout: float = 600,
    config: str = "",
) -> dict[str, Any]:
    """Run ``hosts`` schedulers with --exit-when-empty on one jobfile until all exit."""
    hf = write(d / "hostfile", hostline + "\n")
    if config:
        write(d / "pbq.toml", config)
    jf = write(d / "jobfile", "".join(line + "\n" for line in lines))
    names = [f"h{i + 1}" for i in range(hosts)] if hosts > 1 else ["bench"]
    t0 = time.perf_counter()
    procs = [
        b.popen(pbq_argv(hf, jf, h, "--exit-when-empty"), cwd=d, out=d / f"sched-{h}.out")
        for h in names
    ]
    deadline = time.monotonic() + timeout
    for h, p in zip(names, procs, strict=True):
        rc = b.wait(p, max(1.0, deadline - time.monotonic()), f"pbq-single --host {h}")
        if rc != 0:
            raise BenchError(f"pbq-single --host {h} exited {rc}: {tail(d / f'sched-{h}.out')}")
    wall = time.perf_counter() - t0
    rows = [r for h in names for r in read_joblog(host_file(jf, h, "joblog"))]
    return {
        "wall": wall,
        "jobs": len(rows),
        "failed": sum(1 for r in rows if r[2] != 0),
        "span": joblog_span(rows),
    }


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def drain_parallel(b: Bench, d: Path, lines: list[str]) -> dict[str, Any]:
    assert b.parallel is not None
    jf = write(d / "jobfile", "".join(line + "\n" for line in lines))
    joblog = d / "parallel.joblog"
    t0 = time.perf_counter()
    with open(jf, "rb") as inp:
        p = b.popen(
            [b.parallel, "--will-cite", "-j2", "--joblog", str(joblog)],
            cwd=d,
            stdin=inp,
            out=d / "parallel.out",
        )
    rc = b.wait(p, 600, "parallel")
    wall = time.perf_counter() - t0
    if rc != 0:
        raise BenchError(f"parallel exited {rc}: {tail(d / 'parallel.out')}")
    rows = read_joblog(joblog)
    return {
        "wall": wall,
        "jobs": len(rows),
        "failed": sum(1 for r in rows if r[2] != 0),
        "span": joblog_span(rows),
    }


def drain_xargs(b: Bench, d: Path, lines: list[str]) -> dict[str, Any]:
    jf = write(d / "jobfile", "".join(line + "\n" for line in lines))
    t0 = time.perf_counter()
    with open(jf, "rb") as inp:
        p = b.popen(
            ["xargs", "-d", "\\n", "-P2", "-n1", "sh", "-c"], cwd=d, stdin=inp, out=d / "xargs.out"
        )
    rc = b.wait(p, 600, "xargs")
    wall = time.perf_counter() - t0
    if rc != 0:
        raise BenchError(f"xargs exited {rc}: {tail(d / 'xargs.out')}")
    return {"wall": wall, "jobs": len(lines), "failed": 0, "span": float("nan")}


def sec_dispatch(b: Bench) -> list[Row]:
    s = b.s
    n = s.n
    lines = ["true"] * n
    pbqs = ["pbq", "pbq-noout", "pbq-pg"]  # default; no output files; process groups too
    tools = [*pbqs, "parallel", "xargs"] if b.parallel else [*pbqs, "xargs"]
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    startup: list[float] = []
    drain_pbq(b, b.mkdir("dispatch", "warm-up"), [])  # compiles the bytecode; not counted
    for r in range(s.rounds):
        order = tools[r % len(tools) :] + tools[: r % len(tools)]
        for tool in order:
            d = b.mkdir("dispatch", f"r{r}", tool)
            if tool in VARIANTS:
                res = drain_pbq(b, d, lines, config=VARIANTS[tool])
            else:
                res = {"pbq": drain_pbq, "parallel": drain_parallel, "xargs": drain_xargs}[tool](
                    b, d, lines
                )
            if res["jobs"] != n or res["failed"]:
                raise BenchError(
                    f"{tool}: {res['jobs']} of {n} jobs logged, {res['failed']} failed"
                )
            runs[tool].append(res)
            say(
                f"dispatch round {r + 1}/{s.rounds}: {tool:8s} {res['wall']:.2f} s = "
                f"{res['wall'] / n * 1e3:.2f} ms/job"
            )
        d = b.mkdir("dispatch", f"r{r}", "startup")
        startup.append(drain_pbq(b, d, [])["wall"])
    ms = {t: median([x["wall"] for x in runs[t]]) / n * 1e3 for t in tools}
    span = {t: median([x["span"] for x in runs[t]]) / n * 1e3 for t in tools if t != "xargs"}
    containment = "cgroup v2" if "cgroup v2" in text_of_log(b, "dispatch") else "process groups"
    b.samples["dispatch"] = {
        "n": n,
        "wall_s": {t: [x["wall"] for x in runs[t]] for t in tools},
        "span_s": {t: [x["span"] for x in runs[t]] for t in tools},
        "pbq_startup_s": startup,
    }
    rows = []
    if b.parallel:
        q = ms["pbq"] / ms["parallel"]
        rows.append(
            Row(
                "dispatch",
                f"dispatch {n} x true, -j2: ms/job vs GNU Parallel",
                f"{ms['pbq']:.2f} ms/job",
                f"{ms['parallel']:.2f} (parallel --joblog)",
                ratio_cell(q),
                "<= 0.25x",
                q <= 0.25,
            )
        )
    else:
        rows.append(
            Row(
                "dispatch",
                f"dispatch {n} x true, -j2: ms/job vs GNU Parallel",
                f"{ms['pbq']:.2f} ms/job",
                skipped=b.parallel_why,
            )
        )
    variants = (
        ("pbq-noout", "  the same, jobs' output inherited (--output-dir -)"),
        ("pbq-pg", "  ... and each job a process group, not a cgroup"),
    )
    for tool, what in variants:
        rows.append(
            Row(
                "dispatch",
                what,
                f"{ms[tool]:.2f} ms/job",
                f"{ms['xargs']:.2f} (xargs -P2 sh -c)",
                ratio_cell(ms[tool] / ms["xargs"]),
                "-",
            )
        )
    q = ms["pbq"] / ms["xargs"]
    rows.insert(
        len(rows) - len(variants),
        Row(
            "dispatch",
            f"dispatch {n} x true, -j2: ms/job vs xargs -P2 ({containment})",
            f"{ms['pbq']:.2f} ms/job",
            f"{ms['xargs']:.2f} (xargs -P2 sh -c)",
            ratio_cell(q),
            "<= 1.25x",
            q <= 1.25,
        ),
    )
    cost = ms["pbq"] - ms["pbq-noout"]
    rows.append(
        Row(
            "dispatch",
            "  what keeping each job's output costs (default - inherited)",
            f"{cost:+.3f} ms/job",
            target="<= 0.05 ms",
            ok=cost <= 0.05,
        )
    )
    other = f"{span['parallel']:.2f} (parallel)" if b.parallel else "-"
    q = span["pbq"] / span["parallel"] if b.parallel else float("nan")
    rows.append(
        Row(
            "dispatch",
            "  in-run ms/job (joblog first start -> last end)",
            f"{span['pbq']:.2f} ms/job",
            other,
            ratio_cell(q),
        )
    )
    rows.append(
        Row(
            "dispatch",
            "  pbq-single start-up + exit on an empty jobfile",
            f"{median(startup):.3f} s",
        )
    )
    return rows


# ---------------------------------------------------------------------- 2. scaling


def time_takes(jf: Path, takes: int, compact_every: int = 100) -> list[float]:
    """Seconds per take from the top of ``jf``, as the scheduler's _take does them."""
    from pbq.jobfile import JobQueue

    vclock = [1_000_000.0]
    q = JobQueue(jf, compact_after=2.0, clock=lambda: vclock[0])
    out = []
    for op in range(1, takes + 1):
        t0 = time.perf_counter()
        with q.transaction() as txn:
            lines, end = txn.take(1)
            if not lines:
                raise BenchError(f"{jf.name} ran dry")
            txn.commit_take(end, "bench", op)
            txn.maybe_compact()
        out.append(time.perf_counter() - t0)
        vclock[0] += 2.0 / compact_every + 1e-9
    return out


def sec_scaling(b: Bench) -> list[Row]:
    s = b.s
    sizes = [s.small_lines, s.big_lines]
    med: dict[int, list[float]] = {n: [] for n in sizes}
    mean: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(s.rounds):
        for n in sizes if r % 2 == 0 else sizes[::-1]:
            d = b.mkdir("scaling", f"r{r}", str(n))
            jf = write(d / "jobfile", "".join(f"echo job {i} of {n}\n" for i in range(n)))
            times = time_takes(jf, min(s.takes, n // 2))
            med[n].append(median(times))
            mean[n].append(statistics.fmean(times))
            say(
                f"scaling round {r + 1}/{s.rounds}: {n:>7d} lines: "
                f"median {med[n][-1] * 1e3:.3f} ms/take, "
                f"mean {mean[n][-1] * 1e3:.3f} ms/take"
            )
    small, big = sizes
    m = {n: median(med[n]) * 1e3 for n in sizes}
    a = {n: median(mean[n]) * 1e3 for n in sizes}
    b.samples["scaling"] = {
        "median_s": {str(k): v for k, v in med.items()},
        "mean_s": {str(k): v for k, v in mean.items()},
    }
    qm, qa = m[big] / m[small], a[big] / a[small]
    return [
        Row(
            "scaling",
            f"take 1 job: {big:,} vs {small:,} lines (median)",
            f"{m[big]:.3f} ms",
            f"{m[small]:.3f} ms",
            ratio_cell(qm),
            "<= 1.50x",
            qm <= 1.5,
        ),
        Row(
            "scaling",
            "  same, mean incl. compaction every 100 takes",
            f"{a[big]:.3f} ms",
            f"{a[small]:.3f} ms",
            ratio_cell(qa),
        ),
    ]


# ---------------------------------------------------------------------- 3. reaction


def foreign_load(jf: Path, host: str) -> float:
    st = read_json(host_file(jf, host, "status")) or {}
    try:
        return float(st.get("foreign") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def busy_or_fail(what: str, worst: float, d: Path) -> None:
    """Raise Skip when a foreign load from outside the benchmark explains ``what``.

    Otherwise raise BenchError.
    """
    if worst > 0.5:
        raise Skip(
            f"machine too busy: {what} (the scheduler saw a foreign load of up to {worst:.2f} "
            "without the benchmark's own load)"
        )
    raise BenchError(f"{what}: {tail(d / 'sched.out')}")


def start_busy(b: Bench, k: int) -> list[subprocess.Popen]:
    return [b.popen(BUSY_LOOP) for _ in range(k)]


def stop_busy(b: Bench, loops: list[subprocess.Popen]) -> None:
    for p in loops:
        b.kill(p)


def watch(
    pred: Callable[[], bool], timeout: float, jf: Path, host: str, trace: list[float] | None = None
) -> tuple[float | None, float]:
    """Like wait_until (polling every 20 ms), and the highest foreign load the scheduler
    reported meanwhile (to tell a busy machine from a slow scheduler); ``trace`` gets the
    reported foreign load every 0.5 s."""
    t0 = time.monotonic()
    worst = 0.0
    next_status = t0
    while True:
        if pred():
            return time.monotonic() - t0, worst
        now = time.monotonic()
        if now >= next_status:
            f = foreign_load(jf, host)
            worst = max(worst, f)
            if trace is not None:
                trace.append(f)
            next_status = now + 0.5
        if now - t0 > timeout:
            return None, worst
        time.sleep(0.02)


def secs(x: float, limit: float) -> str:
    return f"> {limit:g} s" if x == float("inf") else f"{x:.2f} s"


def sec_reaction(b: Bench) -> list[Row]:
    s = b.s
    inf = float("inf")
    stop_wait, cont_wait = (5.0, 10.0) if s.quick else (30.0, 60.0)
    d = b.mkdir("reaction")
    write(d / "pbq.toml", QUICK_TOML if s.quick else DEFAULT_TOML)
    busy = write(d / "busy.sh", "while :; do :; done\n")
    hf = write(d / "hostfile", HOSTLINE + "\n")
    jf = write(d / "jobfile", f"sh {busy}\nsh {busy}\n")
    b.popen(pbq_argv(hf, jf, "react"), cwd=d, out=d / "sched.out")
    pids: list[int] = []

    def two_running() -> bool:
        nonlocal pids
        pids = job_pids(jf, "react")
        return len(pids) == 2 and all(proc_state(p) not in (None, "T", "Z") for p in pids)

    def running() -> bool:
        return all(proc_state(p) not in (None, "T") for p in pids)

    def need(ok: float | None, worst: float, what: str) -> None:
        if ok is None:
            busy_or_fail(what, worst, d)

    need(
        *watch(two_running, s.start_timeout, jf, "react"),
        f"the scheduler did not start 2 jobs within {s.start_timeout:g} s",
    )
    time.sleep(1.0 if s.quick else 3.0)  # a few ticks: the foreign-load meter settles near 0
    stop_s: list[float] = []
    first_s: list[float] = []
    cont_s: list[float] = []
    traces: list[list[float]] = []
    for r in range(s.rounds):
        need(
            *watch(running, s.start_timeout, jf, "react"),
            f"the jobs were not both running within {s.start_timeout:g} s",
        )
        time.sleep(0.5 if s.quick else 1.0)
        loops = start_busy(b, 2)
        t0 = time.monotonic()
        t_first = t_all = inf
        try:
            while time.monotonic() - t0 < stop_wait:
                states = [proc_state(p) for p in pids]
                elapsed = time.monotonic() - t0
                if t_first == inf and "T" in states:
                    t_first = elapsed
                if all(st == "T" for st in states):
                    t_all = elapsed
                    break
                time.sleep(0.02)
        finally:
            stop_busy(b, loops)
        trace: list[float] = []
        t_cont, worst = watch(running, cont_wait, jf, "react", trace)
        if t_cont is None:
            # Slow to continue: a busy machine (foreign load > 0.5 holds a job back), or pbq.
            if foreign_load(jf, "react") > 0.5:
                need(
                    None,
                    worst,
                    f"jobs were not continued within {cont_wait:g} s after the foreign loops ended",
                )
            t_cont = inf
        stop_s.append(t_all)
        first_s.append(t_first)
        cont_s.append(t_cont)
        traces.append(trace)
        say(
            f"reaction round {r + 1}/{s.rounds}: first job stopped after "
            f"{secs(t_first, stop_wait)}, both after {secs(t_all, stop_wait)}; "
            f"both continued {secs(t_cont, cont_wait)} after the loops ended "
            f"(foreign load the scheduler reported meanwhile, every 0.5 s: "
            f"{' '.join(f'{x:.1f}' for x in trace[:40])})"
        )
    # Flapping: one steady foreign busy loop.
    need(
        *watch(running, s.start_timeout, jf, "react"),
        f"the jobs were not both running within {s.start_timeout:g} s",
    )
    warm = 1.5 if s.quick else 4.0
    loops = start_busy(b, 1)
    try:
        time.sleep(warm)  # the initial reaction (one job stopped) is not flapping
        events = 0
        t_end = time.monotonic() + s.flap_window
        last = [proc_state(p) for p in pids]
        while time.monotonic() < t_end:
            time.sleep(0.02)
            now = [proc_state(p) for p in pids]
            events += sum(1 for a, c in zip(last, now, strict=True) if (a == "T") != (c == "T"))
            last = now
        n_stopped = sum(1 for st in last if st == "T")
    finally:
        stop_busy(b, loops)
    per_min = events / s.flap_window * 60
    say(
        f"flapping: {events} stop/continue events in {s.flap_window:g} s ({per_min:.1f}/min); "
        f"{n_stopped} of 2 jobs stopped at the end"
    )
    b.samples["reaction"] = {
        "stop_first_s": first_s,
        "stop_all_s": stop_s,
        "cont_s": cont_s,
        "flap_events": events,
        "flap_window_s": s.flap_window,
        "stopped_at_end": n_stopped,
        "foreign_after_loops": traces,
    }
    ms, mf, mc = median(stop_s), median(first_s), median(cont_s)
    # Foreign load from outside the benchmark while waiting for the continue (the first 2 s
    # still hold the loops' own tail): above 0.5 it rightly holds a job back.
    outside = median([x for t in traces for x in t[4:]]) if any(len(t) > 4 for t in traces) else 0.0
    return [
        Row(
            "reaction",
            "2 foreign loops start -> both jobs SIGSTOPped",
            secs(ms, stop_wait),
            f"first {secs(mf, stop_wait)}",
            target="<= 2 s",
            ok=ms <= 2.0,
        ),
        Row(
            "reaction",
            "foreign loops end -> both jobs continued",
            secs(mc, cont_wait),
            f"other load meanwhile {outside:.2f}",
            target="<= 5 s",
            ok=mc <= 5.0,
        ),
        Row(
            "reaction",
            f"steady 1 foreign loop: stop/cont events ({s.flap_window:g} s)",
            f"{per_min:.1f} /min",
            f"{n_stopped} of 2 stopped",
            target="<= 2 /min",
            ok=per_min <= 2.0,
        ),
    ]


# ---------------------------------------------------------------------- 4. idle


def sec_idle(b: Bench) -> list[Row]:
    s = b.s
    k = s.stopped_jobs
    da, db = b.mkdir("idle", "empty"), b.mkdir("idle", "stopped")
    hfa = write(da / "hostfile", HOSTLINE + "\n")
    jfa = write(da / "jobfile", "")
    # max = k + 4 rather than k: a little foreign load must not keep the last jobs from starting
    hfb = write(db / "hostfile", f"* linux {k + 4} {k + 4} 0\n")
    jfb = write(db / "jobfile", "sleep 1000\n" * k)
    sched_a = b.popen(pbq_argv(hfa, jfa, "idle"), cwd=da, out=da / "sched.out")
    sched_b = b.popen(pbq_argv(hfb, jfb, "idle"), cwd=db, out=db / "sched.out")

    def status(jf: Path) -> dict:
        return read_json(host_file(jf, "idle", "status")) or {}

    t, worst = watch(
        lambda: len(job_pids(jfb, "idle")) == k and status(jfb).get("running") == k,
        2 * s.start_timeout,
        jfb,
        "idle",
    )
    if t is None:
        busy_or_fail(
            f"the scheduler did not start {k} jobs within {2 * s.start_timeout:g} s", worst, db
        )
    rc = b.run(
        [PY, BIN / "pbq", "control", hfb, jfb, "stop"],
        60,
        "pbq control stop",
        cwd=db,
        out=db / "control.out",
    )
    if rc != 0:
        raise BenchError(f"pbq control stop exited {rc}: {tail(db / 'control.out')}")
    pids = job_pids(jfb, "idle")
    if wait_until(lambda: len(pids) == k and all(proc_state(p) == "T" for p in pids), 30) is None:
        raise BenchError(f"not all {k} jobs are stopped after pbq control stop")
    if wait_until(lambda: status(jfa).get("state") == "running", 30, 0.1) is None:
        raise BenchError(f"the idle scheduler did not start: {tail(da / 'sched.out')}")
    time.sleep(1.0 if s.quick else 2.0)  # past start-up and the `stop` transition
    procs = {}
    for name, jf, started in (("empty", jfa, sched_a), ("stopped", jfb, sched_b)):
        sp = scheduler_pid(jf, "idle")
        if sp is None or sp != started.pid:
            raise BenchError(f"the .pid file names {sp}, not the started pbq-single {started.pid}")
        # The scheduler and its job runner (none yet where no job ever started).
        procs[name] = (sp, *runner_pids(sp))
    before = {name: [proc_cpu(p) for p in pp] for name, pp in procs.items()}
    t0 = time.monotonic()
    say(f"idle: measuring both schedulers for {s.idle_window:g} s")
    time.sleep(s.idle_window)
    elapsed = time.monotonic() - t0
    after = {name: [proc_cpu(p) for p in pp] for name, pp in procs.items()}
    res = {}
    for name, (sp, *helpers) in procs.items():
        b0, a0 = before[name], after[name]
        if None in b0 or None in a0:
            raise BenchError(
                f"the {name} scheduler died during the window: "
                f"{tail((da if name == 'empty' else db) / 'sched.out')}"
            )
        cpu = sum(a0) - sum(b0)  # type: ignore[arg-type]
        res[name] = {
            "cpu_s": cpu,
            "pct": cpu / elapsed * 100,
            "sched_cpu_s": a0[0] - b0[0],  # type: ignore[operator]
            "hwm_mb": proc_hwm_mb(sp),
            "runner_hwm_mb": sum(proc_hwm_mb(p) or 0.0 for p in helpers),
        }
    if not all(proc_state(p) == "T" for p in pids):
        raise BenchError("stopped jobs were continued during the window")
    b.samples["idle"] = {"window_s": elapsed, **res}
    rows = []
    for name, what in (
        ("empty", "empty jobfile"),
        (f"{k} stopped", f"{k} jobs stopped by the user"),
    ):
        r = res["empty" if name == "empty" else "stopped"]
        rows.append(
            Row(
                "idle",
                f"idle CPU, {what} ({elapsed:.0f} s)",
                f"{r['pct']:.3f} % core",
                f"{r['cpu_s']:.2f} s CPU",
                target="< 0.5 %",
                ok=r["pct"] < 0.5,
            )
        )
        rows.append(
            Row(
                "idle",
                f"  peak RSS (VmHWM), {what}",
                f"{r['hwm_mb']:.1f} MB",
                f"job runner {r['runner_hwm_mb']:.1f} MB",
                target="< 40 MB",
                ok=r["hwm_mb"] < 40,
            )
        )
    return rows


# ---------------------------------------------------------------------- 5. hosts, 6. stress


def recorder_lines(rec: Path, ids: range | list[int], sleep: float = 0.0) -> list[str]:
    """Jobs that record their number (after ``sleep`` seconds, when given)."""
    pre = f"sleep {sleep}; " if sleep else ""
    return [f"{pre}echo {i} >> {rec}" for i in ids]


def exactly_once(rec: Path, expected: set[int]) -> dict[str, int]:
    counts: Counter[int] = Counter()
    for line in _lines(rec):
        with contextlib.suppress(ValueError):
            counts[int(line)] += 1
    seen = set(counts)
    return {
        "lost": len(expected - seen),
        "duplicated": sum(c - 1 for c in counts.values() if c > 1),
        "unexpected": len(seen - expected),
        "recorded": sum(counts.values()),
    }


def once_cell(x: dict[str, int]) -> str:
    extra = f", unexpected = {x['unexpected']}" if x["unexpected"] else ""
    return f"lost = {x['lost']}, duplicated = {x['duplicated']}{extra}"


def once_ok(x: dict[str, int]) -> bool:
    return x["lost"] == 0 and x["duplicated"] == 0 and x["unexpected"] == 0


def take_child(jf: Path, host: str) -> None:
    """In this process: take jobs one at a time until the jobfile is empty (lock test)."""
    from pbq.jobfile import JobQueue

    q = JobQueue(jf)
    (jf.parent / f"ready.{host}").touch()
    while not (jf.parent / "go").exists():
        time.sleep(0.001)
    taken: list[bytes] = []
    t0 = time.time()
    op = 0
    while True:
        with q.transaction() as txn:
            lines, end = txn.take(1)
            if not lines:
                break
            op += 1
            txn.commit_take(end, host, op)
            txn.maybe_compact()
        taken.append(lines[0].line)
    t1 = time.time()
    (jf.parent / f"taken.{host}").write_bytes(b"".join(x + b"\n" for x in taken))
    (jf.parent / f"times.{host}").write_text(json.dumps({"n": len(taken), "t0": t0, "t1": t1}))


PACED_LINES = 64  # lines per take: what a host with short jobs takes (PREFETCH_MAX)


def paced_child(jf: Path, host: str, rate: float, seconds: float, lock: str) -> None:
    """In this process: one host's takes at a fleet's pace, without its jobs or its
    interpreter's other work: at exponential intervals (``rate`` a second), the lock, 64
    lines, their write-ahead record (an fdatasync'ed append, as a scheduler's journal),
    the commit.  Its lock histograms go to ``locks.HOST``."""
    import random

    from pbq.jobfile import JobQueue
    from pbq.statefiles import append_bytes

    q = JobQueue(jf, lock=lock)
    journal = jf.parent / f"journal.{host}"
    rng = random.Random(host)
    (jf.parent / f"ready.{host}").touch()
    while not (jf.parent / "go").exists():
        time.sleep(0.001)
    end = time.monotonic() + seconds
    next_at = time.monotonic() + rng.expovariate(rate)
    op = 0
    while next_at < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        with q.transaction() as txn:
            lines, upto = txn.take(PACED_LINES)
            if lines:
                op += 1
                append_bytes(journal, b"".join(x.line + b"\n" for x in lines), fsync=True)
                txn.commit_take(upto, host, op)
            txn.maybe_compact()
        next_at += rng.expovariate(rate)
    (jf.parent / f"locks.{host}").write_text(json.dumps(q.lock_stats()))


def paced_lock_run(b: Bench, d: Path, hosts: int, takes_per_s: float, seconds: float,
                   lock: str) -> dict[str, Any]:
    """``hosts`` processes taking 64 lines at a time from one jobfile at ``takes_per_s`` in
    all: the lock's waits and holds where the CPUs are not what the takers compete for."""
    from pbq.lockstats import Histogram

    n = int(takes_per_s * seconds * PACED_LINES * 1.5) + PACED_LINES * hosts
    jf = write(d / "jobfile", "".join(f"echo {i}\n" for i in range(n)))
    names = [f"p{i:03d}" for i in range(hosts)]
    rate = takes_per_s / hosts
    procs = [
        b.popen([PY, __file__, "--paced-child", jf, "--take-host", h, "--paced",
                 f"{rate},{seconds},{lock}"], cwd=d, out=d / f"paced-{h}.out")
        for h in names
    ]
    if wait_until(lambda: all((d / f"ready.{h}").exists() for h in names), 120, 0.01) is None:
        raise BenchError(f"paced takers did not start: {tail(d / f'paced-{names[0]}.out')}")
    (d / "go").touch()
    for h, p in zip(names, procs, strict=True):
        rc = b.wait(p, seconds + 120, f"paced taker {h}")
        if rc != 0:
            raise BenchError(f"paced taker {h} exited {rc}: {tail(d / f'paced-{h}.out')}")
    wait, hold = Histogram(), Histogram()
    for h in names:
        st = read_json(d / f"locks.{h}") or {}
        wait.merge([Histogram(st.get("lock_wait") or [])])
        hold.merge([Histogram(st.get("lock_hold") or [])])
    return {"locks": wait.total, "wait_p50": wait.quantile(0.5), "wait_p99": wait.quantile(0.99),
            "hold_p50": hold.quantile(0.5), "hold_p99": hold.quantile(0.99)}


def lock_run(b: Bench, d: Path, hosts: int, n: int) -> dict[str, Any]:
    """``hosts`` processes taking one job per lock round trip from one jobfile (no scheduler)."""
    jf = write(d / "jobfile", "".join(f"echo {i}\n" for i in range(n)))
    names = [f"t{i + 1}" for i in range(hosts)]
    procs = [
        b.popen(
            [PY, __file__, "--take-child", jf, "--take-host", h], cwd=d, out=d / f"take-{h}.out"
        )
        for h in names
    ]
    if wait_until(lambda: all((d / f"ready.{h}").exists() for h in names), 60, 0.01) is None:
        raise BenchError(f"take processes did not start: {tail(d / 'take-t1.out')}")
    (d / "go").touch()
    for h, p in zip(names, procs, strict=True):
        rc = b.wait(p, 120 + n * 0.05, f"take process {h}")
        if rc != 0:
            raise BenchError(f"take process {h} exited {rc}: {tail(d / f'take-{h}.out')}")
    times = [read_json(d / f"times.{h}") for h in names]
    lines = [x for h in names for x in _lines(d / f"taken.{h}")]
    counts = Counter(lines)
    expected = {f"echo {i}" for i in range(n)}
    chk = {
        "lost": len(expected - set(counts)),
        "duplicated": sum(c - 1 for c in counts.values() if c > 1),
        "unexpected": len(set(counts) - expected),
        "recorded": len(lines),
    }
    span = max(t["t1"] for t in times) - min(t["t0"] for t in times)
    return {"takes_per_s": n / span, **chk}


HOSTS_VARIANTS = {
    # name: (hostfile line, what it shows)
    "limit2": (HOSTLINE, "the issue's set-up"),
    "roomy": ("* linux 20 20 0", "load policy out of the way"),
    "lock": ("", "jobfile lock alone"),
}


def sec_hosts(b: Bench) -> list[Row]:
    s = b.s
    n = s.n
    k = s.schedulers
    variants = list(HOSTS_VARIANTS)
    tp: dict[str, dict[int, list[float]]] = {v: {k: [], 1: []} for v in variants}
    checks: list[dict[str, int]] = []
    for r in range(s.rounds):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            for hosts in (k, 1) if r % 2 == 0 else (1, k):
                d = b.mkdir("hosts", f"r{r}", v, str(hosts))
                if v == "lock":
                    res = lock_run(b, d, hosts, n)
                    rate = res["takes_per_s"]
                    chk = res
                else:
                    rec = d / "rec"
                    res = drain_pbq(
                        b,
                        d,
                        recorder_lines(rec, range(n)),
                        hosts=hosts,
                        hostline=HOSTS_VARIANTS[v][0],
                    )
                    rate = n / res["wall"]
                    chk = exactly_once(rec, set(range(n)))
                tp[v][hosts].append(rate)
                checks.append(chk)
                say(
                    f"hosts round {r + 1}/{s.rounds}: {v:6s} {hosts} process(es): "
                    f"{rate:.0f}/s, {once_cell(chk)}"
                )
    m = {v: {h: median(x) for h, x in tp[v].items()} for v in variants}
    total = {key: sum(c[key] for c in checks) for key in ("lost", "duplicated", "unexpected")}
    b.samples["hosts"] = {
        "n": n,
        "per_s": {v: {str(h): x for h, x in tp[v].items()} for v in variants},
        "checks": checks,
    }
    q = {v: m[v][k] / m[v][1] for v in variants}
    return [
        Row(
            "hosts",
            f"{n} recording jobs: {k} schedulers on this machine vs 1 (jobs/s)",
            f"{m['limit2'][k]:.0f} jobs/s",
            f"{m['limit2'][1]:.0f} jobs/s",
            ratio_cell(q["limit2"]),
            ">= 1.00x",
            q["limit2"] >= 1.0,
        ),
        Row(
            "hosts",
            "  same, hosts max = wday = 20 (no load-policy throttling)",
            f"{m['roomy'][k]:.0f} jobs/s",
            f"{m['roomy'][1]:.0f} jobs/s",
            ratio_cell(q["roomy"]),
        ),
        Row(
            "hosts",
            f"  jobfile lock alone: {k} processes vs 1 taking 1 line each",
            f"{m['lock'][k]:.0f} takes/s",
            f"{m['lock'][1]:.0f} takes/s",
            ratio_cell(q["lock"]),
        ),
        Row(
            "hosts",
            "  every job exactly once (all runs)",
            once_cell(total),
            target="0 / 0",
            ok=once_ok(total),
        ),
    ]


def stress_run(b: Bench, d: Path, hosts: int, total: int) -> dict[str, Any]:
    """``hosts`` schedulers of the issue's set-up (2 slots, the load policy on) drain
    ``total`` recording jobs, half appended during the run by one appender."""
    names = [f"s{i + 1}" for i in range(hosts)]
    x = appended_run(b, d, names, HOSTLINE, None, total, "flock", appenders=1)
    failed = sum(1 for h in names for r in read_joblog(host_file(d / "jobfile", h, "joblog"))
                 if r[2] != 0)
    return {**x, "jobs_per_s": total / x["wall"], "failed": failed}


def sec_stress(b: Bench) -> list[Row]:
    s = b.s
    k, total = s.schedulers, s.stress_n
    res: dict[int, dict[str, Any]] = {}
    for hosts in (k, 1):
        d = b.mkdir("stress", str(hosts))
        res[hosts] = stress_run(b, d, hosts, total)
        x = res[hosts]
        say(
            f"stress: {hosts} scheduler(s): {total} jobs in {x['wall']:.1f} s = "
            f"{x['jobs_per_s']:.0f} jobs/s, "
            f"{once_cell(x)}, {x['failed']} failed"
        )
    b.samples["stress"] = {str(h): v for h, v in res.items()}
    q = res[k]["jobs_per_s"] / res[1]["jobs_per_s"]
    both_ok = (
        once_ok(res[k]) and once_ok(res[1]) and res[k]["failed"] == 0 and res[1]["failed"] == 0
    )
    return [
        Row(
            "stress",
            f"{total} jobs, half appended during the run: {k} schedulers vs 1 (jobs/s)",
            f"{res[k]['jobs_per_s']:.0f} jobs/s",
            f"{res[1]['jobs_per_s']:.0f} jobs/s",
            ratio_cell(q),
        ),
        Row(
            "stress",
            f"  exactly once: {k} schedulers | 1 scheduler",
            once_cell(res[k]),
            once_cell(res[1]),
            target="0 / 0",
            ok=both_ok,
        ),
    ]


# ---------------------------------------------------------------------- 8. a fleet


FLEET_TOML = """\
[scheduler]
interval = 1.0
foreign_load = false
[jobfile]
compact_after = 2.0
"""


def lock_figures(jf: Path, names: list[str]) -> dict[str, Any]:
    """Every host's lock-time histograms (from its last .status), merged."""
    from pbq.lockstats import Histogram

    wait, start, hold = Histogram(), Histogram(), Histogram()
    for h in names:
        st = read_json(host_file(jf, h, "status")) or {}
        wait.merge([Histogram(st.get("lock_wait") or [])])
        start.merge([Histogram(st.get("lock_wait_start") or [])])
        hold.merge([Histogram(st.get("lock_hold") or [])])
    every = Histogram().merge([wait, start])
    return {
        "locks": wait.total,
        "wait_p50": wait.quantile(0.5),
        "wait_p99": wait.quantile(0.99),
        "start_p50": start.quantile(0.5),
        "start_max": start.quantile(1.0),
        "all_p99": every.quantile(0.99),
        "hold_p50": hold.quantile(0.5),
        "hold_p99": hold.quantile(0.99),
        "wait_counts": wait.counts,
        "hold_counts": hold.counts,
    }


def fleet_run(b: Bench, d: Path, names: list[str], slots: int, total: int,
              lock: str, job_sleep: float = 0.0) -> dict[str, Any]:
    """``names`` schedulers with ``slots`` each (the load policy out of the way) drain
    ``total`` recording jobs while two appenders add half of them."""
    x = appended_run(b, d, names, f"* linux {slots} {slots} 0", FLEET_TOML, total, lock,
                     job_sleep=job_sleep, warm=True)
    return {**x, "jobs_per_s": x["jobs"] / x["span"]}


def pbq_cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    """CPU seconds the schedulers and their job runners have used so far (not the jobs)."""
    pids = [p.pid for p in procs]
    pids += [r for p in procs for r in runner_pids(p.pid)]
    return sum(proc_cpu(pid) or 0.0 for pid in pids)


def appended_run(b: Bench, d: Path, names: list[str], hostline: str, toml: str | None,
                 total: int, lock: str, appenders: int = 2,
                 job_sleep: float = 0.0, warm: bool = False) -> dict[str, Any]:
    """``names`` schedulers drain ``total`` recording jobs, half of them appended during the
    run by ``appenders`` concurrent jobfile-append processes; every job must run exactly
    once.  Wall time from the start to the last job recorded, the joblogs' span, and the
    CPU the schedulers and job runners used per job in the steady state.

    ``warm``: the schedulers start on an empty jobfile, run warm-up jobs (not measured)
    until every one has started its job runner, and the first half is appended then.  On
    one small machine, 100 interpreters starting at once use both cores for seconds, a
    storm no fleet of real machines has (each starts its own two); it would be measured as
    long lock waits of the hosts started first, and as holds of the lock stretched while
    the holder waits for a core."""
    hf = write(d / "hostfile", hostline + "\n")
    if toml is not None:
        write(d / "pbq.toml", toml)
    rec = d / "rec"
    initial = total // 2
    first = "".join(line + "\n" for line in recorder_lines(rec, range(initial), job_sleep))
    jf = write(d / "jobfile", "" if warm else first)
    rest = list(range(initial, total))
    per = [rest[i::appenders] for i in range(appenders)]
    appended: list[int] = []
    errors: list[str] = []
    guard = threading.Lock()

    def appender(k: int, ids: list[int]) -> None:
        nb = 20
        for i in range(nb):
            batch = ids[i::nb]
            text = "".join(line + "\n" for line in recorder_lines(rec, batch, job_sleep))
            data = text.encode()
            p = b.popen([PY, BIN / "jobfile-append", "--lock", lock, jf, "-"], cwd=d,
                        stdin=subprocess.PIPE, out=d / f"append{k}.out")
            try:
                p.communicate(data, timeout=300)
            except subprocess.TimeoutExpired:
                b.kill(p)
                errors.append(f"appender {k}: batch {i} timed out")
                return
            if p.returncode != 0:
                errors.append(f"appender {k} exited {p.returncode}: {tail(d / f'append{k}.out')}")
                return
            with guard:
                appended.extend(batch)
            time.sleep(0.05)

    t0 = time.perf_counter()
    procs = [b.popen(pbq_argv(hf, jf, h, "--lock", lock), cwd=d, out=d / f"sched-{h}.out")
             for h in names]
    if warm:
        up = [host_file(jf, h, "status") for h in names]
        if wait_until(lambda: all(st.exists() for st in up), 120, every=0.2) is None:
            err = tail(d / f"sched-{names[0]}.out")
            raise BenchError(f"not every scheduler up after 120 s: {err}")
        warm_up(b, d, jf, lock, names, procs)
        p = b.popen([PY, BIN / "jobfile-append", "--lock", lock, jf, "-"], cwd=d,
                    stdin=subprocess.PIPE, out=d / "append-first.out")
        p.communicate(first.encode(), timeout=300)
        if p.returncode != 0:
            err = tail(d / "append-first.out")
            raise BenchError(f"jobfile-append exited {p.returncode}: {err}")
        t0 = time.perf_counter()
    threads = [threading.Thread(target=appender, args=(k, ids), daemon=True)
               for k, ids in enumerate(per)]
    for t in threads:
        t.start()

    def recorded() -> int:
        try:
            with open(rec, "rb") as f:
                return f.read().count(b"\n")
        except FileNotFoundError:
            return 0

    deadline = time.monotonic() + 300 + total * 0.02
    # CPU per job is measured in the steady state, from the tenth job recorded in a hundred
    # to the last: not the schedulers' start-up (some 0.2 s of CPU each).
    steady: tuple[float, int] | None = None
    while True:
        done = recorded()
        if steady is None and done >= total // 10:
            steady = (pbq_cpu(procs), done)
        if not any(t.is_alive() for t in threads) and done >= initial + len(appended):
            break
        if all(p.poll() is not None for p in procs):
            raise BenchError(f"all schedulers exited early: {tail(d / f'sched-{names[0]}.out')}")
        if time.monotonic() > deadline:
            raise BenchError(f"{recorded()} of {total} jobs recorded after the deadline")
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    cpu0, done0 = steady or (0.0, 0)
    cpu = (pbq_cpu(procs) - cpu0) / max(recorded() - done0, 1)
    for t in threads:
        t.join()
    if errors:
        raise BenchError("; ".join(errors))
    b.run([PY, BIN / "pbq", "control", hf, jf, "quit"], 120, "pbq control quit",
          cwd=d, out=d / "control.out")
    for h, p in zip(names, procs, strict=True):
        b.wait(p, 120, f"pbq-single --host {h} after quit")
    rows = [(r.start, r.runtime, r.exitval) for h in names
            for r in read_joblog_rows(host_file(jf, h, "joblog")) if r.command != WARM_UP]
    chk = exactly_once(rec, set(range(initial)) | set(appended))
    return {"wall": wall, "span": joblog_span(rows), "jobs": len(rows), "cpu_per_job": cpu, **chk,
            **lock_figures(jf, names)}


WARM_UP = "sleep 2 # warm-up"  # long enough that a warm host is busy for the next round


def warm_up(b: Bench, d: Path, jf: Path, lock: str, names: list[str],
            procs: list[subprocess.Popen[bytes]]) -> None:
    """Warm-up jobs until every scheduler has its job runner (started at its first job),
    then until they have all ended: the jobs measured next find every host as a running
    fleet has it.  Each warm-up job runs for a while, so that a host that has one is busy
    and the next round's lines go to hosts that have none (one a slot: a host takes no
    line ahead while it knows no run time, or jobs are long)."""
    deadline = time.monotonic() + 120
    appended = 0
    while True:
        cold = sum(1 for p in procs if not runner_pids(p.pid))
        if cold == 0:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{cold} scheduler(s) without a job runner after 120 s of warm-up")
        warm = write(d / "warm-up", (WARM_UP + "\n") * cold)  # about one for each
        b.run([PY, BIN / "jobfile-append", "--lock", lock, jf, warm], 120,
              "jobfile-append (warm-up)", cwd=d, out=d / "append-warm.out")
        appended += cold
        wait_until(lambda n=cold: sum(1 for p in procs if not runner_pids(p.pid)) < n, 1.0,
                   every=0.1)

    def ran() -> int:
        return sum(1 for h in names for r in read_joblog_rows(host_file(jf, h, "joblog"))
                   if r.command == WARM_UP)

    if wait_until(lambda: ran() >= appended, 60, every=0.2) is None:
        raise BenchError(f"{appended - ran()} warm-up job(s) of {appended} not run after 60 s")


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def sec_fleet(b: Bench) -> list[Row]:
    s = b.s
    k, total = s.fleet_hosts, s.fleet_n
    rows: list[Row] = []
    res: dict[str, dict[str, Any]] = {}
    for lock in ("flock", "soft"):
        for hosts in (k, 1):
            d = b.mkdir("fleet", lock, str(hosts))
            names = [f"f{i:03d}" for i in range(hosts)] if hosts > 1 else ["one"]
            slots = 1 if hosts > 1 else k  # the same total slots
            x = res[f"{lock}{hosts}"] = fleet_run(b, d, names, slots, total, lock)
            say(
                f"fleet ({lock}): {hosts} scheduler(s): {x['jobs']} jobs at "
                f"{x['jobs_per_s']:.0f} jobs/s (first start to last end), {once_cell(x)}; "
                f"lock wait p50/p99 {ms(x['wait_p50'])}/{ms(x['wait_p99'])}, "
                f"hold {ms(x['hold_p50'])}/{ms(x['hold_p99'])}"
            )
        many, one = res[f"{lock}{k}"], res[f"{lock}1"]
        q = many["jobs_per_s"] / one["jobs_per_s"]
        label = "flock" if lock == "flock" else "--lock soft (the sshfs lock), local directory"
        rows += [
            Row("fleet", f"{total:,} jobs, 2 appenders, {label}: {k} schedulers x 1 slot vs "
                f"1 x {k} slots (jobs/s)",
                f"{many['jobs_per_s']:.0f} jobs/s", f"{one['jobs_per_s']:.0f} jobs/s",
                ratio_cell(q), ">= 0.90x", q >= 0.9),
            Row("fleet", f"  exactly once: {k} schedulers | 1", once_cell(many), once_cell(one),
                target="0 / 0", ok=once_ok(many) and once_ok(one)),
            *wait_rows(k, many, one),
            Row("fleet", f"  lock hold p50 / p99, {k} schedulers",
                f"{ms(many['hold_p50'])} / {ms(many['hold_p99'])}",
                f"{ms(one['hold_p50'])} / {ms(one['hold_p99'])}"),
            cpu_row(k, many, one),
        ]
    rows += fleet_limits(b, res)
    rows += paced_lock_rows(b, res)
    b.samples["fleet"] = res
    return rows


def paced_lock_rows(b: Bench, res: dict[str, dict[str, Any]]) -> list[Row]:
    """The lock wait target where it means what it says: the fleet's hosts each on a
    machine of their own take their lines at their pace, and nothing else competes for
    this machine's cores.  Twice the takes one scheduler with as many slots makes here."""
    k = b.s.fleet_hosts
    one = res.get("flock1", {}).get("jobs_per_s") or 1350.0
    takes = round(2 * one / PACED_LINES)
    seconds = 3.0 if b.s.quick else 25.0
    rows: list[Row] = []
    for lock in ("flock", "soft"):
        x = res[f"paced-{lock}"] = paced_lock_run(
            b, b.mkdir("fleet", "paced", lock), k, takes, seconds, lock)
        say(f"fleet lock alone ({lock}): {k} takers, {takes} takes/s: {x['locks']} locks, "
            f"wait p50/p99 {ms(x['wait_p50'])}/{ms(x['wait_p99'])}, "
            f"hold {ms(x['hold_p50'])}/{ms(x['hold_p99'])}")
        w99 = x["wait_p99"]
        label = "flock" if lock == "flock" else "--lock soft"
        rows += [
            Row("fleet", f"jobfile lock alone, {label}: {k} processes taking {PACED_LINES} lines "
                f"at {takes} takes/s in all (2x one scheduler's pace): lock wait p50 / p99 "
                f"({x['locks']:,} locks)", f"{ms(x['wait_p50'])} / {ms(w99)}", "-",
                target="p99 < 50 ms", ok=w99 is not None and w99 < 0.05),
            Row("fleet", "  lock hold p50 / p99", f"{ms(x['hold_p50'])} / {ms(x['hold_p99'])}",
                "-"),
        ]
    return rows


def wait_rows(k: int, many: dict[str, Any], one: dict[str, Any]) -> list[Row]:
    """Lock waits while the schedulers run (the target), and those of their start-up, all
    at once (each host's claim, once), apart; and p99 of the two together."""
    w99 = many["wait_p99"]
    return [
        Row("fleet", f"  lock wait p50 / p99 while running, {k} schedulers "
            f"({many['locks']:,} locks)", f"{ms(many['wait_p50'])} / {ms(w99)}",
            f"{ms(one['wait_p50'])} / {ms(one['wait_p99'])}",
            target="p99 < 50 ms", ok=w99 is not None and w99 < 0.05),
        Row("fleet", f"  lock wait p50 / max at start-up, {k} starting at once; p99 of all",
            f"{ms(many['start_p50'])} / {ms(many['start_max'])}; {ms(many['all_p99'])}",
            f"{ms(one['start_max'])}; {ms(one['all_p99'])}"),
    ]


def cpu_row(k: int, many: dict[str, Any], one: dict[str, Any]) -> Row:
    return Row("fleet", f"  schedulers' + job runners' CPU per job (steady): {k} x 1 | 1 x {k}",
               f"{many['cpu_per_job'] * 1e3:.2f} ms", f"{one['cpu_per_job'] * 1e3:.2f} ms",
               ratio_cell(many["cpu_per_job"] / max(one["cpu_per_job"], 1e-9)))


def fleet_limits(b: Bench, res: dict[str, dict[str, Any]]) -> list[Row]:
    """What limits the fleet on one small machine: the same code with fewer schedulers
    sharing its cores, and the full fleet with jobs long enough that the cores are not
    what the schedulers compete for (as on as many real machines, which share only the
    jobfile and its lock)."""
    k, total = b.s.fleet_hosts, b.s.fleet_n
    few = 10 if k > 10 else 2
    n_few = min(total, 20_000)
    n_long = k * (40 if total >= 10_000 else 10)
    runs = [("few", few, n_few, 0.0), ("long", k, n_long, 0.5)]
    for tag, hosts, n, sleep in runs:
        for h in (hosts, 1):
            d = b.mkdir("fleet", tag, str(h))
            names = [f"f{i:03d}" for i in range(h)] if h > 1 else ["one"]
            x = res[f"{tag}{h}"] = fleet_run(b, d, names, 1 if h > 1 else hosts, n, "flock",
                                             job_sleep=sleep)
            say(f"fleet ({tag}): {h} scheduler(s): {x['jobs_per_s']:.0f} jobs/s, "
                f"{x['cpu_per_job'] * 1e3:.2f} ms CPU/job, {once_cell(x)}, lock wait p99 "
                f"{ms(x['wait_p99'])}")
    rows: list[Row] = []
    for tag, hosts, n, sleep in runs:
        many, one = res[f"{tag}{hosts}"], res[f"{tag}1"]
        q = many["jobs_per_s"] / one["jobs_per_s"]
        what = f"{n:,} jobs of {sleep} s" if sleep else f"{n:,} jobs"
        rows += [
            Row("fleet", f"{what}, 2 appenders, flock: {hosts} schedulers x 1 slot vs "
                f"1 x {hosts} slots (jobs/s)", f"{many['jobs_per_s']:.0f} jobs/s",
                f"{one['jobs_per_s']:.0f} jobs/s", ratio_cell(q)),
            Row("fleet", f"  exactly once: {hosts} schedulers | 1", once_cell(many),
                once_cell(one), target="0 / 0", ok=once_ok(many) and once_ok(one)),
            *wait_rows(hosts, many, one),
            cpu_row(hosts, many, one),
        ]
    return rows


# ---------------------------------------------------------------------- 9. a huge jobfile


def io_of(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in (ln.split(": ") for ln in text.splitlines())}


def bigfile_run(b: Bench, d: Path, size: int, jobs: int) -> dict[str, Any]:
    """Run ``jobs`` jobs from the head of a jobfile of ``size`` bytes (lines of 100 bytes);
    jobs/s from the first start to the last end, and what the scheduler wrote per job."""
    hf = write(d / "hostfile", "* linux 2 2 0\n")
    write(d / "pbq.toml", FLEET_TOML)
    jf = d / "jobfile"
    line = ("true # " + "x" * 100)[:99] + "\n"
    block = (line * 10_000).encode()
    with open(jf, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(line.encode() * ((size % len(block)) // len(line)))
    p = b.popen(pbq_argv(hf, jf, "big"), cwd=d, out=d / "sched.out")
    last: dict[str, int] = {}
    joblog = host_file(jf, "big", "joblog")

    def done() -> bool:
        nonlocal last
        now = io_of(p.pid)
        if now:
            last = now
        try:
            with open(joblog, "rb") as f:
                return f.read().count(b"\n") - 1 >= jobs
        except FileNotFoundError:
            return False

    if wait_until(done, 300 + jobs * 0.05, every=0.05) is None:
        raise BenchError(f"{jobs} jobs not done within the deadline: {tail(d / 'sched.out')}")
    b.kill(p)
    rows = read_joblog(joblog)[:jobs]
    span = joblog_span(rows)
    return {"jobs_per_s": len(rows) / span, "wchar_per_job": last.get("wchar", 0) / len(rows),
            "write_bytes_per_job": last.get("write_bytes", 0) / len(rows), "size": size}


def sec_bigfile(b: Bench) -> list[Row]:
    s = b.s
    sizes = [s.small_file, s.big_file]
    res: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for r in range(s.rounds):
        for size in sizes if r % 2 == 0 else sizes[::-1]:
            d = b.mkdir("bigfile", f"r{r}", str(size))
            x = bigfile_run(b, d, size, s.bigfile_jobs)
            res[size].append(x)
            (d / "jobfile").unlink(missing_ok=True)  # a gigabyte: not kept
            say(f"bigfile round {r + 1}/{s.rounds}: {size / 1e6:.0f} MB: "
                f"{x['jobs_per_s']:.0f} jobs/s, {x['wchar_per_job']:.0f} bytes written/job")
    small, big = sizes
    rate = {n: median([x["jobs_per_s"] for x in res[n]]) for n in sizes}
    wrote = {n: median([x["wchar_per_job"] for x in res[n]]) for n in sizes}
    b.samples["bigfile"] = {str(k): v for k, v in res.items()}
    qr, qw = rate[big] / rate[small], wrote[big] / max(1.0, wrote[small])
    return [
        Row("bigfile", f"{s.bigfile_jobs:,} jobs: {big / 1e6:,.0f} MB vs {small / 1e6:,.0f} MB "
            "jobfile (jobs/s)", f"{rate[big]:.0f} jobs/s", f"{rate[small]:.0f} jobs/s",
            ratio_cell(qr), ">= 0.90x", qr >= 0.9),
        Row("bigfile", "  bytes the scheduler wrote per job", f"{wrote[big]:.0f} B",
            f"{wrote[small]:.0f} B", ratio_cell(qw), "<= 1.50x", qw <= 1.5),
    ]


# ---------------------------------------------------------------------- profile


def profile_child(d: Path, out: Path) -> None:
    """In this process: drain ``d/jobfile`` with an in-process Scheduler under cProfile."""
    import cProfile

    from pbq.config import load_config
    from pbq.host.loop import Scheduler, SchedulerOptions

    hf, jf = d / "hostfile", d / "jobfile"
    cfg = load_config(jf, None, flags={("scheduler", "exit_when_empty"): True})
    opts = SchedulerOptions(hostfile=hf, jobfile=jf, host="prof", config=cfg, exit_when_empty=True)
    prof = cProfile.Profile()
    prof.enable()
    code = Scheduler(opts).run()
    prof.disable()
    prof.dump_stats(str(out))
    sys.exit(code)


def sec_commands(b: Bench) -> list[Row]:
    """How fast the commands a person types answer, as a ratio to ``python3 -c pass`` measured
    alternately in the same run, with 100 hosts' files beside the jobfile."""
    from pbq.sidefiles import HostStatus, PidRecord, write_pidfile, write_status

    d = b.mkdir("commands")
    hf = write(d / "hostfile", HOSTLINE + "\n")
    jf = write(d / "jobfile", "true\n" * 100)
    more = write(d / "more", "true\n")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that is no longer alive: every host's scheduler is dead
    me = PidRecord.current(runner=None)
    for i in range(100):
        host = f"h{i:03d}"
        write_pidfile(
            host_file(jf, host, "pid"),
            PidRecord(gone.pid, me.start, me.machine, me.boot, me.pidns, None),
            fsync=False,
        )
        write_status(
            host_file(jf, host, "status"),
            HostStatus(
                host=host,
                machine=me.machine,
                pid=gone.pid,
                state="running",
                time=time.time(),
                interval=1.0,
                jobfile=str(jf),
            ),
        )
    commands: dict[str, list[str | Path]] = {
        "pbq status": [PY, BIN / "pbq", "status", hf, jf],
        "pbq control check": [PY, BIN / "pbq", "control", hf, jf, "check"],
        "jobfile-append (1 line)": [PY, BIN / "jobfile-append", jf, more],
    }
    if subprocess.run([PY, str(BIN / "pbq"), "add", "--help"], capture_output=True).returncode == 0:
        commands["pbq add (1 line)"] = [PY, BIN / "pbq", "add", jf, "--", "echo", "a b"]
    base: list[str | Path] = [PY, "-c", "pass"]
    rounds = max(5, b.s.rounds * (3 if b.s.quick else 7))
    times: dict[str, list[float]] = {name: [] for name in commands}
    base_times: list[float] = []

    def timed(argv: Sequence[str | Path]) -> float:
        t0 = time.perf_counter()
        r = subprocess.run(
            [str(a) for a in argv],
            cwd=d,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=b.env,
            timeout=60,
        )
        took = time.perf_counter() - t0
        if r.returncode not in (0, 1):  # check: 1 when a host is dead, as all are here
            raise BenchError(
                f"{argv[1:3]} exited {r.returncode}: {r.stderr.decode(errors='replace')[-300:]}"
            )
        return took

    for _ in range(rounds):
        for name, argv in commands.items():
            base_times.append(timed(base))
            times[name].append(timed(argv))
    b0 = median(base_times)
    rows = []
    for name in commands:
        t = median(times[name])
        rows.append(
            Row(
                "commands",
                f"{name}, 100 hosts' files",
                f"{t * 1000:.0f} ms",
                f"{b0 * 1000:.0f} ms (python3 -c pass)",
                ratio_cell(t / b0),
                target="<= 5.0x",
                ok=t / b0 <= 5.0,
            )
        )
    return rows


def sec_profile(b: Bench) -> list[Row]:
    import pstats

    n = b.s.n
    d = b.mkdir("profile")
    write(d / "hostfile", HOSTLINE + "\n")
    write(d / "jobfile", "true\n" * n)
    out = d / "prof.out"
    t0 = time.perf_counter()
    rc = b.run(
        [PY, __file__, "--profile-child", d, "--profile-out", out],
        600,
        "profiled scheduler",
        cwd=d,
        out=d / "profile.log",
    )
    wall = time.perf_counter() - t0
    if rc != 0:
        raise BenchError(f"profiled scheduler exited {rc}: {tail(d / 'profile.log')}")
    st = pstats.Stats(str(out))
    entries = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        entries.append((ct, tt, nc, f"{Path(file).name}:{line}({fn})" if line else fn))
    entries.sort(reverse=True)
    lines = [
        f"profile: {n} x true under cProfile, in-process Scheduler.run(): {wall:.2f} s wall "
        f"({wall / n * 1e3:.2f} ms/job with profiling overhead); top 15 by cumulative time:",
        f"  {'cum ms/job':>10} {'own ms/job':>10} {'calls/job':>9}  function",
    ]
    top = [e for e in entries if "<module>" not in e[3] and "profile_child" not in e[3]][:15]
    for ct, tt, nc, name in top:
        lines.append(f"  {ct / n * 1e3:10.3f} {tt / n * 1e3:10.3f} {nc / n:9.2f}  {name}")
    own = sorted(entries, key=lambda e: e[1], reverse=True)[:15]
    lines.append("  top 15 by own time:")
    for ct, tt, nc, name in own:
        lines.append(f"  {ct / n * 1e3:10.3f} {tt / n * 1e3:10.3f} {nc / n:9.2f}  {name}")
    b.samples["profile"] = {"n": n, "wall_s": wall, "text": lines}
    return [
        Row(
            "profile",
            f"profile: {n} x true, in-process, cProfile on",
            f"{wall / n * 1e3:.2f} ms/job",
            data={"text": lines},
        )
    ]


# ---------------------------------------------------------------------- the table


def header_lines(b: Bench, sections: list[str]) -> list[str]:
    s = b.s
    try:
        rev = (
            subprocess.run(
                ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                capture_output=True,
                timeout=10,
                stdin=subprocess.DEVNULL,
            )
            .stdout.decode()
            .strip()
        )
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    try:
        from pbq import __version__ as pv
    except ImportError:
        pv = "?"
    la = os.getloadavg()
    busy = busy_share(1.0)
    mode = (
        "quick (smoke: small N, 1 round, short windows, a fast reaction config; "
        "do not read the figures)"
        if s.quick
        else "full"
    )
    if b.parallel:
        par = f"{b.parallel} ({b.parallel_version})"
    else:
        par = f"skipped: {b.parallel_why}" if b.parallel_why else "not needed (no dispatch section)"
    b.samples["header"] = {"loadavg_start": la, "busy_start": busy}
    return [
        f"pbq benchmark: {mode}",
        f"  N = {s.n} jobs, {s.rounds} round(s), stress {s.stress_n} jobs, "
        f"{s.schedulers} schedulers; sections: {', '.join(sections)}",
        f"  machine {socket.gethostname()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, pbq {pv} ({rev or 'no git'}), "
        f"bench niceness {os.nice(0)}",
        f"  load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; "
        f"CPU busy in the last second: {busy * 100:.0f}% of all CPUs",
        f"  GNU Parallel: {par}",
        f"  {autogroup_note()}",
        "  tools alternate within each round; figures are medians over the rounds; "
        "ratios = pbq / other",
    ]


def autogroup_note() -> str:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            on = f.read().strip() == "1"
    except OSError:
        return "kernel.sched_autogroup_enabled: not available"
    if on:
        return (
            "kernel.sched_autogroup_enabled = 1: each session gets an equal CPU share, "
            "so a job's nice 19 does not yield to foreign processes in other sessions "
            "(the foreign loops here run in their own)"
        )
    return "kernel.sched_autogroup_enabled = 0"


COLUMNS = ("measure", "pbq", "other", "ratio", "target", "ok?")


def ok_cell(r: Row) -> str:
    if r.error:
        return "ERROR"
    if r.skipped:
        return "skipped"
    if r.ok is None:
        return ""
    return "yes" if r.ok else "NO"


def render_table(rows: list[Row], sections: list[str]) -> list[str]:
    cells: list[list[str] | str] = []
    for sec in sections:
        cells.append(f"-- {TITLES[sec]}")
        for r in (r for r in rows if r.section == sec):
            if r.skipped:
                why = r.skipped if len(r.skipped) <= 40 else "(why: below the table)"
                cells.append([r.measure, r.pbq, f"skipped {why}", "-", r.target, ok_cell(r)])
            elif r.error:
                cells.append(
                    [r.measure, "(error: below the table)", "-", "-", r.target, ok_cell(r)]
                )
            else:
                cells.append([r.measure, r.pbq, r.other, r.ratio, r.target, ok_cell(r)])
    grid = [list(COLUMNS)] + [c for c in cells if isinstance(c, list)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(COLUMNS))]

    def line(row: list[str]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    out = [line(list(COLUMNS)), "-+-".join("-" * w for w in widths)]
    for c in cells:
        out.append(c if isinstance(c, str) else line(c))
    return out


# ---------------------------------------------------------------------- main


RUNNERS: dict[str, Callable[[Bench], list[Row]]] = {
    "dispatch": sec_dispatch,
    "commands": sec_commands,
    "scaling": sec_scaling,
    "reaction": sec_reaction,
    "idle": sec_idle,
    "hosts": sec_hosts,
    "stress": sec_stress,
    "fleet": sec_fleet,
    "bigfile": sec_bigfile,
    "profile": sec_profile,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/run",
        description=(
            "Benchmark pbq against GNU Parallel and xargs; print one table of medians and ratios."
        ),
        epilog=(
            f"sections: {', '.join(SECTIONS)} (default: all), "
            f"and {', '.join(EXTRA_SECTIONS)} (only when named)"
        ),
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: small N, 1 round, windows of a few seconds",
    )
    ap.add_argument("--only", metavar="NAME,...", help="run only these sections")
    ap.add_argument("--rounds", type=int, help="rounds per comparison (default 3; --quick 1)")
    ap.add_argument("--n", type=int, help="jobs per dispatch/hosts run (default 3000; --quick 200)")
    ap.add_argument(
        "--stress-n", type=int, help="jobs in the stress run (default 10000; --quick 300)"
    )
    ap.add_argument(
        "--schedulers",
        type=int,
        default=8,
        help="schedulers in the hosts and stress sections (default 8)",
    )
    ap.add_argument(
        "--fleet-n", type=int, help="jobs in the fleet section (default 100000; --quick 1000)"
    )
    ap.add_argument(
        "--idle-window", type=float, help="seconds of the idle measurement (default 60; --quick 3)"
    )
    ap.add_argument(
        "--flap-window", type=float, help="seconds of the flapping count (default 60; --quick 3)"
    )
    ap.add_argument(
        "--json", metavar="FILE", type=Path, help="also write rows and raw samples as JSON"
    )
    ap.add_argument("--profile", action="store_true", help="add the profile section")
    ap.add_argument("--no-install", action="store_true", help="never install GNU Parallel")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for 5 s in a row with the CPUs less than 15%% busy",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (its path is printed)"
    )
    ap.add_argument("--profile-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--take-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--take-host", help=argparse.SUPPRESS)
    ap.add_argument("--paced-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--paced", help=argparse.SUPPRESS)  # RATE,SECONDS,LOCK
    args = ap.parse_args(argv)
    for name in ("rounds", "n", "stress_n", "fleet_n"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.schedulers < 2:
        ap.error("--schedulers must be at least 2 (they are compared with 1)")
    if args.only:
        names = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in names if x not in RUNNERS]
        if bad:
            ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(RUNNERS)}")
        args.sections = [x for x in RUNNERS if x in names]
    else:
        args.sections = list(SECTIONS) + (["profile"] if args.profile else [])
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    q = args.quick
    return Settings(
        quick=q,
        rounds=args.rounds or (1 if q else 3),
        n=args.n or (200 if q else 3000),
        stress_n=args.stress_n or (300 if q else 10_000),
        schedulers=args.schedulers,
        takes=100 if q else 500,
        fleet_hosts=10 if q else 100,
        fleet_n=args.fleet_n or (1_000 if q else 100_000),
        small_file=1_000_000 if q else 10_000_000,
        big_file=10_000_000 if q else 1_000_000_000,
        bigfile_jobs=300 if q else 5_000,
        idle_window=args.idle_window or (3.0 if q else 60.0),
        start_timeout=10.0 if q else 30.0,
        flap_window=args.flap_window or (3.0 if q else 60.0),
        install=not args.no_install,
        keep=args.keep,
    )


def wait_quiet(limit: float, below: float = 0.15, run: int = 5) -> None:
    say(f"waiting up to {limit:g} s for a quiet machine ({run} s in a row under {below:.0%} busy)")
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < limit:
        quiet = quiet + 1 if busy_share(1.0) < below else 0
        if quiet >= run:
            say(f"quiet after {time.monotonic() - t0:.0f} s")
            return
    say("the machine did not get quiet: measuring anyway")


def plain(x: Any) -> Any:
    """JSON-safe: infinities (timeouts) and NaN (not measured) become null; paths become text."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile_child:
        profile_child(args.profile_child, args.profile_out)
        return 0
    if args.take_child:
        take_child(args.take_child, args.take_host)
        return 0
    if args.paced_child:
        rate, seconds, lock = args.paced.split(",")
        paced_child(args.paced_child, args.take_host, float(rate), float(seconds), lock)
        return 0
    s = settings_from(args)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    workdir = Path(tempfile.mkdtemp(prefix="pbqbench."))
    b = Bench(s, workdir)
    rows: list[Row] = []
    errors = 0
    interrupted = False
    t_start = time.monotonic()
    head: list[str] = []
    try:
        if "dispatch" in args.sections:
            ensure_parallel(b)
        head = header_lines(b, args.sections)
        for line in head:
            say(line)
        for sec in args.sections:
            say(f"== {TITLES[sec]}")
            t0 = time.monotonic()
            try:
                rows.extend(RUNNERS[sec](b))
            except Skip as err:
                rows.append(Row(sec, TITLES[sec].split(". ", 1)[-1], "-", skipped=str(err)[:300]))
                say(f"{sec}: skipped: {err}")
            except BenchError as err:
                errors += 1
                rows.append(Row(sec, f"{sec}: could not measure", str(err)[:300], error=True))
                say(f"{sec}: ERROR: {err}")
            except Exception as err:  # noqa: BLE001 - report, clean up, go on with the next section
                errors += 1
                rows.append(
                    Row(sec, f"{sec}: crashed", f"{type(err).__name__}: {err}"[:200], error=True)
                )
                traceback.print_exc()
            finally:
                b.cleanup()
            say(f"   {sec} took {time.monotonic() - t0:.0f} s")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: cleaning up")
    finally:
        b.cleanup()
        if s.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    la_end = os.getloadavg()
    met = [r for r in rows if r.ok is not None and not r.skipped and not r.error]
    out = [*head, "", *render_table(rows, args.sections), ""]
    for r in rows:
        if r.skipped and len(r.skipped) > 40:
            out.append(f"skipped: {r.measure.strip()}: {r.skipped}")
        if r.error:
            out.append(f"ERROR in {r.section}: {r.pbq}")
    if any((r.skipped and len(r.skipped) > 40) or r.error for r in rows):
        out.append("")
    for r in rows:
        if r.section == "profile" and r.data.get("text"):
            out += [*r.data["text"], ""]
    out.append(
        f"load average at end: {la_end[0]:.2f} {la_end[1]:.2f} {la_end[2]:.2f}; "
        f"run took {time.monotonic() - t_start:.0f} s"
        + (f"; {errors} section(s) failed" if errors else "")
        + ("; INTERRUPTED: the table is incomplete" if interrupted else "")
    )
    out.append(f"targets met: {sum(1 for r in met if r.ok)}/{len(met)}")
    print("\n".join(out), flush=True)
    if args.json:
        doc = {
            "header": head,
            "settings": asdict(s),
            "rows": [asdict(r) for r in rows],
            "samples": b.samples,
            "loadavg_end": la_end,
        }
        args.json.write_text(json.dumps(plain(doc), indent=2, default=str, allow_nan=False) + "\n")
    if interrupted:
        return 130
    once_bad = any(r.ok is False and "exactly once" in r.measure for r in rows)
    return 1 if errors or once_bad else 0


if __name__ == "__main__":
    sys.exit(main())
