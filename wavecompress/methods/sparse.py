"""Weight-domain top-k baseline (SHiRA-style sparse ΔW, WaveFT with use_idwt=False)."""

from __future__ import annotations

import torch

from ..deltas.layer_delta import LayerDelta
from .activation_aware import topk_variant
from .compressed_layer import CompressedLayer
from .index_codec import stored_indices
from .options import MethodOptions
from .rate_distortion import RDCurve, topk_curve
from .registry import Method, register_method
from .topk import cached_topk, scatter_dense, select_topk, select_topk_product, topk_layer

NAME = "sparse"
# Indices are stored as uint16 gap codes (methods/index_codec.py); files written before that hold
# int32 flat indices under "sparse_indices", which reconstruct still reads.
VALUES_KEY, INDICES_KEY = "sparse_values", "sparse_index_gaps"
INDEX_PREFIX = "sparse"


def compress(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Keep the ``budget`` largest entries of ΔW itself (streamed from the factors, never dense);
    a larger selection already made on this delta serves smaller budgets (report, curve, @bytes)."""
    capacity = delta.shape[0] * delta.shape[1]

    def select(k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        return select_topk_product(delta.left, delta.right, k) if delta.is_factored else select_topk(delta.dense, k)

    selection = cached_topk(delta.cache, "sparse_topk", min(budget, capacity), capacity, select)
    return topk_layer(delta, NAME, (VALUES_KEY, INDICES_KEY), {}, selection, budget, capacity)


def reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    return scatter_dense(stored_indices(tensors, INDEX_PREFIX), tensors[VALUES_KEY].float(), shape)


def weighted_space(dense: torch.Tensor, metric: torch.Tensor, meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight domain is the identity basis: (ΔW, C) unchanged."""
    return dense, metric


def rd_curve(delta: LayerDelta, options: MethodOptions, max_cost: int) -> RDCurve:
    """Squared kept entries in decreasing order, one stored value each."""
    return topk_curve(delta, options, max_cost, METHOD)


# Not an output: a baseline in every report (its peft_type names it, nothing writes it).
METHOD = register_method(Method(
    name=NAME,
    peft_type="WAVECOMPRESS_SPARSE",
    compress=compress,
    reconstruct=reconstruct,
    tensor_keys=(VALUES_KEY, INDICES_KEY),
    values_key=VALUES_KEY,
    indices_key=INDICES_KEY,
    rd_curve=rd_curve,
    activation_aware=topk_variant(compress, VALUES_KEY, INDICES_KEY, weighted_space),
    output=False,
    baseline=True,
    orthonormal_values=True,
    description="weight-domain top-k (SHiRA-style)",
))
