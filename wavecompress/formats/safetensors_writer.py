"""Deterministic safetensors bytes: the same tensors and metadata always give the same file.

safetensors serialises the header's ``__metadata__`` from a hash map, so its key order (and the
file's bytes) can change between runs. We re-emit the header as sorted, compact JSON; tensor data
and offsets are untouched, so any safetensors reader loads the result unchanged.
"""

from __future__ import annotations

import json
import torch
from safetensors.torch import save


def deterministic_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors file content with a canonical (sorted, compact, space-padded) JSON header."""
    raw = save({key: value.contiguous() for key, value in tensors.items()}, metadata=metadata)
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + length :]

