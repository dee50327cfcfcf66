#!/usr/bin/env python3
"""Fake Torque/PBS, HTCondor and LSF commands for pbq's tests (standard library only).

Every command of this folder (``qsub``, ``qstat``, ``condor_q``, ``bjobs``, ...) calls
:func:`main` with its own name. All of them share ONE JSON state file, ``$PBQ_FAKEDRM_STATE``,
locked with ``flock`` on ``<state>.lock``. Jobs really run: a detached runner process per job
waits ``$PBQ_FAKEDRM_QUEUE_DELAY`` seconds (0.3) unless held, runs the job in its own process
group, enforces the walltime, and records the real exit status. Outputs follow the real tools'
documented formats. Timing, from the job's end:

* Torque shows ``E`` (exiting) for ``$PBQ_FAKEDRM_EXIT_DELAY`` seconds (0.5), then ``C``;
* HTCondor's ``condor_q`` shows JobStatus 4/3 for the exit delay, then only ``condor_history``;
* LSF shows DONE/EXIT;

and the job leaves ``qstat``/``bjobs`` after ``$PBQ_FAKEDRM_KEEP`` more seconds (3), so the
"job vanished, judge it by its exit-code file" path is exercised. ``$PBQ_FAKEDRM_DOWN=1`` makes
every command fail as if the server were unreachable. ``_fakedrm.py --kill-all`` kills every
job and runner of the state file (test clean-up).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

Job = dict[str, Any]
State = dict[str, Any]

SERVER = os.environ.get("PBQ_FAKEDRM_SERVER", "fakeserver")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


QUEUE_DELAY = _env_float("PBQ_FAKEDRM_QUEUE_DELAY", 0.3)
EXIT_DELAY = _env_float("PBQ_FAKEDRM_EXIT_DELAY", 0.5)
KEEP = _env_float("PBQ_FAKEDRM_KEEP", 3.0)


# --------------------------------------------------------------------------- state


def state_path() -> str:
    path = os.environ.get("PBQ_FAKEDRM_STATE")
    if not path:
        sys.stderr.write("fakedrm: PBQ_FAKEDRM_STATE is not set\n")
        sys.exit(2)
    return path


@contextlib.contextmanager
def locked_state() -> Iterator[State]:
    """The state, locked; written back when the block ends without an exception."""
    path = state_path()
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            state = {"next_id": 100, "jobs": {}}
        yield state
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, path)


def new_job(state: State, system: str, **fields: Any) -> Job:
    job_id = str(state["next_id"])
    state["next_id"] += 1
    job: Job = {
        "id": job_id,
        "system": system,
        "submit_time": time.time(),
        "phase": "queued",  # queued, running, finished
        "hold": False,
        "suspended": False,
        "cancelled": False,
        "removed": False,
        "requeue": False,
        "rc": None,
        "signal": None,
        "pid": None,
        "start_time": None,
        "end_time": None,
        "walltime": None,
        "env": {},
    }
    job.update(fields)
    state["jobs"][job_id] = job
    return job


def spool_copy(job_id: str, text: str) -> str:
    """Keep a copy of a job script, as Torque and LSF do at submission: the job runs the copy,
    so the submitter may delete its file at once (BioQueue's plugins do)."""
    spool = state_path() + ".spool"
    os.makedirs(spool, exist_ok=True)
    path = os.path.join(spool, f"{job_id}.sh")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def spawn_runner(job_id: str) -> None:
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--run", job_id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def signal_job(job: Job, sig: int) -> None:
    if job.get("pid"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job["pid"], sig)


def kill_job(job: Job) -> None:
    signal_job(job, signal.SIGTERM)
    signal_job(job, signal.SIGCONT)  # a stopped process only dies once continued


def finish_unstarted(job: Job) -> None:
    job["phase"] = "finished"
    job["end_time"] = time.time()


def age(job: Job) -> float:
    return time.time() - (job["end_time"] or time.time())


def visible(job: Job, extra: float = 0.0) -> bool:
    """Still shown by the status command (finished jobs vanish after EXIT_DELAY + KEEP)."""
    return job["phase"] != "finished" or age(job) < EXIT_DELAY + KEEP + extra


# --------------------------------------------------------------------------- the runner


def run_job(job_id: str) -> int:
    """Runner process of one job: wait until it may start, run it, record how it ended."""
    while True:
        proc = None
        while proc is None:
            with locked_state() as state:
                job = state["jobs"][job_id]
                if job["cancelled"] or job["phase"] == "finished":
                    if job["phase"] != "finished":
                        finish_unstarted(job)
                    return 0
                if not job["hold"] and time.time() - job["submit_time"] >= QUEUE_DELAY:
                    out = open(job["out"] or os.devnull, "ab")  # noqa: SIM115
                    err = open(job["err"], "ab") if job.get("err") else out  # noqa: SIM115
                    try:
                        proc = subprocess.Popen(
                            job["argv"],
                            cwd=job["cwd"],
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=err,
                            start_new_session=True,
                            env={**os.environ, **job["env"]},
                        )
                    except OSError as exc:
                        err.write(f"fakedrm: cannot start job: {exc}\n".encode())
                        job.update(phase="finished", end_time=time.time(), rc=127)
                        return 0
                    finally:
                        out.close()
                        if err is not out:
                            err.close()
                    job.update(phase="running", pid=proc.pid, start_time=time.time())
            if proc is None:
                time.sleep(0.05)
        killed_at = None
        while proc.poll() is None:
            time.sleep(0.05)
            with locked_state() as state:
                job = state["jobs"][job_id]
                limit = job["walltime"]
                if limit and killed_at is None and time.time() - job["start_time"] > limit:
                    job["walltime_exceeded"] = True
                    if job["system"] == "htcondor":
                        job["removed"] = True
                    kill_job(job)
                    killed_at = time.time()
            if killed_at and time.time() - killed_at > 2 and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        with locked_state() as state:
            job = state["jobs"][job_id]
            if job["requeue"]:  # HTCondor hold of a running job: back to the queue
                job.update(phase="queued", requeue=False, pid=None, suspended=False)
                continue
            rc = proc.returncode
            job.update(
                phase="finished",
                end_time=time.time(),
                rc=rc if rc >= 0 else None,
                signal=-rc if rc < 0 else None,
                suspended=False,
            )
            return 0


def kill_all() -> int:
    with locked_state() as state:
        for job in state["jobs"].values():
            if job["phase"] != "finished":
                job["cancelled"] = True
                kill_job(job)
    return 0


# --------------------------------------------------------------------------- helpers


def fail(message: str, code: int = 1) -> int:
    sys.stderr.write(message.rstrip("\n") + "\n")
    return code


def job_ids(args: list[str]) -> list[str]:
    """Job ids from arguments like 123, 123.server, 123.0 (HTCondor)."""
    return [m.group(1) for a in args if (m := re.match(r"(\d+)", a))]


def ctime(t: float | None) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(t or time.time()))


