"""Deltas given in memory: a mapping {name: dense tensor | (B_scaled, A) | LayerDelta}, an adapter state dict
(PEFT keys with its config, kohya keys), a model holding PEFT LoRA/DoRA layers, or a path to read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .adapter_deltas import AdapterDeltas
from .layer_delta import LayerDelta

DeltaSource = str | Path | AdapterDeltas | Mapping[str, Any] | torch.nn.Module


def as_adapter_deltas(source: DeltaSource, adapter_name: str | None = None, config: Any = None) -> AdapterDeltas:
    """Accept a path, AdapterDeltas, a model holding PEFT LoRA/DoRA layers (adapter ``adapter_name``,
    default the active one), an adapter state dict (PEFT keys need ``config``: a PeftConfig or an
    adapter_config dict), or a mapping {name: dense tensor | (B_scaled, A) | LayerDelta}."""
    from .peft_model import holds_lora_layers, read_adapter_state_dict, read_peft_model

    if (adapter_name is not None or config is not None) and not (
            isinstance(source, Mapping) or holds_lora_layers(source)):
        raise InputError("adapter_name= and config= apply to a model holding PEFT LoRA layers or an adapter state dict")
    if isinstance(source, AdapterDeltas):
        return source
    if isinstance(source, (str, Path)):
        from . import load_deltas

        return load_deltas(source)
    if isinstance(source, torch.nn.Module):
        if not holds_lora_layers(source):
            raise InputError(f"{type(source).__name__}: holds no PEFT LoRA or DoRA layers (compress reads an adapter: "
                             "a PeftModel, a model with LoRA layers, a folder, or {name: ΔW})")
        return read_peft_model(source, adapter_name, config)
    if isinstance(source, Mapping):
        if (adapter := read_adapter_state_dict(source, config)) is not None:
            return adapter
        if adapter_name is not None or config is not None:
            raise InputError("config= and adapter_name= apply to an adapter state dict (lora_A/lora_B keys); "
                             "this mapping has none")
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
