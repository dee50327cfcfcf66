"""Helpers for tests that run real schedulers: files, processes, polling with deadlines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"


def write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def hostfile(dir: Path, body: str = "* linux 2 2 0\n") -> Path:
    return write(dir / "hostfile", body)


def jobfile(dir: Path, lines: list[str] | str = "", name: str = "jobfile") -> Path:
    text = lines if isinstance(lines, (str, bytes)) else "".join(line + "\n" for line in lines)
    return write(dir / name, text)


def config(dir: Path, body: str) -> Path:
    """A pbq.toml beside the jobfile; tests default to all-day 'work' off-hours limits."""
    return write(dir / "pbq.toml", body)


FAST_CONFIG = """
[scheduler]
interval = 0.2
settle = 0.6
term_grace = 2.0
[jobfile]
compact_after = 0.5
"""


def run_cmd(
    prog: str,
    *args: str | Path,
    timeout: float = 60,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BIN / prog), *map(str, args)],
        capture_output=True,
        timeout=timeout,
        input=input,
        env=env,
        cwd=cwd,
    )


def start_scheduler(
    hf: Path,
    jf: Path,
    *args: str | Path,
    host: str | None = "h1",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    argv = [sys.executable, str(BIN / "pbq-single")]
    if host is not None:
        argv += ["--host", host]
    argv += [*map(str, args), str(hf), str(jf)]
    out = open(jf.parent / f"sched-{host}.out", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=cwd or jf.parent,
    )


def wait_for(
    pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition", every: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def status(jf: Path, host: str) -> dict:
    try:
        return json.loads((jf.parent / f"{jf.name}.{host}.status").read_text())
    except (OSError, ValueError):
        return {}


def hostfile_path(jf: Path, host: str, ext: str) -> Path:
    return jf.parent / f"{jf.name}.{host}.{ext}"


def lines_of(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text(errors="surrogateescape").split("\n") if ln]
    except FileNotFoundError:
        return []


def proc_state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 : raw.rindex(b")") + 3].decode()


def session_members(sid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        if int(fields[3]) == sid:
            out.append(int(name))
    return out


def alive(pid: int) -> bool:
    st = proc_state(pid)
    return st is not None and st != "Z"


def job_pids(jf: Path, host: str) -> list[int]:
    """Pids of the host's jobs on its ledger: the snapshot and the journal after it.  A pid
    reaches the journal only at the end of the pass that learnt it, after that pass wrote
    the status: a status that counts a job as running may come first, so poll for it."""
    from pbq.host.jobs import JobBook
    from pbq.host.ledger import Ledger
    from pbq.statefiles import HostFiles

    ledger = Ledger(HostFiles(jf, host), JobBook(host), lambda *a, **k: None,  # type: ignore[arg-type]
                    False, time.monotonic)
    ledger.load()
    return [j.pid for j in ledger.book if j.pid]


def wait_exit(p: subprocess.Popen, timeout: float = 30.0) -> int:
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"scheduler pid {p.pid} did not exit within {timeout:g}s") from None


def text_of(path: Path) -> str:
    """The file's text, or "" while it does not exist yet (for polling)."""
    try:
        return path.read_text(errors="surrogateescape")
    except FileNotFoundError:
        return ""


def processes_mentioning(text: str) -> list[psutil.Process]:
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == me:
            continue
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if text in cmd or any(text in v for v in p.environ().values()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def is_live(p: psutil.Process) -> bool:
    """Whether a process still runs (not gone, not a zombie); never raises, since it may end
    between any two questions asked about it."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def name_of(p: psutil.Process) -> str | None:
    """A process's name, or None once it is gone (it may end at any moment)."""
    try:
        return p.name()
    except psutil.Error:
        return None


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                p.send_signal(sig)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    psutil.wait_procs(procs, timeout=5)


def runner_of(scheduler_pid: int) -> int | None:
    """The job runner started by a scheduler (its child whose command line says so).  Another
    child (a job's orphan, a notify command) may end while the children are looked at: it
    is skipped, not taken for the end of the search."""
    try:
        children = psutil.Process(scheduler_pid).children()
    except psutil.Error:
        return None
    for child in children:
        try:
            if (
                "#pbq-runner" in " ".join(child.cmdline())
                and child.status() != psutil.STATUS_ZOMBIE
            ):
                return child.pid
        except psutil.Error:
            continue
    return None


def pending_lines(jf: Path) -> list[str]:
    """The jobfile's job lines not taken yet (after the consumed offset in JOBFILE.queue)."""
    try:
        offset = int(json.loads((jf.parent / f"{jf.name}.queue").read_text()).get("offset", 0))
    except (OSError, ValueError):
        offset = 0
    data = jf.read_bytes()[offset:].decode(errors="surrogateescape")
    return [ln for ln in data.split("\n") if ln.strip() and not ln.strip().startswith("#")]


def remove_job_cgroups(tmp: Path) -> None:
    """Kill and remove the job cgroups of schedulers whose jobfiles are under ``tmp`` (a
    SIGKILLed scheduler leaves them to its next start, which a test may never make)."""
    from pbq.host import cgroup

    found = cgroup.locate()
    if isinstance(found, str):
        return
    try:
        mine = {
            cgroup.parent_name("", str(f)).rsplit("-", 1)[1] for f in tmp.rglob("*") if f.is_file()
        }
        parents = [e.path for e in os.scandir(found[1]) if e.is_dir() and e.name.startswith("pbq-")]
    except OSError:
        return
    for parent in parents:
        if parent.rsplit("-", 1)[1] not in mine:
            continue
        for job in [e.path for e in os.scandir(parent) if e.is_dir()]:
            for pid in cgroup.pids(job):
                for sig in (signal.SIGKILL, signal.SIGCONT):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            cgroup.wait_empty(job, 5.0)
            cgroup.remove(job)
        cgroup.remove(parent)
