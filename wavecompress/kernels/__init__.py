"""Kernels for the hot paths of fine-tuning: Triton on CUDA, torch references everywhere.

- :func:`sparse_haar_synthesis`: sparse Haar spectrum (values, flat indices, optional row/column
  permutations) → dense ΔŴ, differentiable in the values; ``haar_reference`` defines the result,
  ``haar_triton`` computes it on GPU in one zero-fill plus one scatter pass.
"""

from .dispatch import BACKENDS, select_backend, sparse_haar_synthesis, triton_available
from .haar_reference import spectrum_grad_reference, synthesis_reference

__all__ = [
    "BACKENDS",
    "select_backend",
    "sparse_haar_synthesis",
    "spectrum_grad_reference",
    "synthesis_reference",
    "triton_available",
]
