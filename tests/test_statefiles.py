"""Tests for pbq.statefiles: atomic writes, host file names, JSON reading, line encoding."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbq import statefiles
from pbq.errors import PbqError
from pbq.statefiles import (
    HostFiles,
    append_bytes,
    atomic_write,
    atomic_write_json,
    hosts_with,
    line_to_text,
    read_json,
    read_json_lines,
    text_to_line,
)

IS_ROOT = os.geteuid() == 0


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


# ---------------------------------------------------------------------- atomic_write


@pytest.mark.parametrize("fsync", [False, True], ids=["no-fsync", "fsync"])
def test_atomic_write_creates_and_replaces(tmp_path: Path, fsync: bool) -> None:
    p = tmp_path / "f.state"
    atomic_write(p, b"one", fsync=fsync)
    assert p.read_bytes() == b"one"
    atomic_write(p, b"two\x00\xff" * 1000, fsync=fsync)
    assert p.read_bytes() == b"two\x00\xff" * 1000
    atomic_write(p, b"", fsync=fsync)
    assert p.read_bytes() == b""
    assert listing(tmp_path) == ["f.state"], "no temporary file is left behind"


def test_atomic_write_replaces_inode(tmp_path: Path) -> None:
    """A reader holding the old file keeps seeing the old content (rename, not rewrite)."""
    p = tmp_path / "f"
    atomic_write(p, b"old")
    with open(p, "rb") as reader:
        atomic_write(p, b"new")
        assert reader.read() == b"old"
    assert p.read_bytes() == b"new"


@pytest.mark.parametrize("exchange", ["renameat2", "refused"])
def test_volatile_write_creates_replaces_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: str
) -> None:
    """A volatile file (heartbeat, view) is swapped in where the file system can exchange
    names, else renamed over; either way the new content, the old inode untouched for a
    reader that holds it, and no temporary file left."""
    if exchange == "refused":  # as NFS answers: EINVAL, and the plain rename takes over
        def refuse(old: bytes, new: bytes, flags: int) -> None:
            raise OSError(errno.EINVAL, "not supported")
        monkeypatch.setattr(statefiles, "_renameat2", refuse)
        monkeypatch.setattr(statefiles, "_no_exchange_in", set())
    p = tmp_path / "h.status"
    atomic_write(p, b"one", volatile=True)  # no file yet: nothing to exchange with
    assert p.read_bytes() == b"one"
    with open(p, "rb") as reader:
        atomic_write(p, b"two" * 1000, volatile=True)
        assert reader.read() == b"one"
    assert p.read_bytes() == b"two" * 1000
    atomic_write(p, b"", volatile=True)
    assert p.read_bytes() == b""
    assert listing(tmp_path) == ["h.status"], "no temporary file is left behind"
    if exchange == "refused":
        assert statefiles._no_exchange_in == {os.stat(p).st_dev}, "asked once per file system"


def test_volatile_write_uses_the_exchange_here(tmp_path: Path) -> None:
    """On a local file system the exchange is what runs (not the fallback)."""
    p = tmp_path / "v"
    atomic_write(p, b"a", volatile=True)
    calls: list[int] = []
    real = statefiles._libc_renameat2

    def spy(old: bytes, new: bytes, flags: int) -> None:
        calls.append(flags)
        real(old, new, flags)
    statefiles._libc_renameat2 = spy  # type: ignore[assignment]
    try:
        atomic_write(p, b"b", volatile=True)
    finally:
        statefiles._libc_renameat2 = real  # type: ignore[assignment]
    assert calls == [statefiles.RENAME_EXCHANGE]
    assert p.read_bytes() == b"b"
    # ext4, xfs, btrfs and tmpfs all exchange: a refusal here would be a bug in the call
    assert os.stat(p).st_dev not in statefiles._no_exchange_in


def test_volatile_write_never_leaves_readers_without_a_file(tmp_path: Path) -> None:
    """A reader polling while the file is rewritten always finds it, whole."""
    p = tmp_path / "h.status"
    atomic_write(p, b"x" * 100, volatile=True)
    stop = threading.Event()
    seen: list[bytes] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(p.read_bytes())
            except FileNotFoundError:
                seen.append(b"missing")
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(2000):
            atomic_write(p, bytes([97 + i % 26]) * 100, volatile=True)
    finally:
        stop.set()
        reader.join()
    assert seen
    assert all(len(s) == 100 and len(set(s)) == 1 for s in seen), "old or new, never none"


def test_atomic_write_mode_filtered_by_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a", b"x", mode=0o666)
        atomic_write(tmp_path / "b", b"x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o600


def test_atomic_write_missing_directory(tmp_path: Path) -> None:
    p = tmp_path / "no" / "such" / "dir" / "f"
    with pytest.raises(PbqError) as ei:
        atomic_write(p, b"x")
    assert str(p) in str(ei.value) and "cannot write" in str(ei.value)
    assert not (tmp_path / "no").exists()


@pytest.mark.skipif(IS_ROOT, reason="root ignores directory permissions")
def test_atomic_write_read_only_directory(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    p = d / "f"
    atomic_write(p, b"old")
    d.chmod(0o555)
    try:
        with pytest.raises(PbqError, match="permission denied"):
            atomic_write(p, b"new")
        assert p.read_bytes() == b"old"
        assert listing(d) == ["f"]
    finally:
        d.chmod(0o755)


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        pytest.param(errno.ENOSPC, "the disk is full", id="ENOSPC"),
        pytest.param(errno.EDQUOT, "the disk quota is exceeded", id="EDQUOT"),
        pytest.param(errno.EACCES, "permission denied", id="EACCES"),
        pytest.param(errno.EPERM, "permission denied", id="EPERM"),
        pytest.param(errno.EROFS, "the file system is read-only", id="EROFS"),
        pytest.param(errno.EIO, os.strerror(errno.EIO), id="EIO-strerror"),
    ],
)
@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_atomic_write_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, reason: str, where: str
) -> None:
    p = tmp_path / "f.state"
    atomic_write(p, b"old content")
    real = getattr(os, where)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if where == "write" and len(calls) == 1:
            real(*args[:1], bytes(args[1])[:3])  # a partial write first, as on a full disk
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, where, failing)
    with pytest.raises(PbqError) as ei:
        atomic_write(p, b"new content" * 1000, fsync=True)
    monkeypatch.undo()
    assert calls, f"os.{where} was not used"
    assert str(ei.value) == f"{p}: cannot write: {reason}"
    assert p.read_bytes() == b"old content"
    assert listing(tmp_path) == ["f.state"], "the temporary file is removed"


def test_atomic_write_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write(2) may write less than asked: every byte still arrives."""
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data)[:7]))
    data = bytes(range(256)) * 10
    atomic_write(tmp_path / "f", data)
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == data


