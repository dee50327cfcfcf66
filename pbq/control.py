"""``pbq control``: steer every scheduler of a jobfile, and see how they are.

A scheduler on this machine is signalled directly, but only after checking that the pid
in its ``.pid`` is a live pbq scheduler for this jobfile, started at the recorded time (a
reused pid is never signalled).  A scheduler elsewhere gets a request file
``JOBFILE.HOST.control`` (mode 0600) that it reads on its next tick -- no remote shell
needed on a shared file system; ``--rsh CMD`` signals through a remote shell instead.
Every command then waits until the scheduler's status file confirms the new state.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import PbqError, UsageError
from .sidefiles import (
    HostLiveness,
    HostStatus,
    Liveness,
    PidRecord,
    heartbeat_age,
    host_liveness,
    liveness,
    read_status,
)
from .statefiles import HostFiles, atomic_write_json, hosts_with

SIGNALS = {
    "stop": signal.SIGUSR1,
    "cont": signal.SIGCONT,
    "quit": signal.SIGUSR2,
    "term": signal.SIGTERM,
    "kill": signal.SIGKILL,
}
COMMANDS = (*SIGNALS, "load", "check", "recover", "requeue-errors")


@dataclass
class HostReport:
    host: str
    ok: bool
    message: str


def target_hosts(jobfile: Path, hosts: tuple[str, ...] | list[str]) -> list[str]:
    """The hosts named, else every host that has a scheduler (a ``.pid``) for this jobfile."""
    if hosts:
        return list(hosts)
    return hosts_with(jobfile, "pid")


# What ``check`` calls a live scheduler in each state its heartbeat reports.
LIVE_STATE_CONDITIONS = {"stopped": "stopped", "quitting": "quitting", "terminating": "terminating"}


def describe_condition(
    host: str, info: PidRecord | None, status: HostStatus | None, verdict: HostLiveness, now: float
) -> dict:
    """What ``check`` says about one host, from its records and the liveness verdict."""
    age = heartbeat_age(status, now)
    out: dict = {
        "host": host,
        "pid": info.pid if info else None,
        "machine": (info.machine if info else None) or (status.machine if status else None),
        "heartbeat_age": None if age is None else round(age, 1),
        "state": None,
    }
    if info is None:
        out["condition"] = "not running"
        out["state"] = status.state if status else None
        return out
    if verdict.state is Liveness.DEAD:
        final = status is not None and status.final and status.pid == info.pid
        out["condition"] = status.state if final and status else "dead"
        out["detail"] = verdict.reason
        return out
    if verdict.state is Liveness.STALE:
        out["condition"] = "stale"
        out["detail"] = verdict.reason
        return out
    state = (status.state if status and status.pid == info.pid else None) or "running"
    out["state"] = state
    out["condition"] = LIVE_STATE_CONDITIONS.get(state, "alive")
    if status is not None and status.pid == info.pid and status.quarantined and state == "running":
        out["condition"] = "quarantined"
        until = status.quarantined_until
        left = "" if until is None else f" for {max(0.0, until - now):.0f}s more"
        out["detail"] = f"its jobs only fail while others succeed; taking no new jobs{left}"
    return out


def host_condition(jobfile: Path, host: str, now: float | None = None) -> dict:
    """What ``check`` says about one host, plus the facts behind it."""
    now = time.time() if now is None else now
    info, status, verdict = host_liveness(HostFiles(jobfile, host), now)
    return describe_condition(host, info, status, verdict, now)


def _confirmed(
    command: str, status: HostStatus | None, sent: float, request_id: str | None, pid_gone: bool
) -> bool:
    if command in ("term", "kill", "quit") and pid_gone:
        return True
    if status is None:
        return False
    acked = request_id is not None and status.control_ack == request_id
    if not acked and (status.time or 0.0) < sent - 0.001:
        return False  # written before the request: says nothing about it
    state = status.state
    if command == "stop":
        return state == "stopped" and status.running == 0
    if command == "cont":
        # A scheduler that was quitting while stopped may finish at once on cont.
        continued = state in ("running", "quitting") and status.stopped_by_user == 0
        return continued or status.final
    if command == "quit":
        # A stopped scheduler stays "stopped" while it quits: its heartbeat says quitting.
        return state in ("quitting", "exited") or bool(status.quitting)
    if command == "term":
        return state == "terminated"
    if command == "kill":
        return acked
    return False


def send_command(
    jobfile: Path,
    hosts: list[str],
    command: str,
    timeout: float = 30.0,
    rsh: str | None = None,
) -> list[HostReport]:
    if command not in SIGNALS:
        raise UsageError(f"unknown control command {command!r}")
    sig = SIGNALS[command]
    pending: dict[str, tuple[float, str | None, PidRecord]] = {}
    reports: dict[str, HostReport] = {}
    for host in hosts:
        files = HostFiles(jobfile, host)
        sent = time.time()
        info, _status, verdict = host_liveness(files, sent)
        if info is None:
            reports[host] = HostReport(host, False, "not running (no .pid file)")
            continue
        pid = info.pid
        request_id = None
        if verdict.state is Liveness.DEAD:
            why = f"dead ({verdict.reason}); see `pbq control ... recover {host}`"
            reports[host] = HostReport(host, False, why)
            continue
        if verdict.exact:
            os.kill(pid, sig)
        elif rsh:
            machine = info.machine or host
            argv = [*shlex.split(rsh), machine, "kill", f"-{sig.name[3:]}", str(pid)]
            try:
                r = subprocess.run(
                    argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
                )
            except (OSError, subprocess.TimeoutExpired) as err:
                reports[host] = HostReport(host, False, f"remote shell failed: {err}")
                continue
            if r.returncode != 0:
                msg = (r.stderr or r.stdout).decode(errors="replace").strip()
                why = f"remote shell failed: {msg or r.returncode}"
                reports[host] = HostReport(host, False, why)
                continue
        else:
            request_id = secrets.token_hex(8)
            req = {
                "id": request_id,
                "command": command,
                "time": sent,
                "by": f"{getpass.getuser()}@{socket.gethostname()}",
            }
            old = os.umask(0o077)  # control files are 0600: only you may steer your schedulers
            try:
                atomic_write_json(files.control, req, mode=0o600)
            finally:
                os.umask(old)
        pending[host] = (sent, request_id, info)
    _await_confirmations(jobfile, command, pending, reports, timeout)
    return [reports[h] for h in hosts]


def _await_confirmations(
    jobfile: Path,
    command: str,
    pending: dict[str, tuple[float, str | None, PidRecord]],
    reports: dict[str, HostReport],
    timeout: float,
) -> None:
    """Wait until each host in ``pending`` confirms ``command``, or ``timeout`` passed; add a
    report for each of them to ``reports``."""
    deadline = time.time() + timeout
    while pending:
        for host, (sent, request_id, info) in list(pending.items()):
            status = read_status(HostFiles(jobfile, host).status)
            verdict = liveness(info, status, time.time(), jobfile)
            gone = verdict.exact and verdict.state is Liveness.DEAD
            if _confirmed(command, status, sent, request_id, gone):
                reports[host] = HostReport(host, True, _describe_done(command, status, gone))
                del pending[host]
        if not pending or time.time() > deadline:
            break
        time.sleep(0.05)
    for host in pending:
        reports[host] = HostReport(host, False, f"no confirmation within {timeout:g} s")


def _describe_done(command: str, status: HostStatus | None, gone: bool) -> str:
    running = status.running if status else 0
    stopped = status.stopped if status else 0
    if command == "stop":
        return f"stopped ({stopped} jobs stopped)"
    if command == "cont":
        if status is not None and status.final:
            return f"continued; it was quitting and has {status.state}"
        return f"running ({running} running, {stopped} stopped by load)"
    if command == "quit":
        exited = gone or (status is not None and status.state == "exited")
        if not exited and status is not None and status.state == "stopped":
            return f"quitting once continued (stopped, {stopped} jobs stopped)"
        return "exited" if exited else f"quitting ({running} running)"
    if command == "term":
        return "terminated" if gone else "terminating"
    return "killed (jobs keep running)"


LOAD_KEYS = ("load", "foreign", "limit", "running", "stopped", "active_users", "local_users",
             "remote_users", "sources", "quarantined", "quarantined_until")


def load_table(jobfile: Path, hosts: list[str], now: float | None = None) -> list[dict]:
    """One row per host.  Its state is the heartbeat's while the scheduler is alive (the
    one liveness rule decides), else ``dead``, ``stale`` or ``not running``, with
    ``alive`` False; a dead scheduler's last figures are not shown as current."""
    now = time.time() if now is None else now
    rows = []
    for host in hosts:
        info, status, verdict = host_liveness(HostFiles(jobfile, host), now)
        age = heartbeat_age(status, now)
        row: dict = {"host": host, "heartbeat_age": None if age is None else round(age, 1)}
        if verdict.alive and info is not None:
            state = (status.state if status and status.pid == info.pid else None) or "running"
        elif info is None:
            state = "not running"
        else:
            state = verdict.state.value
        row["state"], row["alive"] = state, verdict.alive
        for key in LOAD_KEYS:
            row[key] = getattr(status, key) if status and verdict.alive else None
        if row["sources"] is not None:
            row["sources"] = list(row["sources"])
        if not verdict.alive:
            row["detail"] = verdict.reason
        rows.append(row)
    return rows


def table(rows: Iterable[Sequence[str]]) -> str:
    """Rows of cells as text columns, two spaces apart."""
    rows = list(rows)
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v) or "none"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    header = [title for _, title in columns]
    return table([header] + [[cell(r.get(k)) for k, _ in columns] for r in rows])


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


def require_jobfile(jobfile: Path) -> None:
    if not jobfile.parent.is_dir():
        raise PbqError("the jobfile's directory does not exist", path=str(jobfile))
