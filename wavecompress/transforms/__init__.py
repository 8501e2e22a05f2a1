"""Orthonormal wavelet transforms on matrices and on low-rank factors."""

from .dwt import analysis, analysis2d, axis_levels, band_slices, synthesis, synthesis2d, validate_wavelet

__all__ = ["analysis", "analysis2d", "axis_levels", "band_slices", "synthesis", "synthesis2d", "validate_wavelet"]
