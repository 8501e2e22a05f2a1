"""Reader for wavecompress's own WAVECOMPRESS_* outputs: every layer rebuilt as a dense ΔŴ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..formats.peft_types import METHOD_OF_PEFT_TYPE
from ..methods import get_method
from .adapter_deltas import AdapterDeltas
from .layer_delta import LayerDelta
from .peft_lora import PREFIX
from .safetensors_reader import check_finite, read_safetensors


def read_wavecompress_adapter(config: dict[str, Any], weights_path: Path) -> AdapterDeltas:
    """Dense deltas of a top-k WaveFT or WaRA output, plus its passthrough tensors."""
    method = get_method(METHOD_OF_PEFT_TYPE[config["peft_type"]])
    tensors, metadata = read_safetensors(weights_path)
    layer_meta = config.get("layers")
    if not isinstance(layer_meta, dict) or not layer_meta:
        raise InputError(f"{weights_path.parent / 'adapter_config.json'}: missing the per-layer 'layers' table")
    claimed: set[str] = set()
    layers = []
    for name in sorted(layer_meta):
        meta = layer_meta[name]
        prefix = f"{PREFIX}{name}."
        own = {key[len(prefix) :]: tensors[key] for key in tensors if key.startswith(prefix)}
        claimed.update(prefix + key for key in own)
        for key, value in own.items():
            check_finite(weights_path, prefix + key, value)
        shape = tuple(int(v) for v in meta["shape"])
        try:
            dense = method.reconstruct(own, meta, shape)
        except (KeyError, ValueError, RuntimeError, IndexError) as exc:
            raise InputError(f"{weights_path}: layer {name} cannot be rebuilt ({exc})") from None
        stored = sum(v.numel() for v in own.values() if v.is_floating_point())  # indices and permutations are not values
        layers.append(LayerDelta.from_dense(name, dense, stored_values=stored))
    passthrough = {key: value for key, value in tensors.items() if key not in claimed}
    return AdapterDeltas(
        source=str(weights_path), kind=method.NAME, layers=layers, config=config, passthrough=passthrough, metadata=metadata
    )


def stack_dense(deltas: AdapterDeltas) -> dict[str, torch.Tensor]:
    """{module name: dense ΔW} for every layer of ``deltas``."""
    return {layer.name: layer.to_dense() for layer in deltas.layers}
