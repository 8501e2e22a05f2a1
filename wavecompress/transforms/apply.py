"""The adapter forward without a dense ΔŴ: ΔŴ·x = Pᵣᵀ Wᵣᵀ C (W_c P_c x) token by token (DESIGN.md §8).

ΔŴ = unpermute(synthesis2d(C)) with C the stored coefficients, so for a batch of tokens X (T × d_in)
``X @ ΔŴᵀ`` is: gather X's columns by ``reorder_cols``, a 1-D analysis of every token along d_in,
the stored coefficients (a method's ``core``: low-rank band factors, a sparse matrix), a 1-D synthesis
along d_out, and the rows put back with the inverse of ``reorder_rows``. Per token that is
O(d_out + d_in + stored values), as LoRA's O(r·(d_out + d_in)); every step is a torch op, so
autograd gives the backward (the same steps transposed).

Haar runs as pairwise sums and differences per level (the same operations as dwt.py's Haar; a
block GEMM with K = 2^L measured ~9× slower on the CPU); other orthonormal wavelets run as a
periodized filter bank, a few shifted adds per level (exact, not tuned).
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable

import numpy as np
import pywt
import torch

from .dwt import _HAAR_NAMES, band_slices
from .reorder import cached_inverse

Core = Callable[[torch.Tensor], torch.Tensor]

# Cost model (in multiply-adds) that picks the fast forward or the dense ΔŴ per call: the fast path
# pays transforms and permutations per token (TRANSFORM_COST per side entry, times the filter length
# for non-Haar wavelets), its stored values (STORED_COST each) and a fixed per-call cost in small
# kernels (CALL_COST); the dense path pays x @ ΔŴᵀ per token plus, when ΔŴ is not cached, forming it.
TRANSFORM_COST = 6.0
STORED_COST = 2.0
CALL_COST = 2.0e5
SYNTHESIS_COST = 8.0


def filter_length(wavelet: str) -> int:
    """Taps of ``wavelet``'s decomposition filter (2 for Haar)."""
    return 2 if wavelet in _HAAR_NAMES else len(pywt.Wavelet(wavelet).dec_lo)


def fast_is_cheaper(shape: tuple[int, int], stored: int, tokens: int, wavelet: str | None, delta_cached: bool) -> bool:
    """Whether the dense-free forward costs less than ``x @ ΔŴᵀ`` for ``tokens`` tokens (the cost model above).

    The dense path wins when ΔŴ is already formed (no gradients: inference) and the layer is small or
    its stored values are a large fraction of m·n; while values train, ΔŴ must be formed every step,
    so the fast path wins on every layer shape of interest.
    """
    m, n = shape
    taps = filter_length(wavelet) / 2 if wavelet else 0.0
    fast = tokens * (TRANSFORM_COST * max(taps, 1.0 if wavelet else 0.0) * (m + n) + STORED_COST * stored) + CALL_COST
    dense = 2.0 * tokens * m * n + (0.0 if delta_cached else SYNTHESIS_COST * m * n)
    return fast < dense


def permuted_apply(tensors: dict[str, torch.Tensor], shape: tuple[int, int], x: torch.Tensor, core: Core) -> torch.Tensor:
    """``x @ ΔŴᵀ`` for ΔŴ = M[argsort(rows)][:, argsort(cols)] given ``core(X) = X @ Mᵀ`` (X: tokens × d_in)."""
    m, n = shape
    if x.shape[-1] != n:
        raise ValueError(f"input has {x.shape[-1]} features but the adapter layer expects {n}")
    flat = x.reshape(-1, n)
    cols, rows = tensors.get("reorder_cols"), tensors.get("reorder_rows")
    if cols is not None:
        cols = cols.to(flat.device)
        flat = _Gather.apply(flat, cols.long(), cached_inverse(cols, n, "reorder_cols"))
    out = core(flat)
    if rows is not None:
        rows = rows.to(out.device)
        out = _Gather.apply(out, cached_inverse(rows, m, "reorder_rows"), rows.long())
    return out.reshape(*x.shape[:-1], m)


