"""Command-line entry points: ``pbq-single``, ``pbq`` and ``jobfile-append``.

Parsing only: each command turns its options into calls of the modules that do the work.
Every user error is one line on standard error and exit status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from . import __version__
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
from .cli_control import config_cmd, control_cmd
from .cli_everyday import add_cmd, cancel_cmd, log_cmd, wait_cmd
from .cli_ops import report_cmd, start_cmd, status_cmd
from .errors import PbqError

if TYPE_CHECKING:
    from .config import Config
    from .host.loop import SchedulerOptions  # imported when pbq-single runs, not before

SHELLS = ("bash", "zsh", "fish")
PROGRAMS = ("pbq", "pbq-single", "jobfile-append")


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
@click.argument("hostfile", type=FILE_ARG)
@click.argument("jobfile", type=FILE_ARG)
@click.option(
    "--host",
    "host_name",
    metavar="NAME",
    help="Host name to use (default: this machine's short name).",
)
@config_option
@flag_option("--exit-when-empty", "Exit once the jobfile is empty and no job is left.")
@output_dir_option("Keep each job's stdout/stderr in DIR/<job id>.out/.err (default: "
                   "JOBFILE.HOST.output/, packed once ended; '-': inherit this process's).")
@lock_option("Jobfile lock: flock (default) or soft (O_EXCL file, for sshfs and the like).")
@flag_option("--allow-group-write", "Accept group-writable jobfile/hostfile (group-shared queues).")
@click.option("--interval", type=float, help="Seconds between ticks (default 1).")
@click.option("--retries", type=int, help="Retry a failed job this many times.")
@click.option("--memfree", help="Start nothing while available memory is below SIZE (e.g. 2G).")
@click.option("--timeout", "timeout_", metavar="LIMIT",
              help="End a job running longer: '2h', or '300%' of earlier successful runs.")
@click.option("--max-suspend", metavar="DURATION",
              help="End a job stopped by load this long; its line goes back ('30m').")
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
    timeout_: str | None,
    max_suspend: str | None,
    verbose: bool,
) -> None:
    """Run the jobs of JOBFILE on this machine, within the load limit that HOSTFILE sets."""
    from .host.loop import Scheduler

    flags = config_flags(
        scheduler__exit_when_empty=exit_when_empty,
        scheduler__output_dir=str(output_dir) if output_dir is not None else None,
        jobfile__lock=lock,
        scheduler__allow_group_write=allow_group_write,
        scheduler__interval=interval,
        scheduler__retries=retries,
        scheduler__memfree=memfree,
        scheduler__timeout=timeout_,
        scheduler__max_suspend=max_suspend,
    )
    opts = _scheduler_options(hostfile, jobfile, host_name, config_path, flags, verbose)
    from .host.ledger import Replaced

    try:
        code = Scheduler(opts).run()
    except PbqError as err:
        click.echo(f"pbq-single: {err}", err=True)
        code = err.exit_code
    except Replaced as err:
        click.echo(f"pbq-single: {err}", err=True)
        code = 3
    sys.exit(code)


def _scheduler_options(
    hostfile: Path,
    jobfile: Path,
    host_name: str | None,
    config_path: Path | None,
    flags: dict[tuple[str, str], object],
    verbose: bool,
) -> SchedulerOptions:
    """pbq-single's settings, after checking everything a user can get wrong, so that
    errors come out plainly before the scheduler starts."""
    from .config import load_config
    from .host.loop import SchedulerOptions
    from .hostfile import find_host, load_hostfile, machine_name
    from .safety import check_queue_files

    # A symlinked jobfile is followed: compaction replaces the file it points to.
    # The jobfile's identity is its resolved path: reached through a symlink (to the file or
    # to a directory) it is still one queue, with one set of host files.
    jobfile = jobfile.resolve()
    hostfile = hostfile.absolute()
    cfg = load_config(jobfile, config_path, flags=flags)
    host = host_name or machine_name()
    if not host or "/" in host or host.startswith("."):
        raise PbqError(f"unusable host name {host!r}")
    sc = cfg.scheduler
    check_queue_files(hostfile, jobfile, sc.allow_group_write)
    entry = find_host(load_hostfile(hostfile), host, str(hostfile))
    if entry.max <= 0 and entry.wday <= 0:
        raise PbqError(
            f"host {host} has max 0 and wday 0 (line {entry.line}): no job could ever run here",
            path=str(hostfile),
        )
    _check_memfree(cfg)
    return SchedulerOptions(
        hostfile=hostfile,
        jobfile=jobfile,
        host=host,
        config=cfg,
        output_dir=Path(sc.output_dir).absolute() if sc.output_dir not in ("", "-") else None,
        inherit_output=sc.output_dir == "-",
        exit_when_empty=sc.exit_when_empty,
        allow_group_write=sc.allow_group_write,
        lock=cfg.jobfile.lock,
        echo_log=verbose,
    )


def _check_memfree(cfg: Config) -> None:
    """A memfree above the machine's memory would keep every job waiting forever."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    memfree = cfg.scheduler.memfree
    if memfree <= total:
        return
    setting = next(s for s in cfg.settings() if (s.section, s.key) == ("scheduler", "memfree"))
    source = setting.source
    raise PbqError(
        f"[scheduler] memfree {_size_text(memfree)} is more than this machine's memory "
        f"({_size_text(total)}): no job could ever start (set by {source})"
    )


