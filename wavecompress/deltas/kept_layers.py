"""Reading back a layer that --include/--exclude left unselected (stored exactly, methods/kept.py writes it).

Inside a WAVECOMPRESS_* output such a layer's metadata has ``"kept"``; its tensors are the factors
``kept_B`` (d_out×r, scaling folded in) and ``kept_A`` (r×d_in), or the dense ``kept_delta``.
"""

from __future__ import annotations

import torch

from .layer_delta import LayerDelta

KEY = "kept"  # per-layer metadata key marking a kept layer in a WAVECOMPRESS_* output


def as_delta(name: str, tensors: dict[str, torch.Tensor], shape: tuple[int, int], **info) -> LayerDelta:
    """A kept layer read back, factored when it was stored factored."""
    if "kept_delta" in tensors:
        return LayerDelta.from_dense(name, tensors["kept_delta"], **info)
    return LayerDelta.from_factors(name, tensors["kept_B"], tensors["kept_A"], **info)
