"""A layer delta seen in the wavelet domain: transformed factors or a transformed dense matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..deltas.layer_delta import LayerDelta
from ..deltas.shared_tensors import SHARED_TENSORS
from ..transforms import analysis, analysis2d, axis_levels
from ..transforms.reorder import FEATURE_RANK, features_from_dense, order, ordering_candidates, permutation_dtype, unpermute
from .compressed_layer import CompressedLayer
from .options import MethodOptions


def layer_levels(shape: tuple[int, int], requested: int) -> tuple[int, int]:
    """Per-axis depths that keep the transform orthonormal for this shape (see axis_levels)."""
    return axis_levels(shape[0], requested), axis_levels(shape[1], requested)


def transformed_factors(delta: LayerDelta, wavelet: str, levels: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_r · left, W_c · rightᵀ): the coefficient matrix is their product ``lt @ rt.T``."""
    return analysis(delta.left, wavelet, levels[0]), analysis(delta.right.T.contiguous(), wavelet, levels[1])


def coefficients(delta: LayerDelta, wavelet: str, levels: tuple[int, int]) -> torch.Tensor:
    """The full coefficient matrix of ΔW, formed from the transformed factors when factored."""
    if delta.is_factored:
        left_t, right_t = transformed_factors(delta, wavelet, levels)
        return left_t @ right_t.T
    return analysis2d(delta.dense, wavelet, levels)


def layer_features(delta: LayerDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """(row features, column features) of ``delta``: from its shared factored SVD (cached on the
    delta; the features are a cheap slice of it, not kept: a full 7B convert held 150 MB of them), or
    a seeded randomized low-rank SVD when dense, cached (the same whichever method asks first)."""
    if delta.is_factored:
        from .lora_svd import layer_svd

        u, s, vh = layer_svd(delta)
        k = min(FEATURE_RANK, s.numel())
        return u[:, :k] * s[:k], vh[:k].T * s[:k]
    if "features" not in delta.cache:
        delta.cache["features"] = features_from_dense(delta.dense)
    return delta.cache["features"]


def layer_ordering(delta: LayerDelta, ordering: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(row permutation, column permutation) of ``delta`` for ``ordering``, computed once per delta."""
    key = ("ordering", ordering)
    if key not in delta.cache:
        row_features, col_features = layer_features(delta)
        delta.cache[key] = (order(row_features, ordering), order(col_features, ordering))
    return delta.cache[key]


# delta.cache key: a SharedColumns the layer's column permutation comes from (methods/shared_permutations.py)
SHARED_COLUMNS = "shared_columns"


def reorder_delta(delta: LayerDelta, ordering: str) -> tuple[LayerDelta, dict[str, torch.Tensor]]:
    """The delta with rows and columns permuted by ``ordering``, and the permutation tensors
    (``reorder_rows``, ``reorder_cols``; int16 when the size fits) to store beside it. The columns
    follow the group's shared permutation when ``delta.cache`` holds one (``SHARED_COLUMNS``)."""
    rows, cols = layer_ordering(delta, ordering)
    if SHARED_COLUMNS in delta.cache:
        cols = delta.cache[SHARED_COLUMNS].order(ordering)
    if delta.is_factored:
        moved = LayerDelta.from_factors(delta.name, delta.left[rows], delta.right[:, cols], **delta.info)
    else:
        moved = LayerDelta.from_dense(delta.name, delta.dense[rows][:, cols], **delta.info)
    perms = {
        "reorder_rows": rows.to(permutation_dtype(delta.shape[0])),
        "reorder_cols": cols.to(permutation_dtype(delta.shape[1])),
    }
    return moved, perms


def compress_reordered(
    delta: LayerDelta, budget: int, options: MethodOptions, compress_plain: Callable[..., CompressedLayer]
) -> CompressedLayer:
    """``compress_plain`` on the reordered delta (``options.reorder``; "auto" and "best" keep the
    ordering with the lowest error, see reorder.ordering_candidates), with the permutations added to
    the stored tensors and metadata.

    Permutations are orthogonal, so the error is unchanged by undoing them. They are counted in
    ``index_values`` and bytes, never in ``stored_values`` (they are fixed, not trained).
    ``meta["reorder"]`` always names the ordering actually used.
    """
    if not options.reorder:
        return compress_plain(delta, budget, options)
    best = None
    for ordering in ordering_candidates(options.reorder, [delta.shape]):
        moved, perms = reorder_delta(delta, ordering)
        layer = compress_plain(moved, budget, options)
        layer.tensors.update(perms)
        layer.meta["reorder"] = ordering
        if SHARED_COLUMNS in delta.cache:
            layer.meta[SHARED_TENSORS] = {"reorder_cols": delta.cache[SHARED_COLUMNS].owner}
        written = layer.written_tensors()  # a borrowed (shared) column permutation is the owner's to count
        layer.index_values += sum(p.numel() for key, p in perms.items() if key in written)
        if best is None or layer.error_sq < best.error_sq:
            best = layer
    return best


def restore_order(matrix: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Undo stored row/column permutations, if any (torch ops: differentiable in ``matrix``)."""
    return unpermute(matrix, tensors.get("reorder_rows"), tensors.get("reorder_cols"))
