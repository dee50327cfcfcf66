"""``pbq start``, ``pbq status`` and ``pbq report``.

Parsing only: the work is done in ops.py (start, status) and report.py (the HTML report).
cli.py adds the commands to the ``pbq`` group.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from .cli_common import (
    CONTEXT,
    FILE_ARG,
    config_flags,
    config_option,
    flag_option,
    friendly,
    lock_option,
    output_dir_option,
)
from .errors import PbqError

# ------------------------------------------------------------------ start


@click.command(
    "start",
    context_settings=CONTEXT,
    short_help="Start pbq-single on every host and wait until each runs.",
    epilog="""\b
Examples:
  pbq start hostfile jobfile                     every host named in the hostfile
  pbq start hostfile jobfile node7 node8         just these two
  pbq start --rsh 'ssh -F ~/.ssh/cluster' hostfile jobfile
  pbq start --exit-when-empty --output-dir out hostfile jobfile
  pbq start --remote-command '/opt/pbq/bin/pbq-single' hostfile jobfile
\b
Each host gets, through the remote shell (this machine itself without one):
  cd JOBDIR && setsid nohup PYTHON PBQ-SINGLE --host HOST [OPTIONS] HOSTFILE JOBFILE
      >> JOBFILE.HOST.out 2>&1 < /dev/null &
so the jobfile's directory must be the same path on every host (a shared file system).
""",
)
@click.argument("hostfile", type=FILE_ARG)
@click.argument("jobfile", type=FILE_ARG)
@click.argument("hosts", nargs=-1, metavar="[HOST...]")
@click.option(
    "--rsh", metavar="CMD", default=None, help="Remote shell (default: ssh -o BatchMode=yes)."
)
@click.option(
    "--remote-command",
    metavar="CMD",
    help="How to run pbq-single on the hosts "
    "(default: this Python with the pbq-single beside this pbq).",
)
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for each scheduler's first heartbeat.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Config file (TOML), passed on to pbq-single.",
)
@lock_option("Jobfile lock, passed on to pbq-single.")
@flag_option("--exit-when-empty", "Passed on: each scheduler exits once the jobfile is empty.")
@output_dir_option("Passed on: keep each job's output in DIR/<job id>.out/.err.")
@flag_option("--allow-group-write", "Passed on: accept a group-writable jobfile/hostfile.")
@friendly("pbq start")
def start_cmd(
    hostfile: Path,
    jobfile: Path,
    hosts: tuple[str, ...],
    rsh: str | None,
    remote_command: str | None,
    timeout: float,
    config_path: Path | None,
    lock: str | None,
    exit_when_empty: bool | None,
    output_dir: Path | None,
    allow_group_write: bool | None,
) -> None:
    """Start a scheduler (pbq-single) for JOBFILE on every HOST, and wait until each runs.

    HOSTs default to every host named in HOSTFILE (not '*').  Prints one line per host:
    started, already running, or failed with the reason; exit status 1 if any failed.
    """
    from . import ops
    from .config import load_config
    from .safety import check_queue_files

    if timeout <= 0:
        raise PbqError("--timeout must be > 0")
    jobfile = jobfile.absolute()
    hostfile = hostfile.absolute()
    config_path = config_path.absolute() if config_path is not None else None
    # Check what would fail on every host here, once, in plain words.
    cfg = load_config(
        jobfile,
        config_path,
        flags=config_flags(jobfile__lock=lock, scheduler__allow_group_write=allow_group_write),
    )
    check_queue_files(hostfile, jobfile, cfg.scheduler.allow_group_write)
    targets = ops.hosts_to_start(hostfile, hosts)
    options = _passed_on(config_path, lock, exit_when_empty, output_dir, allow_group_write)
    results = ops.start_hosts(
        hostfile,
        jobfile,
        targets,
        rsh=rsh if rsh is not None else ops.DEFAULT_RSH,
        command=ops.scheduler_command(remote_command),
        options=options,
        timeout=timeout,
    )
    for r in results:
        click.echo(r.line())
    sys.exit(0 if all(r.ok for r in results) else 1)


def _passed_on(
    config_path: Path | None,
    lock: str | None,
    exit_when_empty: bool | None,
    output_dir: Path | None,
    allow_group_write: bool | None,
) -> list[str]:
    """The options of ``pbq start`` that go on to each pbq-single."""
    options: list[str] = []
    if config_path is not None:
        options += ["--config", str(config_path)]
    if lock is not None:
        options += ["--lock", lock]
    if exit_when_empty:
        options.append("--exit-when-empty")
    if output_dir is not None:
        options += ["--output-dir", "-" if str(output_dir) == "-" else str(output_dir.absolute())]
    if allow_group_write:
        options.append("--allow-group-write")
    return options


# ------------------------------------------------------------------ status


@click.command(
    "status",
    context_settings=CONTEXT,
    short_help="The whole queue at a glance (--watch to follow it).",
    epilog="""\b
