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
from dataclasses import dataclass
from pathlib import Path

from .errors import PbqError, UsageError
from .scheduler import is_local, looks_like_scheduler, read_pidfile
from .sensors import same_process
from .statefiles import HostFiles, atomic_write_json, hosts_with, read_json

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


def heartbeat_age(status: dict | None, now: float) -> float | None:
    if not status or "time" not in status:
        return None
    try:
        return max(0.0, now - float(status["time"]))
    except (TypeError, ValueError):
        return None


def host_condition(jobfile: Path, host: str, now: float | None = None) -> dict:
    """What ``check`` says about one host, plus the facts behind it."""
    now = time.time() if now is None else now
    files = HostFiles(jobfile, host)
    info = read_pidfile(files.pid)
    status = read_json(files.status)
    status = status if isinstance(status, dict) else None
    age = heartbeat_age(status, now)
    interval = float((status or {}).get("interval", 1.0) or 1.0)
    out = {
        "host": host,
        "pid": info["pid"] if info else None,
        "machine": (info or {}).get("machine") or (status or {}).get("machine"),
        "heartbeat_age": None if age is None else round(age, 1),
        "state": None,
    }
    if info is None:
        out["condition"] = "not running"
        out["state"] = (status or {}).get("state")
        return out
    if is_local(info) and not same_process(info["pid"], info.get("start")):
        out["condition"] = "dead"
        return out
    stale_after = max(3 * interval, 5.0)
    if age is None or age > stale_after:
        out["condition"] = "stale"
        out["detail"] = "no heartbeat yet" if age is None else f"no heartbeat for {age:.0f} s"
        return out
    state = (status or {}).get("state", "running")
    out["state"] = state
    out["condition"] = {"stopped": "stopped", "quitting": "quitting", "terminating": "terminating"}.get(state, "alive")
    return out


def _confirmed(command: str, status: dict | None, sent: float, request_id: str | None, pid_gone: bool) -> bool:
    if command in ("term", "kill", "quit") and pid_gone:
        return True
    if not status:
        return False
    fresh = float(status.get("time", 0) or 0) >= sent - 0.001
    if request_id is not None and status.get("control_ack") == request_id:
        fresh = True
    if not fresh:
        return False
    state = status.get("state")
    if command == "stop":
        return state == "stopped" and int(status.get("running", 0)) == 0
    if command == "cont":
        return state in ("running", "quitting") and int(status.get("stopped_by_user", 0)) == 0
    if command == "quit":
        return state in ("quitting", "exited")
    if command == "term":
        return state == "terminated"
    if command == "kill":
        return request_id is not None and status.get("control_ack") == request_id
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
    pending: dict[str, tuple[float, str | None, dict]] = {}
    reports: dict[str, HostReport] = {}
    for host in hosts:
        files = HostFiles(jobfile, host)
        info = read_pidfile(files.pid)
        if info is None:
            reports[host] = HostReport(host, False, "not running (no .pid file)")
            continue
        pid = info["pid"]
        sent = time.time()
        request_id = None
        if is_local(info):
            if not same_process(pid, info.get("start")) or not looks_like_scheduler(pid, jobfile):
                reports[host] = HostReport(host, False, f"dead (pid {pid} is gone or is not its scheduler); see `pbq control ... recover {host}`")
                continue
            os.kill(pid, sig)
        elif rsh:
            machine = info.get("machine") or host
            argv = [*shlex.split(rsh), machine, "kill", f"-{sig.name[3:]}", str(pid)]
            try:
                r = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as err:
                reports[host] = HostReport(host, False, f"remote shell failed: {err}")
                continue
            if r.returncode != 0:
                msg = (r.stderr or r.stdout).decode(errors="replace").strip()
                reports[host] = HostReport(host, False, f"remote shell failed: {msg or r.returncode}")
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
    deadline = time.time() + timeout
    while pending:
        for host, (sent, request_id, info) in list(pending.items()):
            files = HostFiles(jobfile, host)
            status = read_json(files.status)
            status = status if isinstance(status, dict) else None
            gone = is_local(info) and not same_process(info["pid"], info.get("start"))
            if _confirmed(command, status, sent, request_id, gone):
                reports[host] = HostReport(host, True, _describe_done(command, status, gone))
                del pending[host]
        if not pending or time.time() > deadline:
            break
        time.sleep(0.05)
    for host in pending:
        reports[host] = HostReport(host, False, f"no confirmation within {timeout:g} s")
    return [reports[h] for h in hosts]


def _describe_done(command: str, status: dict | None, gone: bool) -> str:
    s = status or {}
    if command == "stop":
        return f"stopped ({s.get('stopped', 0)} jobs stopped)"
    if command == "cont":
        return f"running ({s.get('running', 0)} running, {s.get('stopped', 0)} stopped by load)"
    if command == "quit":
        return "exited" if gone or s.get("state") == "exited" else f"quitting ({s.get('running', 0)} running)"
    if command == "term":
        return "terminated" if gone else "terminating"
    return "killed (jobs keep running)"


def load_table(jobfile: Path, hosts: list[str], now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    rows = []
    for host in hosts:
        status = read_json(HostFiles(jobfile, host).status)
        status = status if isinstance(status, dict) else {}
        age = heartbeat_age(status, now)
        rows.append(
            {
                "host": host,
                "state": status.get("state"),
                "load": status.get("load"),
                "foreign": status.get("foreign"),
                "limit": status.get("limit"),
                "running": status.get("running"),
                "stopped": status.get("stopped"),
                "active_users": status.get("active_users"),
                "heartbeat_age": None if age is None else round(age, 1),
            }
        )
    return rows


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    table = [[title for _, title in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


def require_jobfile(jobfile: Path) -> None:
    if not jobfile.parent.is_dir():
        raise PbqError("the jobfile's directory does not exist", path=str(jobfile))
