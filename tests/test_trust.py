"""Nobody else's commands run as you: files another user planted beside a jobfile in a shared
directory (mode 1777) are refused, never run.  Real second users (created here, removed
afterwards) and real pbq-single / pbq control processes."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    proc_state,
    run_cmd,
    start_scheduler,
    status,
    text_of,
    wait_exit,
    wait_for,
    write,
)

from pbq.host.jobs import JobBook
from pbq.safety import is_private_group

IS_ROOT = os.geteuid() == 0


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


@pytest.fixture
def mallory() -> Iterator[pwd.struct_passwd]:
    """Another user, with a private group of their own."""
    if not IS_ROOT or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create another user")
    name = f"pbqm{secrets.token_hex(3)}"
    r = _run("useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name)
    if r.returncode != 0:
        pytest.skip(f"cannot create a user: {r.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        _run("userdel", name)
        _run("groupdel", name)  # where userdel keeps the private group


@pytest.fixture
def shared_group(mallory: pwd.struct_passwd) -> Iterator[grp.struct_group]:
    """A group that root's files may be in and that another user belongs to."""
    name = f"pbqg{secrets.token_hex(3)}"
    if _run("groupadd", name).returncode != 0:
        pytest.skip("cannot create a group")
    try:
        _run("usermod", "-a", "-G", name, mallory.pw_name)
        yield grp.getgrnam(name)
    finally:
        _run("groupdel", name)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A directory anyone may add files to, like /tmp (mode 1777)."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


def plant(path: Path, data: str | bytes, owner: pwd.struct_passwd, mode: int = 0o644) -> Path:
    write(path, data, mode)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def marker_job(d: Path) -> tuple[str, Path]:
    marker = d / "ran-as-you"
    return f"touch {marker}", marker


def test_requeue_errors_refuses_a_planted_error_file(
    shared_dir: Path, mallory: pwd.struct_passwd
) -> None:
    hf = hostfile(shared_dir)
    jf = jobfile(shared_dir, "")
    line, marker = marker_job(shared_dir)
    planted = plant(hostfile_path(jf, "evil", "error"), line + "\n", mallory)
    r = run_cmd("pbq", "control", hf, jf, "requeue-errors")
    assert r.returncode == 2, r
    err = r.stderr.decode()
    assert str(planted) in err and mallory.pw_name in err and "owned by another user" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert jf.read_text() == "" and planted.exists()  # nothing went into the jobfile
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf)
    assert r.returncode == 0 and not marker.exists()


def _plant_state(jf: Path, host: str, line: str) -> tuple[dict, dict]:
    """A .state whose job goes "back at the front" on start, and a .queue that lets it."""
    book = JobBook(host)
    job = book.claim(line.encode(), op=1)
    book.requeue(job, front=True)
    state = {"format": 2, "host": host, "gen": 1, **book.to_json()}
    queue = {"format": 2, "offset": 0, "size": 0, "mark": "", "ops": {host: 0}, "pending": None}
    return state, queue


def test_planted_state_and_queue_are_refused_at_start(
    shared_dir: Path, tmp_path: Path, mallory: pwd.struct_passwd
) -> None:
    line, marker = marker_job(tmp_path)
    state, queue = _plant_state(shared_dir / "jobfile", "vm", line)
    # The same files, yours: the job is put back and run (what the planted ones would do).
    own = tmp_path / "own"
    own.mkdir()
    hf_own, jf_own = hostfile(own), jobfile(own, "")
    write(hostfile_path(jf_own, "vm", "state"), json.dumps(state))
    write(own / "jobfile.queue", json.dumps(queue))
    r = run_cmd("pbq-single", "--host", "vm", "--exit-when-empty", hf_own, jf_own)
    assert r.returncode == 0 and marker.exists(), r
    marker.unlink()
    # Planted by another user in a shared directory: refused, nothing runs.
    hf, jf = hostfile(shared_dir), jobfile(shared_dir, "")
    planted = plant(hostfile_path(jf, "vm", "state"), json.dumps(state), mallory)
    plant(shared_dir / "jobfile.queue", json.dumps(queue), mallory)
    r = run_cmd("pbq-single", "--host", "vm", "--exit-when-empty", hf, jf)
    assert r.returncode == 2, r
    err = r.stderr.decode()
    assert str(planted) in err and mallory.pw_name in err and err.count("\n") == 1, err
    assert not marker.exists() and jf.read_text() == ""
    # The .queue alone is refused as well.
    planted.unlink()
    r = run_cmd("pbq-single", "--host", "vm", "--exit-when-empty", hf, jf)
    assert r.returncode == 2 and b"jobfile.queue" in r.stderr, r
    assert not marker.exists()


