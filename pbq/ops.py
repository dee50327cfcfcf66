"""``pbq start`` and ``pbq status``: schedulers on many machines, and the queue at a glance.

``start`` replaces PBQ's hand-written ``PBQStart`` rsh loop.  For every host it runs::

    RSH HOST "sh -c 'cd DIR && setsid nohup PYTHON PBQ-SINGLE --host HOST [OPTIONS] \\
              HOSTFILE JOBFILE >> JOBFILE.HOST.out 2>&1 < /dev/null &'"

(the one place where pbq builds a shell string: every word is quoted with
``shlex.quote``), or, for this machine itself, the same command directly as a process
in a session of its own.  It then watches the shared files until the new scheduler's
heartbeat (``JOBFILE.HOST.status`` with the pid of ``JOBFILE.HOST.pid``) appears, or its
``.out`` says why it could not start.

``status`` only reads shared files -- the jobfile and its queue record, and each host's
``.status``, ``.pid`` and ``.joblog`` -- so it works from any machine that sees them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .control import cell, describe_condition, host_condition, table
from .errors import PbqError
from .hostfile import WILDCARD, find_host, load_hostfile, machine_name
from .jobfile import JobQueue, is_job_line
from .sidefiles import (
    HostStatus,
    first_joblog_start,
    heartbeat_age,
    host_liveness,
    read_pidfile,
    read_status,
    recent_joblog_rows,
)
from .statefiles import HostFiles, hosts_with

RATE_WINDOW = 300.0  # seconds of finished jobs that the jobs/min figure looks at
LIVE_CONDITIONS = ("alive", "stopped", "quitting", "terminating")
DEFAULT_RSH = "ssh -o BatchMode=yes"

# ------------------------------------------------------------------ hosts


def hostfile_hosts(hostfile: Path) -> list[str]:
    """Every host named in the hostfile (not ``*``), in the hostfile's order."""
    return [h.name for h in load_hostfile(hostfile) if h.name != WILDCARD]


def is_this_machine(host: str) -> bool:
    """True when the hostfile name ``host`` is this machine (start it without a remote shell)."""
    name = host.lower()
    kernel = socket.gethostname().lower()
    return name in (machine_name(), kernel, kernel.split(".", 1)[0])


def hosts_to_start(hostfile: Path, hosts: Sequence[str]) -> list[str]:
    """The hosts named (each checked against the hostfile), else every named host in it."""
    entries = load_hostfile(hostfile)
    if not hosts:
        names = [h.name for h in entries if h.name != WILDCARD]
        if not names:
            raise PbqError(
                "the hostfile names no hosts (only '*'); name the hosts to start: "
                "pbq start HOSTFILE JOBFILE HOST...",
                path=str(hostfile),
            )
        return names
    out: list[str] = []
    for host in hosts:
        if host == WILDCARD or not host or "/" in host or host.startswith("."):
            raise PbqError(f"cannot start a scheduler for host {host!r}")
        find_host(entries, host, str(hostfile))  # unknown and no '*' entry: a clear error
        if host not in out:
            out.append(host)
    return out


# ------------------------------------------------------------------ start


@dataclass
class StartResult:
    host: str
    outcome: str  # "started", "already running" or "failed"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"

    def line(self) -> str:
        if not self.detail:
            return f"{self.host}: {self.outcome}"
        if self.outcome == "failed":
            return f"{self.host}: failed: {self.detail}"
        return f"{self.host}: {self.outcome} ({self.detail})"


def scheduler_command(remote_command: str | None = None) -> list[str]:
    """How to run ``pbq-single``: ``--remote-command`` split into words, else this Python
    with the ``pbq-single`` beside the running ``pbq`` (or the one on ``$PATH``)."""
    if remote_command is not None:
        words = shlex.split(remote_command)
        if not words:
            raise PbqError("--remote-command is empty")
        return words
    candidates = []
    if sys.argv and sys.argv[0]:
        candidates.append(Path(sys.argv[0]).absolute().parent / "pbq-single")
    found = shutil.which("pbq-single")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file():
            return [sys.executable, str(path.absolute())]
    raise PbqError(
        "cannot find pbq-single beside pbq or on $PATH; say how to run it with --remote-command"
    )