# --------------------------------------------------------------------------- Torque / PBS

TORQUE_SIZE = re.compile(r"^\d+(b|kb|mb|gb|tb|w|kw|mw|gw|tw)?$", re.IGNORECASE)


def torque_seconds(text: str) -> int | None:
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return seconds


def torque_state(job: Job) -> str | None:
    if job["phase"] == "queued":
        return "H" if job["hold"] else "Q"
    if job["phase"] == "running":
        return "S" if job["suspended"] else "R"
    if age(job) < EXIT_DELAY:
        return "E"
    if age(job) < EXIT_DELAY + KEEP:
        return "C"
    return None


def torque_exit_status(job: Job) -> str | None:
    if job["rc"] is not None:
        return str(job["rc"])
    if job["signal"] is not None:
        return str(256 + job["signal"])  # Torque: killed by signal N -> 256+N
    return None


def torque_qsub(args: list[str]) -> int:
    opts: dict[str, list[str]] = {}
    script = None
    i = 0
    while i < len(args):
        if args[i].startswith("-") and i + 1 < len(args):
            opts.setdefault(args[i], []).append(args[i + 1])
            i += 2
        else:
            script = args[i]
            i += 1
    if script is None:
        return fail("qsub: reading a script from standard input is not supported by the fake")
    try:
        with open(script) as f:
            script_text = f.read()
    except OSError as exc:
        return fail(f"qsub: script file cannot be loaded - {exc.strerror}")
    lines = script_text.splitlines()
    for line in lines[1:]:
        if line.startswith("#PBS"):
            words = shlex.split(line[4:])
            if len(words) >= 2:
                opts.setdefault(words[0], []).append(words[1])
        elif line.strip() and not line.startswith("#"):
            break
    resources: dict[str, str] = {}
    for spec in opts.get("-l", []):
        for item in spec.split(","):
            key, _, value = item.partition("=")
            resources[key] = value
    for key in ("mem", "vmem", "pmem"):
        if key in resources and not TORQUE_SIZE.match(resources[key]):
            return fail(
                f"qsub: submit error (Illegal attribute or resource value Resource_List.{key})"
            )
    if "nodes" in resources and not re.fullmatch(r"\d+(:ppn=\d+)?", resources["nodes"]):
        return fail("qsub: submit error (Illegal attribute or resource value Resource_List.nodes)")
    walltime = None
    if "walltime" in resources:
        walltime = torque_seconds(resources["walltime"])
        if walltime is None:
            return fail(
                "qsub: submit error (Illegal attribute or resource value Resource_List.walltime)"
            )
    out = opts.get("-o", [None])[-1]
    join = opts.get("-j", ["n"])[-1]
    err = opts.get("-e", [None])[-1]
    with locked_state() as state:
        job = new_job(
            state,
            "torque",
            name=opts.get("-N", [os.path.basename(script)])[-1],
            queue=opts.get("-q", ["batch"])[-1],
            argv=[opts.get("-S", ["/bin/sh"])[-1]],
            cwd=os.getcwd(),
            out=out,
            err=None if join == "oe" else err,
            resources=resources,
            walltime=walltime,
        )
        job["argv"].append(spool_copy(job["id"], script_text))  # Torque copies the script
        job["env"] = {"PBS_JOBID": f"{job['id']}.{SERVER}", "PBS_O_WORKDIR": os.getcwd()}
        print(f"{job['id']}.{SERVER}")
    spawn_runner(job["id"])
    return 0


