"""Deltas given in memory: a mapping {name: dense tensor | (B_scaled, A) | LayerDelta}, or a path to read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .adapter_deltas import AdapterDeltas
from .layer_delta import LayerDelta

DeltaSource = str | Path | AdapterDeltas | Mapping[str, Any]


def as_adapter_deltas(source: DeltaSource) -> AdapterDeltas:
    """Accept a path, AdapterDeltas, or a mapping {name: dense tensor | (B_scaled, A) | LayerDelta}."""
    if isinstance(source, AdapterDeltas):
        return source
    if isinstance(source, (str, Path)):
        from . import load_deltas

        return load_deltas(source)
    if isinstance(source, Mapping):
        layers = []
        for name, value in source.items():
            if isinstance(value, LayerDelta):
                layers.append(value)
            elif isinstance(value, torch.Tensor):
                if value.dim() != 2:
                    raise InputError(f"tensor {name}: expected a 2-D delta, got shape {tuple(value.shape)}")
                layers.append(LayerDelta.from_dense(name, value))
            elif isinstance(value, (tuple, list)) and len(value) == 2:
                layers.append(LayerDelta.from_factors(name, value[0], value[1]))
            else:
                raise InputError(f"tensor {name}: expected a tensor, a (B, A) pair or a LayerDelta")
        if not layers:
            raise InputError("no layers given")
        return AdapterDeltas(source="<tensors>", kind="tensors", layers=layers)
    raise InputError(f"cannot read deltas from {type(source).__name__}")
