"""User-facing errors: printed as one clear line, never as a traceback."""

from __future__ import annotations


class PbqError(Exception):
    """An error the user can fix: bad input, refused operation, missing file.

    ``str(err)`` is the whole message, prefixed with ``path:line:`` when known.
    The command-line layer prints it and exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return f"{where}{self.message}"


class UsageError(PbqError):
    """A command used the wrong way (unknown command, bad option value)."""