def torque_qstat(args: list[str]) -> int:
    full = "-f" in args
    ids = job_ids([a for a in args if not a.startswith("-")])
    rc = 0
    with locked_state() as state:
        jobs = state["jobs"]
        selected = ids or [i for i, j in jobs.items() if j["system"] == "torque"]
        blocks = []
        rows = []
        for job_id in selected:
            job = jobs.get(job_id)
            st = torque_state(job) if job and job["system"] == "torque" else None
            if st is None:
                if ids:
                    sys.stderr.write(f"qstat: Unknown Job Id Error {job_id}.{SERVER}\n")
                    rc = 153
                continue
            if full:
                lines = [
                    f"Job Id: {job_id}.{SERVER}",
                    f"    Job_Name = {job['name']}",
                    f"    Job_Owner = root@{SERVER}",
                    f"    job_state = {st}",
                    f"    queue = {job['queue']}",
                    f"    server = {SERVER}",
                    f"    ctime = {ctime(job['submit_time'])}",
                    f"    Output_Path = {SERVER}:{job['out']}",
                ]
                for key, value in sorted(job["resources"].items()):
                    lines.append(f"    Resource_List.{key} = {value}")
                lines.append(
                    "    Variable_List = PBS_O_QUEUE=batch,PBS_O_HOME=/root,PBS_O_LOGNAME=root,\n"
                    f"\tPBS_O_WORKDIR={job['cwd']},PBS_O_HOST={SERVER}"
                )
                status = torque_exit_status(job)
                if st in ("E", "C") and status is not None:
                    lines.append(f"    exit_status = {status}")
                blocks.append("\n".join(lines))
            else:
                rows.append(f"{job_id + '.' + SERVER:<24}{job['name'][:16]:<17}root"
                            f"{'0':>17} {st} {job['queue']}")  # fmt: skip
    if full and blocks:
        print("\n\n".join(blocks) + "\n")
    elif rows:
        print("Job ID                    Name             User            Time Use S Queue")
        print("------------------------- ---------------- --------------- -------- - -----")
        print("\n".join(rows))
    return rc


