"""Tests for pbq.jobfile: taking, appending, putting back, compaction, crash recovery."""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbq import jobfile as jobfile_mod
from pbq.errors import PbqError
from pbq.jobfile import CHUNK, JobQueue, QueueState, append_file, is_job_line

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ---------------------------------------------------------------------- helpers


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(path: Path, content: bytes | None = None, **kw) -> JobQueue:
    if content is not None:
        path.write_bytes(content)
    kw.setdefault("fsync", False)
    return JobQueue(path, **kw)


def peek(q: JobQueue, n: int = 10**9) -> list[bytes]:
    """The pending job lines, without committing anything."""
    with q.transaction(timeout=10) as txn:
        return [pl.line for pl in txn.take(n)[0]]


def take_commit(q: JobQueue, n: int, host: str = "h1", op: int = 1) -> list[bytes]:
    with q.transaction(timeout=10) as txn:
        lines, end = txn.take(n)
        if lines or end > txn.state.offset:  # lines may come from a replaced file only
            txn.commit_take(end, host, op)
        return [pl.line for pl in lines]


def drain(q: JobQueue, n: int = 1, most: int = 10_000) -> list[bytes]:
    """Take and commit ``n`` lines at a time until none is left (at most ``most`` takes)."""
    out: list[bytes] = []
    for op in range(1, most + 1):
        got = take_commit(q, n, op=op)
        if not got:
            return out
        out += got
    raise AssertionError(f"still taking lines after {most} takes: the offset does not move")


def expected_lines(data: bytes) -> list[bytes]:
    """The job lines of ``data``, per the documented rule (independent of the module): an
    unterminated last line is not a line yet."""
    out = []
    for raw in data.split(b"\n")[:-1]:
        s = raw.strip()
        if s and not s.startswith(b"#"):
            out.append(raw.rstrip(b"\r"))
    return out


def write_state(q: JobQueue, **fields) -> None:
    q.state_path.write_text(json.dumps(QueueState(**fields).to_json()))


# ---------------------------------------------------------------------- taking


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        pytest.param(b"a\nb\n", [b"a", b"b"], id="plain"),
        pytest.param(b"", [], id="empty"),
        pytest.param(b"\n\n  \n\t\n", [], id="only-blanks"),
        pytest.param(b"a\n\n   \nb\n", [b"a", b"b"], id="blank-lines"),
        pytest.param(
            b"# c\n  # indented\na\n#\nb # not a comment\n",
            [b"a", b"b # not a comment"],
            id="comments",
        ),
        pytest.param(b"a\r\nb\r\n\r\n#c\r\n", [b"a", b"b"], id="crlf"),
        pytest.param(b"a\nlast", [b"a"], id="last-line-without-newline-is-not-taken"),
        pytest.param(b"a\n# last comment", [b"a"], id="last-comment-without-newline"),
        pytest.param(b"  x  \n\ty\t\n", [b"  x  ", b"\ty\t"], id="inner-whitespace-kept"),
        pytest.param(b"a\rb\n", [b"a\rb"], id="lone-cr-inside"),
        pytest.param(
            b"\xff\xfe\x00\n caf\xc3\xa9 \xe9\n",
            [b"\xff\xfe\x00", b" caf\xc3\xa9 \xe9"],
            id="non-utf8",
        ),
    ],
)
def test_take(tmp_path: Path, content: bytes, lines: list[bytes]) -> None:
    q = make(tmp_path / "jobs", content)
    with q.transaction() as txn:
        got, end = txn.take(100)
        assert [pl.line for pl in got] == lines
        complete = content.rfind(b"\n") + 1
        assert end == complete, "skipped lines at the end are consumed too, a partial one not"
        for pl in got:
            assert content[: pl.end].rstrip(b"\n").rstrip(b"\r").endswith(pl.line)
        assert txn.has_pending() == bool(lines)
        assert txn.count_pending() == len(lines)
    # one at a time gives the same lines
    assert drain(q) == lines


