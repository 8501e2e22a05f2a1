"""CompressedLayer: what a method keeps for one layer, and the error it costs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

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
        """The tensors this layer's own keys store in the file."""
        return written_tensors(self.name, self.tensors, self.meta)

    @property
    def relative_error(self) -> float:
        return (self.error_sq / self.energy) ** 0.5 if self.energy > 0 else 0.0

    @property
    def energy_kept(self) -> float:
        return 1.0 - self.error_sq / self.energy if self.energy > 0 else 1.0
