"""Top-k selection in an orthonormal basis: keep the k largest-magnitude coefficients.

In an orthonormal basis the error of any support is the energy of the dropped coefficients, so
the k largest magnitudes are the optimal support and their own values are the optimal values
(no refit needed). Used by WaveFT top-k (wavelet basis) and the weight-domain sparse baseline
(identity basis).
"""

from __future__ import annotations

import torch


def index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def select_topk(coefficients: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(sorted flat indices, values, dropped energy in float64) of the k largest |coefficients|."""
    flat = coefficients.reshape(-1)
    k = min(k, flat.numel())
    if k == 0:
        empty = torch.zeros(0, dtype=index_dtype(flat.numel()))
        return empty, flat[:0].clone(), float(flat.double().square().sum())
    _, picked = torch.topk(flat.abs(), k, sorted=False)
    picked, _ = torch.sort(picked)
    squares = flat.square()
    squares[picked] = 0
    dropped = float(squares.double().sum())
    return picked.to(index_dtype(flat.numel())), flat[picked].clone(), dropped


def scatter_dense(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A dense matrix with ``values`` at flat ``indices`` and zeros elsewhere."""
    dense = torch.zeros(shape[0] * shape[1], dtype=values.dtype, device=values.device)
    dense[indices.long()] = values
    return dense.reshape(shape)
