"""Declared layer sizes checked against a memory budget before anything of that size is allocated.

A few kilobytes of config (or a rank-1 LoRA) can declare a 200000×200000 layer; converting it
needs dense float32 copies of ΔW. The budget is the smallest of: memory the kernel reports as
available, the address-space limit (``ulimit -v``), and ``WAVECOMPRESS_MEMORY_LIMIT`` (e.g. ``8GB``).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from ..errors import InputError
from ..units import parse_size_text

ENV = "WAVECOMPRESS_MEMORY_LIMIT"
# Dense float32 copies of one layer alive at once while converting it (ΔW, its transform, the
# reconstruction and the residual/baselines); measured peaks stay below this many.
COPIES = 3


def _parse_size(text: str) -> int:
    size = parse_size_text(text)
    if size is None:
        raise InputError(f"{ENV}={text!r}: expected a size such as 8GB or 512MiB")
    return size


def _available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_budget() -> tuple[int | None, str]:
    """(bytes one layer may use, where that limit comes from); None when nothing is known."""
    limits: list[tuple[int, str]] = []
    if (text := os.environ.get(ENV)):
        limits.append((_parse_size(text), ENV))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((soft, "the address-space limit (ulimit -v)"))
    if (available := _available()) is not None:
        limits.append((available, "available memory"))
    if not limits:
        return None, ""
    return min(limits)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def check_layer_size(source: str | Path | None, layer: str, shape: tuple[int, ...], copies: int = COPIES) -> None:
    """Refuse a layer whose declared shape needs more memory than the budget, before allocating it."""
    where_from = f"{source}: " if source is not None else ""
    if len(shape) != 2 or not all(type(n) is int and n > 0 for n in shape):
        raise InputError(f"{where_from}layer {layer} declares shape {list(shape)}; expected two positive sizes")
    need = shape[0] * shape[1] * 4 * copies
    budget, where = memory_budget()
    if budget is not None and need > budget:
        raise InputError(f"{where_from}layer {layer} declares shape {shape[0]}×{shape[1]}; converting it needs about "
                         f"{_gb(need)}, more than the {_gb(budget)} allowed by {where}")
