"""Read safetensors files with errors that name the file and the tensor."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import InputError


def check_readable_file(path: Path, what: str = "file") -> None:
    """Raise InputError unless ``path`` is an existing, readable regular file."""
    if not path.exists():
        raise InputError(f"{path}: no such {what}")
    if not path.is_file():
        raise InputError(f"{path}: is not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header metadata of a safetensors file, validated on the way in."""
    check_readable_file(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        raise InputError(f"{path}: not a safetensors file (only {len(head)} bytes)")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as reader:
            metadata = dict(reader.metadata() or {})
            for key in sorted(reader.keys()):
                tensors[key] = reader.get_tensor(key)
    except SafetensorError as exc:
        raise InputError(f"{path}: not a valid safetensors file ({exc})") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"{path}: cannot read safetensors data ({exc})") from None
    return tensors, metadata


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, with InputError for a missing file or invalid JSON."""
    check_readable_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


_SKIP_NONFINITE = contextvars.ContextVar("wavecompress_skip_nonfinite", default=False)


class NonFiniteError(InputError):
    """A tensor holds NaN/Inf values."""


@contextlib.contextmanager
def skip_nonfinite_layers(enabled: bool = True) -> Iterator[None]:
    """Within this block, readers that support it skip layers with NaN/Inf values (with a warning)."""
    token = _SKIP_NONFINITE.set(enabled)
    try:
        yield
    finally:
        _SKIP_NONFINITE.reset(token)


def nonfinite_layers_skipped() -> bool:
    """Whether the caller asked to skip non-finite layers instead of refusing the input."""
    return _SKIP_NONFINITE.get()


def check_finite(path: Path, key: str, tensor: torch.Tensor) -> None:
    """Refuse NaN/Inf values: a diverged run's adapter would poison every method silently."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{path}: tensor {key} has {bad} non-finite values (NaN/Inf)")
