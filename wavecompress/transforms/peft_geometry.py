"""PEFT WaveFT's padded, centered single-level geometry, mirrored exactly (DESIGN.md §2).

Stock PEFT (``peft.tuners.waveft``) regenerates a layer's coefficient locations from
``random_loc_seed``, scatters the stored spectrum into a zero-padded P×Q matrix (P = d_out + rr,
Q = d_in + rc, each bumped to even, the d_out×d_in support window centered), splits it into the
quadrants ``[[cA, cH], [cV, cD]]``, runs its own single-level ``waverec2d`` and crops the centre.

This module reproduces that synthesis with PEFT's own filter taps and padding tables (so files we
write give the same ``get_delta_weight`` in stock PEFT) and provides its exact adjoint, which the
seeded method needs for least squares. Only db1 on even sizes is an orthonormal basis here; longer
filters or odd sizes give a linear map that is merely close to orthonormal, and PEFT's own coif4
and coif5 taps are not orthonormal at all (we mirror them anyway: the file must match what PEFT
computes). Families whose PEFT padding table disagrees with the filter length (coif5: 48 taps,
padding for 30) make PEFT's ``get_delta_weight`` return the wrong shape and are refused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError


@functools.lru_cache(maxsize=None)
def _peft_tables() -> tuple[dict[str, tuple[int, int]], tuple[str, ...]]:
    from peft.tuners.waveft.constants import WAVELET_REDUCTIONS
    from peft.tuners.waveft.wavelet import wavelist

    return dict(WAVELET_REDUCTIONS), tuple(wavelist())


@functools.lru_cache(maxsize=None)
def _peft_taps(family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from peft.tuners.waveft.wavelet import Wavelet

    wavelet = Wavelet(family)
    return tuple(wavelet.rec_lo), tuple(wavelet.rec_hi)


def peft_wavelets() -> tuple[str, ...]:
    """Families stock PEFT WaveFT can load: in its filter list and padding table, with consistent sizes."""
    reductions, known = _peft_tables()
    usable = []
    for family in known:
        if family in reductions and len(_peft_taps(family)[0]) - 2 == reductions[family][0]:
            usable.append(family)
    return tuple(usable)


def check_peft_wavelet(family: str) -> str:
    """``family`` if stock PEFT WaveFT handles it, else InputError naming the usable families."""
    reductions, known = _peft_tables()
    if family in peft_wavelets():
        return family
    if family in reductions and family in known:
        raise InputError(
            f"wavelet {family!r}: PEFT's WaveFT cannot use it (its filter has {len(_peft_taps(family)[0])} taps but its "
            f"padding table assumes {reductions[family][0] + 2}, so get_delta_weight returns the wrong shape)"
        )
    raise InputError(f"wavelet {family!r} is not one stock PEFT WaveFT knows; choose one of {', '.join(peft_wavelets())}")


@dataclass(frozen=True)
class PeftWaveGeometry:
    """Where a d_out×d_in layer's seeded coefficients live in PEFT's padded P×Q matrix."""

    shape: tuple[int, int]
    family: str
    padded: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def of(cls, shape: tuple[int, int], family: str) -> "PeftWaveGeometry":
        reductions, _ = _peft_tables()
        check_peft_wavelet(family)
        d_out, d_in = shape
        rr, rc = reductions[family]
        p, q = d_out + rr, d_in + rc
        p += p % 2
        q += q % 2
        return cls(shape=(d_out, d_in), family=family, padded=(p, q), offset=((p - d_out) // 2, (q - d_in) // 2))

    @property
    def orthonormal(self) -> bool:
        """True when the synthesis is an orthonormal basis of d_out×d_in (Haar, even sizes)."""
        return self.family == "db1" and self.padded == self.shape

    def _filters(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        lo_taps, hi_taps = _peft_taps(self.family)
        lo = torch.tensor(lo_taps, dtype=dtype, device=device)
        hi = torch.tensor(hi_taps, dtype=dtype, device=device)
        # PEFT's _construct_2d_filt: ll, lh, hl, hh with outer(a, b)[i, j] = a[i] b[j] (i along rows).
        return torch.stack([torch.outer(lo, lo), torch.outer(hi, lo), torch.outer(lo, hi), torch.outer(hi, hi)])[:, None]

    def _window(self, filter_len: int) -> tuple[int, int, int, int]:
        """(rows of the conv output, cols, first kept row, first kept col) after PEFT's trim and crop."""
        p, q = self.padded
        pad = (2 * filter_len - 3) // 2
        rows, cols = p + filter_len - 2, q + filter_len - 2
        trimmed_rows, trimmed_cols = rows - 2 * pad, cols - 2 * pad
        return rows, cols, pad + (trimmed_rows - self.shape[0]) // 2, pad + (trimmed_cols - self.shape[1]) // 2

    def synthesis(self, coeffs: torch.Tensor) -> torch.Tensor:
        """PEFT's ``waverec2d`` of a P×Q coefficient matrix, cropped to d_out×d_in (no scaling)."""
        p, q = self.padded
        if tuple(coeffs.shape) != (p, q):
            raise ValueError(f"expected a {p}×{q} coefficient matrix, got {tuple(coeffs.shape)}")
        filt = self._filters(coeffs.dtype, coeffs.device)
        h2, w2 = p // 2, q // 2
        quads = torch.stack([coeffs[:h2, :w2], coeffs[:h2, w2:], coeffs[h2:, :w2], coeffs[h2:, w2:]])[None]
        full = F.conv_transpose2d(quads, filt, stride=2)[0, 0]
        _, _, r0, c0 = self._window(filt.shape[-1])
        return full[r0 : r0 + self.shape[0], c0 : c0 + self.shape[1]]

    def adjoint(self, matrix: torch.Tensor) -> torch.Tensor:
        """The exact transpose of :meth:`synthesis`: d_out×d_in → P×Q (analysis when orthonormal)."""
        if tuple(matrix.shape) != self.shape:
            raise ValueError(f"expected a {self.shape[0]}×{self.shape[1]} matrix, got {tuple(matrix.shape)}")
        filt = self._filters(matrix.dtype, matrix.device)
        rows, cols, r0, c0 = self._window(filt.shape[-1])
        full = matrix.new_zeros(rows, cols)
        full[r0 : r0 + self.shape[0], c0 : c0 + self.shape[1]] = matrix
        quads = F.conv2d(full[None, None], filt, stride=2)[0]
        return torch.cat([torch.cat([quads[0], quads[1]], dim=1), torch.cat([quads[2], quads[3]], dim=1)], dim=0)

    def seeded_positions(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) in the padded matrix of PEFT's ``randperm(d_out*d_in)[:n]`` locations for ``seed``."""
        d_out, d_in = self.shape
        if not 0 < n <= d_out * d_in:
            raise ValueError(f"n_frequency {n} must be in 1..{d_out * d_in} for a {d_out}×{d_in} layer")
        generator = torch.Generator().manual_seed(seed)
        flat = torch.randperm(d_out * d_in, generator=generator)[:n]
        return flat // d_in + self.offset[0], flat % d_in + self.offset[1]

    def scatter(self, values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The padded P×Q matrix with ``values`` at (rows, cols), zeros elsewhere."""
        dense = values.new_zeros(self.padded)
        dense[rows.to(values.device), cols.to(values.device)] = values
        return dense


__all__ = ["PeftWaveGeometry", "check_peft_wavelet", "peft_wavelets"]
