"""Weight-domain top-k baseline (SHiRA-style sparse ΔW, WaveFT with use_idwt=False)."""

from __future__ import annotations

import torch

from ..deltas.layer_delta import LayerDelta
from .compressed_layer import CompressedLayer
from .options import MethodOptions
from .topk import scatter_dense, select_topk, select_topk_product, topk_layer

NAME = "sparse"


def compress(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Keep the ``budget`` largest entries of ΔW itself (streamed from the factors, never dense)."""
    capacity = delta.shape[0] * delta.shape[1]
    if delta.is_factored:
        selection = select_topk_product(delta.left, delta.right, min(budget, capacity))
    else:
        selection = select_topk(delta.dense, min(budget, capacity))
    return topk_layer(delta, NAME, ("sparse_values", "sparse_indices"), {}, selection, budget, capacity)

def reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    return scatter_dense(tensors["sparse_indices"], tensors["sparse_values"].float(), shape)