def test_take_missing_jobfile(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs")
    with q.transaction() as txn:
        assert txn.take(5) == ([], 0)
        assert not txn.has_pending() and txn.count_pending() == 0 and not txn.exists()


def test_take_zero(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs", b"a\n")
    with q.transaction() as txn:
        assert txn.take(0) == ([], 0)


def test_big_and_binary_lines_round_trip(tmp_path: Path) -> None:
    rnd = random.Random(1)
    big = b"x" + bytes(rnd.randrange(256) for _ in range(1 << 20)).replace(b"\n", b"N") + b"y"
    lines = [b"\xff\xfe\x00\x01 z", b"caf\xe9 \x80", big, b"after", big[::-1].replace(b"#", b"x")]
    q = make(tmp_path / "jobs", b"".join(line + b"\n" for line in lines))
    assert drain(q) == lines
    q2 = make(tmp_path / "jobs2", b"".join(line + b"\n" for line in lines))
    assert drain(q2, n=10) == lines


def test_take_does_not_commit(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs", b"a\nb\nc\n")
    with q.transaction() as txn:
        first = txn.take(2)
        assert txn.take(2) == first
        assert [pl.line for pl in first[0]] == [b"a", b"b"]
    assert q.peek_state().offset == 0
    assert peek(q, 2) == [b"a", b"b"]
    assert (tmp_path / "jobs").read_bytes() == b"a\nb\nc\n"


def test_commit_take_moves_offset(tmp_path: Path) -> None:
    clock = FakeClock(500.0)
    q = make(tmp_path / "jobs", b"#c\na\nb\nc\n", clock=clock)
    with q.transaction() as txn:
        lines, end = txn.take(2)
        assert end == len(b"#c\na\nb\n")
        txn.commit_take(end, "h1", 5)
        assert [pl.line for pl in txn.take(5)[0]] == [b"c"], "the same transaction goes on after it"
        with pytest.raises(ValueError):
            txn.commit_take(end - 1, "h1", 6)
    st = q.peek_state()
    assert (st.offset, st.ops, st.taken_since, st.size) == (
        end,
        {"h1": 5},
        500.0,
        len(b"#c\na\nb\nc\n"),
    )
    assert bytes.fromhex(st.mark) == b"#c\na\nb\n"[-32:]
    assert peek(q) == [b"c"]
    assert (tmp_path / "jobs").read_bytes() == b"#c\na\nb\nc\n", "taking rewrites nothing"


def test_commit_op(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs", b"a\n")
    with q.transaction() as txn:
        txn.commit_op("h2", 9)
    assert q.peek_state().ops == {"h2": 9}
    assert peek(q) == [b"a"]


class CountingOpen:
    """Wraps ``open`` in pbq.jobfile: counts the bytes read from the jobfile."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.bytes_read = 0
        self.opens = 0

    def __call__(self, file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 - closed by the caller
        if Path(file) != self.target:
            return f
        self.opens += 1
        counter = self

        class Wrapped:
            def read(self, n: int = -1) -> bytes:
                data = f.read(n)
                counter.bytes_read += len(data)
                return data

            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                f.close()

        return Wrapped()


def test_take_from_a_big_jobfile_reads_little(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 100_000
    lines = [f"job {i:06d} --input data/{i}.txt".encode() for i in range(n)]
    content = b"".join(line + b"\n" for line in lines)
    path = tmp_path / "jobs"
    q = make(path, content)
    counting = CountingOpen(path)
    monkeypatch.setattr(jobfile_mod, "open", counting, raising=False)

    assert take_commit(q, 3) == lines[:3]
    assert counting.opens > 0, "the wrapper sees the reads"
    assert counting.bytes_read <= CHUNK + 1024
    assert counting.bytes_read < len(content) / 10

    # Jump far into the file: the next take reads from the committed offset only.
    middle = content.index(lines[60_000] + b"\n")
    with q.transaction() as txn:
        txn.commit_take(middle, "h1", 2)
    counting.bytes_read = 0
    assert take_commit(q, 5, op=3) == lines[60_000:60_005]
    assert counting.bytes_read <= CHUNK + 1024
    assert q.peek_state().offset == middle + sum(len(line) + 1 for line in lines[60_000:60_005])


# ---------------------------------------------------------------------- compaction


def test_compaction_after_compact_after(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    content = b"aaaaaaaa\nbbbbbbbb\n# keep me\n\nc\nd\n"  # 18 of 33 bytes taken
    path = tmp_path / "jobs"
    q = make(path, content, compact_after=2.0, clock=clock, compact_min=0)
    with q.transaction() as txn:
        assert not txn.maybe_compact(), "nothing consumed: nothing to compact"
        lines, end = txn.take(2)
        txn.commit_take(end, "h1", 1)
    clock.t = 1001.9
    with q.transaction() as txn:
        assert not txn.maybe_compact()
    assert path.read_bytes() == content
    clock.t = 1002.0
    with q.transaction() as txn:
        assert txn.maybe_compact()
    assert path.read_bytes() == content[end:] == b"# keep me\n\nc\nd\n"
    st = q.peek_state()
    assert (st.offset, st.mark, st.taken_since, st.size) == (0, "", None, len(content) - end)
    assert st.ops == {"h1": 1}
    assert peek(q) == [b"c", b"d"]
    assert sorted(os.listdir(tmp_path)) == [".jobs.old-1", "jobs", "jobs.lock", "jobs.queue"]
    assert [(o.name, o.done) for o in st.olds] == [(".jobs.old-1", len(content))]
    clock.t = 1004.0  # consumed and quiet for compact_after: the replaced file goes
    assert peek(q) == [b"c", b"d"]
    assert sorted(os.listdir(tmp_path)) == ["jobs", "jobs.lock", "jobs.queue"], "no temp file left"
    assert q.peek_state().olds == []


def test_compaction_clock_starts_at_first_take(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    q = make(tmp_path / "jobs", b"a\nb\nc\n", compact_after=10.0, clock=clock, compact_min=0)
    take_commit(q, 1)
    clock.t = 9.0
    take_commit(q, 1, op=2)  # a later take does not postpone compaction
    clock.t = 10.0
    with q.transaction() as txn:
        assert txn.maybe_compact()
    assert (tmp_path / "jobs").read_bytes() == b"c\n"


def test_forced_compaction_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\n", compact_after=3600)
    path.chmod(0o640)
    take_commit(q, 1)
    with q.transaction() as txn:
        assert not txn.maybe_compact()
        assert txn.maybe_compact(force=True)
    assert path.read_bytes() == b"b\n"
    assert path.stat().st_mode & 0o777 == 0o640


def test_compaction_of_everything(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\n", compact_after=0)
    assert drain(q) == [b"a", b"b"]
    with q.transaction() as txn:
        assert txn.maybe_compact()
    assert path.read_bytes() == b""
    assert peek(q) == []


# ---------------------------------------------------------------------- prepend / append


def test_prepend_puts_lines_at_the_front(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\nc\n")
    assert take_commit(q, 2) == [b"a", b"b"]
    with q.transaction() as txn:
        txn.prepend([b"b", b"\xffx"], "h1", 2)
    assert path.read_bytes() == b"b\n\xffx\nc\n"
    st = q.peek_state()
    assert (st.offset, st.ops, st.pending) == (0, {"h1": 2}, None)
    assert drain(q) == [b"b", b"\xffx", b"c"]


def test_prepend_to_missing_or_empty_jobfile(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs")
    with q.transaction() as txn:
        txn.prepend([b"x"], "h1", 1)
    assert (tmp_path / "jobs").read_bytes() == b"x\n"
    assert q.peek_state().ops == {"h1": 1}


def test_prepend_survives_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write(2) may write less than asked (a full disk, a signal): no byte may be lost."""
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\nc\n")
    take_commit(q, 1)
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data)[:3]))
    back = [b"first line put back", b"second line put back"]
    with q.transaction() as txn:
        txn.prepend(back, "h1", 2)
        txn.append([b"appended at the end"], "h1", 3)
    monkeypatch.undo()
    assert (
        path.read_bytes()
        == b"first line put back\nsecond line put back\nb\nc\nappended at the end\n"
    )


@pytest.mark.parametrize(
    ("content", "after"),
    [
        pytest.param(None, b"x\ny\n", id="missing-file"),
        pytest.param(b"", b"x\ny\n", id="empty-file"),
        pytest.param(b"a\n", b"a\nx\ny\n", id="terminated"),
        # A scheduler's put-back never ends somebody's half-written line: the lines go in
        # before it (nobody writes it here: it stays last, in view).
        pytest.param(b"a\nb", b"a\nx\ny\nb", id="unterminated-last-line"),
        pytest.param(b"a\r\nb\r", b"a\r\nx\ny\nb\r", id="cr-is-not-a-newline"),
    ],
)
def test_append(tmp_path: Path, content: bytes | None, after: bytes) -> None:
    path = tmp_path / "jobs"
    q = make(path, content)
    with q.transaction() as txn:
        txn.append([b"x", b"y"], "h1", 4)
    assert path.read_bytes() == after
    st = q.peek_state()
    assert (st.ops, st.pending, st.size) == ({"h1": 4}, None, len(after))
    assert peek(q) == expected_lines(after)


def test_jobfile_append_ends_an_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb")
    assert drain(q) == [b"a"], "b is not a line until it ends with a newline"
    assert append_file(q, [b"c"]) == [3], "c is the third line: b is numbered before it"
    assert path.read_bytes() == b"a\nb\nc\n"
    assert drain(q) == [b"b", b"c"], "b was not glued to c, nor taken twice"


def test_append_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a")
    with q.transaction() as txn:
        txn.append([])
    assert path.read_bytes() == b"a"
    assert not q.state_path.exists()


def test_append_disk_full_is_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\n")
    real = os.write
    calls = []
    inode = path.stat().st_ino

    def full(fd, data):
        if os.fstat(fd).st_ino != inode:
            return real(fd, data)  # the state files still fit
        calls.append(fd)
        if len(calls) == 1:
            return real(fd, bytes(data)[:4])  # part of it fits ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    with q.transaction() as txn:
        monkeypatch.setattr(os, "write", full)
        with pytest.raises(PbqError, match="cannot append to: the disk is full"):
            txn.append([b"xxxxxxxx", b"yyyyyyyy"], "h1", 7)
        monkeypatch.undo()
    assert len(calls) == 2
    assert path.read_bytes() == b"a\n"
    st = q.peek_state()
    assert st.pending is None and "h1" not in st.ops
    assert peek(q) == [b"a"]


# ---------------------------------------------------------------------- hand edits


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        pytest.param(b"x\n", [b"x"], id="shrunk-below-offset"),
        pytest.param(b"new\nnn\n", [b"new", b"nn"], id="shrunk-above-offset"),
        pytest.param(b"A\nB\nC\nD\nE\n", [b"A", b"B", b"C", b"D", b"E"], id="same-size-rewritten"),
        pytest.param(
            b"zzz\nyyy\nc\nd\ne\nf\n",
            [b"zzz", b"yyy", b"c", b"d", b"e", b"f"],
            id="grown-rewritten",
        ),
        pytest.param(b"", [], id="emptied"),
        pytest.param(None, [], id="deleted"),
    ],
)
def test_hand_edit_makes_whole_file_pending(
    tmp_path: Path, edit: bytes | None, expect: list[bytes]
) -> None:
    path = tmp_path / "jobs"
    logs: list[str] = []
    q = make(path, b"a\nb\nc\nd\ne\n", log=logs.append)
    assert take_commit(q, 2) == [b"a", b"b"]
    if edit is None:
        path.unlink()
    else:
        path.write_bytes(edit)
    assert peek(q) == expect
    assert q.peek_state().offset == 0
    assert any("rewritten by something other than pbq" in m for m in logs)
    with q.transaction() as txn:
        txn.append([b"new"])
    assert peek(q) == [*expect, b"new"]


