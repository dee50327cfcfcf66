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


def test_many_jobs_through_reused_slots_keep_their_own_output(tmp_path: Path) -> None:
    """Four at a time, 40 jobs of different output sizes (none, some, one over the size that
    stays a file) through a real scheduler: each job's output is its own, nothing else."""
    config(tmp_path, FAST_CONFIG)
    big = 1100 * 1024  # over PACK_MAX_FILE: stays a file of its own
    lines = []
    for i in range(1, 41):
        if i % 5 == 0:
            lines.append("true")
        elif i == 17:
            lines.append(f"head -c {big} /dev/zero")
        else:
            lines.append(f"sh -c 'echo out{i}; echo err{i} >&2'")
    jf = jobfile(tmp_path, lines)
    hf = hostfile(tmp_path, "* linux 4 4 0\n")
    assert wait_exit(start_scheduler(hf, jf, "--exit-when-empty"), 120) == 0
    out_dir = hostfile_path(jf, "h1", "output")
    assert not [n for n in os.listdir(out_dir) if n.startswith("slot.")], "slots removed at exit"
    for i in range(1, 41):
        got = log(hf, jf, str(i)).stdout
        if i % 5 == 0:
            assert got == b"", i
        elif i == 17:
            assert got == bytes(big), i
        else:
            assert got == f"out{i}\nerr{i}\n".encode(), i


def test_packing_is_crash_safe(tmp_path: Path) -> None:
    jf = jobfile(tmp_path, "")
    files = HostFiles(jf, "h1")
    out = JobOutput(files, None, False, False, lambda *a, **k: None)
    out.open(set())
    home = files.path("output")
    (home / "h1.1.out").write_bytes(b"one\n")
    (home / "h1.2.out").write_bytes(b"two\n")
    out.requested([(1, 1, 1.0), (2, 2, 2.0)])
    out.ended(1, reusable=True)
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


def test_slots_are_reused_packed_released_and_survive_a_crash(tmp_path: Path) -> None:
    """Jobs write to reused slot files; a slot serves a new job only once the old job's
    output is packed and released; a slot whose job may have left a process is not reused
    (its files are new); after a crash, unreleased slots of ended jobs are packed."""
    jf = jobfile(tmp_path, "")
    files = HostFiles(jf, "h1")
    hf = hostfile(tmp_path)
    out = JobOutput(files, None, False, False, lambda *a, **k: None)
    out.open(set())
    home = files.path("output")
    p1, p2 = out.paths(1), out.paths(2)
    assert p1 is not None and p2 is not None and p1 != p2
    assert p1[0].endswith("/slot.1.out")
    for path, text in ((p1[0], b"one\n"), (p1[1], b"err one\n"), (p2[0], b"two\n")):
        Path(path).write_bytes(text)
    out.requested([(1, 11, 1.0), (2, 12, 2.0)])
    assert out.received(1) == 12
    inode = os.stat(p1[0]).st_ino
    # Running: pbq log reads the slot.
    assert log(hf, jf, "11").stdout == b"one\nerr one\n"
    out.ended(1, reusable=True)
    out.ended(2, reusable=False)
    out.pack(None)
    assert b"#released 1 2" in files.path("jobids").read_bytes()
    assert not Path(p2[0]).exists(), "a slot its job may still write to is not kept"
    assert os.path.getsize(p1[0]) == os.path.getsize(p1[1]) == 0, "a free slot is kept empty"
    # Jobs 3 and 4 get the two free slots: slot 1 is the same file (truncated when the job
    # runner opens it for job 3 or 4), slot 2 a new one.
    p3, p4 = out.paths(3), out.paths(4)
    assert p3 is not None and p4 is not None and {p3, p4} == {p1, p2}
    assert not out.truncates(3) and not out.truncates(4), "slots are opened as they are"
    out.requested([(3, 13, 3.0), (4, 14, 4.0)])
    for paths, text in ((p3, b"three\n"), (p4, b"four\n")):
        for path in paths:  # opened as the job runner opens them (no O_TRUNC for a slot)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT)
            if path.endswith(".out"):
                os.write(fd, text)
            os.close(fd)
    assert os.stat(p1[0]).st_ino == inode, "the slot of a job that left nothing is reused"
    assert log(hf, jf, "11").stdout == b"one\nerr one\n"
    assert log(hf, jf, "12").stdout == b"two\n"
    assert log(hf, jf, "13").stdout == b"three\n"
    assert log(hf, jf, "14").stdout == b"four\n"
    # A crash now: jobs 3 and 4 ended while no scheduler ran; the next one packs their slots.
    again = JobOutput(files, None, False, False, lambda *a, **k: None)
    again.open(set())
    again.close()
    assert sorted(os.listdir(home)) == ["packed.1"]
    assert log(hf, jf, "13").stdout == b"three\n"
    assert log(hf, jf, "14").stdout == b"four\n"
    assert log(hf, jf, "11").stdout == b"one\nerr one\n"


def test_an_adopted_jobs_slot_stays_its_own(tmp_path: Path) -> None:
    jf = jobfile(tmp_path, "")
    files = HostFiles(jf, "h1")
    out = JobOutput(files, None, False, False, lambda *a, **k: None)
    out.open(set())
    p1 = out.paths(1)
    assert p1 is not None
    Path(p1[0]).write_bytes(b"running\n")
    out.requested([(1, 5, 1.0)])
    # The scheduler dies; job 1 runs on and is adopted by the next one.
    again = JobOutput(files, None, False, False, lambda *a, **k: None)
    again.open({1})
    assert again.paths(2) != p1, "a live job's slot is not given to another"
    assert again.received(1) == len(b"running\n")
    again.requested([(2, 6, 2.0)])
    again.ended(1, reusable=True)
    again.pack(None)
    assert log(hostfile(tmp_path), jf, "5").stdout == b"running\n"
