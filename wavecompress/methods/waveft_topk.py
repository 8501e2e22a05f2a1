"""WaveFT top-k: the k largest coefficients of the orthonormal 2-D DWT of ΔW, values and indices.

Optimal for its budget in that basis (see methods/topk.py); its error is the energy of the
dropped coefficients.
"""

from __future__ import annotations

import torch

from ..deltas.layer_delta import LayerDelta
from ..transforms import synthesis2d
from .compressed_layer import CompressedLayer
from .options import MethodOptions
from .topk import scatter_dense, select_topk, topk_layer
from .wavelet_domain import coefficients, compress_reordered, layer_levels, restore_order

NAME = "waveft"


def compress(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Keep ``budget`` wavelet coefficients of ``delta`` (rows/columns reordered first when
    ``options.reorder`` is set; clamped to the layer's size)."""
    return compress_reordered(delta, budget, options, _compress_in_order)


def _compress_in_order(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Top-k of the transform of ``delta`` as given (no reordering)."""
    levels = layer_levels(delta.shape, options.levels_for(NAME))
    coeffs = coefficients(delta, options.wavelet, levels)
    capacity = coeffs.numel()
    meta = {"wavelet": options.wavelet, "levels": list(levels)}
    selection = select_topk(coeffs, min(budget, capacity))
    return topk_layer(delta, NAME, ("waveft_spectrum", "waveft_indices"), meta, selection, budget, capacity)


def reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    """Dense ΔŴ from stored spectrum values and flat indices, stored permutations undone."""
    coeffs = scatter_dense(tensors["waveft_indices"], tensors["waveft_spectrum"].float(), shape)
    return restore_order(synthesis2d(coeffs, meta["wavelet"], tuple(meta["levels"])), tensors)