def torque_control(command: str, args: list[str]) -> int:
    sig = None
    if command == "qsig":
        sig = "SIGTERM"
        if "-s" in args:
            sig = args[args.index("-s") + 1]
            args = args[: args.index("-s")] + args[args.index("-s") + 2 :]
    rc = 0
    with locked_state() as state:
        for job_id in job_ids(args):
            job = state["jobs"].get(job_id)
            st = torque_state(job) if job and job["system"] == "torque" else None
            if st is None:
                sys.stderr.write(f"{command}: Unknown Job Id Error {job_id}.{SERVER}\n")
                rc = 153
                continue
            invalid = (f"{command}: Request invalid for state of job MSG=invalid state for job "
                       f"- {st} {job_id}.{SERVER}\n")
            if command == "qdel":
                if st in ("E", "C"):
                    sys.stderr.write(invalid)
                    rc = 168
                elif job["phase"] == "queued":
                    job["cancelled"] = True
                    finish_unstarted(job)
                else:
                    job["cancelled"] = True
                    kill_job(job)
            elif command == "qhold":
                if st not in ("Q", "H"):
                    sys.stderr.write(invalid)
                    rc = 168
                else:
                    job["hold"] = True
            elif command == "qrls":
                if job["phase"] == "queued":
                    job["hold"] = False
            elif command == "qsig":
                if st not in ("R", "S"):
                    sys.stderr.write(invalid)
                    rc = 168
                    continue
                name = (sig or "").upper().removeprefix("SIG")
                if name == "SUSPEND":
                    signal_job(job, signal.SIGSTOP)
                    job["suspended"] = True
                elif name == "RESUME":
                    signal_job(job, signal.SIGCONT)
                    job["suspended"] = False
                else:
                    try:
                        number = int(name) if name.isdigit() else signal.Signals["SIG" + name]
                    except KeyError:
                        sys.stderr.write(f"qsig: invalid signal {sig}\n")
                        rc = 1
                        continue
                    signal_job(job, int(number))
    return rc


# --------------------------------------------------------------------------- HTCondor


def condor_status(job: Job) -> int | None:
    """JobStatus while the job is in condor_q; None once it is only in the history."""
    if job["phase"] == "queued":
        return 5 if job["hold"] else 1
    if job["phase"] == "running":
        return 7 if job["suspended"] else 2
    if age(job) < EXIT_DELAY:
        return 3 if job["removed"] else 4
    return None


def condor_attrs(job: Job, finished: bool) -> dict[str, str]:
    status = 3 if finished and job["removed"] else (4 if finished else condor_status(job))
    attrs = {
        "ClusterId": job["id"],
        "ProcId": "0",
        "JobStatus": str(status),
        "Cmd": job["argv"][0],
        "Iwd": job["cwd"],
        "RequestCpus": job["resources"].get("request_cpus", "1"),
        "RequestMemory": job["resources"].get("request_memory", "undefined"),
        "JobBatchName": f'"{job["name"]}"',
        "Owner": '"root"',
    }
    if status == 4:
        by_signal = job["signal"] is not None
        attrs["ExitBySignal"] = "true" if by_signal else "false"
        if by_signal:
            attrs["ExitSignal"] = str(job["signal"])
        else:
            attrs["ExitCode"] = str(job["rc"])
    if job["hold"]:
        attrs["HoldReason"] = '"via condor_hold (by user root)"'
    return attrs


