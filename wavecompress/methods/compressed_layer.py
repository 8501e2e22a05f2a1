"""CompressedLayer: what a method keeps for one layer, and the error it costs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..deltas.conv import KEY as WEIGHT_SHAPE, lora_factor_shapes, weight_shape_of
from ..deltas.shared_tensors import written_tensors


@dataclass
class CompressedLayer:
    """Stored tensors (keys relative to the module), per-layer metadata, and exact error.

    ``error_sq`` is ‖ΔW − ΔŴ‖²_F computed in float64 from the quantities the method dropped
    (coefficients or tail singular values), never by subtracting two large energies.
    """

    name: str
    shape: tuple[int, int]
    method: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    stored_values: int
    index_values: int
    error_sq: float
    energy: float
    budget: int
    budget_clamped: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def stored_bytes(self) -> int:
        """Bytes on disk for the stored tensors, indices included (a tensor shared with other layers
        counts once, at the layer that stores it: deltas/shared_tensors.py)."""
        return sum(t.numel() * t.element_size() for t in self.written_tensors().values())

    def written_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors this layer's own keys store in the file (a conv layer's LoRA factors in PEFT's
        Conv2d shapes: lora_A (r, c_in, kh, kw), lora_B (c_out, r, 1, 1); deltas/conv.py)."""
        tensors = written_tensors(self.name, self.tensors, self.meta)
        weight_shape = weight_shape_of(self.meta)
        if weight_shape is not None and "lora_A.weight" in tensors and "lora_B.weight" in tensors:
            down, up = lora_factor_shapes(tensors["lora_A.weight"].shape[0], weight_shape)
            tensors = {**tensors, "lora_A.weight": tensors["lora_A.weight"].reshape(down),
                       "lora_B.weight": tensors["lora_B.weight"].reshape(up)}
        return tensors

    @property
    def relative_error(self) -> float:
        return (self.error_sq / self.energy) ** 0.5 if self.energy > 0 else 0.0

    @property
    def energy_kept(self) -> float:
        return 1.0 - self.error_sq / self.energy if self.energy > 0 else 1.0


def with_weight_shape(layer: CompressedLayer, info: dict[str, Any]) -> CompressedLayer:
    """Record a conv layer's 4-D weight shape (from its delta's ``info``) in the layer's metadata, so
    outputs keep it (deltas/conv.py); linear layers are returned unchanged."""
    shape = weight_shape_of(info)
    if shape is not None:
        layer.meta[WEIGHT_SHAPE] = list(shape)
    return layer