def test_atomic_write_json_round_trip(tmp_path: Path) -> None:
    obj = {"a": [1, 2.5, None, True], "line": line_to_text(b"caf\xc3\xa9 \xff\x00")}
    atomic_write_json(tmp_path / "s.json", obj)
    assert read_json(tmp_path / "s.json") == obj
    assert text_to_line(read_json(tmp_path / "s.json")["line"]) == b"caf\xc3\xa9 \xff\x00"


# ---------------------------------------------------------------------- append


def test_append_bytes_and_json_lines(tmp_path: Path) -> None:
    p = tmp_path / "h.exits"
    append_bytes(p, b'{"a": 1}\n')
    append_bytes(p, b'{"b": 2}\nnot json\n')
    append_bytes(p, b'{"c": ')  # torn last line
    assert read_json_lines(p) == [{"a": 1}, {"b": 2}]
    assert read_json_lines(tmp_path / "missing") == []


def test_append_bytes_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(PbqError, match="cannot append to: the disk is full"):
        append_bytes(tmp_path / "log", b"x")


# ---------------------------------------------------------------------- names


def test_host_files(tmp_path: Path) -> None:
    files = HostFiles(tmp_path / "jobs", "node1.example.com")
    assert files.state == tmp_path / "jobs.node1.example.com.state"
    assert files.path("log") == tmp_path / "jobs.node1.example.com.log"
    with pytest.raises(AttributeError):
        _ = files.nonsense


