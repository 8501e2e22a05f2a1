"""Read safetensors files with errors that name the file and the tensor."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import InputError
from .safetensors_file import open_regular, open_safetensors, read_regular_bytes


MAX_JSON_BYTES = 64 << 20  # configs and indexes are kilobytes; a bigger one is not a config


def check_readable_file(path: Path, what: str = "file") -> None:
    """Raise InputError unless ``path`` is an existing, readable regular file (a FIFO is refused, not opened)."""
    if not path.exists():
        raise InputError(f"{path}: no such {what}")
    os.close(open_regular(path))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header metadata of a safetensors file, validated on the way in (plain reads, no mmap)."""
    if not Path(path).exists():
        raise InputError(f"{path}: no such file")
    with open_safetensors(path) as reader:
        metadata = reader.metadata()
        tensors = {key: reader.get_tensor(key) for key in sorted(reader.keys())}
    return tensors, metadata


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, with InputError for a missing file, a FIFO, invalid or absurdly nested JSON."""
    if not Path(path).exists():
        raise InputError(f"{path}: no such file")
    raw = read_regular_bytes(path, MAX_JSON_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: invalid JSON (nested too deeply)") from None
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
    if tensor.is_floating_point() and tensor.element_size() == 1:
        tensor = tensor.float()  # float8: torch has no isfinite kernel for it
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{path}: tensor {key} has {bad} non-finite values (NaN/Inf)")