def test_control_symlink_is_not_followed(
    shared_dir: Path, tmp_path: Path, mallory: pwd.struct_passwd
) -> None:
    hf = hostfile(shared_dir, "* linux 50 50 0\n")
    config(shared_dir, FAST_CONFIG)
    jf = jobfile(shared_dir, ["sleep 60"])
    p = start_scheduler(hf, jf)
    try:
        wait_for(lambda: status(jf, "h1").get("running") == 1, what="job running")
        state = hostfile_path(jf, "h1", "state")
        # the pid reaches the snapshot within half a second (the journal has it before)
        pid = wait_for(
            lambda: (json.loads(text_of(state) or "{}").get("jobs") or [{}])[0].get("pid"),
            what="the job's pid in the state snapshot",
        )
        # A request that would be obeyed if read: yours, 0600 -- reached through a symlink.
        target = write(
            tmp_path / "request",
            json.dumps({"id": "x1", "command": "stop", "time": time.time(), "by": "mallory"}),
            0o600,
        )
        link = hostfile_path(jf, "h1", "control")
        link.symlink_to(target)
        os.lchown(link, mallory.pw_uid, mallory.pw_gid)
        log = hostfile_path(jf, "h1", "log")
        wait_for(lambda: "symbolic link" in text_of(log), what="symlink ignored and logged")
        assert "ignoring control request" in text_of(log)
        assert proc_state(pid) in ("S", "R") and status(jf, "h1")["state"] == "running"
        assert status(jf, "h1").get("control_ack") != "x1"
    finally:
        run_cmd("pbq", "control", hf, jf, "term", timeout=40)
        wait_exit(p)


def test_planted_config_beside_the_jobfile_is_refused(
    shared_dir: Path, tmp_path: Path, mallory: pwd.struct_passwd
) -> None:
    line, marker = marker_job(tmp_path)
    hf, jf = hostfile(shared_dir), jobfile(shared_dir, [line])
    planted = plant(shared_dir / "pbq.toml", '[cluster]\nplugin_dir = "/tmp"\n', mallory)
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf)
    assert r.returncode == 2, r
    err = r.stderr.decode()
    assert str(planted) in err and mallory.pw_name in err and err.count("\n") == 1, err
    assert not marker.exists() and jf.read_text() == line + "\n"


def test_user_private_group_file_is_accepted(
    tmp_path: Path, mallory: pwd.struct_passwd, shared_group: grp.struct_group
) -> None:
    # The rule itself, on a real user private group and on a shared group.
    probe = write(tmp_path / "probe", "x", 0o664)
    os.chown(probe, mallory.pw_uid, mallory.pw_gid)
    assert grp.getgrgid(mallory.pw_gid).gr_name == mallory.pw_name
    assert is_private_group(os.stat(probe))
    os.chown(probe, mallory.pw_uid, shared_group.gr_gid)
    assert not is_private_group(os.stat(probe))
    # pbq-single runs as root here: root's own group is root's private group.
    if not is_private_group(os.stat(tmp_path)):
        pytest.skip("root's group is not a private group on this system")
    line, marker = marker_job(tmp_path)
    hf, jf = hostfile(tmp_path), jobfile(tmp_path, [line])
    os.chmod(hf, 0o664)
    os.chmod(jf, 0o664)  # umask 002, as Debian's user private groups have it
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf)
    assert r.returncode == 0, r.stderr
    assert marker.exists()


def test_group_writable_file_of_a_shared_group_needs_allow_group_write(
    tmp_path: Path, shared_group: grp.struct_group
) -> None:
    line, marker = marker_job(tmp_path)
    hf, jf = hostfile(tmp_path), jobfile(tmp_path, [line])
    for path in (hf, jf):
        os.chown(path, 0, shared_group.gr_gid)
        os.chmod(path, 0o664)
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf)
    assert r.returncode == 2 and b"group-writable hostfile" in r.stderr, r
    assert shared_group.gr_name.encode() in r.stderr and not marker.exists()
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", "--allow-group-write", hf, jf)
    assert r.returncode == 0, r.stderr
    assert marker.exists()


def test_world_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    line, marker = marker_job(tmp_path)
    hf, jf = hostfile(d), jobfile(d, [line])
    r = run_cmd("pbq-single", "--host", "h1", "--exit-when-empty", hf, jf)
    assert r.returncode == 2 and b"sticky bit" in r.stderr and r.stderr.count(b"\n") == 1, r
    assert not marker.exists()
