"""``pbq wait``, ``pbq add``, ``pbq cancel``, ``pbq log``: parsing only; the work is in
everyday.py."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_common import CONTEXT, FILE_ARG, config_option, friendly
from .errors import PbqError


@click.command(
    "wait",
    context_settings=CONTEXT,
    short_help="Block until the queue is done; exit 1 if a job failed.",
    epilog="""\b
Examples:
  pbq wait hostfile jobfile && next-step
  first=$(jobfile-append jobfile more | head -1) && pbq wait --from "$first" hostfile jobfile
\b
Exit status: 0 when no job (with --from: no job numbered SEQ or later) failed in its final
attempt; 1 when some did (their count on stderr); 2 on timeout, or when a host that holds
jobs is dead (named).
""",
)
@click.argument("hostfile", type=FILE_ARG)
@click.argument("jobfile", type=FILE_ARG)
@click.option("--timeout", type=float, default=None, help="Give up after S seconds (exit 2).")
@click.option("--from", "first", type=int, default=1, metavar="SEQ",
              help="Judge only the jobs numbered SEQ or later.")
@config_option
@friendly("pbq wait")
def wait_cmd(hostfile: Path, jobfile: Path, timeout: float | None, first: int,
             config_path: Path | None) -> None:
    """Wait until no line of JOBFILE is pending and no host holds a job."""
    from . import everyday
    from .config import load_config

    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path)
    tty = sys.stderr.isatty()

    def progress(st: everyday.WaitState) -> None:
        if tty:
            held = sum(st.holding.values())
            sys.stderr.write(f"\r\x1b[Kpending {st.pending}   held by hosts {held}")
            sys.stderr.flush()

    how, st = everyday.wait(jobfile, hostfile, cfg, timeout, progress if tty else None)
    if tty:
        sys.stderr.write("\r\x1b[K")
    if how == "timeout":
        click.echo(f"pbq wait: timed out: {st.pending} pending, "
                   f"{sum(st.holding.values())} held by hosts", err=True)
        sys.exit(2)
    if how == "dead":
        for host in st.dead:
            click.echo(f"pbq wait: host {host} holds {st.holding[host]} job(s) but its "
                       f"scheduler is {st.status.get(host)} (pbq control ... recover {host})",
                       err=True)
        sys.exit(2)
    failed = everyday.failed_seqs(jobfile, hostfile, first)
    if failed:
        shown = " ".join(map(str, failed[:20])) + (" ..." if len(failed) > 20 else "")
        click.echo(f"pbq wait: {len(failed)} job(s) failed: {shown}", err=True)
        sys.exit(1)


@click.command(
    "add",
    context_settings={**CONTEXT, "ignore_unknown_options": True},
    short_help="Append one command (an argv, no quoting trouble) to the jobfile.",
    epilog="""\b
Examples:
  pbq add jobfile -- echo 'a b' '$HOME'          the job prints: a b $HOME
  find . -name '*.fq' -print0 | pbq add --stdin jobfile -- gzip -9
\b
Prints the number (Seq) of each line added.  With --stdin, each record of standard input
(NUL-separated if it holds a NUL, else one a line) is one more last argument: one job per
record.  An argument holding a newline or NUL is refused (it would become two lines).
""",
)
@click.argument("jobfile", type=FILE_ARG)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--stdin", "from_stdin", is_flag=True, help="One job per record of standard input.")
@config_option
@friendly("pbq add")
def add_cmd(jobfile: Path, command: tuple[str, ...], from_stdin: bool,
            config_path: Path | None) -> None:
    """Append COMMAND [ARG...] to JOBFILE as one line that runs exactly that argv."""
    from . import everyday
    from .config import load_config

    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path)
    records = everyday.stdin_records(sys.stdin.buffer.read()) if from_stdin else None
    for number in everyday.add(jobfile, cfg, list(command), records):
        click.echo(str(number))


@click.command(
    "cancel",
    context_settings=CONTEXT,
    short_help="Remove pending jobs or end running ones, by Seq.",
    epilog="""\b
Examples:
  pbq cancel hostfile jobfile 17 18
