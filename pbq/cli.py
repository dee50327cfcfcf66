"""Command-line entry points: ``pbq-single``, ``pbq`` and ``jobfile-append``.

Parsing only: each command turns its options into calls of the modules that do the work.
Every user error is one line on standard error and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import load_config
from .errors import PbqError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def friendly(prog: str) -> Callable:
    """Turn PbqError into one clear line and exit status 2."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except PbqError as err:
                click.echo(f"{prog}: {err}", err=True)
                sys.exit(err.exit_code)

        return inner

    return wrap


def _flags(**values: Any) -> dict[tuple[str, str], Any]:
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        section, key = name.split("__")
        out[(section, key)] = value
    return out


# ------------------------------------------------------------------ pbq-single


@click.command(
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  pbq-single hostfile jobfile                  run here until stopped
  pbq-single --exit-when-empty hostfile jobfile
  pbq-single --host node7 --output-dir out hostfile jobfile
""",
)
@click.argument("hostfile", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("jobfile", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--host", "host_name", metavar="NAME", help="Host name to use (default: this machine's short name).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (TOML).")
@click.option("--exit-when-empty", is_flag=True, default=None, help="Exit once the jobfile is empty and no job is left.")
@click.option("--output-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep each job's stdout/stderr in DIR/<job id>.out/.err.")
@click.option("--lock", type=click.Choice(["flock", "soft"]), help="Jobfile lock: flock (default) or soft (O_EXCL file, for sshfs and the like).")
@click.option("--allow-group-write", is_flag=True, default=None, help="Accept group-writable jobfile/hostfile (group-shared queues).")
@click.option("--interval", type=float, help="Seconds between ticks (default 1).")
@click.option("--retries", type=int, help="Retry a failed job this many times.")
@click.option("--memfree", help="Start nothing while available memory is below SIZE (e.g. 2G).")
@click.option("-v", "--verbose", is_flag=True, help="Also print the log on standard error.")
@click.version_option(__version__, prog_name="pbq-single")
@friendly("pbq-single")
def single(
    hostfile: Path,
    jobfile: Path,
    host_name: str | None,
    config_path: Path | None,
    exit_when_empty: bool | None,
    output_dir: Path | None,
    lock: str | None,
    allow_group_write: bool | None,
    interval: float | None,
    retries: int | None,
    memfree: str | None,
    verbose: bool,
) -> None:
    """Run the jobs of JOBFILE on this machine, within the load limit that HOSTFILE sets."""
    from .hostfile import find_host, load_hostfile, machine_name
    from .host.loop import Scheduler, SchedulerOptions
    from .safety import check_input_file

    # A symlinked jobfile is followed: compaction replaces the file it points to.
    jobfile = jobfile.resolve() if jobfile.is_symlink() else jobfile.absolute()
    hostfile = hostfile.absolute()
    cfg = load_config(
        jobfile,
        config_path,
        flags=_flags(
            scheduler__exit_when_empty=exit_when_empty,
            scheduler__output_dir=str(output_dir) if output_dir is not None else None,
            jobfile__lock=lock,
            scheduler__allow_group_write=allow_group_write,
            scheduler__interval=interval,
            scheduler__retries=retries,
            scheduler__memfree=memfree,
        ),
    )
    host = host_name or machine_name()
    if not host or "/" in host or host.startswith("."):
        raise PbqError(f"unusable host name {host!r}")
    sc = cfg.scheduler
    # Check everything a user can get wrong before forking, so errors come out plainly.
    check_input_file(hostfile, "hostfile", sc.allow_group_write)
    check_input_file(jobfile, "jobfile", sc.allow_group_write)
    find_host(load_hostfile(hostfile), host, str(hostfile))
    if not jobfile.exists():
        raise PbqError(f"no such jobfile (create it, e.g. with: touch {jobfile})", path=str(jobfile))
    opts = SchedulerOptions(
        hostfile=hostfile,
        jobfile=jobfile,
        host=host,
        config=cfg,
        output_dir=Path(sc.output_dir).absolute() if sc.output_dir else None,
        exit_when_empty=sc.exit_when_empty,
        allow_group_write=sc.allow_group_write,
        lock=cfg.jobfile.lock,
        echo_log=verbose,
    )
    try:
        code = Scheduler(opts).run()
    except PbqError as err:
        click.echo(f"pbq-single: {err}", err=True)
        code = err.exit_code
    sys.exit(code)


def single_main() -> None:
    single(prog_name="pbq-single")


# ------------------------------------------------------------------ jobfile-append


@click.command(
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  jobfile-append jobfile more-jobs
  seq 100 | sed 's/^/simulate --seed /' | jobfile-append jobfile -
""",
)
@click.argument("jobfile", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("morejobs", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--lock", type=click.Choice(["flock", "soft"]), help="Lock kind; must match the schedulers'.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (TOML).")
@click.version_option(__version__, prog_name="jobfile-append")
@friendly("jobfile-append")
def append(jobfile: Path, morejobs: Path, lock: str | None, config_path: Path | None) -> None:
    """Append the lines of MOREJOBS (- for standard input) to JOBFILE, under the schedulers' lock."""
    from .jobfile import JobQueue, append_file

    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path, flags=_flags(jobfile__lock=lock))
    try:
        data = sys.stdin.buffer.read() if str(morejobs) == "-" else morejobs.read_bytes()
    except OSError as err:
        raise PbqError(f"cannot read: {err.strerror}", path=str(morejobs)) from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not jobfile.parent.is_dir():
        raise PbqError("the jobfile's directory does not exist", path=str(jobfile))
    queue = JobQueue(jobfile, lock=cfg.jobfile.lock, fsync=cfg.jobfile.fsync, stale_lock_after=cfg.jobfile.stale_lock_after)
    n = append_file(queue, lines)
    click.echo(f"appended {n} line(s) to {jobfile}", err=True)


def append_main() -> None:
    append(prog_name="jobfile-append")


# ------------------------------------------------------------------ pbq


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="pbq")
def pbq() -> None:
    """Control and watch pbq schedulers.  Run the scheduler itself with pbq-single."""