def test_hand_append_is_not_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    logs: list[str] = []
    q = make(path, b"a\nb\nc\n", log=logs.append)
    take_commit(q, 2)
    with open(path, "ab") as f:
        f.write(b"d\n")  # echo d >> jobs
    assert peek(q) == [b"c", b"d"]
    assert not logs


# ---------------------------------------------------------------------- crash recovery


def mark(data: bytes) -> str:
    return data[-32:].hex()


# h2 appends 6 bytes after "a\n" (the 2 bytes of the jobfile at the time)
H2_APPENDS_6 = {"kind": "append", "size": 2, "length": 6, "host": "h2", "op": 7}


# fmt: off
@pytest.mark.parametrize(
    ("before", "tmp", "pending", "after", "ops_after"),
    [
        pytest.param(
            b"a\nb\nc\n", b"x\nb\nc\n", {"kind": "replace", "size": 6, "host": "h1", "op": 4},
            b"x\nb\nc\n", {"h1": 4, "h2": 6}, id="replace-tmp-present-redone",
        ),
        pytest.param(
            b"x\nb\nc\n", None, {"kind": "replace", "size": 6, "host": "h1", "op": 4},
            b"x\nb\nc\n", {"h1": 4, "h2": 6}, id="replace-tmp-absent-finalized",
        ),
        pytest.param(
            b"a\nb\nc\n", b"b\nc\n", {"kind": "replace", "size": 4, "host": None, "op": None},
            b"b\nc\n", {"h1": 3, "h2": 6}, id="compaction-redone",
        ),
        pytest.param(
            b"a\nb\nc\nd", None, H2_APPENDS_6,
            b"a\n", {"h1": 3, "h2": 6}, id="append-partial-truncated",
        ),
        pytest.param(
            b"a\nb\nc\nd\n", None, H2_APPENDS_6,
            b"a\nb\nc\nd\n", {"h1": 3, "h2": 7}, id="append-complete-kept",
        ),
        pytest.param(
            b"a\n", None, H2_APPENDS_6,
            b"a\n", {"h1": 3, "h2": 6}, id="append-nothing-written",
        ),
        pytest.param(
            b"a\nb\n", None, {"kind": "append", "size": 3, "length": 3, "host": None, "op": None},
            b"a\nb", {"h1": 3, "h2": 6}, id="append-newline-glue-undone",
        ),
    ],
)
# fmt: on
def test_crash_recovery(tmp_path: Path, before, tmp, pending, after, ops_after) -> None:
    path = tmp_path / "jobs"
    logs: list[str] = []
    q = make(path, before, log=logs.append, fsync=True)
    if tmp is not None:
        q.compact_tmp.write_bytes(tmp)
    if pending["kind"] == "append":
        offset = 2  # "a\n" was taken before
        write_state(
            q,
            offset=offset,
            size=pending["size"],
            mark=mark(b"a\n"),
            ops={"h1": 3, "h2": 6},
            taken_since=1.0,
            pending=pending,
        )
    else:
        write_state(
            q,
            offset=2,
            size=6,
            mark=mark(b"a\n"),
            ops={"h1": 3, "h2": 6},
            taken_since=1.0,
            pending=pending,
        )
    with q.transaction() as txn:
        assert txn.state.pending is None
    assert path.read_bytes() == after
    assert not q.compact_tmp.exists()
    st = q.peek_state()
    assert st.pending is None and st.ops == ops_after
    assert st.size == len(after)
    if pending["kind"] == "replace":
        assert st.offset == 0 and st.taken_since is None
        assert peek(q) == expected_lines(after)
        assert any("interrupted by a crash" in m for m in logs)
    elif pending["kind"] == "append":
        assert st.offset == 2
        assert peek(q) == expected_lines(after[2:])


