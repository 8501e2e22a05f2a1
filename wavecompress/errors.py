"""Errors a user can act on. The CLI prints them as one line and exits with their code."""

from __future__ import annotations


class WavecompressError(Exception):
    """Base class for errors that carry a user-facing one-line message and an exit code."""

    exit_code = 1


class InputError(WavecompressError):
    """The input (file, tensor, config or option) is wrong; exit code 2."""

    exit_code = 2


class OutputExistsError(InputError):
    """The output path exists and --force was not given."""