def _size_text(nbytes: int) -> str:
    """Bytes as the largest unit (K, M, G, T) that keeps one decimal meaningful."""
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if nbytes >= 1024**power:
            return f"{nbytes / 1024**power:.1f}".removesuffix(".0") + unit
    return str(nbytes)


def exit_at_once(command: click.Command, prog_name: str) -> NoReturn:
    """Run a console command, then end the process without the interpreter's teardown of
    some 300 modules (10-15 ms of every command, and of every pbq-single's exit).  Nothing
    is lost: what went to stdout and stderr is flushed here, pbq writes its files with
    ``os.write`` and closes them as it goes, and its only thread (the soft lock's
    refresher) is done when the lock is released."""
    try:
        command(prog_name=prog_name)
        code = 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            sys.stderr.write(f"{done.code}\n")
            code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            code = code or 1
    os._exit(code)


def single_main() -> None:
    exit_at_once(single, "pbq-single")


# ------------------------------------------------------------------ jobfile-append


@click.command(
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  jobfile-append jobfile more-jobs
  seq 100 | sed 's/^/simulate --seed /' | jobfile-append jobfile -
""",
)
@click.argument("jobfile", type=FILE_ARG)
@click.argument("morejobs", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@lock_option("Lock kind; must match the schedulers'.")
@config_option
@click.version_option(__version__, prog_name="jobfile-append")
@friendly("jobfile-append")
def append(jobfile: Path, morejobs: Path, lock: str | None, config_path: Path | None) -> None:
    """Append the lines of MOREJOBS (- for standard input) to JOBFILE, under the
    schedulers' lock.  Prints the number (Seq) of each job line it added, one a line."""
    from .config import load_config
    from .jobfile import JobQueue, append_file

    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path, flags=config_flags(jobfile__lock=lock))
    try:
        data = sys.stdin.buffer.read() if str(morejobs) == "-" else morejobs.read_bytes()
    except OSError as err:
        raise PbqError(f"cannot read: {err.strerror}", path=str(morejobs)) from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not jobfile.parent.is_dir():
        raise PbqError("the jobfile's directory does not exist", path=str(jobfile))
    queue = JobQueue(
        jobfile,
        lock=cfg.jobfile.lock,
        fsync=cfg.jobfile.fsync,
        stale_lock_after=cfg.jobfile.stale_lock_after,
        allow_group_write=cfg.scheduler.allow_group_write,
    )
    numbers = append_file(queue, lines)
    for number in numbers:  # the Seq of each job line added, for `pbq wait --from`
        click.echo(str(number))
    click.echo(f"appended {len(lines)} line(s) to {jobfile}", err=True)


def append_main() -> None:
    exit_at_once(append, "jobfile-append")


# ------------------------------------------------------------------ pbq


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="pbq")
def pbq() -> None:
    """Control and watch pbq schedulers.  Run the scheduler itself with pbq-single."""


pbq.add_command(control_cmd)
pbq.add_command(config_cmd)
pbq.add_command(start_cmd)
pbq.add_command(status_cmd)
pbq.add_command(report_cmd)
pbq.add_command(wait_cmd)
pbq.add_command(add_cmd)
pbq.add_command(cancel_cmd)
pbq.add_command(log_cmd)


# ------------------------------------------------------------------ completion


@pbq.command(
    "completion",
    context_settings=CONTEXT,
    short_help="Print the bash/zsh/fish completion script.",
    epilog="""\b
Examples:
  eval "$(pbq completion bash)"                      in ~/.bashrc
  eval "$(pbq completion zsh)"                       in ~/.zshrc (after compinit)
  pbq completion fish > ~/.config/fish/completions/pbq.fish
  pbq completion bash --prog pbq-single              one program only
""",
)
@click.argument("shell", required=False, type=click.Choice(SHELLS))
@click.option(
    "--prog",
    type=click.Choice([*PROGRAMS, "all"]),
    default="all",
    show_default=True,
    help="Which program's completion to print.",
)
@friendly("pbq completion")
def completion_cmd(shell: str | None, prog: str) -> None:
    """Print the shell completion script for pbq, pbq-single and jobfile-append
    (SHELL defaults to the one in $SHELL)."""
    if shell is None:
        shell = os.path.basename(os.environ.get("SHELL", ""))
        if shell not in SHELLS:
            guess = shell or "unset"
            raise PbqError(
                f"cannot tell the shell from $SHELL ({guess}); name it: bash, zsh or fish"
            )
    progs = PROGRAMS if prog == "all" else (prog,)
    click.echo("\n".join(completion_source(shell, p) for p in progs))


def completion_source(shell: str, prog: str) -> str:
    """click's completion script for one program (its ``_PROG_COMPLETE`` variable)."""
    from click.shell_completion import get_completion_class

    commands: dict[str, click.Command] = {
        "pbq": pbq,
        "pbq-single": single,
        "jobfile-append": append,
    }
    cls = get_completion_class(shell)
    if cls is None:
        raise PbqError(f"no completion for shell {shell!r}")
    var = "_{}_COMPLETE".format(prog.replace("-", "_").upper())
    return cls(commands[prog], {}, prog, var).source()


def pbq_main() -> None:
    exit_at_once(pbq, "pbq")
