"""Multi-level orthonormal periodized DWT along one axis, and its separable 2-D form.

Layout along an axis transformed L levels: ``[a_L, d_L, d_{L-1}, ..., d_1]`` (PyWavelets'
``wavedec`` order), so the coefficients of an n-vector are again an n-vector. The 2-D transform
is the separable (standard) decomposition: rows to ``L_r`` levels, columns to ``L_c`` levels.
Because it is a product of two orthonormal maps, ``analysis2d(B @ A) == analysis(B) @ analysis(A.T).T``:
every method can transform a LoRA's factors instead of the dense product.

Haar is our own torch code (exact, no copies to numpy, measured faster than ptwt/pywt in
``benchmarks/haar_transform.py``); other orthogonal families go through PyWavelets with
``mode="periodization"``, the only boundary mode that is an orthonormal basis.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pywt
import torch

from ..errors import InputError

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_HAAR_NAMES = {"haar", "db1"}


def validate_wavelet(name: str) -> str:
    """Return ``name`` if it is an orthogonal wavelet PyWavelets knows, else raise InputError."""
    try:
        wavelet = pywt.Wavelet(name)
    except ValueError:
        raise InputError(f"unknown wavelet {name!r}; use an orthogonal family such as db1 (Haar), db4, sym4, coif2")
    if not wavelet.orthogonal:
        raise InputError(f"wavelet {name!r} is not orthogonal; wavecompress needs an orthonormal basis (db*, sym*, coif*)")
    return name


def axis_levels(n: int, requested: int) -> int:
    """Deepest level <= requested such that n is divisible by 2**level (0 for odd n).

    Periodized orthogonal DWTs are exact orthonormal bases exactly when every level halves an
    even length, so this rule keeps every transform orthonormal, odd sizes included (level 0 is
    the identity on that axis).
    """
    level = 0
    while level < requested and n % (2 ** (level + 1)) == 0:
        level += 1
    return level


def band_slices(n: int, levels: int) -> list[slice]:
    """Slices of the bands ``[a_L, d_L, ..., d_1]`` along an axis of length n."""
    if levels == 0:
        return [slice(0, n)]
    sizes = [n >> levels] + [n >> lv for lv in range(levels, 0, -1)]
    bounds = np.cumsum([0] + sizes)
    return [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(sizes))]


def _haar_analysis(x: torch.Tensor, levels: int) -> torch.Tensor:
    details = []
    approx = x
    for _ in range(levels):
        even, odd = approx[0::2], approx[1::2]
        details.append((even - odd) * _INV_SQRT2)
        approx = (even + odd) * _INV_SQRT2
    return torch.cat([approx] + details[::-1], dim=0)


def _haar_synthesis(c: torch.Tensor, levels: int) -> torch.Tensor:
    n = c.shape[0]
    approx = c[: n >> levels]
    offset = n >> levels
    for lv in range(levels, 0, -1):
        size = n >> lv
        detail = c[offset : offset + size]
        offset += size
        out = torch.empty((2 * size,) + tuple(c.shape[1:]), dtype=c.dtype, device=c.device)
        out[0::2] = (approx + detail) * _INV_SQRT2
        out[1::2] = (approx - detail) * _INV_SQRT2
        approx = out
    return approx


def _pywt_analysis(x: torch.Tensor, wavelet: str, levels: int) -> torch.Tensor:
    array = x.detach().cpu().numpy()
    with warnings.catch_warnings():
        # pywt warns when a level is shorter than the filter; periodization stays orthonormal.
        warnings.simplefilter("ignore", UserWarning)
        coeffs = pywt.wavedec(array, wavelet, mode="periodization", level=levels, axis=0)
    return torch.from_numpy(np.concatenate(coeffs, axis=0)).to(device=x.device, dtype=x.dtype)


def _pywt_synthesis(c: torch.Tensor, wavelet: str, levels: int) -> torch.Tensor:
    array = c.detach().cpu().numpy()
    coeffs = [array[s] for s in band_slices(array.shape[0], levels)]
    out = pywt.waverec(coeffs, wavelet, mode="periodization", axis=0)
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=c.device, dtype=c.dtype)


def analysis(x: torch.Tensor, wavelet: str, levels: int) -> torch.Tensor:
    """Orthonormal DWT of ``x`` along dim 0 to ``levels`` levels (n must divide by 2**levels)."""
    n = x.shape[0]
    if levels == 0:
        return x.clone()
    if n % (2**levels):
        raise ValueError(f"length {n} is not divisible by 2**{levels}")
    if wavelet in _HAAR_NAMES:
        return _haar_analysis(x, levels)
    return _pywt_analysis(x, wavelet, levels)


def synthesis(c: torch.Tensor, wavelet: str, levels: int) -> torch.Tensor:
    """Inverse of :func:`analysis` (its transpose, since the transform is orthonormal)."""
    if levels == 0:
        return c.clone()
    if c.shape[0] % (2**levels):
        raise ValueError(f"length {c.shape[0]} is not divisible by 2**{levels}")
    if wavelet in _HAAR_NAMES:
        return _haar_synthesis(c, levels)
    return _pywt_synthesis(c, wavelet, levels)


def _haar_analysis_into(x: torch.Tensor, levels: int, dim: int) -> torch.Tensor:
    """Haar analysis along ``dim`` written straight into one output (no concatenation, no transposes).

    Same operations in the same order as :func:`_haar_analysis`, so bit-identical; not for autograd.
    """
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    approx, size = x, x.shape[dim]
    for level in range(levels):
        half = size // 2
        pairs = approx.unflatten(dim, (half, 2))
        even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
        detail = out.narrow(dim, half, half)
        torch.sub(even, odd, out=detail).mul_(_INV_SQRT2)
        if level == levels - 1:
            torch.add(even, odd, out=out.narrow(dim, 0, half)).mul_(_INV_SQRT2)
        else:
            approx = torch.add(even, odd).mul_(_INV_SQRT2)
        size = half
    return out


def _haar_synthesis_into(c: torch.Tensor, levels: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`_haar_analysis_into` (bit-identical to :func:`_haar_synthesis`)."""
    n = c.shape[dim]
    approx = c.narrow(dim, 0, n >> levels)
    for lv in range(levels, 0, -1):
        size = n >> lv
        detail = c.narrow(dim, size, size)
        shape = list(c.shape)
        shape[dim] = 2 * size
        out = torch.empty(shape, dtype=c.dtype, device=c.device)
        pairs = out.unflatten(dim, (size, 2))
        torch.add(approx, detail, out=pairs.select(dim + 1, 0)).mul_(_INV_SQRT2)
        torch.sub(approx, detail, out=pairs.select(dim + 1, 1)).mul_(_INV_SQRT2)
        approx = out
    return approx