def scheduler_argv(
    command: Sequence[str], host: str, hostfile: Path, jobfile: Path, options: Sequence[str]
) -> list[str]:
    return [*command, "--host", host, *options, str(hostfile), str(jobfile)]


def remote_shell_line(argv: Sequence[str], jobfile: Path, host: str) -> str:
    """The string the remote shell runs: start the scheduler detached, output to ``.out``.

    Wrapped in ``sh -c`` so that it means the same under a csh or fish login shell."""
    out = HostFiles(jobfile, host).out
    inner = (
        f"cd {shlex.quote(str(jobfile.parent))} && setsid nohup {shlex.join(argv)} "
        f">> {shlex.quote(str(out))} 2>&1 < /dev/null &"
    )
    return f"sh -c {shlex.quote(inner)}"


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return ""


def _identity(status: HostStatus | None) -> tuple | None:
    """Which scheduler run wrote a heartbeat."""
    return None if status is None else (status.pid, status.start, status.machine)


_REFUSED = ("is already running", "seems to run on machine")
_FATAL_PREFIXES = ("pbq-single:", "nohup:", "setsid:", "sh:", "bash:")


def out_verdict(text: str) -> tuple[str, str] | None:
    """What a scheduler's fresh ``.out`` output says: ("already running"|"failed", why), or None."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if any(r in ln for r in _REFUSED):
            m = re.search(r"\(pid (\d+)", ln)
            mach = re.search(r"on machine (\S+)", ln)
            detail = f"pid {m.group(1)}" if m else ""
            if mach:
                detail += f" on {mach.group(1)}"
            return "already running", detail.strip() or ln
    for ln in lines:
        if ln.startswith(_FATAL_PREFIXES) or "command not found" in ln or ": not found" in ln:
            return "failed", ln.removeprefix("pbq-single: ")
    if any(ln.startswith("Traceback") for ln in lines):
        return "failed", lines[-1]
    return None


def _heartbeat(files: HostFiles, before: tuple | None) -> HostStatus | None:
    """The new scheduler's status once it has written one, else None."""
    status = read_status(files.status)
    if status is None or _identity(status) == before or status.pid is None:
        return None
    info = read_pidfile(files.pid)
    if info is not None and info.pid == status.pid:
        return status
    if status.final:
        return status  # started and already finished (e.g. --exit-when-empty on an empty queue)
    return None


def _describe_started(status: HostStatus) -> str:
    where = f"pid {status.pid}"
    if status.machine:
        where += f" on {status.machine}"
    if status.final:
        where += f", already {status.state}: {status.done} done, {status.failed} failed"
    return where


@dataclass
class _Launch:
    host: str
    files: HostFiles
    before: tuple | None
    out_offset: int
    proc: subprocess.Popen | None = None
    local: bool = False
    remote_ok: bool = False  # the remote shell returned 0


def start_hosts(
    hostfile: Path,
    jobfile: Path,
    hosts: Sequence[str],
    *,
    rsh: str = DEFAULT_RSH,
    command: Sequence[str],
    options: Sequence[str] = (),
    timeout: float = 30.0,
) -> list[StartResult]:
    """Start a scheduler for each of ``hosts`` (unless one runs) and wait for its heartbeat."""
    rsh_argv = shlex.split(rsh)
    if not rsh_argv:
        raise PbqError("--rsh is empty")
    launches: dict[str, _Launch] = {}
    results: dict[str, StartResult] = {}
    for host in hosts:
        files = HostFiles(jobfile, host)
        cond = host_condition(jobfile, host)
        if cond["condition"] in LIVE_CONDITIONS:
            detail = f"pid {cond['pid']}"
            if cond.get("machine"):
                detail += f" on {cond['machine']}"
            if cond["condition"] != "alive":
                detail += f", {cond['condition']}"
            results[host] = StartResult(host, "already running", detail)
            continue
        launch = _Launch(host, files, _identity(read_status(files.status)), _size(files.out))
        argv = scheduler_argv(command, host, hostfile, jobfile, options)
        failed = _launch(launch, argv, rsh_argv, jobfile)
        if failed is not None:
            results[host] = failed
            continue
        launches[host] = launch
    _await_heartbeats(launches, results, timeout)
    return [results[h] for h in hosts]


