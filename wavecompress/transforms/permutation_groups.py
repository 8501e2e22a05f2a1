"""Layers that read the same input, and the one column ordering they can share.

q/k/v of one attention block (and gate/up of one MLP) multiply the same input vector, so a column
permutation of that input can be stored once for all of them. Groups are found from module names:
siblings whose names differ only in the last component, that component one of a ``SIBLING_SETS``
entry, with the same d_in. The shared ordering comes from the column features of the stacked
matrix [ΔW₁; ΔW₂; …]: its Gram matrix is Σ ΔWᵢᵀΔWᵢ ≈ F Fᵀ with F the concatenated per-layer
column features VᵢSᵢ, so the leading left singular triplets of F are the stacked matrix's column
features (the same rank as a single layer's, see transforms/reorder.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .reorder import FEATURE_RANK, order

# Last name components that read one shared input (attention q/k/v in Llama/Mistral-style and
# BERT-style naming; the gated MLP's gate and up projections).
SIBLING_SETS: tuple[frozenset[str], ...] = (
    frozenset({"q_proj", "k_proj", "v_proj"}),
    frozenset({"query", "key", "value"}),
    frozenset({"gate_proj", "up_proj"}),
    frozenset({"w1", "w3"}),
)


@dataclass(frozen=True)
class PermutationGroup:
    """Layers (sorted names, at least two) that read one input of ``d_in`` features; ``owner``
    (the first name) stores the shared column permutation."""

    members: tuple[str, ...]
    d_in: int

    @property
    def owner(self) -> str:
        return self.members[0]


def find_groups(shapes: Mapping[str, tuple[int, int]]) -> list[PermutationGroup]:
    """The groups among layers ``shapes`` ({module name: (d_out, d_in)}), in name order."""
    buckets: dict[tuple[str, int, int], list[str]] = {}
    for name, shape in shapes.items():
        parent, _, last = name.rpartition(".")
        for index, siblings in enumerate(SIBLING_SETS):
            if last in siblings:
                buckets.setdefault((parent, index, int(shape[1])), []).append(name)
    groups = [PermutationGroup(tuple(sorted(names)), key[2]) for key, names in buckets.items() if len(names) > 1]
    return sorted(groups, key=lambda group: group.owner)


def stacked_column_features(column_features: Sequence[torch.Tensor], k: int = FEATURE_RANK) -> torch.Tensor:
    """Column features (d_in × ≤k) of the vertically stacked layers, from each layer's (d_in × kᵢ)."""
    stacked = torch.cat([f.double() for f in column_features], dim=1)
    if stacked.shape[1] == 0:
        return stacked
    u, s, _ = torch.linalg.svd(stacked, full_matrices=False)
    k = min(k, s.numel())
    return (u[:, :k] * s[:k]).to(column_features[0].dtype)


def shared_column_order(column_features: Sequence[torch.Tensor], ordering: str) -> torch.Tensor:
    """The column permutation (int64) ``ordering`` gives for the stacked layers."""
    return order(stacked_column_features(column_features), ordering)
