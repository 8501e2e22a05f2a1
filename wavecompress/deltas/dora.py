"""PEFT DoRA adapters (``use_dora``): the exact merged delta, which needs the base weights.

ΔW = (m / ‖W + sBA‖_row) ⊙ (W + sBA) − W. The row norms come from the factored form
‖W‖² + 2s·rowdot(W, BA) + s²·rowdot(BA, BA) = ‖W‖² + 2·rowdot(W Aᵀ, sB) + rowdot(sB (AAᵀ), sB),
so besides W itself only d_out × r and r × r intermediates exist; layers are built one at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .adapter_deltas import AdapterDeltas, LazyLayers
from .checkpoints import Checkpoint
from .layer_delta import LayerDelta
from .safetensors_file import open_safetensors
from .safetensors_reader import check_finite

KIND = "peft-dora"
_MAGNITUDE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")
ROW_BLOCK_ELEMENTS = 1 << 20


def base_required_error(weights_path: Path) -> InputError:
    """The error for a DoRA input without base weights: say why they are needed."""
    return InputError(
        f"{weights_path}: DoRA adapter (use_dora=true) needs the base model's weights: its update "
        "(m/‖W+sBA‖)·(W+sBA) − W depends on W itself; pass --base with the base model's safetensors "
        "file, sharded folder or model folder"
    )


def row_norms(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """‖W + left @ right‖ per row (float64), without forming left @ right.

    Uses ‖W_i‖² + 2·(W Rᵀ)_i·L_i + L_i (R Rᵀ) L_iᵀ; W is visited in row blocks so the float64
    temporaries stay small.
    """
    left64, right64 = left.double(), right.double()
    gram = right64 @ right64.T  # r × r
    cross = torch.empty(weight.shape[0], dtype=torch.float64)
    own = torch.empty(weight.shape[0], dtype=torch.float64)
    step = max(1, ROW_BLOCK_ELEMENTS // max(weight.shape[1], 1))
    for start in range(0, weight.shape[0], step):
        block = weight[start : start + step].double()
        own[start : start + step] = block.square().sum(dim=1)
        cross[start : start + step] = ((block @ right64.T) * left64[start : start + step]).sum(dim=1)
    lora = ((left64 @ gram) * left64).sum(dim=1)
    return (own + 2 * cross + lora).clamp_min(0).sqrt()


def dora_delta(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """The merged DoRA update, computed in place in ``weight`` (float32, d_out × d_in), returned."""
    norms = row_norms(weight, left, right)
    factor = magnitude.double() / norms
    # ΔW = (f − 1)·W + f·(left @ right): scale W's rows in place, then add the low-rank part.
    weight.mul_((factor - 1).float()[:, None])
    weight.addmm_((factor.float()[:, None] * left), right)
    return weight


def _magnitudes(weights_path: Path) -> dict[str, str]:
    with open_safetensors(weights_path) as reader:
        return {m["module"]: key for key in reader.keys() if (m := _MAGNITUDE.match(key))}


def _factory(lora: LayerDelta, base: Checkpoint, weights_path: Path, magnitude_key: str,
             transpose: bool) -> Callable[[], LayerDelta]:
    def build() -> LayerDelta:
        key = base.module_weight_key(lora.name)
        weight = base.get_float32(key, transpose=transpose)
        if tuple(weight.shape) != lora.shape:
            raise InputError(f"{base.path}: base weight {key} is {list(weight.shape)} but the DoRA layer {lora.name} is {list(lora.shape)}")
        with open_safetensors(weights_path) as reader:
            magnitude = reader.get_tensor(magnitude_key).reshape(-1).to(torch.float32)
        check_finite(weights_path, magnitude_key, magnitude)
        if magnitude.numel() != lora.shape[0]:
            raise InputError(f"{weights_path}: tensor {magnitude_key} has {magnitude.numel()} values but {lora.name} has {lora.shape[0]} rows")
        delta = dora_delta(weight, lora.left, lora.right, magnitude)
        check_finite(weights_path, f"{lora.name} (merged DoRA delta)", delta)
        return LayerDelta.from_dense(lora.name, delta, **lora.info, dora=True)

    return build


def read_dora(lora: AdapterDeltas, weights_path: Path, base: str | Path | None) -> AdapterDeltas:
    """Exact DoRA deltas from the LoRA part already read (``lora``) plus magnitudes and base weights."""
    if base is None:
        raise base_required_error(weights_path)
    checkpoint = Checkpoint(base)
    magnitudes = _magnitudes(weights_path)
    config: dict[str, Any] = dict(lora.config)
    transpose = bool(config.get("fan_in_fan_out"))
    entries = []
    for layer in lora.layers:
        if layer.name not in magnitudes:
            raise InputError(f"{weights_path}: DoRA layer {layer.name} has no lora_magnitude_vector tensor")
        checkpoint.module_weight_key(layer.name)  # fail now, not halfway, when a base weight is missing
        stored = int(layer.info.get("stored_values", 0)) + layer.shape[0]
        entries.append((layer.name, layer.shape, stored, _factory(layer, checkpoint, weights_path, magnitudes[layer.name], transpose)))
    if config.get("base_model_name_or_path") is None:
        config["base_model_name_or_path"] = checkpoint.name
    return AdapterDeltas(
        source=lora.source,
        kind=KIND,
        layers=LazyLayers(entries, lora.skipped),
        config=config,
        passthrough=lora.passthrough,
        skipped=lora.skipped,
        metadata=lora.metadata,
        also_read=[str(checkpoint.path)] if getattr(checkpoint, "path", None) is not None else [],
    )
