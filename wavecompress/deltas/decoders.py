"""Decoders: how a stored layer of a given peft_type becomes a dense ΔŴ.

Readers of stored formats (wavecompress outputs, stock PEFT WaveFT) need each method's
``reconstruct`` but never import the methods: every method registration fills in its peft_type's
decoder here (methods/registry.py), so the data path stays one-way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ..errors import InputError


class Decoder(NamedTuple):
    """The method that writes a peft_type, and its ``reconstruct(tensors, meta, shape)``."""

    method: str
    reconstruct: Callable[[dict[str, torch.Tensor], dict[str, Any], tuple[int, int]], torch.Tensor]
    # (tensors, meta, shape) → (L, R) with ΔŴ = L @ Rᵀ, for methods whose layers are low rank (WaRA), else None
    low_rank_factors: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None


_DECODERS: dict[str, Decoder] = {}


def register_decoder(peft_type: str, method: str, reconstruct: Callable[..., torch.Tensor],
                     low_rank_factors: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    """Record how ``peft_type`` layers are rebuilt (the first method registered for a type keeps it)."""
    _DECODERS.setdefault(peft_type, Decoder(method, reconstruct, low_rank_factors))


def unregister_decoder(method: str) -> None:
    """Forget the decoders of ``method``."""
    for peft_type in [t for t, d in _DECODERS.items() if d.method == method]:
        del _DECODERS[peft_type]


def decoder_of(peft_type: Any) -> Decoder | None:
    """The decoder of ``peft_type``, or None when no registered method writes it."""
    return _DECODERS.get(peft_type) if isinstance(peft_type, str) else None


def require_decoder(peft_type: str, where: str) -> Decoder:
    """The decoder of ``peft_type``, or InputError naming ``where``."""
    decoder = decoder_of(peft_type)
    if decoder is None:
        raise InputError(f"{where}: no registered method rebuilds peft_type {peft_type!r}")
    return decoder