Examples:
  pbq status hostfile jobfile
  pbq status --watch hostfile jobfile          redraw every 2 s until Ctrl-C
  pbq status --watch --every 10 hostfile jobfile
  pbq status --json hostfile jobfile | jq .eta_seconds
\b
Reads only the files beside the jobfile (no remote shell): works from any machine
that sees them.  pending = job lines left in the jobfile; jobs/min = jobs that ended
in the last 5 minutes; ETA = (pending + running + stopped) / jobs per minute.
""",
)
@click.argument("hostfile", type=FILE_ARG)
@click.argument("jobfile", type=FILE_ARG)
@click.option("--watch", is_flag=True, help="Redraw every --every seconds until Ctrl-C.")
@click.option(
    "--every",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between redraws with --watch.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--no-lock", is_flag=True, help="Count pending lines without taking the jobfile's lock."
)
@config_option
@friendly("pbq status")
def status_cmd(
    hostfile: Path,
    jobfile: Path,
    watch: bool,
    every: float,
    as_json: bool,
    no_lock: bool,
    config_path: Path | None,
) -> None:
    """The whole queue at a glance: pending, running, stopped, done, failed, rate, ETA,
    and one row per host (state, load, foreign load, limit, jobs, heartbeat age)."""
    from . import ops
    from .config import load_config
    from .control import dumps

    if watch and as_json:
        raise PbqError("--watch and --json do not go together")
    if every <= 0:
        raise PbqError("--every must be > 0")
    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path)

    def collect() -> dict[str, Any]:
        return ops.queue_status(
            jobfile,
            hostfile,
            lock=cfg.jobfile.lock,
            stale_lock_after=cfg.jobfile.stale_lock_after,
            use_lock=not no_lock,
        )

    if not watch:
        st = collect()
        click.echo(dumps(st) if as_json else ops.format_status(st))
        return
    first = True
    try:
        while True:
            try:
                text = ops.format_status(collect(), bar_width=_bar_width())
            except PbqError as err:
                if first:
                    raise
                text = f"pbq status: {err}"
            first = False
            stamp = f"\nevery {every:g} s; Ctrl-C to stop"
            click.echo("\x1b[H\x1b[2J" + text + stamp, color=True)  # keep the codes in a pipe too
            sys.stdout.flush()
            time.sleep(every)
    except KeyboardInterrupt:
        click.echo("")


# ------------------------------------------------------------------ report


@click.command(
    "report",
    context_settings=CONTEXT,
    short_help="Write a self-contained HTML report of the run.",
    epilog="""\b
Examples:
  pbq report hostfile jobfile -o report.html
  pbq report hostfile jobfile -o - | gzip > report.html.gz
\b
One self-contained HTML file (inline SVG and CSS; no JavaScript, nothing fetched):
per host a timeline of load, foreign load and limit and one of running/stopped jobs
(from JOBFILE.HOST.history, one sample per [history] every seconds), a histogram of
job run times, and the failed jobs (from the joblogs).
""",
)
@click.argument("hostfile", type=FILE_ARG)
@click.argument("jobfile", type=FILE_ARG)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default=Path("report.html"),
    show_default=True,
    help="HTML file to write (- for standard output).",
)
@click.option(
    "--max-failed",
    type=int,
    default=500,
    show_default=True,
    help="List at most this many failed jobs.",
)
@friendly("pbq report")
def report_cmd(hostfile: Path, jobfile: Path, output: Path, max_failed: int) -> None:
    """Write an HTML report of JOBFILE's run: load and job timelines per host, run-time
    histogram, failed jobs."""
    from . import report
    from .statefiles import atomic_write

    jobfile = jobfile.absolute()
    data = report.collect(jobfile, hostfile)
    page = report.render(data, max_failed=max_failed).encode("utf-8")
    if str(output) == "-":
        sys.stdout.buffer.write(page)
        sys.stdout.flush()
        return
    if not output.absolute().parent.is_dir():
        raise PbqError("the output's directory does not exist", path=str(output))
    atomic_write(output, page)
    failed = sum(j.failed for j in data.jobs)
    counts = f"{len(data.hosts)} host(s), {len(data.jobs)} job(s), {failed} failed"
    click.echo(f"wrote {output} ({counts})", err=True)


def _bar_width() -> int:
    import shutil

    cols = shutil.get_terminal_size((80, 24)).columns
    return max(10, min(60, cols - 20))