class _Gather(torch.autograd.Function):
    """Columns of x in a permuted order, whose backward gathers with the inverse permutation (autograd's
    index_select backward zero-fills and scatters)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


# ---- the token-side transforms ----------------------------------------------------------------

def _haar_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One unnormalised Haar level along dim 1: (sums, differences) of neighbours, each written once
    (the 1/√2 per level is folded into the stored factors instead: see :func:`band_gains`)."""
    pairs = x.unflatten(1, (x.shape[1] // 2, 2))
    even, odd = pairs.select(2, 0), pairs.select(2, 1)
    return torch.add(even, odd), torch.sub(even, odd)


def _haar_merge(approx: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_haar_split`: the interleaved signal, written once."""
    out = torch.empty(approx.shape[0], 2 * approx.shape[1], dtype=approx.dtype, device=approx.device)
    pairs = out.unflatten(1, (approx.shape[1], 2))
    torch.add(approx, detail, out=pairs.select(2, 0))
    torch.sub(approx, detail, out=pairs.select(2, 1))
    return out


class _HaarSplit(torch.autograd.Function):
    """One unnormalised Haar analysis level whose backward is its transpose, the unnormalised merge
    (instead of autograd's zero-filled slice gradients, measured the largest cost)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return _haar_split(x)

    @staticmethod
    def backward(ctx, grad_approx: torch.Tensor | None, grad_detail: torch.Tensor | None):  # type: ignore[override]
        like = grad_approx if grad_approx is not None else grad_detail
        return _haar_merge(grad_approx if grad_approx is not None else torch.zeros_like(like),
                           grad_detail if grad_detail is not None else torch.zeros_like(like))


class _HaarMerge(torch.autograd.Function):
    """One unnormalised Haar synthesis level whose backward is its transpose, the split."""

    @staticmethod
    def forward(ctx, approx: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _haar_merge(approx, detail)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _haar_split(grad.contiguous())


def band_gains(wavelet: str, levels: int) -> list[float]:
    """Per band [a_L, d_L, ..., d_1]: the band of the orthonormal transform is gain × the raw band of
    :func:`raw_analysis_bands`, and the orthonormal synthesis of bands b is the raw synthesis of gain·b
    (Haar: 2^(-L/2), 2^(-L/2), ..., 2^(-1/2); other wavelets: 1, the filter bank is normalised)."""
    if levels == 0 or wavelet not in _HAAR_NAMES:
        return [1.0] * (levels + 1)
    return [2.0 ** (-levels / 2)] + [2.0 ** (-lv / 2) for lv in range(levels, 0, -1)]


def raw_analysis_bands(x: torch.Tensor, wavelet: str, levels: int) -> list[torch.Tensor]:
    """The bands [a_L, d_L, ..., d_1] (each tokens × band size) of every row of ``x`` (tokens × n),
    each divided by its :func:`band_gains` (Haar: sums and differences only, no scaling pass)."""
    n = x.shape[1]
    if levels == 0:
        return [x]
    if wavelet in _HAAR_NAMES:
        details = []
        approx = x
        for _ in range(levels):
            approx, detail = _HaarSplit.apply(approx)
            details.append(detail)
        return [approx] + details[::-1]
    full = filter_bank_analysis(x, wavelet, levels)
    return [full[:, s] for s in band_slices(n, levels)]


def raw_synthesis_bands(bands: list[torch.Tensor], wavelet: str, levels: int) -> torch.Tensor:
    """The signals (tokens × n) whose orthonormal bands are ``bands[b] / gain[b]`` (see :func:`band_gains`)."""
    if levels == 0:
        return bands[0]
    if wavelet in _HAAR_NAMES:
        approx = bands[0]
        for detail in bands[1:]:
            approx = _HaarMerge.apply(approx, detail)
        return approx
    return filter_bank_synthesis(torch.cat(bands, dim=1), wavelet, levels)


def analysis_last(x: torch.Tensor, wavelet: str, levels: int) -> torch.Tensor:
    """1-D multi-level analysis of every row of ``x``, in :func:`dwt.analysis` layout (along dim 1)."""
    if levels == 0:
        return x
    return torch.cat([b * g for b, g in zip(raw_analysis_bands(x, wavelet, levels), band_gains(wavelet, levels))], dim=1)


def synthesis_last(c: torch.Tensor, wavelet: str, levels: int) -> torch.Tensor:
    """Inverse of :func:`analysis_last`."""
    if levels == 0:
        return c
    bands = [c[:, s] * g for s, g in zip(band_slices(c.shape[1], levels), band_gains(wavelet, levels))]
    return raw_synthesis_bands(bands, wavelet, levels)


def gain_vector(n: int, wavelet: str, levels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`band_gains` per coefficient of a length-n axis (dwt.analysis layout)."""
    sizes = [s.stop - s.start for s in band_slices(n, levels)]
    gains = torch.tensor(band_gains(wavelet, levels), dtype=dtype)
    return gains.repeat_interleave(torch.tensor(sizes)).to(device)


# ---- other orthonormal wavelets: a periodized filter bank ----------------------------------------

@functools.lru_cache(maxsize=256)
def _taps(wavelet: str, length: int) -> tuple[tuple[tuple[int, float], ...], tuple[tuple[int, float], ...]]:
    """(low-pass, high-pass) taps (offset, weight) of one periodized level on ``length`` entries:
    coefficient k = Σ weight · x[(2k + offset) mod length], read from PyWavelets itself."""
    out = []
    columns = [pywt.dwt(np.eye(length)[i], wavelet, mode="periodization") for i in (0, 1)]
    for part in (0, 1):  # approximation, detail
        row0 = np.zeros(length)
        for parity in (0, 1):
            coeff = columns[parity][part]
            for k in range(length // 2):
                row0[(parity - 2 * k) % length] = coeff[k]
        taps = tuple((i if i <= length // 2 else i - length, float(row0[i])) for i in np.flatnonzero(row0))
        out.append(taps)
    return out[0], out[1]


def _circular(z: torch.Tensor, taps: tuple[tuple[int, float], ...], sign: int) -> torch.Tensor:
    """out[j] = Σ weight · z[(j + sign·offset) mod n] along dim 1."""
    n = z.shape[1]
    shifts = [sign * offset for offset, _ in taps]
    left, right = max(0, -min(shifts)), max(0, max(shifts))
    ext = torch.cat([z[:, n - left:], z, z[:, :right]], dim=1) if left or right else z
    out = None
    for (_, weight), shift in zip(taps, shifts):
        term = ext[:, left + shift: left + shift + n] * weight
        out = term if out is None else out + term
    return out


def filter_bank_analysis(x: torch.Tensor, wavelet: str, levels: int) -> torch.Tensor:
    """Periodized multi-level DWT of every row of ``x`` (PyWavelets' ``wavedec`` layout), torch ops only."""
    details = []
    approx = x
    for _ in range(levels):
        low, high = _taps(wavelet, approx.shape[1])
        details.append(_circular(approx, high, 1)[:, 0::2])
        approx = _circular(approx, low, 1)[:, 0::2]
    return torch.cat([approx] + details[::-1], dim=1)


def _upsample(z: torch.Tensor) -> torch.Tensor:
    return torch.stack([z, torch.zeros_like(z)], dim=-1).reshape(z.shape[0], -1)


def filter_bank_synthesis(c: torch.Tensor, wavelet: str, levels: int) -> torch.Tensor:
    """Inverse (transpose) of :func:`filter_bank_analysis`."""
    slices = band_slices(c.shape[1], levels)
    approx = c[:, slices[0]]
    for detail_slice in slices[1:]:
        detail = c[:, detail_slice]
        low, high = _taps(wavelet, 2 * approx.shape[1])
        approx = _circular(_upsample(approx), low, -1) + _circular(_upsample(detail), high, -1)
    return approx


def band_groups(bands: list[tuple[int, int, int]]) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """{column band: stored band numbers}, {row band: stored band numbers} of WaRA-style ``(i, j, rank)`` bands."""
    by_col: dict[int, list[int]] = {}
    by_row: dict[int, list[int]] = {}
    for number, (i, j, _rank) in enumerate(bands):
        by_col.setdefault(j, []).append(number)
        by_row.setdefault(i, []).append(number)
    return by_col, by_row



# ---- a sparse coefficient matrix (top-k formats) ------------------------------------------------

# A top-k support whose used rows × used columns hold at most this many times k entries is multiplied
# as a small dense block (one GEMM, fast); sparser supports go through a CSR product.
COMPACT_FILL = 8


class SparseSupport:
    """The fixed support of k stored coefficients in an m × n matrix, prepared once per index tensor."""

    def __init__(self, flat: torch.Tensor, shape: tuple[int, int]) -> None:
        m, n = shape
        flat = flat.reshape(-1).to(torch.int64)
        self.shape = (m, n)
        self.order = torch.argsort(flat)  # stored order -> row-major (CSR) order
        ordered = flat[self.order]
        self.rows, self.cols = ordered // n, ordered % n
        self.rows_stored, self.cols_stored = flat // n, flat % n  # in stored order
        self.used_rows, row_pos = torch.unique(self.rows, return_inverse=True)
        self.used_cols, col_pos = torch.unique(self.cols, return_inverse=True)
        self.compact = self.used_rows.numel() * self.used_cols.numel() <= COMPACT_FILL * max(flat.numel(), 1)
        self.block_index = row_pos * self.used_cols.numel() + col_pos
        counts = torch.bincount(self.rows, minlength=m)
        self.crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        by_col = torch.argsort(self.cols * m + self.rows)  # CSR order of the transpose
        self.t_order = by_col
        self.t_crow = torch.cat([counts.new_zeros(1), torch.bincount(self.cols, minlength=n).cumsum(0)])
        self.t_cols = self.rows[by_col]
        self._gains: dict[tuple, torch.Tensor] = {}

    def gains(self, wavelet: str, levels: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Per stored coefficient (stored order): row band gain × column band gain (:func:`band_gains`), kept."""
        key = (wavelet, levels, dtype, device)
        if key not in self._gains:
            m, n = self.shape
            self._gains[key] = (gain_vector(m, wavelet, levels[0], dtype, device)[self.rows_stored.to(device)]
                                * gain_vector(n, wavelet, levels[1], dtype, device)[self.cols_stored.to(device)])
        return self._gains[key]


_SUPPORTS: dict[int, tuple] = {}


def sparse_support(key_tensor: torch.Tensor, flat: Callable[[], torch.Tensor], shape: tuple[int, int]) -> SparseSupport:
    """The :class:`SparseSupport` of the stored index tensor ``key_tensor``, remembered for as long as
    it lives unchanged (fixed buffers are prepared once, not at every forward)."""
    entry = _SUPPORTS.get(id(key_tensor))
    if entry is not None and entry[0]() is key_tensor and entry[1] == key_tensor._version and entry[2] == shape:
        return entry[3]
    support = SparseSupport(flat(), shape)
    if len(_SUPPORTS) > 4096:
        for key in [k for k, v in _SUPPORTS.items() if v[0]() is None]:
            del _SUPPORTS[key]
    try:
        _SUPPORTS[id(key_tensor)] = (weakref.ref(key_tensor), key_tensor._version, shape, support)
    except TypeError:
        pass
    return support


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix on ``values``' device (PyTorch's beta-state warning silenced: the support is ours and valid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow.to(values.device), cols.to(values.device), values, shape)


class _CsrProduct(torch.autograd.Function):
    """Y = X @ Cᵀ for a CSR matrix C of fixed support and trainable values (row-major order)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, x: torch.Tensor, support: SparseSupport) -> torch.Tensor:  # type: ignore[override]
        ctx.support = support
        ctx.save_for_backward(values, x)
        matrix = _csr(support.crow, support.cols, values, support.shape)
        return torch.sparse.mm(matrix, x.T.contiguous()).T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        values, x = ctx.saved_tensors
        s = ctx.support
        grad_values = grad_x = None
        grad_t = grad.T.contiguous()
        if ctx.needs_input_grad[0]:
            mask = _csr(s.crow, s.cols, values.detach(), s.shape)
            grad_values = torch.sparse.sampled_addmm(mask, grad_t, x.contiguous(), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            order = s.t_order.to(x.device)
            transposed = _csr(s.t_crow, s.t_cols, values[order], (s.shape[1], s.shape[0]))
            grad_x = torch.sparse.mm(transposed, grad_t).T
        return grad_values, grad_x, None


def sparse_product(x: torch.Tensor, values: torch.Tensor, support: SparseSupport) -> torch.Tensor:
    """``x @ Cᵀ`` (tokens × m) for C holding ``values`` (stored order) on ``support``, differentiable in both."""
    device = x.device
    ordered = values.index_select(0, support.order.to(device))
    m = support.shape[0]
    if support.compact:
        block = ordered.new_zeros(support.used_rows.numel() * support.used_cols.numel())
        block = block.index_add(0, support.block_index.to(device), ordered)
        block = block.reshape(support.used_rows.numel(), support.used_cols.numel())
        small = x.index_select(1, support.used_cols.to(device)) @ block.T
        return x.new_zeros(x.shape[0], m).index_copy(1, support.used_rows.to(device), small)
    return _CsrProduct.apply(ordered, x, support)