def test_hosts_with(tmp_path: Path) -> None:
    jobfile = tmp_path / "jobs"
    for name in [
        "jobs",
        "jobs.queue",
        "jobs.lock",
        "jobs.state",  # no host part
        "jobs..state",  # empty host
        "jobs.h2.state",
        "jobs.h1.state",
        "jobs.node1.example.com.state",
        "jobs.h3.log",
        "jobs.h4.state.1",
        ".jobs.h5.state.123.abcd.tmp",  # atomic_write's temporary file
        "other.h6.state",
        "jobsX.h7.state",
    ]:
        (tmp_path / name).write_bytes(b"")
    assert hosts_with(jobfile, "state") == ["h1", "h2", "node1.example.com"]
    assert hosts_with(jobfile, "log") == ["h3"]
    assert hosts_with(jobfile, "status") == []
    assert hosts_with(tmp_path / "missing-dir" / "jobs", "state") == []


# ---------------------------------------------------------------------- read_json


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b'{"a": 1}', {"a": 1}, id="object"),
        pytest.param(b"[1, 2]\n", [1, 2], id="list"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b'{"a": ', None, id="truncated"),
        pytest.param(b"\x00\x00\x00\x00", None, id="nul-bytes"),
        pytest.param(b"\xff\xfe\xfd garbage", None, id="not-utf8"),
        pytest.param(b"hello", None, id="word"),
        pytest.param(b"[" * 100_000, None, id="deeply-nested"),
        pytest.param(b'{"a": 1}{"b": 2}', None, id="two-documents"),
    ],
)
def test_read_json(tmp_path: Path, data: bytes, expected) -> None:
    p = tmp_path / "f.json"
    p.write_bytes(data)
    assert read_json(p) == expected


def test_read_json_missing_and_unreadable(tmp_path: Path) -> None:
    assert read_json(tmp_path / "missing") is None
    with pytest.raises(PbqError, match="cannot read"):
        read_json(tmp_path)  # a directory


@given(st.binary(max_size=200))
def test_read_json_never_raises_on_garbage(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f"
        p.write_bytes(data)
        try:
            want = json.loads(data)
        except (ValueError, RecursionError):
            want = None
        assert read_json(p) == want


# ---------------------------------------------------------------------- line encoding


@given(st.binary(max_size=300))
def test_line_text_round_trip(line: bytes) -> None:
    text = line_to_text(line)
    assert isinstance(text, str)
    assert text_to_line(text) == line
    # ... and through JSON, as in the state files
    assert text_to_line(json.loads(json.dumps({"l": text}))["l"]) == line


@pytest.mark.parametrize(
    ("line", "text"),
    [
        pytest.param(b"sleep 1", "sleep 1", id="ascii"),
        pytest.param(b"caf\xc3\xa9", "caf\u00e9", id="utf8-stays-readable"),
        pytest.param(b"\xff", "\udcff", id="invalid-byte-escaped"),
        pytest.param(b"\xed\xa0\x80", "\udced\udca0\udc80", id="encoded-surrogate"),
    ],
)
def test_line_to_text_table(line: bytes, text: str) -> None:
    assert line_to_text(line) == text
    assert text_to_line(text) == line


def test_temp_name_is_hidden_unique_and_beside() -> None:
    a = statefiles.temp_name(Path("/x/jobs.h1.state"))
    b = statefiles.temp_name(Path("/x/jobs.h1.state"))
    assert a != b and a.parent == Path("/x") and a.name.startswith(".jobs.h1.state.")
