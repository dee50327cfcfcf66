"""How a job line becomes a process.

Rule (documented in the README): a line runs under ``/bin/sh -c LINE`` when it needs a
shell -- when, outside quotes, it has any of ``| & ; < > ( ) $ ` \\ * ? [ ] ~ { } # !``
or a newline, when a double-quoted part has ``$``, a backquote or a backslash, when its
first word is an assignment (``A=1 cmd``) or a shell keyword or builtin (``cd``,
``export``, ``for`` ...), or when its quotes don't balance.  Otherwise it is split into
words the way the shell would split it (quotes removed) and executed directly, found
through ``$PATH``: no shell, no extra process, and the job's pid is the program's pid.
"""

from __future__ import annotations

import re

UNQUOTED_SHELL_CHARS = frozenset("|&;<>()$`\\*?[]~{}#!\n")
DOUBLE_QUOTED_SHELL_CHARS = frozenset("$`\\")
_SHELL_WORDS_TEXT = """if then else elif fi case esac for select while until do done in function
    time cd . source export unset set eval exec exit return shift ulimit umask alias unalias
    read readonly local trap wait times break continue type command builtin let declare
    typeset hash jobs fg bg : getopts"""
SHELL_WORDS = frozenset(_SHELL_WORDS_TEXT.split())
# The shell splits words on blanks only: space and tab -- not on \r (as shlex does) nor
# on \v, \f and Unicode spaces such as U+00A0 (as str.split() does).
BLANKS = " \t"


def direct_words(line: str) -> list[str] | None:
    """The words to execute directly, or None when the line needs a shell."""
    quote = None
    for c in line:
        if quote == "'":
            if c == "'":
                quote = None
        elif quote == '"':
            if c == '"':
                quote = None
            elif c in DOUBLE_QUOTED_SHELL_CHARS:
                return None
        elif c in "'\"":
            quote = c
        elif c in UNQUOTED_SHELL_CHARS:
            return None
    if quote is not None:
        return None  # unbalanced quotes: let the shell report it
    try:
        words = _split(line)
    except ValueError:
        return None
    if not words:
        return None
    if words[0] in SHELL_WORDS or "=" in words[0]:
        return None
    return words


# A word of a line that needs no shell: plain characters and quoted strings (no backslash
# or $ can be left in it: direct_words sent those to the shell).
_WORD_RE = re.compile(f"""(?:[^{BLANKS}'"]+|'[^']*'|"[^"]*")+""")
_WORD_PART_RE = re.compile(r"""'([^']*)'|"([^"]*)"|([^'"]+)""")


def _split(line: str) -> list[str]:
    """Words as the shell (and shlex) split them, in time linear in the line's length:
    shlex takes quadratic time in a word's length (a 2 MB quoted word took 40 s)."""
    if "'" not in line and '"' not in line:
        return [w for w in re.split(f"[{BLANKS}]+", line) if w]
    return ["".join(a + b + c for a, b, c in _WORD_PART_RE.findall(m.group()))
            for m in _WORD_RE.finditer(line)]


def needs_shell(line: str) -> bool:
    return direct_words(line) is None


def job_argv(line: bytes, shell: str = "/bin/sh") -> list[bytes]:
    """The argv that runs ``line`` (bytes in, bytes out: any encoding passes through)."""
    text = line.decode("utf-8", "surrogateescape")
    words = direct_words(text)
    if words is None:
        return [shell.encode(), b"-c", line]
    return [w.encode("utf-8", "surrogateescape") for w in words]