def test_unknown_pending_kind_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\n")
    write_state(
        q, offset=2, size=4, mark=mark(b"a\n"), ops={"h1": 3}, pending={"kind": "from-the-future"}
    )
    assert take_commit(q, 1, op=4) == [b"b"]
    assert path.read_bytes() == b"a\nb\n"
    st = q.peek_state()
    assert (st.pending, st.ops, st.offset) == (None, {"h1": 4}, 4)


def test_stray_compact_tmp_is_ignored_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\n")
    take_commit(q, 1)
    q.compact_tmp.write_bytes(b"half-written garbage\n")
    assert peek(q) == [b"b"]
    assert not q.compact_tmp.exists()
    assert path.read_bytes() == b"a\nb\n"
    assert q.peek_state().offset == 2


# ---------------------------------------------------------------------- the .queue format

V1_QUEUES = ROOT / "tests" / "data" / "v1-queue"  # written by pbq 0.1.0; see the README there


def v1_queue(tmp_path: Path, which: str) -> Path:
    """A copy of a jobfile and its format-1 ``.queue``; returns the jobfile."""
    for name in ("jobfile", "jobfile.queue"):
        (tmp_path / name).write_bytes((V1_QUEUES / which / name).read_bytes())
    return tmp_path / "jobfile"


def test_new_records_carry_the_format(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs", b"a\nb\n")
    take_commit(q, 1)
    record = json.loads(q.state_path.read_text())
    assert record["format"] == 2, "the lowest format that describes it"
    assert jobfile_mod.FORMAT == 3
    assert "version" not in record


@pytest.mark.parametrize(
    ("which", "pending", "ops"),
    [
        pytest.param("after-run", [b"true fourth", b"true fifth"], {"v1host": 2}, id="after-run"),
        pytest.param("mid-take", [b"true fifth"], {"v1host": 3}, id="mid-take"),
    ],
)
def test_format_1_queue_is_read_and_upgraded(
    tmp_path: Path, which: str, pending: list[bytes], ops: dict[str, int]
) -> None:
    """A queue upgraded mid-run: today's pbq takes and appends where pbq 0.1.0 left off."""
    jf = v1_queue(tmp_path, which)
    assert "format" not in json.loads(jf.with_name("jobfile.queue").read_text())
    logs: list[str] = []
    q = make(jf, log=logs.append)
    assert q.peek_state().ops == ops
    assert take_commit(q, 1, host="new", op=1) == pending[:1]
    r = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "jobfile-append"), str(jf), "-"],
        input=b"true sixth\n",
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert take_commit(q, 10, host="new", op=2) == [*pending[1:], b"true sixth"]
    assert not logs, "the consumed part was recognized, nothing redone or undone"
    record = json.loads(q.state_path.read_text())
    assert record["format"] == 2
    assert record["ops"] == {**ops, "new": 2}