def condor_submit(args: list[str]) -> int:
    files = [a for a in args if not a.startswith("-")]
    if not files:
        return fail("condor_submit: reading standard input is not supported by the fake")
    try:
        with open(files[0]) as f:
            text = f.read()
    except OSError as exc:
        return fail(f'ERROR: Can\'t open "{files[0]}"  with flags 00 ({exc.strerror})')
    desc: dict[str, str] = {}
    queued = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^queue\b", line, re.IGNORECASE):
            queued = True
            continue
        key, sep, value = line.partition("=")
        if sep:
            desc[key.strip().lower()] = value.strip()
    if not queued:
        return fail("condor_submit: no 'queue' statement; nothing submitted")
    if "executable" not in desc:
        return fail("ERROR: No 'executable' parameter was provided")
    for key in ("request_cpus", "request_memory"):
        if key in desc and not desc[key].isdigit():
            return fail(f"ERROR: {key} = {desc[key]} is not a whole number")
    walltime = None
    m = re.search(r"EnteredCurrentStatus\)?\s*\)?\s*>\s*(\d+)", desc.get("periodic_remove", ""))
    if m:
        walltime = int(m.group(1))
    iwd = desc.get("initialdir", os.getcwd())
    executable = os.path.join(iwd, desc["executable"])
    if os.path.isfile(executable):  # HTCondor sets the execute bit of what it runs
        os.chmod(executable, os.stat(executable).st_mode | 0o111)
    with locked_state() as state:
        job = new_job(
            state,
            "htcondor",
            name=desc.get("batch_name", "ID"),
            argv=[desc["executable"], *shlex.split(desc.get("arguments", "").strip('"'))],
            cwd=iwd,
            out=desc.get("output"),
            err=desc.get("error") if desc.get("error") != desc.get("output") else None,
            resources={k: desc[k] for k in ("request_cpus", "request_memory") if k in desc},
            walltime=walltime,
        )
        print("Submitting job(s).")
        print(f"1 job(s) submitted to cluster {job['id']}.")
    spawn_runner(job["id"])
    return 0


def autoformat_args(args: list[str]) -> tuple[list[str], list[str], int | None]:
    """(ids, attributes, limit) from condor_q/condor_history arguments."""
    ids: list[str] = []
    attrs: list[str] = []
    limit = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-af", "-autoformat") or a.startswith("-af:"):
            attrs = args[i + 1 :]
            break
        if a in ("-limit", "-match"):
            limit = int(args[i + 1])
            i += 2
            continue
        if not a.startswith("-"):
            ids += job_ids([a])
        i += 1
    return ids, attrs, limit


def print_autoformat(rows: list[dict[str, str]], attrs: list[str]) -> None:
    for row in rows:
        print(" ".join(row.get(a, "undefined").strip('"') for a in attrs))


def condor_q(args: list[str]) -> int:
    name = None
    if "-constraint" in args:  # only the form pbq uses: JobBatchName == "NAME"
        i = args.index("-constraint")
        m = re.fullmatch(r'\s*JobBatchName\s*==\s*"([^"]*)"\s*', args[i + 1])
        if not m:
            return fail(f"condor_q: the fake cannot evaluate the constraint {args[i + 1]!r}")
        name = m.group(1)
        args = args[:i] + args[i + 2 :]
    ids, attrs, _ = autoformat_args(args)
    rows = []
    with locked_state() as state:
        for job_id, job in state["jobs"].items():
            if job["system"] != "htcondor" or (ids and job_id not in ids):
                continue
            if name is not None and job["name"] != name:
                continue
            if condor_status(job) is not None:
                rows.append(condor_attrs(job, finished=False))
    if attrs:
        print_autoformat(rows, attrs)
    else:
        print("\n-- Schedd: fakeschedd : <127.0.0.1:9618?...")
        print(" ID      OWNER            SUBMITTED     RUN_TIME ST PRI SIZE CMD")
        letters = {"1": "I", "2": "R", "3": "X", "4": "C", "5": "H", "7": "S"}
        for row in rows:
            print(f"{row['ClusterId']}.0   root  11/22 03:00   0+00:00:00 "
                  f"{letters.get(row['JobStatus'], '?')}  0   0.0 {row['Cmd']}")  # fmt: skip
    # The real condor_q ends with this summary unless -af is given.
    if not attrs:
        counts = {s: sum(1 for r in rows if r["JobStatus"] == s) for s in "12357"}
        print(f"Total for query: {len(rows)} jobs; 0 completed, {counts['3']} removed, "
              f"{counts['1']} idle, {counts['2']} running, {counts['5']} held, "
              f"{counts['7']} suspended")
    return 0