def _await_heartbeats(
    launches: dict[str, _Launch], results: dict[str, StartResult], timeout: float
) -> None:
    """Wait for the heartbeat of each launched scheduler, or until ``timeout`` passed; add a
    result for each of them to ``results``, and stop the remote shells that did not return."""
    deadline = time.monotonic() + timeout
    waiting = dict(launches)
    while waiting:
        for host, la in list(waiting.items()):
            verdict = _poll_launch(la)
            if verdict is not None:
                results[host] = verdict
                del waiting[host]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for host, la in waiting.items():
        why = f"no heartbeat within {timeout:g} s"
        if not la.local and la.proc is not None and la.proc.poll() is None:
            _stop_remote_shell(la.proc)
            why = f"the remote shell did not return within {timeout:g} s"
        said = _last_line(_read_from(la.files.out, la.out_offset))
        if said:
            why += f"; {la.files.out.name} says: {said}"
        results[host] = StartResult(host, "failed", why)
    for la in launches.values():
        # Remote shells have returned or are stopped; a local scheduler lives on in its
        # own session after pbq exits.
        if not la.local and la.proc is not None and la.proc.poll() is None:
            _stop_remote_shell(la.proc)


def _launch(la: _Launch, argv: list[str], rsh_argv: list[str], jobfile: Path) -> StartResult | None:
    """Start one scheduler: here in a session of its own, elsewhere through the remote
    shell.  None when it was launched (its heartbeat is waited for), else why not."""
    try:
        if is_this_machine(la.host):
            la.local = True
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            fd = os.open(la.files.out, flags, 0o666)
            try:
                la.proc = subprocess.Popen(
                    argv, cwd=jobfile.parent, stdin=subprocess.DEVNULL, stdout=fd,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            finally:
                os.close(fd)
        else:
            la.proc = subprocess.Popen(
                [*rsh_argv, la.host, remote_shell_line(argv, jobfile, la.host)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,
            )
    except OSError as err:
        what = argv[0] if la.local else rsh_argv[0]
        return StartResult(la.host, "failed", f"cannot run {what}: {err.strerror or err}")
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _stop_remote_shell(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)


def _poll_launch(la: _Launch) -> StartResult | None:
    status = _heartbeat(la.files, la.before)
    if status is not None:
        return StartResult(la.host, "started", _describe_started(status))
    proc = la.proc
    assert proc is not None
    if not la.local and not la.remote_ok:
        rc = proc.poll()
        if rc is None:
            return None
        _, err = proc.communicate()
        if rc != 0:
            msg = _last_line(err.decode("utf-8", "replace")) or f"exit status {rc}"
            return StartResult(la.host, "failed", f"remote shell failed: {msg}")
        la.remote_ok = True
    verdict = out_verdict(_read_from(la.files.out, la.out_offset))
    exited = la.local and proc.poll() is not None
    if verdict is None and not exited:
        return None
    status = _heartbeat(la.files, la.before)  # it may have come up in between
    if status is not None:
        return StartResult(la.host, "started", _describe_started(status))
    if verdict is not None:
        return StartResult(la.host, verdict[0], verdict[1])
    said = _last_line(_read_from(la.files.out, la.out_offset))
    why = f"pbq-single exited with status {proc.returncode}" + (f": {said}" if said else "")
    return StartResult(la.host, "failed", why)


# ------------------------------------------------------------------ status


def count_pending(
    jobfile: Path, lock: str = "flock", stale_lock_after: float = 30.0, lock_timeout: float = 1.0
) -> tuple[int, bool]:
    """Job lines left in the jobfile, and whether the count was made under the lock.

    Takes the schedulers' lock briefly; when that is impossible (busy, read-only, a
    broken file system) counts from the committed offset without it."""
    if not jobfile.exists():
        raise PbqError("no such jobfile", path=str(jobfile))
    queue = JobQueue(jobfile, lock=lock, stale_lock_after=stale_lock_after)
    try:
        with queue.transaction(timeout=lock_timeout) as txn:
            return txn.count_pending(), True
    except PbqError:
        return count_pending_lockfree(jobfile), False


def status_hosts(jobfile: Path, hostfile: Path | None) -> list[str]:
    """Hosts named in the hostfile, then any other host with files beside the jobfile."""
    names = hostfile_hosts(hostfile) if hostfile is not None else []
    extra = {h for ext in ("status", "pid", "joblog") for h in hosts_with(jobfile, ext)}
    return names + sorted(extra - set(names))


# Columns of a host's row in `pbq status` taken from its heartbeat as they are.
STATUS_ROW_KEYS = (
    "load", "foreign", "limit", "running", "stopped", "done", "failed", "active_users", "error",
    "quarantined", "timed_out", "suspend_ended",
)


def host_row(jobfile: Path, host: str, now: float) -> dict:
    info, status, verdict = host_liveness(HostFiles(jobfile, host), now)
    cond = describe_condition(host, info, status, verdict, now)
    condition = cond["condition"]
    if condition == "not running":
        if status is None:
            condition = "not started"
        elif status.final:
            condition = str(status.state)
    age = heartbeat_age(status, now)
    row = {
        "host": host,
        "state": condition,
        "pid": cond.get("pid") or (status.pid if status else None),
        "machine": cond.get("machine"),
    }
    for key in STATUS_ROW_KEYS:
        row[key] = getattr(status, key) if status else None
    row["heartbeat_age"] = None if age is None else round(age, 1)
    return row


def _num(v: object) -> int:
    try:
        return int(v)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def queue_status(
    jobfile: Path,
    hostfile: Path | None,
    *,
    lock: str = "flock",
    stale_lock_after: float = 30.0,
    use_lock: bool = True,
    now: float | None = None,
) -> dict:
    """Everything ``pbq status`` shows, as plain data (also ``--json``)."""
    now = time.time() if now is None else now
    if use_lock:
        pending, exact = count_pending(jobfile, lock, stale_lock_after)
    else:
        pending, exact = count_pending_lockfree(jobfile), False
    rows = [host_row(jobfile, h, now) for h in status_hosts(jobfile, hostfile)]
    live = [r for r in rows if r["state"] in (*LIVE_CONDITIONS, "stale")]
    running = sum(_num(r["running"]) for r in live)
    stopped = sum(_num(r["stopped"]) for r in live)
    done = sum(_num(r["done"]) for r in rows)
    failed = sum(_num(r["failed"]) for r in rows)
    finished = 0
    first: float | None = None
    for host in (r["host"] for r in rows):
        path = HostFiles(jobfile, host).joblog
        finished += len(recent_joblog_rows(path, now - RATE_WINDOW))
        start = first_joblog_start(path)
        if start is not None:
            first = start if first is None else min(first, start)
    # Over the last 5 minutes, or since the first job started if that is more recent
    # (but at least 10 s, so one early job does not read as a flood).
    window = RATE_WINDOW if first is None else min(RATE_WINDOW, max(now - first, 10.0))
    rate = finished / window * 60.0 if finished else 0.0
    remaining = pending + running + stopped
    eta = None
    if remaining == 0:
        eta = 0.0
    elif rate > 0:
        eta = remaining / rate * 60.0
    total = done + failed + remaining
    return {
        "time": now,
        "jobfile": str(jobfile),
        "pending": pending,
        "pending_under_lock": exact,
        "running": running,
        "stopped": stopped,
        "done": done,
        "failed": failed,
        "total": total,
        "progress": (done / total) if total else None,
        "finished_last_5min": finished,
        "jobs_per_min": round(rate, 2),
        "remaining": remaining,
        "eta_seconds": None if eta is None else round(eta, 1),
        "hosts": rows,
    }


def count_pending_lockfree(jobfile: Path) -> int:
    """Job lines after the committed offset, read without the lock (a compaction running
    at that moment can make the count briefly wrong)."""
    if not jobfile.exists():
        raise PbqError("no such jobfile", path=str(jobfile))
    offset = JobQueue(jobfile).peek_state().offset
    try:
        with open(jobfile, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset if offset <= size else 0)
            data = f.read()
    except OSError as err:
        raise PbqError(f"cannot read the jobfile: {err.strerror}", path=str(jobfile)) from None
    return sum(1 for ln in data.split(b"\n") if is_job_line(ln))


# ------------------------------------------------------------------ text


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m}m{sec:02d}s" if m < 10 else f"{m}m"
    if s < 86400:
        h, rest = divmod(int(round(s)), 3600)
        return f"{h}h{rest // 60:02d}m"
    d, rest = divmod(int(round(s)), 86400)
    return f"{d}d{rest // 3600:02d}h"


def progress_bar(done: int, failed: int, total: int, width: int = 50) -> str:
    """``[#####!!......]`` -- # done, ! failed, . still to do."""
    if total <= 0:
        return "[" + " " * width + "]"
    n_done = min(width, int(width * done / total))
    n_failed = int(width * (done + failed) / total) - n_done
    if failed and n_failed == 0 and n_done < width:
        n_failed = 1  # a failure is always visible
    n_failed = min(n_failed, width - n_done)
    return "[" + "#" * n_done + "!" * n_failed + "." * (width - n_done - n_failed) + "]"


HOST_COLUMNS = (
    ("host", "HOST"), ("state", "STATE"), ("load", "LOAD"), ("foreign", "FOREIGN"),
    ("limit", "LIMIT"), ("running", "RUNNING"), ("stopped", "STOPPED"), ("done", "DONE"),
    ("failed", "FAILED"), ("heartbeat_age", "HEARTBEAT"),
)


def format_status(st: dict, bar_width: int = 50) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["time"]))
    lines = [f"{st['jobfile']}  ({when})"]
    pend = str(st["pending"]) + ("" if st["pending_under_lock"] else "*")
    lines.append(
        f"pending {pend}   running {st['running']}   stopped {st['stopped']}   "
        f"done {st['done']}   failed {st['failed']}"
    )
    rate = st["jobs_per_min"]
    if st["remaining"] == 0:
        eta = "nothing left to do"
    elif st["eta_seconds"] is None:
        eta = "ETA unknown (no job finished in the last 5 min)"
    else:
        at = time.strftime("%H:%M", time.localtime(st["time"] + st["eta_seconds"]))
        eta = f"ETA {format_duration(st['eta_seconds'])} (about {at})"
    lines.append(f"{rate:.3g} jobs/min over the last 5 min   {eta}")
    total = st["total"]
    pct = f"{100 * (st['done'] + st['failed']) / total:.0f}%" if total else "-"
    lines.append(f"{progress_bar(st['done'], st['failed'], total, bar_width)} {pct} finished")
    if not st["pending_under_lock"]:
        lines.append("* counted without the lock (the lock was busy)")
    lines.append("")
    body = [[title for _, title in HOST_COLUMNS]]
    for r in st["hosts"]:
        cells = [cell(r.get(k)) for k, _ in HOST_COLUMNS[:-1]]
        age = r.get("heartbeat_age")
        cells.append("-" if age is None else format_duration(age))
        body.append(cells)
    nothing = "(no scheduler has written any file for this jobfile yet)"
    lines.append(table(body) if st["hosts"] else nothing)
    for r in st["hosts"]:
        if r.get("error"):
            lines.append(f"{r['host']}: ERROR: {r['error']}")
    return "\n".join(lines)
