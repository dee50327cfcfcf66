"""Everyday use with real processes: the joblog's Seq (GNU Parallel can resume from the
union of all hosts' joblogs), `pbq wait`, `pbq add`, `pbq cancel`, `pbq log`."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    is_live,
    jobfile,
    kill_all,
    lines_of,
    name_of,
    pending_lines,
    processes_mentioning,
    run_cmd,
    start_scheduler,
    wait_exit,
    wait_for,
)

HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


def joblog_rows(jf: Path, host: str) -> list[list[str]]:
    return [ln.split("\t", 8) for ln in lines_of(hostfile_path(jf, host, "joblog"))[1:]]


def mixed_jobs(n: int) -> tuple[list[str], set[int], set[int]]:
    """Job lines (with comments and blank lines between them): always failing, failing
    once, succeeding.  Each records its run in ran.txt."""
    lines: list[str] = ["# a comment", ""]
    always, once = set(), set()
    for i in range(1, n + 1):
        if i % 3 == 0:
            always.add(i)
            lines.append(f"echo f{i} >> ran.txt; exit 3")
        elif i % 3 == 1:
            once.add(i)
            lines.append(f"echo o{i} >> ran.txt; mkdir once{i} 2>/dev/null && exit 4; true")
        else:
            lines.append(f"echo s{i} >> ran.txt")
        if i % 4 == 0:
            lines.append("# between")
    return lines, always, once


@pytest.mark.skipif(shutil.which("parallel") is None, reason="GNU Parallel is not installed")
def test_two_hosts_with_retries_give_joblogs_gnu_parallel_retries_exactly(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG.replace("[scheduler]\n", "[scheduler]\nretries = 1\n"))
    n = 24
    lines, always, once = mixed_jobs(n)
    jf = jobfile(tmp_path, lines)
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    procs = [start_scheduler(hf, jf, "--exit-when-empty", host=h) for h in ("h1", "h2")]
    try:
        assert [wait_exit(p, 120) for p in procs] == [0, 0]
    finally:
        kill_all(processes_mentioning(str(jf)))
    rows = joblog_rows(jf, "h1") + joblog_rows(jf, "h2")
    by_seq: dict[int, list[list[str]]] = defaultdict(list)
    for r in rows:
        assert " " not in r[1]
        by_seq[int(r[0])].append(r)
    assert sorted(by_seq) == list(range(1, n + 1)), "Seq covers 1..N without a gap"
    for seq, attempts in by_seq.items():
        assert len({a[8] for a in attempts}) == 1, f"Seq {seq}: one line for every attempt"
        assert len(attempts) == (1 if seq not in always | once else 2), attempts
        assert attempts[0][8].split()[1] in (f"f{seq}", f"o{seq}", f"s{seq}")
    merged = tmp_path / "merged.joblog"
    merged.write_text(HEADER + "".join("\t".join(r) + "\n" for r in rows))
    (tmp_path / "ran.txt").unlink()
    r = subprocess.run(["parallel", "--will-cite", "--retry-failed", "--joblog", str(merged)],
                       cwd=tmp_path, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == len(always), r.stderr.decode()
    replayed = sorted(lines_of(tmp_path / "ran.txt"))
    assert replayed == sorted(f"f{i}" for i in always), "the jobs whose every attempt failed"


def test_requeue_errors_keeps_the_seq_and_a_line_added_again_gets_a_new_one(
    tmp_path: Path,
) -> None:
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["true", "# x", "sh -c 'exit 5'", "true"])
    hf = hostfile(tmp_path)
    assert wait_exit(start_scheduler(hf, jf, "--exit-when-empty"), 60) == 0
    assert lines_of(hostfile_path(jf, "h1", "error")) == ["sh -c 'exit 5'"]
    r = run_cmd("pbq", "control", hf, jf, "requeue-errors")
    assert r.returncode == 0, r.stderr.decode()
    r = run_cmd("jobfile-append", jf, "-", input=b"sh -c 'exit 5'\n")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["4"], "a line added again by hand gets a new number"
    assert wait_exit(start_scheduler(hf, jf, "--exit-when-empty"), 60) == 0
    seqs = sorted((int(r[0]), r[6]) for r in joblog_rows(jf, "h1"))
    assert seqs == [(1, "0"), (2, "5"), (2, "5"), (3, "0"), (4, "5")]


# ------------------------------------------------------------------ pbq add


def test_pbq_add_runs_exactly_the_argv(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["# a comment", "true"])
    r = run_cmd("pbq", "add", jf, "--", "echo", "a b", "$HOME")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["2"]
    r = run_cmd("pbq", "add", jf, "--", "sh", "-c", 'printf "%s|" "$@" > argv.txt', "x",
                "it's", "*", "a\tb", "--opt=1", "")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["3"]
    r = run_cmd("pbq", "add", "--stdin", jf, "--", "sh", "-c", 'echo "$1" >> each.txt', "x",
                input=b"one two\0$three\0")
    assert r.stdout.decode().split() == ["4", "5"], r.stderr.decode()
    bad = run_cmd("pbq", "add", jf, "--", "echo", "two\nlines")
    assert bad.returncode != 0 and b"newline" in bad.stderr
    hf = hostfile(tmp_path)
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 60) == 0
    out = run_cmd("pbq", "log", hf, jf, "2").stdout.decode()
    assert out == "a b $HOME\n"
    assert (tmp_path / "argv.txt").read_text() == "it's|*|a\tb|--opt=1||"
    assert sorted(lines_of(tmp_path / "each.txt")) == ["$three", "one two"]
    assert sorted(int(r[0]) for r in joblog_rows(jf, "h1")) == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ pbq wait


def test_pbq_wait_exit_status_success_failure_timeout(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["sleep 0.3", "true", "true"])
    hf = hostfile(tmp_path)
    p = start_scheduler(hf, jf)
    try:
        r = run_cmd("pbq", "wait", hf, jf, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        assert len(joblog_rows(jf, "h1")) == 3, "it returned only once every job had ended"
        first = run_cmd("jobfile-append", jf, "-", input=b"sleep 0.2\nsh -c 'exit 3'\ntrue\n")
        numbers = first.stdout.decode().split()
        assert numbers == ["4", "5", "6"]
        r = run_cmd("pbq", "wait", "--from", numbers[0], hf, jf, timeout=120)
        assert r.returncode == 1, r.stderr.decode()
        assert b"1 job(s) failed: 5" in r.stderr
        r = run_cmd("pbq", "wait", "--from", "6", hf, jf, timeout=120)
        assert r.returncode == 0, "the failure is before --from"
        run_cmd("jobfile-append", jf, "-", input=b"sleep 30\n")
        r = run_cmd("pbq", "wait", "--timeout", "0.5", hf, jf, timeout=120)
        assert r.returncode == 2 and b"timed out" in r.stderr
    finally:
        p.terminate()
        wait_exit(p, 30)
        kill_all(processes_mentioning(str(jf)))


# ------------------------------------------------------------------ pbq cancel


def test_pbq_cancel_removes_a_pending_line_and_ends_a_running_job(tmp_path: Path) -> None:
    # Foreign load (a busy machine) must not hold the last job back: this is about cancel.
    config(tmp_path, FAST_CONFIG.replace("[scheduler]\n",
                                         "[scheduler]\nretries = 2\nforeign_load = false\n"))
    flag = tmp_path / "started"
    jf = jobfile(tmp_path, [f"sh -c 'sleep 60 & touch {flag}; wait'", "echo second > second.txt",
                            "true"])
    hf = hostfile(tmp_path, "* linux 1 1 0\n")
    r = run_cmd("pbq", "cancel", hf, jf, "2", "99")
    assert r.returncode == 1
    assert r.stdout.decode().splitlines() == [
        "2: removed from the jobfile: echo second > second.txt",
        "99: no such job (not pending, held or finished)"]
    p = start_scheduler(hf, jf, "--exit-when-empty")
    try:
        wait_for(flag.exists, 30, "the first job")
        children = [pr for pr in processes_mentioning("sleep 60") if name_of(pr) == "sleep"]
        assert children
        r = run_cmd("pbq", "cancel", hf, jf, "1")
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        assert r.stdout.decode().startswith("1: cancelled on h1")
        assert wait_exit(p, 60) == 0
        # The job's end is its leader's: the SIGTERMed sleep may take a moment more to die.
        wait_for(lambda: not any(is_live(c) for c in children), 30, "the job's children ended")
    finally:
        kill_all(processes_mentioning(str(jf)))
    assert not (tmp_path / "second.txt").exists()
    assert lines_of(hostfile_path(jf, "h1", "error")) == []
    rows = sorted((int(r[0]), r[7]) for r in joblog_rows(jf, "h1"))
    assert rows == [(1, "15"), (3, "0")], "cancelled once, not retried; 3 kept its number"
    assert "cancelled" in (tmp_path / "jobfile.h1.log").read_text()
    r = run_cmd("pbq", "control", hf, jf, "requeue-errors")
    assert pending_lines(jf) == []


def test_pbq_cancel_while_the_scheduler_is_down_is_applied_by_the_next_one(
    tmp_path: Path,
) -> None:
    """The request is a file: it waits for a scheduler, as it would for one on another
    machine; a restarted scheduler adopts the job, then cancels it (children too)."""
    config(tmp_path, FAST_CONFIG.replace("[scheduler]\n", "[scheduler]\nforeign_load = false\n"))
    flag = tmp_path / "started"
    jf = jobfile(tmp_path, [f"sh -c 'sleep 61 & touch {flag}; wait'", "true"])
    hf = hostfile(tmp_path, "* linux 1 1 0\n")
    p = start_scheduler(hf, jf)
    try:
        wait_for(flag.exists, 30, "the first job")
        children = [pr for pr in processes_mentioning("sleep 61") if name_of(pr) == "sleep"]
        assert children
        p.kill()
        wait_exit(p, 30)
        r = run_cmd("pbq", "cancel", hf, jf, "1")
        assert r.returncode == 1
        assert "whose scheduler is not running" in r.stdout.decode()
        assert lines_of(hostfile_path(jf, "h1", "cancel")) == ["1"]
        assert all(c.is_running() for c in children), "nothing ends before a scheduler says so"
        p = start_scheduler(hf, jf, "--exit-when-empty")
        assert wait_exit(p, 60) == 0
        wait_for(lambda: not any(is_live(c) for c in children),
                 30, "the job's children ended")
    finally:
        kill_all(processes_mentioning(str(jf)))
        kill_all(processes_mentioning("sleep 61"))
    rows = sorted((int(r[0]), r[6], r[7]) for r in joblog_rows(jf, "h1"))
    assert rows == [(1, "0", "15"), (2, "0", "0")]
    assert lines_of(hostfile_path(jf, "h1", "error")) == []
    log = (tmp_path / "jobfile.h1.log").read_text()
    assert "job h1.1 cancelled" in log and "(cancelled" in log


def test_pbq_cancel_answers_for_each_number_and_a_finished_job(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, ["true"])
    hf = hostfile(tmp_path, "* linux 1 1 0\n")
    p = start_scheduler(hf, jf, "--exit-when-empty")
    assert wait_exit(p, 60) == 0
    r = run_cmd("pbq", "cancel", hf, jf, "1")
    assert r.returncode == 0
    assert r.stdout.decode().startswith("1: already finished on h1 (exit 0")
