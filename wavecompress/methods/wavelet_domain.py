"""A layer delta seen in the wavelet domain: transformed factors or a transformed dense matrix."""

from __future__ import annotations

import torch

from ..deltas.layer_delta import LayerDelta
from ..transforms import analysis, analysis2d, axis_levels


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
