"""pbq.drm.base: sizes, walltimes, resources, the command runner, job scripts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbq.drm.base import (
    KILLED_EXIT,
    CommandRunner,
    DrmUnavailable,
    JobFiles,
    Resources,
    failure_code,
    format_hms,
    parse_size,
    parse_usage,
    parse_walltime,
    read_exit_file,
    render_job_script,
    safe_name,
    to_kb,
    to_mb,
    write_script,
)
from pbq.errors import PbqError

MB = 1 << 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 << 30),
        ("2g", 2 << 30),
        ("2GB", 2 << 30),
        ("2GiB", 2 << 30),
        ("512M", 512 * MB),
        ("512mb", 512 * MB),
        ("2048", 2048 * MB),  # bare number: megabytes
        ("1.5G", 1536 * MB),
        ("100K", 100 * 1024),
        ("100b", 100),
        ("1T", 1 << 40),
        (" 64G ", 64 << 30),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "2X", "-1G", "0", "two", "1 G B", "0.0M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(PbqError, match="bad memory size"):
        parse_size(text)


def test_unit_conversions_round_up() -> None:
    assert to_mb(1) == 1
    assert to_mb(MB) == 1
    assert to_mb(MB + 1) == 2
    assert to_kb(1500) == 2
    assert to_kb(2 << 30) == 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:00:00", 3600),
        ("1:30:05", 5405),
        ("90", 90 * 60),  # bare number: minutes
        ("05:30", 330),  # MM:SS
        ("2-00:00:00", 2 * 86400),
        ("1-12", 86400 + 12 * 3600),
        ("1-0:30", 86400 + 1800),
        ("90m", 5400),
        ("2h", 7200),
        ("1d", 86400),
        ("30s", 30),
        ("1h30m", 5400),
        ("100:00:00", 360000),
    ],
)
def test_parse_walltime(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["", "1:2:3:4", "00:61:00", "abc", "0", "00:00:00", "-5", "1x"])
def test_parse_walltime_rejects(text: str) -> None:
    with pytest.raises(PbqError, match="walltime"):
        parse_walltime(text)


def test_format_hms() -> None:
    assert format_hms(3600) == "01:00:00"
    assert format_hms(5405) == "01:30:05"
    assert format_hms(100 * 3600) == "100:00:00"


def test_resources_defaults_and_validation() -> None:
    r = Resources()
    assert (r.cpu, r.mem, r.vmem, r.queue, r.walltime) == (1, "", "", "", "")
    assert r.mem_bytes is None and r.vmem_bytes is None and r.walltime_seconds is None
    r = Resources(cpu="4", mem="2G", vmem=" 4G ", walltime="90")  # type: ignore[arg-type]
    assert r.cpu == 4 and r.vmem == "4G"
    assert r.mem_bytes == 2 << 30 and r.walltime_seconds == 5400
    for bad in (
        {"cpu": 0},
        {"cpu": "x"},
        {"cpu": True},
        {"mem": "lots"},
        {"vmem": "1Q"},
        {"walltime": "soon"},
        {"queue": "a b"},
    ):
        with pytest.raises(PbqError):
            Resources(**bad)  # type: ignore[arg-type]


def test_resources_merged_layers() -> None:
    cluster = {"cpu": 1, "mem": "", "vmem": "", "queue": "", "walltime": "", "plugin_dir": "x"}
    host = {"drm": "slurm", "queue": "debug", "cpu": "2", "mem": "2G", "vmem": ""}
    r = Resources.merged(cluster, host)
    assert r == Resources(cpu=2, mem="2G", vmem="", queue="debug", walltime="")
    # An explicit empty value in a later layer removes a limit; an empty cpu keeps the default.
    r = Resources.merged({"mem": "1G", "cpu": 3}, {"mem": "", "cpu": ""})
    assert r.mem == "" and r.cpu == 1


def test_failure_code_never_zero() -> None:
    assert failure_code(3, killed=False) == 3
    assert failure_code(0, killed=False) == 1
    assert failure_code(None, killed=True) == KILLED_EXIT == 143


def test_safe_name() -> None:
    assert safe_name("job 12/3 'x'") == "job_12_3_x"
    assert safe_name("...") == "job"
    assert len(safe_name("a" * 100)) == 48


# --------------------------------------------------------------------------- CommandRunner


def test_runner_runs_argv_and_counts_failures() -> None:
    runner = CommandRunner(timeout=10)
    result = runner.run(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]
    )
    assert result.ok and result.stdout == "out\n" and result.stderr == "err\n"
    assert result.argv[0] == sys.executable
    assert runner.consecutive_failures == 0 and runner.backoff() == 0
    bad = runner.run([sys.executable, "-c", "raise SystemExit(3)"])
    assert bad.returncode == 3 and not bad.ok
    assert "exited with 3" in bad.describe()
    assert runner.consecutive_failures == 1
    runner.run(["false"])
    assert runner.consecutive_failures == 2
    assert runner.backoff(base=5, cap=300) == 10
    runner.run(["true"])
    assert runner.consecutive_failures == 0


def test_runner_stdin() -> None:
    result = CommandRunner().run(["cat"], stdin="hello\n")
    assert result.stdout == "hello\n"


def test_runner_refuses_shell_strings() -> None:
    with pytest.raises(TypeError):
        CommandRunner().run("echo hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CommandRunner().run([])


def test_runner_missing_command_is_unavailable() -> None:
    runner = CommandRunner()
    with pytest.raises(DrmUnavailable, match="not found"):
        runner.run(["pbq-no-such-command-xyz", "-h"])
    assert runner.consecutive_failures == 1


def test_runner_timeout_kills_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    runner = CommandRunner(timeout=0.5)
    start = time.monotonic()
    with pytest.raises(DrmUnavailable, match="did not answer within 0.5 s"):
        runner.run(["sh", "-c", f"sleep 30 & echo $! > {marker}; wait"])
    assert time.monotonic() - start < 10
    assert runner.consecutive_failures == 1
    # The whole process group is gone, the background child included.
    pid = int(marker.read_text())

    def alive() -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in status

    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive()


# --------------------------------------------------------------------------- job scripts


def run_script(tmp_path: Path, command: str, workspace: Path) -> tuple[int, JobFiles, str]:
    files = JobFiles.new(workspace, "job/1")
    script = render_job_script(
        "slurm",
        command=command,
        workspace=workspace,
        exit_file=files.exit_file,
        usage_file=files.usage_file,
        job_name="pbq-test",
        directives=["# directive line"],
    )
    write_script(files.script, script)
    proc = subprocess.run(
        ["/bin/sh", str(files.script)], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    return proc.returncode, files, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("command", "code"), [("true", 0), ("exit 3", 3), ("no-such-cmd-pbq", 127)]
)
def test_job_script_records_exit_code(tmp_path: Path, command: str, code: int) -> None:
    ws = tmp_path / "work space 'quoted'"
    ws.mkdir()
    rc, files, _ = run_script(tmp_path, command, ws)
    assert rc == code
    assert read_exit_file(files.exit_file) == code
    assert files.dir == ws / ".pbq-drm"
    assert not Path(f"{files.exit_file}.tmp").exists()
    if Path("/usr/bin/time").exists():
        usage = parse_usage(files.usage_file.read_text())
        assert usage is not None and usage.peak_rss_bytes and usage.peak_rss_bytes > 0
        assert usage.cpu_seconds is not None and usage.runtime is not None


def test_job_script_shell_semantics_and_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws $HOME `x`"
    ws.mkdir()
    command = 'echo "it\'s $((1+2))" > out.txt; pwd >> out.txt; test -n "$HOME"'
    rc, files, _ = run_script(tmp_path, command, ws)
    assert rc == 0
    assert (ws / "out.txt").read_text() == f"it's 3\n{ws}\n"
    text = files.script.read_text()
    assert text.startswith("#!/bin/sh\n") and "# directive line" in text


def test_job_script_missing_workspace(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "state", "x")
    script = render_job_script(
        "lsf",
        command="true",
        workspace=tmp_path / "gone",
        exit_file=files.exit_file,
        usage_file=files.usage_file,
        job_name="x",
    )
    write_script(files.script, script)
    proc = subprocess.run(["/bin/sh", str(files.script)], capture_output=True, text=True)
    assert proc.returncode == 125
    assert read_exit_file(files.exit_file) == 125
    assert "cannot enter workspace" in proc.stderr


def test_parse_usage_and_exit_file(tmp_path: Path) -> None:
    text = (
        "Command exited with non-zero status 3\n"
        "pbq-usage maxrss_kb=2048 user_s=1.50 sys_s=0.25 elapsed_s=3.00\n"
    )
    usage = parse_usage(text)
    assert usage is not None
    assert usage.peak_rss_bytes == 2048 * 1024
    assert usage.cpu_seconds == pytest.approx(1.75)
    assert usage.runtime == pytest.approx(3.0)
    assert parse_usage("garbage") is None
    f = tmp_path / "x.exit"
    assert read_exit_file(f) is None
    f.write_text("")
    assert read_exit_file(f) is None
    f.write_text("-1\n")
    assert read_exit_file(f) == -1


def test_job_files_from_exit_file(tmp_path: Path) -> None:
    files = JobFiles.from_exit_file(tmp_path / ".pbq-drm" / "a.1234.exit")
    assert files.script == tmp_path / ".pbq-drm" / "a.1234.sh"
    assert files.usage_file == tmp_path / ".pbq-drm" / "a.1234.usage"
    with pytest.raises(PbqError):
        JobFiles.from_exit_file(tmp_path / "a.txt")
    a, b = JobFiles.new(tmp_path, "k"), JobFiles.new(tmp_path, "k")
    assert a.stem != b.stem and a.stem.startswith("k.")
