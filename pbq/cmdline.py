"""How a job line becomes a process.

Rule (documented in the README): a line is run by ``/bin/sh -c LINE`` when it contains
shell syntax -- any of the characters ``| & ; < > ( ) $ ` \\ " ' * ? [ ] ~ { } # !`` or
``=`` in its first word, or its first word is a shell keyword or builtin (``cd``,
``export``, ``if``, ...).  Otherwise it is split on blanks and executed directly, found
through ``$PATH``: no shell, no extra process, and the job's pid is the program's pid.
"""

from __future__ import annotations

SHELL_CHARS = frozenset("|&;<>()$`\\\"'*?[]~{}#!\n")
SHELL_WORDS = frozenset(
    """if then else elif fi case esac for select while until do done in function time
    cd . source export unset set eval exec exit return shift ulimit umask alias unalias
    read readonly local trap wait times break continue type command builtin let declare
    typeset hash jobs fg bg""".split()
)


def needs_shell(line: str) -> bool:
    if any(c in SHELL_CHARS for c in line):
        return True
    words = line.split()
    if not words:
        return False
    return words[0] in SHELL_WORDS or "=" in words[0]


def job_argv(line: bytes, shell: str = "/bin/sh") -> list[bytes]:
    """The argv that runs ``line`` (bytes in, bytes out: any encoding passes through)."""
    text = line.decode("latin-1")  # one char per byte: only ASCII syntax matters here
    if needs_shell(text):
        return [shell.encode(), b"-c", line]
    return line.split()
