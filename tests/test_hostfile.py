"""Tests for pbq.hostfile: parsing, errors with file:line, host lookup."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbq.errors import PbqError
from pbq.hostfile import Host, find_host, load_hostfile, machine_name, parse_hostfile

SAMPLE = """\
# name arch max wday interactive
alpha   linux 8   4   1
beta.example.org linux 1.5 0.5 0   # trailing comment

headnode linux 50 50 0 drm=slurm queue=debug cpu=1 mem=2G vmem= walltime=01:00:00
*       linux 2 1 1
"""


def test_sample_parses() -> None:
    hosts = parse_hostfile(SAMPLE)
    assert [h.name for h in hosts] == ["alpha", "beta.example.org", "headnode", "*"]
    alpha, beta, head, star = hosts
    alpha_fields = (alpha.arch, alpha.max, alpha.wday, alpha.interactive, alpha.line)
    assert alpha_fields == ("linux", 8, 4, 1, 2)
    assert isinstance(alpha.max, float)
    assert (beta.max, beta.wday, beta.interactive, beta.line) == (1.5, 0.5, 0, 3)
    assert head.line == 5
    assert list(head.fields.items()) == [
        ("drm", "slurm"),
        ("queue", "debug"),
        ("cpu", "1"),
        ("mem", "2G"),
        ("vmem", ""),
        ("walltime", "01:00:00"),
    ]
    assert head.drm == "slurm"
    assert alpha.drm is None and dict(alpha.fields) == {}
    assert star.line == 6


def test_fields_read_only_and_hashable() -> None:
    (host,) = parse_hostfile("h linux 1 1 0 drm=SGE")
    with pytest.raises(TypeError):
        host.fields["x"] = "y"  # type: ignore[index]
    assert host.drm == "sge"
    assert hash(host) == hash(parse_hostfile("h linux 1 1 0 drm=SGE")[0])
    assert host == parse_hostfile("h linux 1 1 0 drm=SGE")[0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "# only a comment\n   # another\n",
        "\t  \n",
    ],
)
def test_empty_hostfiles(text: str) -> None:
    assert parse_hostfile(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("h linux 0 0 0", (0.0, 0.0, 0)),
        ("h linux 2 10 3", (2.0, 10.0, 3)),  # wday > max is allowed
        ("h linux .5 1. 007", (0.5, 1.0, 7)),
        ("h\tlinux\t3\t3\t0", (3.0, 3.0, 0)),
        ("h linux 1 1 0#comment", (1.0, 1.0, 0)),
        ("h linux 1 1 0\r", (1.0, 1.0, 0)),
        ("\ufeffh linux 1 1 0", (1.0, 1.0, 0)),
    ],
)
def test_valid_numbers(text: str, expected: tuple[float, float, int]) -> None:
    (host,) = parse_hostfile(text)
    assert (host.max, host.wday, host.interactive) == expected
    assert host.name == "h"


def test_drm_empty_is_none() -> None:
    (host,) = parse_hostfile("h linux 1 1 0 drm=")
    assert host.drm is None
    assert host.fields == {"drm": ""}


def test_crlf_and_bytes() -> None:
    hosts = parse_hostfile(b"a linux 1 1 0\r\nb linux 2 2 0\r\n")
    assert [(h.name, h.line) for h in hosts] == [("a", 1), ("b", 2)]
    (host,) = parse_hostfile("h\u00e9 linux 1 1 0".encode())
    assert host.name == "h\u00e9"


KV = "expected key=value after interactive (key is [A-Za-z_][A-Za-z0-9_]*), got "


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a b", 1, "expected 'name arch max wday interactive [key=value ...]', got 2 fields"),
        ("ok linux 1 1 0\n\nx", 3, "got 1 field"),
        ("h linux 2 2 drm=slurm", 1, "got 4 fields before 'drm=slurm'"),
        ("h linux x 1 0", 1, "max must be a non-negative number, got 'x'"),
        ("h linux -1 1 0", 1, "max must be a non-negative number, got '-1'"),
        ("h linux nan 1 0", 1, "max must be a non-negative number"),
        ("h linux inf 1 0", 1, "max must be a non-negative number"),
        ("h linux 1e3 1 0", 1, "max must be a non-negative number"),
        ("h linux 1_0 1 0", 1, "max must be a non-negative number"),
        ("h linux 1 1.2.3 0", 1, "wday must be a non-negative number, got '1.2.3'"),
        ("h linux 1 \u0661 0", 1, "wday must be a non-negative number"),
        ("h linux 1 1 1.5", 1, "interactive must be a non-negative integer, got '1.5'"),
        ("h linux 1 1 -2", 1, "interactive must be a non-negative integer"),
        ("h linux 1 1 " + "9" * 40, 1, "interactive must be a non-negative integer"),
        ("h linux 1 1 0 extra", 1, "expected key=value after interactive"),
        ("h linux 1 1 0 a=1 extra", 1, KV + "'extra'"),
        ("h linux 1 1 0 1a=2", 1, KV + "'1a=2'"),
        ("h linux 1 1 0 =2", 1, KV + "'=2'"),
        ("h linux 1 1 0 a-b=2", 1, KV + "'a-b=2'"),
        ("h linux 1 1 0 a=1 a=2", 1, "duplicate field 'a'"),
        ("h\0 linux 1 1 0", 1, "NUL"),
        ("\n\nh linux 1 1 0 # \0", 3, "NUL"),
        ("h\x01x linux 1 1 0", 1, "host name contains a control"),
        ("h linux\x7f 1 1 0", 1, "arch contains a control"),
        ("h\rx linux 1 1 0", 1, "host name contains a control"),
        ("h\u00a0x linux 1 1 0", 1, "host name contains a control or non-printable character"),
        ("h linux 1 1 0 a=\x1b[31m", 1, "value of a contains a control"),
        ("h\x0bx linux 1 1 0", 1, "host name contains a control"),
        ("a linux 1 1 0\n# c\nA linux 1 1 0", 3, "duplicate host 'A' (already defined on line 1)"),
        ("* linux 1 1 0\n* linux 2 2 0", 2, "duplicate host '*' (already defined on line 1)"),
    ],
)
def test_invalid_lines(text: str, line: int, message: str) -> None:
    with pytest.raises(PbqError) as info:
        parse_hostfile(text, "hosts.txt")
    err = info.value
    assert err.path == "hosts.txt" and err.line == line
    assert str(err).startswith(f"hosts.txt:{line}: ")
    assert message in str(err)


def test_invalid_utf8_names_line() -> None:
    with pytest.raises(PbqError) as info:
        parse_hostfile(b"a linux 1 1 0\n# ok\n\nb linux 1 1 0\nb\xff linux 1 1 0\n", "h")
    assert str(info.value) == "h:5: not valid UTF-8"


def test_surrogates_in_str_are_rejected() -> None:
    with pytest.raises(PbqError, match=r"^h:1: host name contains"):
        parse_hostfile("a\udcff linux 1 1 0", "h")


def test_long_token_is_shortened() -> None:
    with pytest.raises(PbqError) as info:
        parse_hostfile("h linux " + "x" * 1000 + " 1 0")
    assert len(str(info.value)) < 120


def test_load_hostfile(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("a linux 1 1 0\nb linux 1 x 0\n")
    with pytest.raises(PbqError) as info:
        load_hostfile(path)
    assert str(info.value) == f"{path}:2: wday must be a non-negative number, got 'x'"
    path.write_text("a linux 1 1 0\n")
    assert [h.name for h in load_hostfile(str(path))] == ["a"]


@pytest.mark.parametrize("name", ["missing", "dir"])
def test_load_hostfile_unreadable(tmp_path: Path, name: str) -> None:
    (tmp_path / "dir").mkdir()
    path = tmp_path / name
    with pytest.raises(PbqError) as info:
        load_hostfile(path)
    assert str(info.value).startswith(f"{path}: cannot read hostfile: ")


HOSTS = parse_hostfile(
    """\
