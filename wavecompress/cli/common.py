"""Shared CLI plumbing: one-line errors with exit codes, the --debug option, default paths."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import WavecompressError
from ..text_safety import escape_controls
from ..methods.registry import all_methods, method_names


class InterruptedAfterWrite(KeyboardInterrupt):
    """Ctrl-C after the command already wrote its output; the message says what is on disk."""


def one_line(message: str) -> str:
    """``message`` as one terminal-safe line: newlines, escape sequences and other control characters escaped."""
    return escape_controls(message)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """One-line errors: exit 2 for bad input, 1 for internal errors, a traceback only with --debug."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except WavecompressError as exc:
            if debug:
                raise
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            message = str(exc) if isinstance(exc, InterruptedAfterWrite) else "no output was written"
            click.echo(f"interrupted; {message}", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if debug:
                raise
            click.echo(f"internal error: {type(exc).__name__}: {one_line(str(exc))} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)

    return wrapper


debug_option = click.option("--debug", is_flag=True, help="Show the full traceback on errors.")


class MethodChoice(click.Choice):
    """``--method``: a registered output method or ``auto``, read from the registry when parsed
    (so a method registered after the CLI was imported is accepted too)."""

    def __init__(self) -> None:
        super().__init__([], case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:
        return (*method_names(output=True), "auto")

    @choices.setter
    def choices(self, value: object) -> None:  # click.Choice.__init__ assigns; the registry is the source
        pass


def method_help() -> str:
    """One clause per output method (its description), then auto."""
    return "; ".join(f"{m.name}: {m.description}" for m in all_methods() if m.output) + "; auto: try each, keep the lowest error."


def levels_help() -> str:
    """--levels help with each wavelet method's default depths."""
    wavelet = [m for m in all_methods() if m.wavelet]
    plain = ", ".join(f"{m.default_levels} for {m.name}" for m in wavelet)
    reordered = " and ".join(str(m.default_levels_reordered) for m in wavelet)
    return (f"Decomposition depth per axis (default: {plain}; {reordered} when reordered); "
            "reduced per axis until the size divides by 2^levels.")


class LocalOrHubPath(click.Path):
    """An input path that may also be a Hub repo id ``owner/name``: text that is visibly a local path
    (``./x/y``, ``../x``, ``~/x``, ``x/y/``) stays local even when missing, so a typo is never sent to the
    Hub (click's Path would turn ``./x/y`` into ``x/y``, which looks like a repo id)."""

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        path = super().convert(value, param, ctx)
        raw = os.fspath(value)
        if isinstance(raw, str) and not os.path.lexists(raw):
            if raw.startswith(("./", "../", "~", ".\\", "..\\")) or raw.endswith(("/", "\\")):
                return Path(os.path.abspath(os.path.expanduser(raw)))
        return path


INPUT_PATH = LocalOrHubPath()