\b
A pending line is removed from the jobfile (under the lock; it becomes a
'#pbq-cancelled SEQ: ...' comment, so the lines after it keep their numbers).  A job a host
holds is cancelled by that host's scheduler, on any machine (JOBFILE.HOST.cancel): SIGTERM
to the whole job, SIGKILL after term_grace, or the DRM's cancel on a cluster host; its end
is recorded as cancelled in .log and the joblog, never in .error.  One line of answer per
SEQ; exit status 1 if a SEQ is unknown or could not be cancelled (yet).
""",
)
@click.argument("hostfile", type=FILE_ARG)
@click.argument("jobfile", type=FILE_ARG)
@click.argument("seqs", nargs=-1, required=True, type=int, metavar="SEQ...")
@config_option
@friendly("pbq cancel")
def cancel_cmd(hostfile: Path, jobfile: Path, seqs: tuple[int, ...],
               config_path: Path | None) -> None:
    """Cancel jobs of JOBFILE by their numbers (joblog Seq)."""
    from . import everyday
    from .config import load_config
    from .statefiles import line_to_text

    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path)
    removed = everyday.cancel_pending(jobfile, cfg, set(seqs))
    finished = everyday.final_attempts(jobfile, hostfile)
    bad = False
    for seq in seqs:
        if seq in removed:
            click.echo(f"{seq}: removed from the jobfile: {line_to_text(removed[seq])}")
            continue
        host = everyday.holder_of(jobfile, hostfile, cfg, seq)
        if host is not None:
            try:
                click.echo(everyday.cancel_running(jobfile, cfg, host, seq))
            except PbqError as err:
                click.echo(f"{seq}: {err}")
                bad = True
        elif seq in finished:
            row = finished[seq]
            click.echo(f"{seq}: already finished on {row.host} (exit {row.exitval}, "
                       f"signal {row.signal})")
        else:
            click.echo(f"{seq}: no such job (not pending, held or finished)")
            bad = True
    if bad:
        sys.exit(1)


@click.command(
    "log",
    context_settings=CONTEXT,
    short_help="Print a job's stdout and stderr, by Seq.",
    epilog="""\b
Examples:
  pbq log hostfile jobfile 17                   stdout, then stderr, of its last attempt
  pbq log --stderr --attempt 1 hostfile jobfile 17
  pbq log --follow hostfile jobfile 17          as it comes, until the job ends
\b
Output is kept in JOBFILE.HOST.output/ (packed once the job has ended) or, with
pbq-single --output-dir DIR, in DIR; not with --output-dir - (inherited).  Exit status 2
when the job has no attempt with kept output.
""",
)
@click.argument("hostfile", type=FILE_ARG)
@click.argument("jobfile", type=FILE_ARG)
@click.argument("seq", type=int)
@click.option("--stdout", "only_out", is_flag=True, help="Only its stdout.")
@click.option("--stderr", "only_err", is_flag=True, help="Only its stderr.")
@click.option("--attempt", type=int, default=None, metavar="N",
              help="The Nth attempt (1 = first; default: the last).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the job runs.")
@config_option
@friendly("pbq log")
def log_cmd(hostfile: Path, jobfile: Path, seq: int, only_out: bool, only_err: bool,
            attempt: int | None, follow: bool, config_path: Path | None) -> None:
    """Print the output of job SEQ (the joblog's Seq) of JOBFILE."""
    import time

    from . import everyday
    from .config import load_config

    jobfile = jobfile.absolute()
    cfg = load_config(jobfile, config_path)
    streams = ["out"] if only_out and not only_err else ["err"] if only_err and not only_out \
        else ["out", "err"]
    found = everyday.attempts_of(jobfile, hostfile, seq)
    while follow and not found and (everyday.holder_of(jobfile, hostfile, cfg, seq) is not None
                                    or everyday.is_pending(jobfile, cfg, seq)):
        time.sleep(0.2)  # waiting in the jobfile, or taken and not started yet
        found = everyday.attempts_of(jobfile, hostfile, seq)
    if not found:
        raise PbqError(f"job {seq} has no recorded attempt (not started, or started by a pbq "
                       "that did not keep output)")
    index = len(found) if attempt is None else attempt
    if not 1 <= index <= len(found):
        raise PbqError(f"job {seq} has {len(found)} attempt(s), not {index}")
    a = found[index - 1]
    if a.directory is None:
        raise PbqError(f"the output of job {seq} ({a.job_id}) was not kept (--output-dir -)")
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    if follow:
        everyday.follow_output(jobfile, cfg, a, streams, write)
        return
    for stream in streams:
        write(everyday.read_output(jobfile, a, stream) or b"")