alpha linux 1 1 0
Beta.Example.org linux 2 2 0
gamma.lab linux 3 3 0
GAMMA.other linux 4 4 0
delta.x linux 5 5 0
"""
)
WILD = parse_hostfile("alpha linux 1 1 0\n* linux 9 9 0\n")


@pytest.mark.parametrize(
    ("hosts", "name", "found"),
    [
        (HOSTS, "alpha", "alpha"),
        (HOSTS, "ALPHA", "alpha"),
        (HOSTS, "alpha.example.org", "alpha"),
        (HOSTS, "beta", "Beta.Example.org"),
        (HOSTS, "BETA.elsewhere", "Beta.Example.org"),
        (HOSTS, "beta.example.org", "Beta.Example.org"),
        (HOSTS, "gamma.lab", "gamma.lab"),  # exact beats the ambiguous short name
        (HOSTS, "Gamma.Other", "GAMMA.other"),  # case-insensitive full name
        (HOSTS, "delta", "delta.x"),
        (WILD, "alpha", "alpha"),
        (WILD, "zeta", "*"),
        (WILD, "*", "*"),
    ],
)
def test_find_host(hosts: list[Host], name: str, found: str) -> None:
    assert find_host(hosts, name).name == found


def test_find_host_missing_lists_known() -> None:
    with pytest.raises(PbqError) as info:
        find_host(HOSTS[:2], "zeta", "hosts.txt")
    assert str(info.value) == (
        "host 'zeta' is not in hostfile hosts.txt and it has no '*' entry; "
        "known hosts: alpha, Beta.Example.org"
    )


def test_find_host_empty_hostfile() -> None:
    with pytest.raises(PbqError, match=r"known hosts: \(none\)"):
        find_host([], "x")


def test_find_host_ambiguous_short_name() -> None:
    both = r"ambiguous.*gamma\.lab \(line 3\).*GAMMA\.other \(line 4\)"
    with pytest.raises(PbqError, match=both):
        find_host(HOSTS, "gamma")


@pytest.mark.parametrize(
    ("env", "gethostname", "expected"),
    [
        ("Node7.Cluster.example", "ignored", "node7"),
        (None, "Box.local", "box"),
        ("", "plain", "plain"),
    ],
)
def test_machine_name(
    monkeypatch: pytest.MonkeyPatch, env: str | None, gethostname: str, expected: str
) -> None:
    if env is None:
        monkeypatch.delenv("HOSTNAME", raising=False)
    else:
        monkeypatch.setenv("HOSTNAME", env)
    monkeypatch.setattr("socket.gethostname", lambda: gethostname)
    assert machine_name() == expected


# --- properties ----------------------------------------------------------------

_ERROR_RE = re.compile(r"^fuzz\.hosts:[0-9]+: ")


def _check(data: bytes | str) -> None:
    try:
        hosts = parse_hostfile(data, "fuzz.hosts")
    except PbqError as e:
        assert _ERROR_RE.match(str(e)), str(e)
        assert e.line is not None and e.line >= 1
        return
    names = [h.name.lower() for h in hosts]
    assert len(names) == len(set(names))
    for h in hosts:
        assert h.max >= 0 and h.wday >= 0 and h.interactive >= 0
        assert h.name and h.name.isprintable()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes(data: bytes) -> None:
    _check(data)


_TOKENS = st.sampled_from(
    [
        "alpha", "Alpha", "beta.example.org", "*", "linux", "x86_64", "0", "1", "2.5", ".5",
        "-1", "1e3", "nan", "x", "drm=slurm", "queue=", "=", "a=b=c", "1a=2", "#", "# c",
        "\t", " ", "  ", "\0", "\x01", "\r", "\u00e9", "\udcff", "\ufeff", "9" * 30,
    ]
)
_LINES = st.lists(_TOKENS, max_size=9).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=8).map("\n".join))
def test_fuzz_plausible_text(text: str) -> None:
    _check(text)
    if "\udcff" not in text:
        _check(text.encode("utf-8"))