def condor_history(args: list[str]) -> int:
    ids, attrs, limit = autoformat_args(args)
    rows = []
    with locked_state() as state:
        for job_id, job in sorted(state["jobs"].items(), key=lambda kv: -int(kv[0])):
            if job["system"] != "htcondor" or (ids and job_id not in ids):
                continue
            if job["phase"] == "finished" and condor_status(job) is None:
                rows.append(condor_attrs(job, finished=True))
    if limit is not None:
        rows = rows[:limit]
    if attrs:
        print_autoformat(rows, attrs)
    else:
        print(" ID     OWNER          SUBMITTED   RUN_TIME     ST COMPLETED   CMD")
        for row in rows:
            st = "X" if row["JobStatus"] == "3" else "C"
            print(
                f" {row['ClusterId']}.0  root  11/22 03:00  0+00:00:00 {st}  11/22 03:00 "
                f"{row['Cmd']}"
            )
    return 0


def condor_control(command: str, args: list[str]) -> int:
    verbs = {
        "condor_rm": "marked for removal",
        "condor_hold": "held",
        "condor_release": "released",
        "condor_suspend": "suspended",
        "condor_continue": "continued",
    }
    short = command.removeprefix("condor_").replace("rm", "remove")
    rc = 0
    with locked_state() as state:
        for job_id in job_ids(args):
            job = state["jobs"].get(job_id)
            st = condor_status(job) if job and job["system"] == "htcondor" else None
            ok = st is not None and st not in (3, 4)
            if ok and command == "condor_rm":
                job["removed"] = job["cancelled"] = True
                if job["phase"] == "queued":
                    finish_unstarted(job)
                else:
                    kill_job(job)
            elif ok and command == "condor_hold":
                if job["phase"] == "running":  # HTCondor vacates a running job it holds
                    job["requeue"] = True
                    kill_job(job)
                job["hold"] = True
            elif ok and command == "condor_release":
                ok = job["hold"]
                job["hold"] = False
            elif ok and command == "condor_suspend":
                ok = job["phase"] == "running" and not job["requeue"]
                if ok:
                    signal_job(job, signal.SIGSTOP)
                    job["suspended"] = True
            elif ok and command == "condor_continue":
                ok = job["suspended"]
                if ok:
                    signal_job(job, signal.SIGCONT)
                    job["suspended"] = False
            if ok:
                print(f"All jobs in cluster {job_id} have been {verbs[command]}")
            else:
                sys.stderr.write(f"Couldn't find/{short} all jobs in cluster {job_id}.\n")
                rc = 1
    return rc


# --------------------------------------------------------------------------- LSF


def lsf_stat(job: Job) -> str | None:
    if job["phase"] == "queued":
        return "PSUSP" if job["hold"] else "PEND"
    if job["phase"] == "running":
        return "USUSP" if job["suspended"] else "RUN"
    if age(job) >= EXIT_DELAY + KEEP:
        return None
    return "DONE" if job["rc"] == 0 and not job["cancelled"] else "EXIT"


def lsf_exit_code(job: Job) -> str:
    if lsf_stat(job) != "EXIT":
        return "-"
    if job["rc"] is not None:
        return str(job["rc"])
    if job["signal"] is not None:
        return str(128 + job["signal"])
    return "-"


