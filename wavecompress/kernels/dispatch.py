"""Differentiable sparse Haar synthesis with automatic backend choice: Triton on CUDA, torch elsewhere.

``sparse_haar_synthesis(values, indices, shape, levels)`` returns ΔŴ and back-propagates to
``values`` only (indices and permutations are fixed). The backend is Triton when the tensors are on
CUDA and triton imports, torch otherwise; ``WAVECOMPRESS_KERNELS=torch`` forces the reference
and ``backend="triton"`` forces the kernel (on CPU that needs ``TRITON_INTERPRET=1`` set before
triton is imported: this is how the tests run it).
"""

from __future__ import annotations

import functools
import os

import torch

from .haar_reference import spectrum_grad_reference, synthesis_reference

BACKENDS = ("triton", "torch")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether triton imports here (it does not need a GPU to import)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def select_backend(device: torch.device | str) -> str:
    """'triton' on CUDA with triton installed (unless WAVECOMPRESS_KERNELS=torch), else 'torch'."""
    forced = os.environ.get("WAVECOMPRESS_KERNELS", "").strip().lower()
    if forced == "torch":
        return "torch"
    if torch.device(device).type == "cuda" and triton_available():
        return "triton"
    return "torch"


def _implementations(backend: str):
    if backend == "triton":
        from .haar_triton import spectrum_grad_triton, synthesis_triton

        return synthesis_triton, spectrum_grad_triton
    if backend == "torch":
        return synthesis_reference, lambda grad, indices, shape, levels, rows, cols: spectrum_grad_reference(
            grad, indices, levels, rows, cols
        )
    raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")


class _SparseHaarSynthesis(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, rows, cols, shape, levels, backend):  # type: ignore[override]
        forward_impl, _ = _implementations(backend)
        ctx.save_for_backward(indices, rows, cols)
        ctx.shape, ctx.levels, ctx.backend = shape, levels, backend
        return forward_impl(values.detach(), indices, shape, levels, rows, cols)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        indices, rows, cols = ctx.saved_tensors
        _, backward_impl = _implementations(ctx.backend)
        grad_values = backward_impl(grad.contiguous(), indices, ctx.shape, ctx.levels, rows, cols)
        return grad_values, None, None, None, None, None, None


def sparse_haar_synthesis(
    values: torch.Tensor,
    indices: torch.Tensor,
    shape: tuple[int, int],
    levels: tuple[int, int],
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """ΔŴ (float32, ``shape``) from k Haar coefficients at flat ``indices``; differentiable in ``values``.

    ``levels`` are the per-axis depths; ``rows``/``cols`` the optional stored permutations
    (``ΔŴ[rows[i], cols[j]] = M[i, j]``). ``backend=None`` chooses by device (see module doc).
    """
    backend = backend or select_backend(values.device)
    shape = (int(shape[0]), int(shape[1]))
    levels = (int(levels[0]), int(levels[1]))
    return _SparseHaarSynthesis.apply(values, indices, rows, cols, shape, levels, backend)
