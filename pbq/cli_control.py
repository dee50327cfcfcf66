"""``pbq control`` and ``pbq config``.

Parsing only: control.py and recovery.py do the work, config.py resolves settings.
cli.py adds both commands to the ``pbq`` group.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .cli_common import CONTEXT, FILE_ARG, config_option, friendly
from .errors import PbqError

LOAD_COLUMNS = [
    ("host", "HOST"),
    ("state", "STATE"),
    ("load", "LOAD"),
    ("foreign", "FOREIGN"),
    ("limit", "LIMIT"),
    ("running", "RUNNING"),
    ("stopped", "STOPPED"),
    ("active_users", "USERS"),
    ("local_users", "LOCAL"),
    ("remote_users", "REMOTE"),
    ("sources", "SOURCES"),
    ("heartbeat_age", "HEARTBEAT_S"),
]


@click.command(
    "control",
    context_settings=CONTEXT,
    epilog="""\b
Commands:
  stop            stop every job (SIGSTOP to its process group); start nothing
  cont            continue (jobs resume under the load policy)
  quit            start nothing new; exit when the running and stopped jobs are done
  term            SIGTERM (then SIGKILL) every job; their lines stay in .running/.stopped
  kill            kill the scheduler only; its jobs keep running (a restart adopts them)
  load            table of load, foreign load, limit, jobs and users (local at the
                  machine's seat or console, remote) per host, with the sources that
                  answered (tty, logind)
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
@click.argument("hostfile", type=FILE_ARG)
@click.argument("jobfile", type=FILE_ARG)
@click.argument("command", metavar="COMMAND")
@click.argument("hosts", nargs=-1, metavar="[HOST...]")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds to wait for each scheduler to confirm (default 30).",
)
@click.option(
    "--rsh",
    metavar="CMD",
    help="Signal remote schedulers through this remote shell instead of a control file.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (load, check).")
@click.option(
    "--stale-after",
    type=float,
    default=600.0,
    show_default=True,
    help="recover: seconds without heartbeat after which a remote host counts as dead.",
)
@config_option
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
    from .config import load_config

    if command not in control.COMMANDS:
        choices = ", ".join(control.COMMANDS)
        raise click.UsageError(f"unknown command {command!r}; choose one of: {choices}")
    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path)
    targets = control.target_hosts(jobfile, hosts)
    if command == "load":
        rows = control.load_table(jobfile, targets)
        click.echo(control.dumps(rows) if as_json else control.format_table(rows, LOAD_COLUMNS))
        sys.exit(0 if all(row["alive"] for row in rows) else 1)
    elif command == "check":
        sys.exit(_check(jobfile, targets, all_hosts=not hosts, as_json=as_json))
    elif command in ("recover", "requeue-errors"):
        from . import recovery

        if command == "recover":
            if not hosts:
                raise click.UsageError("recover needs the HOSTs whose jobs to put back")
            lines = recovery.recover_hosts(jobfile, list(hosts), cfg, stale_after=stale_after)
        else:
            lines = recovery.requeue_errors(jobfile, list(hosts) or None, cfg)
        for line in lines:
            click.echo(line)
    else:
        if not targets:
            raise PbqError("no scheduler has a .pid file for this jobfile", path=str(jobfile))
        wait = cfg.control.timeout if timeout is None else timeout
        reports = control.send_command(jobfile, targets, command, timeout=wait, rsh=rsh)
        for report in reports:
            click.echo(f"{report.host}: {report.message}")
        sys.exit(0 if all(report.ok for report in reports) else 1)


def _check(jobfile: Path, targets: list[str], *, all_hosts: bool, as_json: bool) -> int:
    """Print each host's condition; exit status 1 when any is dead or stale."""
    from . import control

    if all_hosts:
        from .statefiles import hosts_with

        targets = sorted(set(targets) | set(hosts_with(jobfile, "status")))
    rows = [control.host_condition(jobfile, host) for host in targets]
    if as_json:
        click.echo(control.dumps(rows))
    else:
        for row in rows:
            extra = f" ({row['detail']})" if row.get("detail") else ""
            pid = f" pid {row['pid']}" if row.get("pid") else ""
            on = f" on {row['machine']}" if row.get("machine") else ""
            click.echo(f"{row['host']}: {row['condition']}{extra}{pid}{on}")
    return 1 if any(row["condition"] in ("dead", "stale") for row in rows) else 0


@click.command(
    "config", context_settings=CONTEXT, epilog="Example:\n  pbq config --jobfile jobs.txt"
)
@config_option
@click.option(
    "--jobfile", type=click.Path(path_type=Path), help="Jobfile (its directory's pbq.toml is used)."
)
@click.option("--json", "as_json", is_flag=True)
@friendly("pbq config")
def config_cmd(config_path: Path | None, jobfile: Path | None, as_json: bool) -> None:
    """Print the effective configuration and where each value came from."""
    from .config import load_config
    from .control import dumps

    cfg = load_config(jobfile.absolute() if jobfile else None, config_path)
    settings = cfg.settings()
    if as_json:
        rows = [
            {"section": s.section, "key": s.key, "value": _plain(s.value), "source": s.source}
            for s in settings
        ]
        click.echo(dumps(rows))
        return
    click.echo(f"# config file: {cfg.path or '(none)'}")
    section = None
    for s in settings:
        if s.section != section:
            section = s.section
            click.echo(f"[{section}]")
        click.echo(f"{s.key} = {_toml(s.value)}    # {s.source}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