def bsub(args: list[str]) -> int:
    opts: dict[str, str] = {}
    i = 0
    with_value = {"-J", "-o", "-e", "-cwd", "-n", "-M", "-v", "-W", "-q"}
    while i < len(args) and args[i].startswith("-"):
        if args[i] not in with_value or i + 1 >= len(args):
            return fail(f"bsub: illegal option -- {args[i]}")
        opts[args[i]] = args[i + 1]
        i += 2
    command = args[i:]
    if not command:
        # `bsub < script`: the script is read from standard input; #BSUB lines are options.
        text = sys.stdin.read()
        if not text.strip():
            return fail("bsub: no command or script on standard input. Job not submitted.")
        for line in text.splitlines()[1:]:
            if line.startswith("#BSUB"):
                words = shlex.split(line[5:])
                if len(words) >= 2 and words[0] in with_value:
                    opts.setdefault(words[0], words[1])
            elif line.strip() and not line.startswith("#"):
                break
        with locked_state() as state:
            job_id = str(state["next_id"])  # the id new_job() is about to give
        command = ["/bin/sh", spool_copy(f"lsf-{job_id}-{os.getpid()}", text)]
    for key in ("-n", "-M", "-v"):
        if key in opts and not opts[key].isdigit():
            return fail(f"{opts[key]}: Bad argument for option {key}. Job not submitted.")
    walltime = None
    if "-W" in opts:
        m = re.fullmatch(r"(?:(\d+):)?(\d+)", opts["-W"])
        if not m:
            return fail(f"{opts['-W']}: Bad RUNLIMIT specification. Job not submitted.")
        walltime = (int(m.group(1) or 0) * 60 + int(m.group(2))) * 60
    queue = opts.get("-q", "normal")
    with locked_state() as state:
        job = new_job(
            state,
            "lsf",
            name=opts.get("-J", command[-1]),
            queue=queue,
            argv=command,
            cwd=opts.get("-cwd", os.getcwd()),
            out=opts.get("-o"),
            err=opts.get("-e") if opts.get("-e") != opts.get("-o") else None,
            resources={k: opts[k] for k in ("-n", "-M", "-v", "-W") if k in opts},
            walltime=walltime,
        )
        job["env"] = {"LSB_JOBID": job["id"]}
        where = f"queue <{queue}>" if "-q" in opts else f"default queue <{queue}>"
        print(f"Job <{job['id']}> is submitted to {where}.")
    spawn_runner(job["id"])
    return 0


def bjobs(args: list[str]) -> int:
    noheader = "-noheader" in args
    fmt = None
    rest = []
    i = 0
    name = None
    while i < len(args):
        if args[i] == "-o":
            fmt = args[i + 1].split()
            i += 2
            continue
        if args[i] == "-J":
            name = args[i + 1]
            i += 2
            continue
        if not args[i].startswith("-"):
            rest.append(args[i])
        i += 1
    ids = job_ids(rest)
    rows = []
    rc = 0
    with locked_state() as state:
        jobs = state["jobs"]
        selected = ids or [k for k, j in jobs.items()
                           if j["system"] == "lsf" and name in (None, j["name"])]
        for job_id in selected:
            job = jobs.get(job_id)
            stat = lsf_stat(job) if job and job["system"] == "lsf" else None
            if stat is None:
                if ids:
                    sys.stderr.write(f"Job <{job_id}> is not found\n")
                    rc = 255
                continue
            values = {
                "jobid": job_id,
                "stat": stat,
                "exit_code": lsf_exit_code(job),
                "job_name": job["name"],
                "queue": job["queue"],
                "user": "root",
            }
            rows.append(values)
    if fmt:
        fields = [f.split(":")[0].lower() for f in fmt]
        if not noheader and rows:
            print(" ".join(f.upper() for f in fields))
        for row in rows:
            print(" ".join(row.get(f, "-") for f in fields))
    else:
        if not noheader and rows:
            print("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME")
        for row in rows:
            print(f"{row['jobid']:<7} root    {row['stat']:<5} {row['queue']:<10} fakehost    "
                  f"fakehost    {row['job_name'][:10]:<10} Nov 22 03:00")  # fmt: skip
    if not rows and name is not None:
        sys.stderr.write(f"Job <{name}> is not found\n")
        return 255
    if not rows and not ids:
        print("No unfinished job found")
    return rc


