"""Memory prediction from earlier runs of the same kind of command (BioQueue's headline feature,
kept simple and predictable).

**Key of a command.** Commands that differ only in their inputs and option values share a key:

1. The command line is split like the shell does (quotes, ``|``, ``&&``, ``;``, ``>``...). Only
   the first simple command counts: everything from the first ``|``, ``||``, ``&&``, ``;`` or
   ``&`` on is ignored. Redirections (``>``, ``>>``, ``<``, ``2>`` ...) and their targets are
   dropped. Leading ``NAME=value`` environment assignments are skipped.
2. The program is the basename of the first word (``/usr/bin/bwa`` -> ``bwa``).
3. The first argument after the program is kept when it is a sub-command word (a letter, then
   letters, digits, ``_`` or ``-``: ``bwa mem``, ``samtools sort``), or, when the program is an
   interpreter (``sh bash python python3 perl Rscript ruby node``), its basename (the script:
   ``python3 /x/align.py`` -> ``python3 align.py``).
4. Then every later word that starts with ``-`` (but is not ``-`` alone), with an ``=value`` part
   cut off (``--threads=8`` -> ``--threads``), in command-line order. The words that follow
   options (their values) and every other argument (inputs, outputs) are left out.
5. Only the first 64 KiB of the line count, and the key is cut at 256 characters.

So ``bwa mem -t 8 ref.fa a.fq > a.sam`` and ``bwa mem -t 16 ref.fa b.fq > b.sam`` both have the
key ``bwa mem -t``.

**Store.** A JSON-lines file (path chosen by the caller) with one record per finished run:
``{"key", "peak_rss_bytes", "cpu_seconds", "runtime", "time", "ok"}`` (``ok``: exit 0; absent
in records of the first release), appended under a lock (``<file>.lock``, filelock) so several
schedulers can share it. Unreadable lines are skipped. Past ``MAX_BYTES`` it is compacted to
the newest runs of each key.

**Prediction.** With at least :data:`MIN_RUNS` (3) earlier runs of a key that measured their peak
memory: 1.2 × the largest peak, rounded up to a whole megabyte; else None (no prediction).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .statefiles import atomic_write

MIN_RUNS = 3
MARGIN = 1.2
MB = 1 << 20
KEY_SCAN = 1 << 16  # characters of a command line that its key is made from
KEY_MAX = 256  # characters of a key
INTERPRETERS = frozenset({"sh", "bash", "python", "python3", "perl", "Rscript", "ruby", "node"})

_CONTROL = {"|", "||", "&&", ";", "&", ";;", "|&", "(", ")"}
_REDIRECT_RE = re.compile(r"^\d*(>|>>|<|<<|<<<|>&|<&|&>|&>>|>\|)$")
_ASSIGN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SUBCOMMAND_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


# One token: blanks, a run of operator characters, a comment, or a word made of unquoted
# characters, quoted strings and backslash escapes (shlex's posix, punctuation_chars rules).
_TOKEN_RE = re.compile(
    r"""(?P<blank>\s+)
      | (?P<op>[();<>|&]+)
      | (?P<comment>\#.*)
      | (?P<word>(?:[^\s();<>|&'"\\]+|'[^']*'|"(?:[^"\\]|\\.)*"|\\.)+)""",
    re.VERBOSE | re.DOTALL,
)
# The parts of a word, to take its quotes off.
_PART_RE = re.compile(r"""'([^']*)'|"((?:[^"\\]|\\.)*)"|\\(.)|([^'"\\]+)""", re.DOTALL)
_DQ_ESCAPE_RE = re.compile(r"""\\([\\"])""")


def _unquote(word: str) -> str:
    out = []
    for single, double, escaped, plain in _PART_RE.findall(word):
        out.append(single or _DQ_ESCAPE_RE.sub(r"\1", double) or escaped or plain)
    return "".join(out)


def _words(command: str) -> list[str]:
    """The command's words and operators, in time linear in its length (shlex is quadratic
    in a word's length: a 2 MB line took it about a minute)."""
    words: list[str] = []
    pos = 0
    while pos < len(command):
        m = _TOKEN_RE.match(command, pos)
        if m is None:  # an unbalanced quote: fall back to plain words
            return command.split()
        pos = m.end()
        if m.lastgroup == "op":
            words.append(m.group())
        elif m.lastgroup == "word":
            words.append(_unquote(m.group()))
        elif m.lastgroup == "comment" and (not words or command[m.start() - 1].isspace()):
            break  # "#" starts a comment only at the start of a word
    return words


def command_key(command: str) -> str:
    """The key of COMMAND (see the module docstring); "" for an empty command.

    Only the first KEY_SCAN characters are looked at and the key is cut at KEY_MAX, so a
    huge job line costs little and makes no huge key."""
    words: list[str] = []
    raw = _words(command[:KEY_SCAN])
    i = 0
    while i < len(raw):
        word = raw[i]
        if word in _CONTROL:
            break
        if _REDIRECT_RE.match(word) or (
            word.isdigit() and i + 1 < len(raw) and _REDIRECT_RE.match(raw[i + 1])
        ):
            # "2>" may come as "2" ">" from the lexer: skip the fd, the operator and its target.
            i += 2 if not word.isdigit() else 3
            continue
        words.append(word)
        i += 1
    while words and _ASSIGN_RE.match(words[0]):
        words.pop(0)
    if not words:
        return ""
    program = os.path.basename(words[0].rstrip("/")) or words[0]
    key = [program]
    rest = words[1:]
    if rest and not rest[0].startswith("-"):
        first = rest[0]
        if program in INTERPRETERS:
            key.append(os.path.basename(first))
            rest = rest[1:]
        elif _SUBCOMMAND_RE.match(first):
            key.append(first)
            rest = rest[1:]
    key += [w.split("=", 1)[0] for w in rest if w.startswith("-") and w != "-"]
    return " ".join(key)[:KEY_MAX]


def predict_from_peaks(peaks: Iterable[int | None]) -> int | None:
    """1.2 × the largest peak (bytes), rounded up to whole MB, given >= 3 measured peaks."""
    measured = [p for p in peaks if p is not None and p > 0]
    if len(measured) < MIN_RUNS:
        return None
    return math.ceil(MARGIN * max(measured) / MB) * MB


def format_mem(nbytes: int) -> str:
    """Bytes -> whole megabytes, rounded up, as a size pbq's resources accept: ``"1234M"``."""
    return f"{max(1, math.ceil(nbytes / MB))}M"


@dataclass(frozen=True)
class Run:
    key: str
    peak_rss_bytes: int | None
    cpu_seconds: float | None
    runtime: float | None
    time: float = 0.0
    ok: bool | None = None  # exit 0 (None: not recorded, e.g. written by the first release)

    def to_json(self) -> str:
        d = {"key": self.key, "peak_rss_bytes": self.peak_rss_bytes,
             "cpu_seconds": self.cpu_seconds, "runtime": self.runtime, "time": self.time}
        if self.ok is not None:
            d["ok"] = self.ok
        return json.dumps(d, sort_keys=True)


MAX_BYTES = 8 << 20  # JOBFILE.usage is compacted once it grows past this
KEEP_PER_KEY = 200  # runs of each command key kept by a compaction


class ResourceStore:
    """Finished runs in a JSON-lines file; safe to share between processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = FileLock(f"{self.path}.lock")

    def record(
        self,
        key: str,
        peak_rss_bytes: int | None,
        cpu_seconds: float | None,
        runtime: float | None,
    ) -> None:
        """Append one finished run of KEY (None where it was not measured)."""
        self.record_many([Run(key, peak_rss_bytes, cpu_seconds, runtime, round(time.time(), 3))])

    def record_many(self, runs: list[Run]) -> None:
        """Append finished runs, in one write under the store's lock."""
        if not runs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(r.to_json() + "\n" for r in runs)
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(data)
                size = f.tell()
            if size > MAX_BYTES:
                self._compact()

    def _compact(self) -> None:
        """Keep the newest ``KEEP_PER_KEY`` runs of each key, and at most half of
        ``MAX_BYTES`` (the medians and peaks it serves need no more).  Under the store's lock."""
        runs = self._read()
        kept: dict[str, list[Run]] = {}
        for r in reversed(runs):
            group = kept.setdefault(r.key, [])
            if len(group) < KEEP_PER_KEY:
                group.append(r)
        newest = sorted((r for group in kept.values() for r in group), key=lambda r: r.time)
        lines = [r.to_json() + "\n" for r in newest]
        # Down to half the bound at most, oldest first, so a compaction is followed by many
        # appends before the next one (amortized O(1) per run, however many keys).
        total, start = sum(len(x) for x in lines), 0
        while total > MAX_BYTES // 2 and start < len(lines):
            total -= len(lines[start])
            start += 1
        atomic_write(self.path, "".join(lines[start:]).encode())

    def runs(self, key: str | None = None) -> list[Run]:
        """Every recorded run (of KEY only, when given), oldest first."""
        with self._lock:
            runs = self._read()
        return runs if key is None else [r for r in runs if r.key == key]

    def _read(self) -> list[Run]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        result = []
        for line in text.splitlines():
            try:
                data = json.loads(line)
                result.append(Run(
                    str(data["key"]),
                    _opt_int(data.get("peak_rss_bytes")),
                    _opt_float(data.get("cpu_seconds")),
                    _opt_float(data.get("runtime")),
                    float(data.get("time") or 0.0),
                    data.get("ok") if isinstance(data.get("ok"), bool) else None,
                ))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
        return result

    def median_runtimes(self, min_runs: int = 3) -> dict[str, float]:
        """Per key, the median run time of its successful runs (keys with at least
        ``min_runs`` of them)."""
        by_key: dict[str, list[float]] = {}
        for r in self.runs():
            if r.ok and r.runtime is not None:
                by_key.setdefault(r.key, []).append(r.runtime)
        return {k: statistics.median(v) for k, v in by_key.items() if len(v) >= min_runs}

    def predict_mem(self, key: str) -> int | None:
        """Predicted peak memory of KEY in bytes (see :func:`predict_from_peaks`)."""
        return predict_from_peaks(r.peak_rss_bytes for r in self.runs(key))

    def predict_mem_for(self, command: str) -> int | None:
        return self.predict_mem(command_key(command))


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    return int(value)


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    return float(value)


__all__: Sequence[str] = (
    "MIN_RUNS",
    "ResourceStore",
    "Run",
    "command_key",
    "format_mem",
    "predict_from_peaks",
)
