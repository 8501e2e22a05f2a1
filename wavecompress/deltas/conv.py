"""Convolution layers as matrices: a (c_out, c_in, kh, kw) weight is the (c_out, c_in·kh·kw) matrix.

sd-scripts, LyCORIS, ComfyUI and PEFT all flatten a conv kernel this way (``weight.reshape(c_out, -1)``),
so every method sees an ordinary matrix. The 4-D shape travels beside it as ``weight_shape``:
``LayerDelta.info["weight_shape"]`` on the way in, ``CompressedLayer.meta["weight_shape"]`` in outputs
(the per-layer table of a wavecompress config), so writers and loaders can give the layer its shape
back. Linear layers carry no ``weight_shape``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

KEY = "weight_shape"


def weight_shape_of(info: Mapping[str, Any] | None) -> tuple[int, ...] | None:
    """The 4-D weight shape recorded in a delta's ``info`` or a layer's ``meta``; None for linear layers."""
    shape = (info or {}).get(KEY)
    return tuple(int(v) for v in shape) if shape is not None else None


def matrix_shape(weight_shape: Sequence[int]) -> tuple[int, int]:
    """(c_out, c_in·kh·kw) of a conv weight shape (a 2-D shape is returned unchanged)."""
    c_out, *rest = (int(v) for v in weight_shape)
    size = 1
    for v in rest:
        size *= v
    return c_out, size


def is_lora_pair(down: torch.Tensor, up: torch.Tensor) -> bool:
    """Whether (down, up) are linear (2-D) or convolution LoRA factors: same rank of tensor, 1-D to 3-D kernels,
    up's kernel 1×1 (sd-scripts' and PEFT's layout)."""
    return down.dim() == up.dim() and down.dim() in (2, 3, 4, 5) and tuple(up.shape[2:]) == (1,) * (up.dim() - 2)


def conv_factors(down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...] | None]:
    """2-D (up, down) of conv LoRA factors and the conv weight shape they update.

    ``down`` (r, c_in, kh, kw) and ``up`` (c_out, r, 1, 1) — sd-scripts' LoCon and PEFT's LoRA Conv2d
    layout — give up (c_out, r) and down (r, c_in·kh·kw), whose product flattens ΔW. 2-D factors
    return None as the shape."""
    if down.dim() == 2 and up.dim() == 2:
        return up, down, None
    weight_shape = (up.shape[0], *down.shape[1:])
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), weight_shape


def lora_factor_shapes(rank: int, weight_shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(down, up) tensor shapes of a rank-``rank`` LoRA of a conv: (r, c_in, kh, kw) and (c_out, r, 1, 1)."""
    c_out, *kernel_in = (int(v) for v in weight_shape)
    return (rank, *kernel_in), (c_out, rank, *([1] * (len(kernel_in) - 1)))


def cp_delta(up: torch.Tensor, mid: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """ΔW (c_out, c_in, kh, kw) of a CP-decomposed LoCon: up (c_out, r), mid (r, r, kh, kw), down (r, c_in)
    (LyCORIS' ``rebuild_cp_decomposition``: ΔW[o,i,h,w] = Σ up[o,n] mid[n,m,h,w] down[m,i])."""
    return torch.einsum("nmkl,on,mi->oikl", mid, up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1))


def tucker_delta(core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> torch.Tensor:
    """A LyCORIS Tucker product (``rebuild_tucker``): core (r, r, kh, kw), out_factor (r, c_out), in_factor
    (r, c_in) → (c_out, c_in, kh, kw)."""
    return torch.einsum("ij...,ip,jr->pr...", core, out_factor, in_factor)