def lsf_control(command: str, args: list[str]) -> int:
    rc = 0
    with locked_state() as state:
        for job_id in job_ids(args):
            job = state["jobs"].get(job_id)
            stat = lsf_stat(job) if job and job["system"] == "lsf" else None
            if stat is None:
                print(f"Job <{job_id}>: No matching job found", file=sys.stderr)
                rc = 255
                continue
            if stat in ("DONE", "EXIT"):
                print(f"Job <{job_id}>: Job has already finished", file=sys.stderr)
                rc = 255
                continue
            if command == "bkill":
                job["cancelled"] = True
                if job["phase"] == "queued":
                    finish_unstarted(job)
                else:
                    kill_job(job)
                print(f"Job <{job_id}> is being terminated")
            elif command == "bstop":
                if job["phase"] == "queued":
                    job["hold"] = True
                else:
                    signal_job(job, signal.SIGSTOP)
                    job["suspended"] = True
                print(f"Job <{job_id}> is being stopped")
            elif command == "bresume":
                if stat not in ("PSUSP", "USUSP"):
                    print(f"Job <{job_id}>: Job is not suspended", file=sys.stderr)
                    rc = 255
                    continue
                job["hold"] = False
                if job["suspended"]:
                    signal_job(job, signal.SIGCONT)
                    job["suspended"] = False
                print(f"Job <{job_id}> is being resumed")
    return rc


# --------------------------------------------------------------------------- dispatch

DOWN_MESSAGES = {
    "torque": "Cannot connect to specified server host '{server}'.\n"
    "{cmd}: cannot connect to server {server} (errno=111) Connection refused",
    "htcondor": "\n-- Failed to fetch ads from: <127.0.0.1:9618> : fakeschedd\n"
    "CEDAR:6001:Failed to connect to <127.0.0.1:9618>",
    "lsf": "LSF is down. Please wait ...\nbatch system daemon not responding ... still trying",
}

COMMANDS = {
    "qsub": ("torque", torque_qsub),
    "qstat": ("torque", torque_qstat),
    "qdel": ("torque", lambda a: torque_control("qdel", a)),
    "qhold": ("torque", lambda a: torque_control("qhold", a)),
    "qrls": ("torque", lambda a: torque_control("qrls", a)),
    "qsig": ("torque", lambda a: torque_control("qsig", a)),
    "condor_submit": ("htcondor", condor_submit),
    "condor_q": ("htcondor", condor_q),
    "condor_history": ("htcondor", condor_history),
    "condor_rm": ("htcondor", lambda a: condor_control("condor_rm", a)),
    "condor_hold": ("htcondor", lambda a: condor_control("condor_hold", a)),
    "condor_release": ("htcondor", lambda a: condor_control("condor_release", a)),
    "condor_suspend": ("htcondor", lambda a: condor_control("condor_suspend", a)),
    "condor_continue": ("htcondor", lambda a: condor_control("condor_continue", a)),
    "bsub": ("lsf", bsub),
    "bjobs": ("lsf", bjobs),
    "bkill": ("lsf", lambda a: lsf_control("bkill", a)),
    "bstop": ("lsf", lambda a: lsf_control("bstop", a)),
    "bresume": ("lsf", lambda a: lsf_control("bresume", a)),
}


def main(command: str, args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    system, function = COMMANDS[command]
    if os.environ.get("PBQ_FAKEDRM_DOWN") == "1":
        return fail(
            DOWN_MESSAGES[system].format(server=SERVER, cmd=command), 255 if system == "lsf" else 1
        )
    return function(args)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        sys.exit(run_job(sys.argv[2]))
    if sys.argv[1:] == ["--kill-all"]:
        sys.exit(kill_all())
    sys.exit(main(os.path.basename(sys.argv[0])))
