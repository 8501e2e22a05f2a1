"""Truncated SVD of a layer, exact and cheap from factors (QR of each factor, SVD of an r×r core)."""

from __future__ import annotations

import torch

from ..hardware import SMALL_RANK, one_thread


def factored_svd(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD (U, S, Vh) of ``left @ right`` without forming it, in float64.

    left = Q_l R_l, rightᵀ = Q_r R_r, so left @ right = Q_l (R_l R_rᵀ) Q_rᵀ and only the r×r core
    needs an SVD: O((d_out + d_in) r²) instead of a dense SVD's O(d_out d_in min(d_out, d_in)).
    """
    with one_thread(left.shape[1] <= SMALL_RANK):  # n × r problems: threads only add barriers (hardware.py)
        q_left, r_left = torch.linalg.qr(left.double())
        q_right, r_right = torch.linalg.qr(right.double().T)
        u_core, s, vh_core = torch.linalg.svd(r_left @ r_right.T)
        return q_left @ u_core, s, vh_core @ q_right.T


def dense_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, Vh) of a dense matrix, in float64 for exact tail energies."""
    return torch.linalg.svd(matrix.double(), full_matrices=False)


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced float32 factors (P = U_k √S_k, Q = √S_k Vh_k) of the rank-``rank`` truncation."""
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float().contiguous(), (root[:, None] * vh[:rank]).float().contiguous()


def tail_energy(s: torch.Tensor, rank: int) -> float:
    """Σ_{i≥rank} σ_i²: the squared Frobenius error of the rank-``rank`` truncation."""
    return float(s[rank:].double().square().sum())


# Singular values below this fraction of the largest are numerical noise, not worth a stored rank.
RELATIVE_ZERO = 1e-7


def useful_rank(s: torch.Tensor) -> int:
    """Ranks worth storing: σ_i > RELATIVE_ZERO·σ_0 (none when ΔW is zero)."""
    return int((s > s[0] * RELATIVE_ZERO).sum()) if s.numel() and s[0] > 0 else 0
