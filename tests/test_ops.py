"""``pbq start``, ``pbq status`` and ``pbq completion``, with real schedulers.

``start`` is tested three ways: on this machine (no remote shell), through a stand-in
remote shell that runs the command string here the way ssh would (checks the quoting
of awkward paths without needing sshd), and through a real OpenSSH server on 127.0.0.1
reachable as two host names (tests/sshinfra.py; skipped without root -- failed instead
under CI=true).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pbqtest import (
    BIN,
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    run_cmd,
    start_scheduler,
    status,
    wait_exit,
    wait_for,
    write,
)

from pbq import ops
from pbq.hostfile import machine_name
from pbq.sidefiles import read_pidfile

try:
    from tests import sshinfra
except ImportError:  # tests/ is not a package: pytest put tests/ on sys.path
    import sshinfra

pytestmark = pytest.mark.timeout(120)

HISTORY_FAST = FAST_CONFIG + "[history]\nevery = 0.5\n"


def pbq(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_cmd("pbq", *args, timeout=timeout)


def out(r: subprocess.CompletedProcess) -> str:
    return r.stdout.decode(errors="replace")


def err(r: subprocess.CompletedProcess) -> str:
    return r.stderr.decode(errors="replace")


def assert_user_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, out(r) + err(r)
    text = err(r)
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    for w in words:
        assert w in text, text


def scheduler_gone(jf: Path, host: str) -> bool:
    return not hostfile_path(jf, host, "pid").exists() and status(jf, host).get("state") in (
        "exited",
        "terminated",
    )


# ------------------------------------------------------------------ start: this machine


def test_start_on_this_machine_runs_without_remote_shell(tmp_path: Path) -> None:
    me = machine_name()
    hf = hostfile(tmp_path, f"{me} linux 16 16 0\n")
    config(tmp_path, FAST_CONFIG)
    flag = tmp_path / "go"
    jf = jobfile(tmp_path, [f"sh -c 'while [ ! -e {flag} ]; do sleep 0.05; done'", "pwd > where"])
    # --rsh false: had a remote shell been used, the start would fail.
    r = pbq("start", "--rsh", "false", "--exit-when-empty", hf, jf)
    assert r.returncode == 0, out(r) + err(r)
    m = re.fullmatch(rf"{re.escape(me)}: started \(pid (\d+) on \S+\)\n", out(r))
    assert m, out(r)
    assert read_pidfile(hostfile_path(jf, me, "pid")).pid == int(m.group(1))
    assert status(jf, me)["pid"] == int(m.group(1))
    assert hostfile_path(jf, me, "out").exists()

    again = pbq("start", "--rsh", "false", hf, jf, me)
    assert again.returncode == 0, out(again) + err(again)
    assert (
        out(again) == f"{me}: already running (pid {m.group(1)} on {status(jf, me)['machine']})\n"
    )

    flag.touch()
    wait_for(
        lambda: scheduler_gone(jf, me), 30, "the scheduler to exit (--exit-when-empty passed on)"
    )
    assert (tmp_path / "where").read_text().strip() == str(
        tmp_path
    )  # ran in the jobfile's directory


def test_start_reports_why_a_scheduler_failed(tmp_path: Path) -> None:
    me = machine_name()
    hf = hostfile(tmp_path, f"{me} linux 16 16 0\n")
    jf = jobfile(tmp_path, ["true"])
    fake = "sh -c 'echo \"pbq-single: cannot use this jobfile\" >&2; exit 2' pbq-single"
    r = pbq("start", "--remote-command", fake, "--timeout", "20", hf, jf)
    assert r.returncode == 1, out(r) + err(r)
    assert out(r) == f"{me}: failed: cannot use this jobfile\n"
    silent = pbq("start", "--remote-command", "false", "--timeout", "20", hf, jf)
    assert silent.returncode == 1
    assert out(silent) == f"{me}: failed: pbq-single exited with status 1\n"


def test_start_user_errors_are_one_line(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "alpha linux 1 1 0\n")
    jf = jobfile(tmp_path, ["true"])
    assert_user_error(pbq("start", hf, jf, "nosuchhost"), "nosuchhost", "not in hostfile")
    assert_user_error(pbq("start", hf, tmp_path / "missing"), "no such jobfile")
    only_star = hostfile(tmp_path, "* linux 1 1 0\n")
    assert_user_error(pbq("start", only_star, jf), "names no hosts")
    os.chmod(jf, 0o666)
    assert_user_error(pbq("start", hf, jf), "world-writable")


def test_scheduler_refusal_in_out_counts_as_already_running(tmp_path: Path) -> None:
    """The message a second pbq-single really prints is read as "already running"."""
    hf = hostfile(tmp_path, "* linux 16 16 0\n")
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, [])
    p = start_scheduler(hf, jf, host="h1")
    wait_for(lambda: status(jf, "h1").get("pid"), what="first scheduler's heartbeat")
    second = run_cmd("pbq-single", "--host", "h1", hf, jf, timeout=30)
    assert second.returncode == 2
    verdict = ops.out_verdict(err(second))
    assert verdict == ("already running", f"pid {status(jf, 'h1')['pid']}")
    assert ops.out_verdict("pbq-single: hostfile: refusing a world-writable hostfile\n") == (
        "failed",
        "hostfile: refusing a world-writable hostfile",
    )
    assert ops.out_verdict("Traceback (most recent call last):\n  ...\nOSError: boom\n") == (
        "failed",
        "OSError: boom",
    )
    assert ops.out_verdict("job output\n") is None
    os.kill(p.pid, signal.SIGTERM)
    wait_exit(p)


# ------------------------------------------------------------------ start: through a remote shell

FAKE_RSH = """#!/bin/sh
# Stand-in for ssh: "fake-rsh HOST WORDS..." joins WORDS and runs them with sh, here.
echo "$1" >> "$(dirname "$0")/rsh-calls"
shift
exec sh -c "$*"
"""


def test_start_through_remote_shell_quotes_awkward_paths(tmp_path: Path) -> None:
    rsh = write(tmp_path / "fake-rsh", FAKE_RSH, 0o755)
    qdir = tmp_path / "queue dir 'q' $HOME & `x`"
    qdir.mkdir()
    hf = hostfile(qdir, "fakehost linux 16 16 0\n* linux 1 1 0\n")
    config(qdir, FAST_CONFIG)
    jf = jobfile(qdir, ["pwd > where", "echo done >> rec", "echo done >> rec"])
    outdir = qdir / "job output"
    r = pbq("start", "--rsh", str(rsh), "--exit-when-empty", "--output-dir", outdir, hf, jf)
    assert r.returncode == 0, out(r) + err(r)
    assert out(r).startswith("fakehost: started (pid ")
    assert lines_of(tmp_path / "rsh-calls") == ["fakehost"]  # '*' is not a host to start
    wait_for(
        lambda: scheduler_gone(jf, "fakehost"), 30, "the scheduler to drain the queue and exit"
    )
    assert (qdir / "where").read_text().strip() == str(qdir)
    assert lines_of(qdir / "rec") == ["done", "done"]
    assert len(list(outdir.glob("fakehost.*.out"))) == 3  # --output-dir was passed on
    assert hostfile_path(jf, "fakehost", "out").exists()


def test_remote_shell_line_is_one_quoted_command() -> None:
    jf = Path("/q dir/it's/jobfile")
    argv = ops.scheduler_argv(
        ["/usr/bin/python3", "/opt/pbq single"], "node1", Path("/h f"), jf, ["--exit-when-empty"]
    )
    line = ops.remote_shell_line(argv, jf, "node1")
    # The remote login shell sees: sh -c '<inner>'; inner must split back into our words.
    words = shlex.split(line)
    assert words[:2] == ["sh", "-c"] and len(words) == 3
    assert shlex.split(words[2]) == [
        "cd",
        "/q dir/it's",
        "&&",
        "setsid",
        "nohup",
        "/usr/bin/python3",
        "/opt/pbq single",
        "--host",
        "node1",
        "--exit-when-empty",
        "/h f",
        "/q dir/it's/jobfile",
        ">>",
        "/q dir/it's/jobfile.node1.out",
        "2>&1",
        "<",
        "/dev/null",
        "&",
    ]
    assert ops.DEFAULT_RSH == "ssh -o BatchMode=yes"


# ------------------------------------------------------------------ start: real sshd


@pytest.fixture(scope="module")
def sshd():
    sshinfra.require_infra(sshinfra.SSH_PACKAGES)
    with sshinfra.SshServer() as srv:
        yield srv


@pytest.mark.root
@pytest.mark.slow
def test_start_two_hosts_through_real_ssh(tmp_path: Path, sshd: sshinfra.SshServer) -> None:
    a, b = sshinfra.DEFAULT_ALIASES
    bad = "pbqhost-nowhere.invalid"
    hf = hostfile(tmp_path, f"{a} linux 8 8 0\n{b} linux 8 8 0\n{bad} linux 8 8 0\n* linux 1 1 0\n")
    config(tmp_path, FAST_CONFIG)
    flag = tmp_path / "go"
    blockers = [
        f"sh -c 'while [ ! -e {flag} ]; do sleep 0.05; done; echo $PBQ_HOST >> hosts'"
        for _ in range(24)
    ]
    # More jobs than one host's limit: the second host gets some too.
    jf = jobfile(tmp_path, blockers)
    r = pbq("start", "--rsh", sshd.rsh_command(), "--timeout", "30", hf, jf)
    lines = out(r).splitlines()
    assert r.returncode == 1, out(r) + err(r)  # the unreachable host failed
    assert re.fullmatch(rf"{a}: started \(pid \d+ on \S+\)", lines[0]), lines
    assert re.fullmatch(rf"{b}: started \(pid \d+ on \S+\)", lines[1]), lines
    assert lines[2].startswith(f"{bad}: failed: remote shell failed:"), lines
    assert "resolve" in lines[2] or "known" in lines[2], lines[2]
    for host in (a, b):
        st = status(jf, host)
        assert st["host"] == host and st["pid"] == read_pidfile(hostfile_path(jf, host, "pid")).pid
    # Both schedulers take jobs from the one jobfile.
    wait_for(
        lambda: status(jf, a).get("running", 0) > 0 and status(jf, b).get("running", 0) > 0,
        30,
        "both hosts running jobs",
    )

    again = pbq("start", "--rsh", sshd.rsh_command(), hf, jf, a, b)
    assert again.returncode == 0, out(again) + err(again)
    assert [ln.split(" (")[0] for ln in out(again).splitlines()] == [
        f"{a}: already running",
        f"{b}: already running",
    ]

    flag.touch()
    q = pbq("control", hf, jf, "quit", timeout=60)
    assert q.returncode == 0, out(q) + err(q)
    wait_for(lambda: scheduler_gone(jf, a) and scheduler_gone(jf, b), 30, "both schedulers to exit")
    ran = lines_of(tmp_path / "hosts")
    assert set(ran) <= {a, b} and len(ran) == sum(status(jf, h)["done"] for h in (a, b))


# ------------------------------------------------------------------ status


def run_queue(tmp_path: Path, hosts: list[str], jobs: list[str], extra_config: str = "") -> Path:
    """Run ``jobs`` to the end on real schedulers (one per host); returns the jobfile."""
    hf = hostfile(tmp_path, "".join(f"{h} linux 16 16 0\n" for h in hosts) + "spare linux 1 1 0\n")
    config(tmp_path, HISTORY_FAST + extra_config)
    jf = jobfile(tmp_path, jobs)
    procs = [start_scheduler(hf, jf, "--exit-when-empty", host=h) for h in hosts]
    for p in procs:
        assert wait_exit(p, 90) == 0
    return jf


def test_status_of_a_finished_run(tmp_path: Path) -> None:
    jobs = ["sleep 0.1"] * 6 + ["sh -c 'exit 3'", "false"]
    jf = run_queue(tmp_path, ["h1", "h2"], jobs)
    hf = tmp_path / "hostfile"
    r = pbq("status", "--json", hf, jf)
    assert r.returncode == 0, err(r)
    st = json.loads(out(r))
    assert (st["pending"], st["running"], st["stopped"], st["done"], st["failed"]) == (
        0,
        0,
        0,
        6,
        2,
    )
    assert st["pending_under_lock"] is True
    assert st["finished_last_5min"] == 8 and st["jobs_per_min"] > 0
    assert st["eta_seconds"] == 0 and st["remaining"] == 0 and st["progress"] == 0.75
    rows = {h["host"]: h for h in st["hosts"]}
    assert list(rows) == ["h1", "h2", "spare"]  # hostfile order, '*'-less
    assert rows["h1"]["state"] == rows["h2"]["state"] == "exited"
    assert rows["spare"]["state"] == "not started"
    assert rows["h1"]["done"] + rows["h2"]["done"] == 6
    assert all(isinstance(rows[h]["limit"], (int, float)) for h in ("h1", "h2"))

    text = pbq("status", hf, jf)
    assert text.returncode == 0
    t = out(text)
    assert "pending 0   running 0   stopped 0   done 6   failed 2" in t
    assert "nothing left to do" in t
    assert re.search(
        r"^HOST\s+STATE\s+LOAD\s+FOREIGN\s+LIMIT\s+RUNNING\s+STOPPED\s+DONE\s+FAILED\s+HEARTBEAT$",
        t,
        re.M,
    )
    assert re.search(r"^spare\s+not started(\s+-){8}$", t, re.M), t
    assert re.search(r"^\[#+!+\] 100% finished$", t, re.M), t


def test_status_while_jobs_run(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "h1 linux 16 16 0\n")
    config(tmp_path, HISTORY_FAST)
    flag = tmp_path / "go"
    blocker = f"sh -c 'while [ ! -e {flag} ]; do sleep 0.05; done'"
    jf = jobfile(tmp_path, ["# a comment is not a job", "", blocker, blocker, blocker])
    p = start_scheduler(hf, jf, host="h1")
    wait_for(lambda: status(jf, "h1").get("running", 0) == 3, 30, "three jobs running")

    st = json.loads(out(pbq("status", "--json", hf, jf)))
    assert (st["pending"], st["running"], st["stopped"], st["done"], st["failed"]) == (
        0,
        3,
        0,
        0,
        0,
    )
    assert st["eta_seconds"] is None  # nothing finished yet: no rate, no ETA
    assert st["hosts"][0]["state"] == "alive" and st["hosts"][0]["heartbeat_age"] < 5
    assert "ETA unknown" in out(pbq("status", hf, jf))

    # Stopped: nothing runs, nothing starts; what is appended now stays pending.
    r = pbq("control", hf, jf, "stop")
    assert r.returncode == 0, out(r) + err(r)
    more = write(tmp_path / "more", "".join(f"{blocker}\n" for _ in range(4)) + "# comment\n")
    assert run_cmd("jobfile-append", jf, more).returncode == 0
    for args in (["--json"], ["--json", "--no-lock"]):
        st = json.loads(out(pbq("status", *args, hf, jf)))
        assert (st["pending"], st["running"], st["stopped"]) == (4, 0, 3), st
        assert st["pending_under_lock"] is (args == ["--json"])
        assert st["hosts"][0]["state"] == "stopped"
        assert st["remaining"] == 7 and st["total"] == 7 and st["progress"] == 0
    assert re.search(r"^h1\s+stopped\s", out(pbq("status", hf, jf)), re.M)

    flag.touch()
    r = pbq("control", hf, jf, "cont")
    assert r.returncode == 0, out(r) + err(r)
    wait_for(lambda: status(jf, "h1").get("done") == 7, 30, "all seven jobs done")
    r = pbq("control", hf, jf, "quit")
    assert r.returncode == 0, out(r) + err(r)
    assert wait_exit(p) == 0
    st = json.loads(out(pbq("status", "--json", hf, jf)))
    assert (st["pending"], st["running"], st["stopped"], st["done"]) == (0, 0, 0, 7)
    assert st["eta_seconds"] == 0 and st["progress"] == 1.0 and st["jobs_per_min"] > 0


def test_status_watch_redraws_until_ctrl_c(tmp_path: Path) -> None:
    jf = run_queue(tmp_path, ["h1"], ["true", "false"])
    hf = tmp_path / "hostfile"
    p = subprocess.Popen(
        [sys.executable, str(BIN / "pbq"), "status", "--watch", "--every", "0.2", str(hf), str(jf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    buf = b""
    os.set_blocking(p.stdout.fileno(), False)
    deadline = time.monotonic() + 20
    while buf.count(b"\x1b[H\x1b[2J") < 3:
        assert time.monotonic() < deadline, buf
        chunk = p.stdout.read()
        if chunk:
            buf += chunk
        elif p.poll() is not None:
            raise AssertionError(f"watch exited early: {p.stderr.read()!r}")
        else:
            time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 0
    assert b"Traceback" not in p.stderr.read()
    frame = buf.split(b"\x1b[H\x1b[2J")[1].decode()
    assert "done 1   failed 1" in frame and "Ctrl-C" in frame
    assert re.search(r"\[#+!+\] 100% finished", frame)
    assert_user_error(pbq("status", "--watch", "--json", hf, jf), "do not go together")


def test_status_user_errors(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "h1 linux 1 1 0\n")
    assert_user_error(pbq("status", hf, tmp_path / "nope"), "no such jobfile")
    bad = write(tmp_path / "badhosts", "h1 linux x 1 0\n")
    jf = jobfile(tmp_path, [])
    assert_user_error(pbq("status", bad, jf), "max")


def test_progress_bar_and_durations() -> None:
    assert ops.progress_bar(0, 0, 0, 10) == "[          ]"
    assert ops.progress_bar(5, 0, 10, 10) == "[#####.....]"
    assert ops.progress_bar(99, 1, 1000, 10) == "[!.........]"  # a failure always shows
    assert ops.progress_bar(8, 2, 10, 10) == "[########!!]"
    assert [ops.format_duration(s) for s in (0.25, 42, 125, 3 * 3600 + 300, 2 * 86400)] == [
        "0.2s",
        "42s",
        "2m05s",
        "3h05m",
        "2d00h",
    ]


# ------------------------------------------------------------------ help, version, completion


@pytest.mark.parametrize(
    "command", ["start", "status", "report", "completion", "control", "config"]
)
def test_every_pbq_command_has_help_with_examples(command: str) -> None:
    r = pbq(command, "--help")
    assert r.returncode == 0, err(r)
    assert "Example" in out(r)


@pytest.mark.parametrize("prog", ["pbq", "pbq-single", "jobfile-append"])
def test_every_entry_point_has_version(prog: str) -> None:
    r = run_cmd(prog, "--version")
    assert r.returncode == 0
    assert re.fullmatch(rf"{prog}, version \d+\.\d+\.\d+\S*\n", out(r)), out(r)


def test_completion_scripts_for_each_shell() -> None:
    bash = out(pbq("completion", "bash"))
    for var in ("_PBQ_COMPLETE", "_PBQ_SINGLE_COMPLETE", "_JOBFILE_APPEND_COMPLETE"):
        assert var in bash
    assert "complete -o nosort -F" in bash
    assert "compdef" in out(pbq("completion", "zsh", "--prog", "pbq"))
    fish = out(pbq("completion", "fish", "--prog", "pbq-single"))
    assert "_PBQ_SINGLE_COMPLETE" in fish and "_PBQ_COMPLETE" not in fish
    assert_user_error(
        run_cmd("pbq", "completion", env={**os.environ, "SHELL": "/bin/tcsh"}), "name it"
    )


def test_bash_completion_really_completes() -> None:
    """Source the bash script in a real bash and ask it to complete ``pbq sta``."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    script = (
        'eval "$(pbq completion bash)"\n'
        "COMPREPLY=(); COMP_WORDS=(pbq sta); COMP_CWORD=1; _pbq_completion pbq\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
        "COMPREPLY=(); COMP_WORDS=(pbq-single --exit-w); COMP_CWORD=1; "
        "_pbq_single_completion pbq-single\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["start", "status", "--exit-when-empty"]
