"""Torch reference for the fused sparse-spectrum → Haar synthesis and its backward to the spectrum.

Forward: scatter the k stored coefficients (flat indices into the d_out × d_in coefficient
matrix) into a dense matrix, inverse 2-D Haar transform with per-axis levels, then undo the
optional row/column permutations (``M = ΔW[rows][:, cols]``). Because every step is orthonormal
or a permutation, the backward to the spectrum is the adjoint: permute the incoming gradient,
take its forward Haar transform and read it at the stored indices. These functions define what
the Triton kernels must compute; they run on any device.
"""

from __future__ import annotations

import torch

from ..methods.topk import scatter_dense
from ..transforms import analysis2d, synthesis2d

HAAR = "db1"


def synthesis_reference(
    values: torch.Tensor,
    indices: torch.Tensor,
    shape: tuple[int, int],
    levels: tuple[int, int],
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense ΔŴ (float32, d_out × d_in) from a sparse Haar spectrum, permutations undone."""
    coeffs = scatter_dense(indices, values.float(), shape)
    matrix = synthesis2d(coeffs, HAAR, tuple(levels))
    if rows is None and cols is None:
        return matrix
    out = torch.empty_like(matrix)
    row_index = rows.long() if rows is not None else torch.arange(shape[0], device=matrix.device)
    col_index = cols.long() if cols is not None else torch.arange(shape[1], device=matrix.device)
    out[row_index[:, None], col_index[None, :]] = matrix
    return out


def spectrum_grad_reference(
    grad: torch.Tensor,
    indices: torch.Tensor,
    levels: tuple[int, int],
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """∂L/∂values given ∂L/∂ΔŴ: the Haar analysis of the (permuted) gradient at ``indices``."""
    grad = grad.float()
    if rows is not None:
        grad = grad.index_select(0, rows.long())
    if cols is not None:
        grad = grad.index_select(1, cols.long())
    return analysis2d(grad, HAAR, tuple(levels)).reshape(-1)[indices.long()]
