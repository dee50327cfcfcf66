"""The command-line modules: one-way imports, and each command loads only what it needs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pbqtest import BIN, ROOT, jobfile

COMMAND_MODULES = sorted((ROOT / "pbq").glob("cli_*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every pbq module that ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module)
            else:  # from . import x
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pbq."):
            names.add((node.module or "").removeprefix("pbq."))
        elif isinstance(node, ast.Import):
            pbq_names = (a.name for a in node.names if a.name.startswith("pbq."))
            names.update(name.removeprefix("pbq.") for name in pbq_names)
    return names


def test_command_modules_never_import_the_entry_module() -> None:
    """cli.py puts the commands together; the modules it imports never import it back."""
    assert {p.name for p in COMMAND_MODULES} >= {"cli_common.py", "cli_control.py", "cli_ops.py"}
    for path in COMMAND_MODULES:
        assert "cli" not in imported_modules(path), f"{path.name} imports pbq.cli"
    assert imported_modules(ROOT / "pbq" / "cli_common.py") <= {"errors"}


def loaded_modules(*argv: str | Path, input: bytes | None = None) -> set[str]:
    """The modules a command imports (python -X importtime lists them on stderr)."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *map(str, argv)],
        capture_output=True,
        input=input,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    lines = r.stderr.decode().splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


HEAVY = {"psutil", "pbq.scheduler", "pbq.sensors", "pbq.proc", "pbq.report", "pbq.ops"}


def test_jobfile_append_loads_neither_psutil_nor_the_scheduler(tmp_path: Path) -> None:
    jf = jobfile(tmp_path, ["true"])
    loaded = loaded_modules(BIN / "jobfile-append", jf, "-", input=b"true again\n")
    assert "pbq.jobfile" in loaded
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    assert jf.read_bytes() == b"true\ntrue again\n"


@pytest.mark.parametrize("prog", ["pbq", "pbq-single", "jobfile-append"])
def test_help_loads_no_command_work(prog: str) -> None:
    loaded = loaded_modules(BIN / prog, "--help")
    assert "pbq.cli" in loaded
    unneeded = loaded & (HEAVY | {"pbq.jobfile", "pbq.control"})
    assert not unneeded, sorted(unneeded)


@pytest.mark.parametrize(("prog", "name"), [("pbq", "pbq"), ("pbq-single", "single"),
                                          ("jobfile-append", "append")])
def test_console_commands_end_at_once_with_everything_said(prog: str, name: str) -> None:
    """The entry points skip the interpreter's teardown (os._exit): what a command printed
    still arrives whole through a pipe (as with the ordinary exit), and its exit status is
    the command's."""
    ordinary = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pbq import cli; "
                f"cli.{name}(prog_name={prog!r})")
    ways = {"at once": [str(BIN / prog)], "ordinary": ["-c", ordinary]}
    out = {}
    for way, argv in ways.items():
        r = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        out[way] = r.stdout
    assert out["at once"] == out["ordinary"]
    assert out["at once"].startswith(f"Usage: {prog} ")
    bad = subprocess.run([sys.executable, str(BIN / prog), "--no-such-option"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "No such option" in bad.stderr and "--no-such-option" in bad.stderr
