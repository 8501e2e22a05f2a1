"""WaveFT top-k: the k largest coefficients of the orthonormal 2-D DWT of ΔW, values and indices.

Optimal for its budget in that basis (see methods/topk.py); its error is the energy of the
dropped coefficients.
"""

from __future__ import annotations

import torch

from ..deltas.layer_delta import LayerDelta
from ..transforms import analysis2d, synthesis2d
from ..transforms import band_slices
from ..transforms.apply import permuted_apply, raw_analysis_bands, raw_synthesis_bands, sparse_product, sparse_support
from .activation_aware import topk_variant
from .compressed_layer import CompressedLayer
from .index_codec import GAPS_SUFFIX, PLAIN_SUFFIX, stored_indices
from .options import MethodOptions
from .rate_distortion import RDCurve, topk_curve
from .registry import Method, register_method
from .topk import scatter_dense, select_topk, select_topk_product, topk_layer
from .wavelet_domain import coefficients, compress_reordered, layer_levels, restore_order, transformed_factors

NAME = "waveft"
# Indices are stored as uint16 gap codes (methods/index_codec.py); files written before that hold
# int32 flat indices under "waveft_indices", which reconstruct still reads.
VALUES_KEY, INDICES_KEY = "waveft_spectrum", "waveft_index_gaps"
INDEX_PREFIX = "waveft"


def compress(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Keep ``budget`` wavelet coefficients of ``delta`` (rows/columns reordered first when
    ``options.reorder`` is set; clamped to the layer's size)."""
    return compress_reordered(delta, budget, options, _compress_in_order)


def _compress_in_order(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Top-k of the transform of ``delta`` as given (no reordering)."""
    levels = layer_levels(delta.shape, options.levels_for(METHOD))
    capacity = delta.shape[0] * delta.shape[1]
    meta = {"wavelet": options.wavelet, "levels": list(levels)}
    if delta.is_factored:  # streamed from the transformed factors: the coefficient matrix is never formed
        left_t, right_t = transformed_factors(delta, options.wavelet, levels)
        selection = select_topk_product(left_t, right_t.T, min(budget, capacity))
    else:
        selection = select_topk(coefficients(delta, options.wavelet, levels), min(budget, capacity))
    return topk_layer(delta, NAME, (VALUES_KEY, INDICES_KEY), meta, selection, budget, capacity)


def reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    """Dense ΔŴ from stored spectrum values and flat indices, stored permutations undone."""
    coeffs = scatter_dense(stored_indices(tensors, INDEX_PREFIX), tensors[VALUES_KEY].float(), shape)
    return restore_order(synthesis2d(coeffs, meta["wavelet"], tuple(meta["levels"])), tensors)


def apply(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """``x @ ΔŴᵀ`` without ΔŴ: a 1-D analysis of each token, the k stored coefficients as a sparse
    (or, when they gather in few rows and columns, small dense) matrix, a 1-D synthesis."""
    return sparse_coefficients_apply(tensors, meta, shape, x, VALUES_KEY, INDEX_PREFIX)


def sparse_coefficients_apply(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int], x: torch.Tensor,
                              values_key: str, index_prefix: str) -> torch.Tensor:
    """``apply`` of a top-k wavelet format storing ``values_key`` and flat indices under ``index_prefix``."""
    index_key = index_prefix + GAPS_SUFFIX if index_prefix + GAPS_SUFFIX in tensors else index_prefix + PLAIN_SUFFIX
    support = sparse_support(tensors[index_key], lambda: stored_indices(tensors, index_prefix), tuple(shape))
    values = tensors[values_key].to(x.dtype).reshape(-1)
    levels = tuple(int(v) for v in meta["levels"])
    wavelet = meta["wavelet"]

    m, n = shape
    # the Haar 1/√2 per level folded into the k values: raw (sums/differences) transforms on the tokens
    scaled = values * support.gains(wavelet, levels, values.dtype, values.device)
    row_slices = band_slices(m, levels[0])

    def core(flat: torch.Tensor) -> torch.Tensor:
        coefficients = torch.cat(raw_analysis_bands(flat, wavelet, levels[1]), dim=1) if levels[1] else flat
        out = sparse_product(coefficients, scaled, support)
        return raw_synthesis_bands([out[:, s] for s in row_slices], wavelet, levels[0])

    return permuted_apply(tensors, shape, x, core)


def weighted_space(dense: torch.Tensor, metric: torch.Tensor, meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(coefficients K, metric W_c C W_cᵀ) of a (reordered) ΔW in this layer's wavelet basis."""
    levels = tuple(meta["levels"])
    return analysis2d(dense, meta["wavelet"], levels), analysis2d(metric, meta["wavelet"], (levels[1], levels[1]))


def rd_curve(delta: LayerDelta, options: MethodOptions, max_cost: int) -> RDCurve:
    """Squared kept coefficients in decreasing order, one stored value each."""
    return topk_curve(delta, options, max_cost, METHOD)


METHOD = register_method(Method(
    name=NAME,
    peft_type="WAVECOMPRESS_WAVEFT",
    compress=compress,
    reconstruct=reconstruct,
    tensor_keys=(VALUES_KEY, INDICES_KEY),
    values_key=VALUES_KEY,
    indices_key=INDICES_KEY,
    rd_curve=rd_curve,
    activation_aware=topk_variant(compress, VALUES_KEY, INDICES_KEY, weighted_space),
    reorderable=True,
    wavelet=True,
    fused_synthesis=True,
    apply=apply,
    default_levels=1,
    # Depths measured best once rows and columns are reordered (benchmarks/reorder_table.py).
    default_levels_reordered=5,
    auto=True,
    orthonormal_values=True,
    description="top-k wavelet coefficients",
))