def test_newer_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\n")
    take_commit(q, 1)
    record = json.loads(q.state_path.read_text())
    record["format"] = 4
    q.state_path.write_text(json.dumps(record))
    before = (path.read_bytes(), q.state_path.read_bytes())
    message = f"{q.state_path}: written by a newer pbq (format 4); upgrade pbq on this machine"
    for attempt in (lambda: take_commit(q, 1, op=2), q.peek_state, lambda: append_file(q, [b"c"])):
        with pytest.raises(PbqError) as err:
            attempt()
        assert str(err.value) == message
    r = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "jobfile-append"), str(path), "-"],
        input=b"c\n",
        capture_output=True,
        timeout=60,
    )
    assert (r.returncode, r.stderr.decode()) == (2, f"jobfile-append: {message}\n")
    assert (path.read_bytes(), q.state_path.read_bytes()) == before
    q.lock.acquire(timeout=10)  # released after each refusal
    q.lock.release()


CRASH = """
import os, sys
from pathlib import Path
from pbq.jobfile import JobQueue
jobfile, where = Path(sys.argv[1]), sys.argv[2]
real_replace, real_write, real_fsync = os.replace, os.write, os.fsync
jobfile_fds = set()

def replace(src, dst, *a, **k):
    if where == "rename" and Path(dst) == jobfile:
        os._exit(9)  # after the tmp file and the pending record, before the rename
    return real_replace(src, dst, *a, **k)

def write(fd, data):
    if b"NEW-" in bytes(data):
        if where == "mid-append":
            real_write(fd, bytes(data)[: len(data) // 2])
            os._exit(9)
    return real_write(fd, data)

def fsync(fd):
    if where == "after-append" and os.fstat(fd).st_ino == os.stat(jobfile).st_ino:
        os._exit(9)  # everything written, nothing committed
    return real_fsync(fd)

os.replace, os.write, os.fsync = replace, write, fsync
q = JobQueue(jobfile)
with q.transaction(10) as txn:
    if where == "rename":
        txn.prepend([b"put back"], "h1", 2)
    else:
        txn.append([b"NEW-1", b"NEW-2"], "h1", 2)
sys.exit(0)
"""


