"""Job output you can find: `pbq log` by Seq, with the default (packed) output, with
--output-dir, and --follow; the packing's crash safety."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from pbqtest import (
    BIN,
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    kill_all,
    lines_of,
    processes_mentioning,
    run_cmd,
    start_scheduler,
    wait_exit,
)

from pbq.host.joboutput import JobOutput
from pbq.sidefiles import output_frame, read_frames
from pbq.statefiles import HostFiles

JOBS = [
    "echo first",
    "sh -c 'echo out2; echo err2 >&2; exit 3'",
    "true",
]


def log(hf: Path, jf: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cmd("pbq", "log", hf, jf, *args)


def test_pbq_log_by_seq_default_output_is_packed(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG.replace("[scheduler]\n", "[scheduler]\nretries = 1\n"))
    jf = jobfile(tmp_path, ["# comment", *JOBS])
    hf = hostfile(tmp_path)
    assert wait_exit(start_scheduler(hf, jf, "--exit-when-empty"), 60) == 0
    out_dir = hostfile_path(jf, "h1", "output")
    assert sorted(os.listdir(out_dir)) == ["packed.1"], "ended jobs' files are packed"
    assert log(hf, jf, "1").stdout == b"first\n"
    assert log(hf, jf, "2").stdout == b"out2\nerr2\n", "stdout, then stderr"
    assert log(hf, jf, "2", "--stderr").stdout == b"err2\n"
    assert log(hf, jf, "2", "--stdout", "--attempt", "1").stdout == b"out2\n"
    assert log(hf, jf, "2", "--attempt", "3").returncode != 0, "two attempts only"
    r = log(hf, jf, "3")
    assert r.returncode == 0 and r.stdout == b""
    assert log(hf, jf, "7").returncode != 0
    joblog = lines_of(hostfile_path(jf, "h1", "joblog"))[1:]
    rows = {ln.split("\t")[0]: ln.split("\t")[5] for ln in joblog}
    assert rows == {"1": "6", "2": "10", "3": "0"}, "Receive: bytes of output"
    assert "first" not in (tmp_path / "sched-h1.out").read_text()


def test_pbq_log_with_output_dir_and_inherited_output(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG)
    jf = jobfile(tmp_path, JOBS)
    hf = hostfile(tmp_path)
    assert wait_exit(start_scheduler(hf, jf, "--exit-when-empty", "--output-dir", "outs"), 60) == 0
    assert (tmp_path / "outs" / "h1.2.err").read_bytes() == b"err2\n", "kept as files"
    assert log(hf, jf, "2").stdout == b"out2\nerr2\n"
    run_cmd("jobfile-append", jf, "-", input=b"echo inherited\n")
    assert wait_exit(start_scheduler(hf, jf, "--exit-when-empty", "--output-dir", "-"), 60) == 0
    assert "inherited" in (tmp_path / "sched-h1.out").read_text()
    r = log(hf, jf, "4")
    assert r.returncode != 0 and b"not kept" in r.stderr


def _read_until(p: subprocess.Popen, want: bytes, timeout: float) -> bytes:
    assert p.stdout is not None
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {want!r}, got {got!r}"
        ready, _, _ = select.select([p.stdout], [], [], left)
        if ready:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            got += chunk
    return got


def test_pbq_log_follow_shows_lines_as_they_come(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG)
    go = tmp_path / "go"
    wait_go = f"while [ ! -e {go} ]; do sleep 0.05; done"
    jf = jobfile(tmp_path, [f"sh -c 'echo one; {wait_go}; echo two'"])
    hf = hostfile(tmp_path)
    p = start_scheduler(hf, jf, "--exit-when-empty")
    f = subprocess.Popen([sys.executable, str(BIN / "pbq"), "log", "--follow", str(hf), str(jf),
                          "1"], stdout=subprocess.PIPE, cwd=tmp_path)
    try:
        assert _read_until(f, b"one\n", 30) == b"one\n"
        assert f.poll() is None, "still following: the job runs"
        go.touch()
        assert _read_until(f, b"two\n", 30).endswith(b"two\n")
        assert wait_exit(f, 30) == 0
        assert wait_exit(p, 60) == 0
    finally:
        f.kill()
        f.wait()
        kill_all(processes_mentioning(str(jf)))
    assert log(hf, jf, "1").stdout == b"one\ntwo\n"


def test_packing_is_crash_safe(tmp_path: Path) -> None:
    jf = jobfile(tmp_path, "")
    files = HostFiles(jf, "h1")
    out = JobOutput(files, None, False, False, lambda *a, **k: None)
    out.open(set())
    home = files.path("output")
    (home / "h1.1.out").write_bytes(b"one\n")
    (home / "h1.2.out").write_bytes(b"two\n")
    out.started([(1, 1, 1.0), (2, 2, 2.0)])
    out.ended(1)
    out.pack(None)
    assert not (home / "h1.1.out").exists()
    # A crash after appending 2's frame, before removing its file; and a torn frame after it.
    with open(home / "packed.1", "ab") as f:
        f.write(output_frame(2, "h1.2", "out", b"two\n"))
        f.write(output_frame(3, "h1.3", "out", b"torn")[:-3])
    r = run_cmd("pbq", "log", hostfile(tmp_path), jf, "2")
    assert r.stdout == b"two\n"
    out.close()
    again = JobOutput(files, None, False, False, lambda *a, **k: None)
    again.open(set())  # the leftover file of ended job 2 is packed again, the torn tail cut
    again.close()
    assert not (home / "h1.2.out").exists()
    frames = [h["job"] for h, _, _ in read_frames(home / "packed.1")]
    assert frames == ["h1.1", "h1.2", "h1.2"]
    assert run_cmd("pbq", "log", hostfile(tmp_path), jf, "2").stdout == b"two\n"
    assert run_cmd("pbq", "log", hostfile(tmp_path), jf, "1").stdout == b"one\n"
