"""Flags that fall back to environment variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def flag(
    parser: argparse.ArgumentParser,
    name: str,
    env: str,
    default: Any = None,
    help: str = "",
    type: Callable[[str], Any] = str,
    repeat: bool = False,
) -> None:
    """Add ``--name``; its default comes from ``env`` if that is set.

    A repeated flag's variable holds comma-separated values.
    """
    raw = os.environ.get(env)
    if raw is not None:
        try:
            default = [type(v) for v in raw.split(",") if v] if repeat else type(raw)
        except ValueError:
            parser.exit(2, f"{parser.prog}: {env}={raw!r} is not a valid value\n")
    elif repeat and default is None:
        default = []
    shown = f"{help} (env {env}" + (f", default {default!r})" if default else ")")
    if repeat:
        parser.add_argument(name, action="append", type=type, default=None, help=shown)
        parser.set_defaults(**{_dest(name) + "_env": default})
    else:
        parser.add_argument(name, type=type, default=default, help=shown)


def repeated(args: argparse.Namespace, name: str) -> list[Any]:
    """The values of a repeated flag: those given, else the env default."""
    given = getattr(args, name)
    return list(given) if given else list(getattr(args, name + "_env"))


def _dest(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def positive(value: str) -> int:
    """A whole number of 1 or more."""
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a whole number of 1 or more")
    return number


def port(value: str) -> int:
    """A TCP port number, 0 (any free port) to 65535."""
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"{value} is not a TCP port (0 to 65535)")
    return number