@pytest.mark.parametrize(
    ("where", "pending", "ops"),
    [
        pytest.param("rename", [b"put back", b"b", b"c"], {"h1": 2}, id="prepend-before-rename"),
        pytest.param("mid-append", [b"b", b"c"], {"h1": 1}, id="mid-append"),
        pytest.param(
            "after-append", [b"b", b"c", b"NEW-1", b"NEW-2"], {"h1": 2}, id="append-before-commit"
        ),
    ],
)
def test_real_crash(tmp_path: Path, where: str, pending: list[bytes], ops: dict) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\nc\n", fsync=True)
    assert take_commit(q, 1, op=1) == [b"a"]
    p = subprocess.run(
        [sys.executable, "-c", CRASH, str(path), where],
        env=ENV,
        cwd=ROOT,
        timeout=60,
        capture_output=True,
    )
    assert p.returncode == 9, p.stderr.decode()
    assert q.peek_state().pending is not None, "the crash left a change half done"
    assert peek(q) == pending
    st = q.peek_state()
    assert st.pending is None and st.ops == ops
    assert not q.compact_tmp.exists()


# ---------------------------------------------------------------------- retries


def test_retries(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs", b"a\n")
    with q.transaction() as txn:
        assert txn.retries_of(b"a") == 0
        txn.set_retries(b"a", 2)
        txn.set_retries(b"\xff b", 1)
        txn.set_retries(b"never", 0)  # nothing to remove: nothing written
        assert txn.retries_of(b"a") == 2 and txn.retries_of(b"\xff b") == 1
        assert txn.retries_of(b"a ") == 0
    with q.transaction() as txn:
        assert txn.retries_of(b"a") == 2
        txn.set_retries(b"a", 0)
        assert txn.retries_of(b"a") == 0
    assert len(json.loads(q.retries_path.read_text())) == 1


def test_retries_garbage_file(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs", b"a\n")
    q.retries_path.write_bytes(b"\x00garbage")
    with q.transaction() as txn:
        assert txn.retries_of(b"a") == 0
        txn.set_retries(b"a", 1)
        assert txn.retries_of(b"a") == 1


# ---------------------------------------------------------------------- concurrency


def _taker(jobfile: str, host: str, out: str, stop: str, lock: str, seed: int) -> None:
    rnd = random.Random(seed)
    q = JobQueue(Path(jobfile), lock=lock, fsync=False, compact_after=0.01)
    taken: list[bytes] = []
    returned: list[bytes] = []
    op = 0
    while True:
        stopping = os.path.exists(stop)  # read before taking: nothing is appended after it
        with q.transaction(timeout=60) as txn:
            lines, end = txn.take(rnd.randint(1, 4))
            if lines or end > txn.state.offset:
                op += 1
                txn.commit_take(end, host, op)
            got = [pl.line for pl in lines]
            if got and rnd.random() < 0.1:  # put one back at the front (a requeue)
                op += 1
                txn.prepend(got[-1:], host, op)
                returned.append(got[-1])
            txn.maybe_compact()
        taken += got
        if not got and stopping:
            break
    Path(out).write_text(
        json.dumps({"taken": [x.hex() for x in taken], "returned": [x.hex() for x in returned]})
    )


def _appender(jobfile: str, name: str, n: int, lock: str, seed: int) -> None:
    rnd = random.Random(seed)
    q = JobQueue(Path(jobfile), lock=lock, fsync=False)
    i = 0
    while i < n:
        k = rnd.randint(1, 6)
        batch = [f"{name} {j} \xe9".encode("latin-1") for j in range(i, min(n, i + k))]
        i += len(batch)
        if rnd.random() < 0.3:
            batch.append(b"# a comment, never taken")
        with q.transaction(timeout=60) as txn:
            txn.append(batch, end_last_line=True)  # like jobfile-append


@contextlib.contextmanager
def processes(ctx, specs) -> Iterator[list]:
    procs = [ctx.Process(target=t, args=a) for t, a in specs]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("lock", "per_appender"), [("flock", 300), ("soft", 80)])
def test_concurrent_takers_and_appenders(tmp_path: Path, lock: str, per_appender: int) -> None:
    path = tmp_path / "jobs"
    initial = [f"init {i}".encode() for i in range(per_appender // 2)]
    path.write_bytes(b"".join(x + b"\n" for x in initial) + b"#comment\n\ninit-last")
    initial.append(b"init-last")
    stop = tmp_path / "stop"
    ctx = multiprocessing.get_context("spawn")
    n_takers, appenders = 3, ["A", "B"]
    outs = [tmp_path / f"taken.{i}" for i in range(n_takers)]
    appender_specs = [
        (_appender, (str(path), a, per_appender, lock, i)) for i, a in enumerate(appenders)
    ]
    taker_specs = [
        (_taker, (str(path), f"h{i}", str(outs[i]), str(stop), lock, 10 + i))
        for i in range(n_takers)
    ]
    with contextlib.ExitStack() as stack:
        aps = stack.enter_context(processes(ctx, appender_specs))
        tks = stack.enter_context(processes(ctx, taker_specs))
        for p in aps:
            p.join(90)
            assert p.exitcode == 0
        stop.write_text("")
        for p in tks:
            p.join(90)
            assert p.exitcode == 0
    taken: Counter[bytes] = Counter()
    returned: Counter[bytes] = Counter()
    for out in outs:
        data = json.loads(out.read_text())
        taken.update(bytes.fromhex(x) for x in data["taken"])
        returned.update(bytes.fromhex(x) for x in data["returned"])
    want = Counter(initial)
    want.update(f"{a} {j} \xe9".encode("latin-1") for a in appenders for j in range(per_appender))
    assert taken - returned == want, "every line taken exactly once (put-back lines once more)"
    assert taken == want + returned
    q = make(path)
    assert peek(q) == []
    assert q.peek_state().ops.keys() <= {f"h{i}" for i in range(n_takers)}


# ---------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400), n=st.integers(1, 5))
def test_random_jobfile(data: bytes, n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        q = make(Path(d) / "jobs", data)
        want = expected_lines(data)
        with q.transaction() as txn:  # raises nothing at all (not even PbqError)
            got = [pl.line for pl in txn.take(10**6)[0]]
        assert got == want
        assert all(is_job_line(x) and b"\n" not in x for x in got)
        assert drain(q, n) == want


line_bytes = st.binary(max_size=40).filter(lambda b: b"\n" not in b)


@settings(max_examples=150, deadline=None)
@given(pre=st.binary(max_size=100), lines=st.lists(line_bytes, max_size=8))
def test_appended_lines_come_back(pre: bytes, lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        q = make(Path(d) / "jobs", pre)
        assert drain(q, 2) == expected_lines(pre)
        with q.transaction() as txn:
            txn.append(lines, "h9", 99)
        # byte for byte, but for blank and comment lines (skipped) and a trailing CR (CRLF)
        assert drain(q, 3) == [
            x.rstrip(b"\r") for x in lines if x.strip() and not x.strip().startswith(b"#")
        ]


# ---------------------------------------------------------------------- unlocked appends


def test_compaction_waits_until_half_is_consumed(tmp_path: Path) -> None:
    """Compaction copies at most what was consumed: amortized O(1) per line."""
    path = tmp_path / "jobs"
    content = b"".join(b"line %03d\n" % i for i in range(100))  # 9 bytes a line
    q = make(path, content, compact_after=0, compact_min=300)
    take_commit(q, 30)  # 270 bytes: under compact_min
    with q.transaction() as txn:
        assert not txn.maybe_compact()
    take_commit(q, 10, op=2)  # 360 bytes, but under half of 900
    with q.transaction() as txn:
        assert not txn.maybe_compact()
    take_commit(q, 10, op=3)  # 450 of 900
    with q.transaction() as txn:
        assert txn.maybe_compact()
    assert path.read_bytes() == content[450:]


def test_compaction_waits_for_unlocked_appends_to_stop(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\n", compact_after=2.0, clock=clock)
    assert drain(q) == [b"a", b"b"]
    clock.t = 103.0
    with open(path, "ab") as f:
        f.write(b"c\n")  # an unlocked append
    with q.transaction() as txn:
        assert not txn.maybe_compact(), "grown outside the lock just now"
    assert q.peek_state().grew_at == 103.0
    assert take_commit(q, 5, op=3) == [b"c"]
    clock.t = 104.9
    with q.transaction() as txn:
        assert not txn.maybe_compact()
    clock.t = 105.0
    with q.transaction() as txn:
        assert txn.maybe_compact()
    assert path.read_bytes() == b""


def test_no_compaction_while_a_writer_holds_the_file_open(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\n", compact_after=0)
    assert drain(q) == [b"a", b"b"]
    with open(path, "ab"), q.transaction() as txn:
        assert not txn.maybe_compact(), "the read lease saw a writer"
        assert not txn.maybe_compact(force=True)
    with q.transaction() as txn:
        assert txn.maybe_compact()


def test_no_compaction_while_the_last_line_is_unfinished(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\nrm -rf /scratch/me", compact_after=0)
    assert drain(q) == [b"a", b"b"]
    with q.transaction() as txn:
        assert not txn.maybe_compact(force=True)
        assert txn.find_tail() == b"rm -rf /scratch/me"
    assert path.read_bytes() == b"a\nb\nrm -rf /scratch/me"


def test_partial_tail_is_logged_once_per_tail(tmp_path: Path) -> None:
    logs: list[str] = []
    path = tmp_path / "jobs"
    q = make(path, b"a\npart", log=logs.append)
    assert peek(q) == [b"a"]
    assert peek(q) == [b"a"]
    with open(path, "ab") as f:
        f.write(b"ial")
    assert peek(q) == [b"a"]
    assert [m.split(": ")[-1] for m in logs if "no newline yet" in m] == ["part", "partial"]
    with open(path, "ab") as f:
        f.write(b"\n")
    assert peek(q) == [b"a", b"partial"]
    with q.transaction() as txn:
        assert txn.find_tail() is None and txn.count_pending() == 2


def test_writes_into_the_replaced_file_are_taken_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\nhalf", compact_after=0)
    with open(path, "ab", buffering=0) as w:  # opened before the rename
        assert take_commit(q, 1) == [b"a"]
        with q.transaction() as txn:
            txn.prepend([b"back"], "h1", 2)  # a rewrite while w is open
        w.write(b" line\nlate\n")
        st = q.peek_state()
        assert st.format() == 3 and [o.name for o in st.olds] == [".jobs.old-1"]
        assert json.loads(q.state_path.read_text())["format"] == 3
        assert path.read_bytes() == b"back\nb\n", "the unfinished line stays with its writer"
        with q.transaction() as txn:
            assert txn.count_pending() == 4
        assert take_commit(q, 1, op=3) == [b"half line"], "replaced files first"
        assert drain(q) == [b"late", b"back", b"b"]
        assert peek(q) == []
        assert (tmp_path / ".jobs.old-1").exists(), "still open for writing: kept"
    assert peek(q) == []  # any lock holder tends the replaced files
    assert not (tmp_path / ".jobs.old-1").exists(), "consumed, closed and quiet: removed"
    st = q.peek_state()
    assert st.olds == [] and json.loads(q.state_path.read_text())["format"] == 2


def test_replaced_file_is_kept_while_open_for_writing(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    path = tmp_path / "jobs"
    q = make(path, b"a\n", compact_after=1.0, clock=clock)
    w = open(path, "ab", buffering=0)  # noqa: SIM115
    try:
        with q.transaction() as txn:
            txn.prepend([b"x"], "h1", 1)
        clock.t = 10.0
        assert peek(q) == [b"x", b"a"]
        assert (tmp_path / ".jobs.old-1").exists(), "someone here may still write to it"
    finally:
        w.close()
    assert peek(q) == [b"x", b"a"]
    assert not (tmp_path / ".jobs.old-1").exists()


def test_stray_link_of_a_dead_holder_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"a\nb\n", compact_after=0)
    os.link(path, tmp_path / ".jobs.old-4")  # linked, then the holder died before deciding
    assert drain(q) == [b"a", b"b"]
    with q.transaction() as txn:
        assert txn.maybe_compact()
    assert [o.name for o in q.peek_state().olds] == [".jobs.old-1"]
    assert not (tmp_path / ".jobs.old-4").exists()


def test_signature_changes_before_a_commit_record_exists(tmp_path: Path) -> None:
    path = tmp_path / "jobs"
    q = make(path, b"")
    sig = q.signature()
    assert not q.state_path.exists()
    with open(path, "ab") as f:
        f.write(b"echo hi\n")
    assert q.signature() != sig


def test_epochs(tmp_path: Path) -> None:
    q = make(tmp_path / "jobs", b"a\n")
    assert q.peek_state().epochs == {}
    with q.transaction() as txn:
        assert txn.epoch_of("h1") == 0
        assert txn.bump_epoch("h1") == 1
        assert txn.bump_epoch("h1") == 2
        assert txn.bump_epoch("h2") == 1
    assert q.peek_state().epochs == {"h1": 2, "h2": 1}
    record = json.loads(q.state_path.read_text())
    assert record["format"] == 2, "format-2 readers ignore epochs"
    take_commit(q, 1)
    with q.transaction() as txn:
        assert txn.epoch_of("h1") == 2, "kept by every commit"
    del record["epochs"]
    q.state_path.write_text(json.dumps(record))
    assert q.peek_state().epochs == {}
