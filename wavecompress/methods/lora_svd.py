"""Truncated-SVD LoRA at the same budget: the largest rank r with r·(d_out + d_in) ≤ budget."""

from __future__ import annotations

import torch

from ..deltas.layer_delta import LayerDelta
from .compressed_layer import CompressedLayer
from .lowrank import dense_svd, factored_svd, split_factors, tail_energy
from .options import MethodOptions

NAME = "lora"


def layer_svd(delta: LayerDelta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ΔW: from the factors when factored (never a dense SVD of B@A), else dense.
    Computed once per delta (cached on it: the orderings' features reuse it)."""
    if "svd" not in delta.cache:
        delta.cache["svd"] = factored_svd(delta.left, delta.right) if delta.is_factored else dense_svd(delta.dense)
    return delta.cache["svd"]


def compress(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Rank-r truncation; rank 0 (nothing stored, error = ‖ΔW‖) when one rank does not fit."""
    d_out, d_in = delta.shape
    u, s, vh = layer_svd(delta)
    fits = budget // (d_out + d_in)
    useful = int((s > s[0] * 1e-7).sum()) if s.numel() and s[0] > 0 else 0
    rank = min(fits, useful)
    lora_b, lora_a = split_factors(u, s, vh, rank)
    return CompressedLayer(
        name=delta.name,
        shape=delta.shape,
        method=NAME,
        tensors={"lora_A.weight": lora_a, "lora_B.weight": lora_b} if rank else {},
        meta={"rank": rank},
        stored_values=rank * (d_out + d_in),
        index_values=0,
        error_sq=tail_energy(s, rank),
        energy=delta.energy(),
        budget=budget,
        budget_clamped=fits > useful,
    )


def reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    if not tensors:
        return torch.zeros(shape)  # rank 0: nothing stored, so no device to follow (the default device)
    return tensors["lora_B.weight"].float() @ tensors["lora_A.weight"].float()
