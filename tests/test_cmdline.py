"""Tests for pbq.cmdline: which lines need /bin/sh and the argv that runs a line."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbq.cmdline import UNQUOTED_SHELL_CHARS, job_argv, needs_shell

DIRECT = [
    pytest.param(b"sleep 1", [b"sleep", b"1"], id="simple"),
    pytest.param(b"prog", [b"prog"], id="one-word"),
    pytest.param(
        b"/usr/bin/env python3 -V", [b"/usr/bin/env", b"python3", b"-V"], id="absolute-path"
    ),
    pytest.param(
        b"./run.sh --n 5 out.txt", [b"./run.sh", b"--n", b"5", b"out.txt"], id="relative-path"
    ),
    pytest.param(b"  prog   a    b  ", [b"prog", b"a", b"b"], id="runs-of-spaces"),
    pytest.param(b"prog\ta\t\tb", [b"prog", b"a", b"b"], id="tabs"),
    pytest.param(
        b"prog --opt=value x=1", [b"prog", b"--opt=value", b"x=1"], id="equals-not-in-first-word"
    ),
    pytest.param(
        b"prog a-b_c.d,e:f@g%h+i^j", [b"prog", b"a-b_c.d,e:f@g%h+i^j"], id="harmless-punctuation"
    ),
    pytest.param(b"python3 -c pass", [b"python3", b"-c", b"pass"], id="python-c"),
    pytest.param(
        b"prog caf\xc3\xa9 \xff\xfe",
        [b"prog", b"caf\xc3\xa9", b"\xff\xfe"],
        id="non-utf8-bytes-pass-through",
    ),
    pytest.param(b"\xe9t\xe9 x", [b"\xe9t\xe9", b"x"], id="latin1-program-name"),
    pytest.param(b"ifconfig -a", [b"ifconfig", b"-a"], id="keyword-prefix-is-not-keyword"),
    pytest.param(b"cdrecord x", [b"cdrecord", b"x"], id="builtin-prefix-is-not-builtin"),
    pytest.param(
        b"prog if then for", [b"prog", b"if", b"then", b"for"], id="keywords-as-arguments"
    ),
    pytest.param(b"prog a\xa0b", [b"prog", b"a\xa0b"], id="nbsp-is-not-a-blank"),
    pytest.param(b"prog a\x85b", [b"prog", b"a\x85b"], id="nel-is-not-a-blank"),
    pytest.param(b"prog a\x0bb\x0cc", [b"prog", b"a\x0bb\x0cc"], id="vt-ff-are-not-blanks"),
    pytest.param(b"prog a\rb", [b"prog", b"a\rb"], id="cr-is-not-a-blank"),
    pytest.param(b"prog a\xc2\xa0b", [b"prog", b"a\xc2\xa0b"], id="utf8-nbsp-is-not-a-blank"),
    pytest.param(
        b"prog a\xc2\x85b c\xe3\x80\x80d",
        [b"prog", b"a\xc2\x85b", b"c\xe3\x80\x80d"],
        id="unicode-spaces-are-not-blanks",
    ),
    # quotes without expansions inside: removed, as the shell would
    pytest.param(b"prog 'a b' c", [b"prog", b"a b", b"c"], id="single-quotes-removed"),
    pytest.param(b'prog "a b"', [b"prog", b"a b"], id="double-quotes-removed"),
    pytest.param(
        b"prog '$HOME * ~ | ;'", [b"prog", b"$HOME * ~ | ;"], id="syntax-inside-single-quotes"
    ),
    pytest.param(
        b'prog "* ~ | ; # !"', [b"prog", b"* ~ | ; # !"], id="syntax-inside-double-quotes"
    ),
    pytest.param(b"prog a'b c'd", [b"prog", b"ab cd"], id="quotes-inside-word"),
    pytest.param(b"prog '' x", [b"prog", b"", b"x"], id="empty-quoted-argument"),
    pytest.param(b"prog \"a'b\" 'c\"d'", [b"prog", b"a'b", b'c"d'], id="quote-in-other-quotes"),
    pytest.param(
        b"prog 'caf\xc3\xa9 \xff'", [b"prog", b"caf\xc3\xa9 \xff"], id="bytes-inside-quotes"
    ),
    pytest.param(
        b"prog 'a\xc2\xa0b'\t'c d'", [b"prog", b"a\xc2\xa0b", b"c d"], id="quoted-tab-separated"
    ),
]

SHELL = [
    pytest.param(b"echo a | wc -l", id="pipe"),
    pytest.param(b"prog > out", id="redirect-out"),
    pytest.param(b"prog < in", id="redirect-in"),
    pytest.param(b"prog 2>&1", id="redirect-fd"),
    pytest.param(b"a && b", id="and"),
    pytest.param(b"a || b", id="or"),
    pytest.param(b"a; b", id="semicolon"),
    pytest.param(b"prog &", id="background"),
    pytest.param(b"(cd x && make)", id="subshell"),
    pytest.param(b"{ a; b; }", id="group"),
    pytest.param(b"echo $HOME", id="dollar"),
    pytest.param(b"echo ${X:-y}", id="braced-parameter"),
    pytest.param(b"echo $(date)", id="command-substitution"),
    pytest.param(b"echo `date`", id="backticks"),
    pytest.param(b'echo "$HOME"', id="dollar-in-double-quotes"),
    pytest.param(b'echo "`date`"', id="backtick-in-double-quotes"),
    pytest.param(b'echo "a\\"b"', id="backslash-in-double-quotes"),
    pytest.param(b"echo 'a b", id="unbalanced-single-quote"),
    pytest.param(b'echo "a b', id="unbalanced-double-quote"),
    pytest.param(b"echo 'a' | cat", id="quotes-and-pipe"),
    pytest.param(b"'cd' x", id="quoted-builtin"),
    pytest.param(b'A="1 2" prog', id="quoted-assignment"),
    pytest.param(b"echo a\\ b", id="backslash"),
    pytest.param(b"ls *.txt", id="glob-star"),
    pytest.param(b"ls file?.txt", id="glob-question"),
    pytest.param(b"ls file[12].txt", id="glob-bracket"),
    pytest.param(b"ls ~/x", id="tilde"),
    pytest.param(b"prog # comment", id="comment"),
    pytest.param(b"! prog", id="bang"),
    pytest.param(b"A=1 prog", id="assignment"),
    pytest.param(b"A=1", id="assignment-only"),
    pytest.param(b"cd /tmp", id="cd"),
    pytest.param(b"export A=1", id="export"),
    pytest.param(b"for i in 1 2", id="for"),
    pytest.param(b"if true", id="if"),
    pytest.param(b"while true", id="while"),
    pytest.param(b"exec prog", id="exec"),
    pytest.param(b". ./env.sh", id="dot"),
    pytest.param(b"source env.sh", id="source"),
    pytest.param(b"ulimit -v 100", id="ulimit"),
    pytest.param(b"umask 022", id="umask"),
    pytest.param(b"time prog", id="time"),
    pytest.param(b": nothing", id="colon-builtin"),
    pytest.param(b"  cd x", id="leading-blanks-builtin"),
    pytest.param(b"prog\xff | cat", id="non-utf8-with-pipe"),
]


@pytest.mark.parametrize(("line", "argv"), DIRECT)
def test_direct(line: bytes, argv: list[bytes]) -> None:
    assert not needs_shell(line.decode("latin-1"))
    assert job_argv(line) == argv


@pytest.mark.parametrize("line", SHELL)
def test_shell(line: bytes) -> None:
    assert needs_shell(line.decode("latin-1"))
    assert job_argv(line) == [b"/bin/sh", b"-c", line]  # the line itself, byte for byte


def test_other_shell() -> None:
    assert job_argv(b"echo $X", shell="/bin/bash") == [b"/bin/bash", b"-c", b"echo $X"]


@pytest.mark.parametrize("char", sorted(UNQUOTED_SHELL_CHARS))
def test_every_shell_char_needs_shell(char: str) -> None:
    assert needs_shell(f"prog a{char}b")
    if char not in "$`\\":
        assert not needs_shell(f"prog 'a{char}b'")


@given(st.binary(min_size=1, max_size=60))
def test_bytes_pass_through(line: bytes) -> None:
    argv = job_argv(line)
    if needs_shell(line.decode("utf-8", "surrogateescape")):
        assert argv == [b"/bin/sh", b"-c", line]
    elif b"'" not in line and b'"' not in line:
        # direct, no quotes: the words, in order, are the line's bytes minus blanks
        assert b"".join(argv) == line.replace(b" ", b"").replace(b"\t", b"")
        assert all(w and b" " not in w and b"\t" not in w for w in argv)
    else:
        # direct with quotes: the words are the line's bytes minus blanks and quotes
        unquoted = b"".join(argv)
        assert len(unquoted) <= len(line)
        assert set(unquoted) <= set(line)


@given(
    st.lists(
        st.binary(min_size=1, max_size=8).filter(lambda w: b"'" not in w), min_size=1, max_size=5
    )
)
def test_single_quoted_words_come_back(words: list[bytes]) -> None:
    line = b"prog " + b" ".join(b"'" + w + b"'" for w in words)
    assert job_argv(line) == [b"prog", *words]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"printf '%s|' a b", id="shell"),
        pytest.param(b"printf %s| a b", id="shell-pipe-char"),
        pytest.param(b"printf <%s> a\xff b", id="shell-bytes"),
        pytest.param(b"printf [%s] a\xff b", id="glob-chars"),
        pytest.param(b"printf '[%s]' 'a b' \"c\xc2\xa0d\" ''", id="direct-with-quotes"),
        pytest.param(b"printf %s, a\xc2\xa0b\x0bc\rd e", id="odd-blanks"),
    ],
)
def test_argv_runs_like_sh(line: bytes) -> None:
    """Direct or not, a line gives the same output as running it with /bin/sh."""
    want = subprocess.run([b"/bin/sh", b"-c", line], capture_output=True, timeout=10)
    got = subprocess.run(job_argv(line), capture_output=True, timeout=10)
    assert (got.returncode, got.stdout) == (want.returncode, want.stdout)


def test_direct_argv_runs_like_sh() -> None:
    """A plain line exec'd directly gets the same arguments /bin/sh would have given it."""
    line = b"/bin/echo a\xff\t b\xe9  -x"
    assert not needs_shell(line.decode("latin-1"))
    want = subprocess.run([b"/bin/sh", b"-c", line], capture_output=True, timeout=10)
    got = subprocess.run(job_argv(line), capture_output=True, timeout=10)
    assert want.returncode == got.returncode == 0
    assert got.stdout == want.stdout == b"a\xff b\xe9 -x\n"
