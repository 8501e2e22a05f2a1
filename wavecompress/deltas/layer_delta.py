"""LayerDelta: one layer's update ΔW (d_out × d_in), kept factored when the input is factored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LayerDelta:
    """The update of one linear layer, ``ΔW = left @ right`` or a dense matrix.

    ``left`` (d_out × r) already carries the LoRA scaling, so methods never see alpha or rank
    conventions. Tensors are float32; inputs in fp16/bf16 are converted on read.
    """

    name: str
    shape: tuple[int, int]
    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # Results derived from this delta (its SVD, row/column orderings), computed once and shared by
    # the method, its other-ordering variant and the baselines. Not copied by dataclasses.replace.
    cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dense is None and (self.left is None or self.right is None):
            raise ValueError(f"layer {self.name}: give either dense or both factors")

    @property
    def is_factored(self) -> bool:
        return self.dense is None

    @property
    def rank_bound(self) -> int:
        """An upper bound on rank(ΔW): the factor rank, or min(d_out, d_in) when dense."""
        if self.is_factored:
            return min(self.left.shape[1], *self.shape)
        return min(self.shape)

    def to_dense(self) -> torch.Tensor:
        """ΔW as a dense float32 matrix (materialises d_out × d_in)."""
        if self.dense is not None:
            return self.dense
        return self.left @ self.right

    def energy(self) -> float:
        """‖ΔW‖²_F in float64; from the factors as tr((LᵀL)(RRᵀ)) without forming ΔW. Computed
        once per delta (every method and baseline reports it)."""
        if "energy" not in self.cache:
            if self.dense is not None:
                self.cache["energy"] = float(self.dense.double().square().sum())
            else:
                from ..hardware import one_thread

                with one_thread():  # r × r products: threads only add barriers (hardware.py)
                    left, right = self.left.double(), self.right.double()
                    self.cache["energy"] = float(((left.T @ left) * (right @ right.T)).sum())
        return self.cache["energy"]

    @classmethod
    def from_dense(cls, name: str, matrix: torch.Tensor, **info: Any) -> "LayerDelta":
        """Wrap a dense 2-D tensor (any float dtype) as a LayerDelta."""
        matrix = matrix.detach().to(torch.float32)
        return cls(name=name, shape=tuple(matrix.shape), dense=matrix, info=dict(info))

    @classmethod
    def from_factors(cls, name: str, left: torch.Tensor, right: torch.Tensor, **info: Any) -> "LayerDelta":
        """Wrap ΔW = left @ right (left: d_out × r with the scaling folded in, right: r × d_in)."""
        left = left.detach().to(torch.float32)
        right = right.detach().to(torch.float32)
        return cls(name=name, shape=(left.shape[0], right.shape[1]), left=left, right=right, info=dict(info))
