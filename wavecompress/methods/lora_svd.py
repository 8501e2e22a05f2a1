"""Truncated-SVD LoRA at the same budget: the largest rank r with r·(d_out + d_in) ≤ budget."""

from __future__ import annotations

import numpy as np
import torch

from ..deltas.layer_delta import LayerDelta
from .activation_aware import dense_error_sq, whitened_svd
from .compressed_layer import CompressedLayer
from ..transforms.lowrank import dense_svd, factored_svd, split_factors, tail_energy, useful_rank
from .options import MethodOptions
from .rate_distortion import RDCurve
from .registry import ActivationAware, Method, register_method

NAME = "lora"
A_KEY, B_KEY = "lora_A.weight", "lora_B.weight"


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
    useful = useful_rank(s)
    rank = min(fits, useful)
    lora_b, lora_a = split_factors(u, s, vh, rank)
    return CompressedLayer(
        name=delta.name,
        shape=delta.shape,
        method=NAME,
        tensors={A_KEY: lora_a, B_KEY: lora_b} if rank else {},
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
    return tensors[B_KEY].float() @ tensors[A_KEY].float()


def rd_curve(delta: LayerDelta, options: MethodOptions, max_cost: int) -> RDCurve:
    """σ_i² in decreasing order, each rank costing d_out + d_in stored values."""
    _, s, _ = layer_svd(delta)
    cost = delta.shape[0] + delta.shape[1]
    steps = min(useful_rank(s), max_cost // cost)
    squares = s.double().square().numpy()
    return RDCurve(delta.name, NAME, delta.shape, delta.energy(), np.full(steps, cost, dtype=np.int64),
                   squares[:steps].copy(), np.zeros(steps, dtype=np.int64), float(squares[steps:].sum()))


def whitened_lora(delta: LayerDelta, budget: int, options: MethodOptions, gram: torch.Tensor) -> CompressedLayer:
    """The rank-r LoRA minimising ‖(ΔW − BA) C_λ^{1/2}‖, r the largest rank that fits ``budget``."""
    d_out, d_in = delta.shape
    u, s, vh, inv_root = whitened_svd(delta, gram)
    fits = budget // (d_out + d_in)
    useful = useful_rank(s)
    rank = min(fits, useful)
    lora_b, lora_a = split_factors(u, s, inv_root(vh), rank)
    tensors = {A_KEY: lora_a, B_KEY: lora_b} if rank else {}
    rebuilt = lora_b.double() @ lora_a.double() if rank else torch.zeros(delta.shape, dtype=torch.float64)
    return CompressedLayer(
        name=delta.name, shape=delta.shape, method=NAME, tensors=tensors, meta={"rank": rank},
        stored_values=rank * (d_out + d_in), index_values=0, error_sq=dense_error_sq(delta, rebuilt),
        energy=delta.energy(), budget=budget, budget_clamped=fits > useful, notes=["activation-aware (whitened SVD)"],
    )


def whitened_gains(delta: LayerDelta, options: MethodOptions, gram: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(whitened σ², cost of one rank, useful ranks): the exact activation-weighted curve."""
    s = whitened_svd(delta, gram)[1]
    return s.square(), delta.shape[0] + delta.shape[1], useful_rank(s)


METHOD = register_method(Method(
    name=NAME,
    peft_type="LORA",
    stock_peft=True,
    compress=compress,
    reconstruct=reconstruct,
    tensor_keys=(A_KEY, B_KEY),
    rd_curve=rd_curve,
    activation_aware=ActivationAware(compress=whitened_lora, gains=whitened_gains),
    card_snippet="""Stock PEFT loads it, no wavecompress needed:

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "{repo}")
```""",
    baseline=True,
    auto=True,
    description="truncated SVD",
))
