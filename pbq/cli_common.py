"""What every command module shares: click settings, error handling, config flags.

The command modules (cli.py, cli_control.py, cli_ops.py) import this one and nothing
imports them back except cli.py, which puts the commands together.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from .errors import PbqError

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# A jobfile or hostfile argument: a path that may not be a directory.
FILE_ARG = click.Path(path_type=Path, dir_okay=False)

Params = ParamSpec("Params")
Result = TypeVar("Result")
Decorated = TypeVar("Decorated", bound=Callable[..., Any])


def friendly(prog: str) -> Callable[[Callable[Params, Result]], Callable[Params, Result]]:
    """Turn PbqError into one clear line and exit status 2."""

    def wrap(fn: Callable[Params, Result]) -> Callable[Params, Result]:
        @functools.wraps(fn)
        def inner(*args: Params.args, **kwargs: Params.kwargs) -> Result:
            try:
                return fn(*args, **kwargs)
            except PbqError as err:
                click.echo(f"{prog}: {err}", err=True)
                sys.exit(err.exit_code)

        return inner

    return wrap


def config_flags(**values: object) -> dict[tuple[str, str], object]:
    """Command-line settings for load_config: ``section__key=value``, None meaning unset."""
    out: dict[tuple[str, str], object] = {}
    for name, value in values.items():
        if value is None:
            continue
        section, key = name.split("__")
        out[(section, key)] = value
    return out


# ``--config FILE`` (as ``config_path``); click makes a new option each time it is applied.
config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="Config file (TOML)."
)


def flag_option(name: str, help: str) -> Callable[[Decorated], Decorated]:
    """An on/off flag that is None when not given, so the config file and environment decide."""
    return click.option(name, is_flag=True, default=None, help=help)


def lock_option(help: str) -> Callable[[Decorated], Decorated]:
    """``--lock flock|soft`` (the kinds of locking.py)."""
    return click.option("--lock", type=click.Choice(["flock", "soft"]), help=help)


def output_dir_option(help: str) -> Callable[[Decorated], Decorated]:
    return click.option("--output-dir", type=click.Path(path_type=Path, file_okay=False), help=help)