@pbq.command(
    "control",
    context_settings=CONTEXT,
    epilog="""\b
Commands:
  stop            stop every job (SIGSTOP to its process group); start nothing
  cont            continue (jobs resume under the load policy)
  quit            start nothing new; exit when the running and stopped jobs are done
  term            SIGTERM (then SIGKILL) every job; their lines stay in .running/.stopped
  kill            kill the scheduler only; its jobs keep running (a restart adopts them)
  load            table of load, foreign load, limit and jobs per host
  check           alive / stopped / quitting / not running / stale / dead, per host
  recover         put the jobs of a dead host back into the jobfile
  requeue-errors  append the .error lines back to the jobfile and empty the .error files
\b
Examples:
  pbq control hostfile jobfile stop
  pbq control hostfile jobfile cont node7 node8
  pbq control hostfile jobfile load --json
""",
)
@click.argument("hostfile", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("jobfile", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("command", metavar="COMMAND")
@click.argument("hosts", nargs=-1, metavar="[HOST...]")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for each scheduler to confirm (default 30).")
@click.option("--rsh", metavar="CMD", help="Signal remote schedulers through this remote shell instead of a control file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (load, check).")
@click.option("--stale-after", type=float, default=600.0, show_default=True, help="recover: seconds without heartbeat after which a remote host counts as dead.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (TOML).")
@friendly("pbq control")
def control_cmd(
    hostfile: Path,
    jobfile: Path,
    command: str,
    hosts: tuple[str, ...],
    timeout: float | None,
    rsh: str | None,
    as_json: bool,
    stale_after: float,
    config_path: Path | None,
) -> None:
    """Send COMMAND to the schedulers of JOBFILE (all of them, or the HOSTs named)."""
    from . import control

    if command not in control.COMMANDS:
        raise click.UsageError(f"unknown command {command!r}; choose one of: {', '.join(control.COMMANDS)}")
    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path)
    timeout = cfg.control.timeout if timeout is None else timeout
    targets = control.target_hosts(jobfile, hosts)
    if command == "load":
        rows = control.load_table(jobfile, targets)
        if as_json:
            click.echo(control.dumps(rows))
        else:
            click.echo(
                control.format_table(
                    rows,
                    [("host", "HOST"), ("state", "STATE"), ("load", "LOAD"), ("foreign", "FOREIGN"), ("limit", "LIMIT"),
                     ("running", "RUNNING"), ("stopped", "STOPPED"), ("active_users", "USERS"), ("heartbeat_age", "HEARTBEAT_S")],
                )
            )
        return
    if command == "check":
        if not hosts:
            from .statefiles import hosts_with

            targets = sorted(set(targets) | set(hosts_with(jobfile, "status")))
        rows = [control.host_condition(jobfile, h) for h in targets]
        if as_json:
            click.echo(control.dumps(rows))
        else:
            for r in rows:
                extra = f" ({r['detail']})" if r.get("detail") else ""
                pid = f" pid {r['pid']}" if r.get("pid") else ""
                on = f" on {r['machine']}" if r.get("machine") else ""
                click.echo(f"{r['host']}: {r['condition']}{extra}{pid}{on}")
        bad = [r for r in rows if r["condition"] in ("dead", "stale")]
        sys.exit(1 if bad else 0)
    if command in ("recover", "requeue-errors"):
        from . import recovery

        if command == "recover":
            if not hosts:
                raise click.UsageError("recover needs the HOSTs whose jobs to put back")
            lines = recovery.recover_hosts(jobfile, list(hosts), cfg, stale_after=stale_after)
        else:
            lines = recovery.requeue_errors(jobfile, list(hosts) or None, cfg)
        for line in lines:
            click.echo(line)
        return
    if not targets:
        raise PbqError("no scheduler has a .pid file for this jobfile", path=str(jobfile))
    reports = control.send_command(jobfile, targets, command, timeout=timeout, rsh=rsh)
    for r in reports:
        click.echo(f"{r.host}: {r.message}")
    sys.exit(0 if all(r.ok for r in reports) else 1)


@pbq.command("config", context_settings=CONTEXT, epilog="Example:\n  pbq config --jobfile jobs.txt")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (TOML).")
@click.option("--jobfile", type=click.Path(path_type=Path), help="Jobfile (its directory's pbq.toml is used).")
@click.option("--json", "as_json", is_flag=True)
@friendly("pbq config")
def config_cmd(config_path: Path | None, jobfile: Path | None, as_json: bool) -> None:
    """Print the effective configuration and where each value came from."""
    from .control import dumps

    cfg = load_config(jobfile.absolute() if jobfile else None, config_path)
    settings = cfg.settings()
    if as_json:
        click.echo(dumps([{"section": s.section, "key": s.key, "value": _plain(s.value), "source": s.source} for s in settings]))
        return
    click.echo(f"# config file: {cfg.path or '(none)'}")
    section = None
    for s in settings:
        if s.section != section:
            section = s.section
            click.echo(f"[{section}]")
        click.echo(f"{s.key} = {_toml(s.value)}    # {s.source}")


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _register_ops() -> None:
    from .cli_ops import register

    register(pbq)  # start, status, report, completion


_register_ops()


def pbq_main() -> None:
    pbq(prog_name="pbq")