def _fast_haar(x: torch.Tensor, wavelet: str, levels: tuple[int, int]) -> bool:
    """Use the in-place 2-D Haar: Haar, both axes transformed, and no autograd graph to keep."""
    return wavelet in _HAAR_NAMES and min(levels) > 0 and not (torch.is_grad_enabled() and x.requires_grad)


def analysis2d(x: torch.Tensor, wavelet: str, levels: tuple[int, int]) -> torch.Tensor:
    """Separable 2-D orthonormal DWT: rows (dim 0) to levels[0], columns (dim 1) to levels[1]."""
    if x.shape[0] % (2 ** levels[0]) == 0 and x.shape[1] % (2 ** levels[1]) == 0 and _fast_haar(x, wavelet, levels):
        return _haar_analysis_into(_haar_analysis_into(x, levels[0], 0), levels[1], 1)
    rows_done = analysis(x, wavelet, levels[0])
    return analysis(rows_done.T, wavelet, levels[1]).T.contiguous()


def synthesis2d(c: torch.Tensor, wavelet: str, levels: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`analysis2d`."""
    if c.shape[0] % (2 ** levels[0]) == 0 and c.shape[1] % (2 ** levels[1]) == 0 and _fast_haar(c, wavelet, levels):
        return _haar_synthesis_into(_haar_synthesis_into(c, levels[1], 1), levels[0], 0)
    cols_done = synthesis(c.T, wavelet, levels[1]).T
    return synthesis(cols_done, wavelet, levels[0]).contiguous()
