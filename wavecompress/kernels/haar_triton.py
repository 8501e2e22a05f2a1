"""Triton kernels: sparse Haar spectrum → dense ΔŴ (forward) and ΔŴ gradient → spectrum (backward).

A stored coefficient at (row, col) of an orthonormal multi-level Haar coefficient matrix touches
a rectangle of ΔŴ, one axis at a time: an approximation coefficient at depth L covers 2^L
entries with weight 2^(−L/2); a detail coefficient at level l covers 2^l entries, weight
2^(−l/2), sign + on the first half and − on the second. So the synthesis needs no dense
coefficient matrix and no per-level passes: the forward zero-fills ΔŴ once and each program
adds the contributions of a block of coefficients (atomic adds, since several coefficients share
entries); the backward gathers the same rectangles from the gradient and reduces them, one
program per block of coefficients, deterministically. Optional row/column permutations are
applied on the fly (ΔŴ[rows[i], cols[j]] = M[i, j]).

Import this module only where triton is installed; ``dispatch`` does that check.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per program tile (coefficients × support entries); a power of two.
_TILE = 4096


@triton.jit
def _axis_support(p, n, LEVELS: tl.constexpr):
    """(first entry, log2 of the support length, is-detail) of coefficient position ``p`` on an axis."""
    start = p << LEVELS
    log_len = tl.zeros_like(p) + LEVELS
    detail = p < 0
    for lv in tl.static_range(1, LEVELS + 1):
        lo = n >> lv
        hi = n >> (lv - 1)
        inband = (p >= lo) & (p < hi)
        start = tl.where(inband, (p - lo) << lv, start)
        log_len = tl.where(inband, lv, log_len)
        detail = detail | inband
    return start, log_len, detail


@triton.jit
def _support_tile(indices_ptr, rows_ptr, cols_ptr, offs, valid, d_out, d_in,
                  LEVELS_R: tl.constexpr, LEVELS_C: tl.constexpr, SUPPORT_R: tl.constexpr, SUPPORT_C: tl.constexpr,
                  HAS_ROWS: tl.constexpr, HAS_COLS: tl.constexpr):
    """Flat ΔŴ targets, signed weights and mask of a [block, SUPPORT_R·SUPPORT_C] tile."""
    flat = tl.load(indices_ptr + offs, mask=valid, other=0).to(tl.int64)
    row = flat // d_in
    col = flat % d_in
    r0, rlog, rdet = _axis_support(row, d_out, LEVELS_R)
    c0, clog, cdet = _axis_support(col, d_in, LEVELS_C)
    rlen = (tl.zeros_like(rlog) + 1) << rlog
    clen = (tl.zeros_like(clog) + 1) << clog
    t = tl.arange(0, SUPPORT_R * SUPPORT_C)
    tr = (t // SUPPORT_C).to(tl.int64)
    tc = (t % SUPPORT_C).to(tl.int64)
    mask = valid[:, None] & (tr[None, :] < rlen[:, None]) & (tc[None, :] < clen[:, None])
    neg_r = rdet[:, None] & (2 * tr[None, :] >= rlen[:, None])
    neg_c = cdet[:, None] & (2 * tc[None, :] >= clen[:, None])
    sign = tl.where(neg_r ^ neg_c, -1.0, 1.0)
    weight = tl.exp2(-0.5 * (rlog + clog).to(tl.float32))
    out_r = r0[:, None] + tr[None, :]
    out_c = c0[:, None] + tc[None, :]
    if HAS_ROWS:
        out_r = tl.load(rows_ptr + out_r, mask=mask, other=0).to(tl.int64)
    if HAS_COLS:
        out_c = tl.load(cols_ptr + out_c, mask=mask, other=0).to(tl.int64)
    return out_r * d_in + out_c, sign * weight[:, None], mask


@triton.jit
def _synthesis_kernel(values_ptr, indices_ptr, rows_ptr, cols_ptr, out_ptr, k, d_out, d_in,
                      LEVELS_R: tl.constexpr, LEVELS_C: tl.constexpr, SUPPORT_R: tl.constexpr, SUPPORT_C: tl.constexpr,
                      HAS_ROWS: tl.constexpr, HAS_COLS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < k
    values = tl.load(values_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    target, signed_weight, mask = _support_tile(indices_ptr, rows_ptr, cols_ptr, offs, valid, d_out, d_in,
                                                LEVELS_R, LEVELS_C, SUPPORT_R, SUPPORT_C, HAS_ROWS, HAS_COLS)
    tl.atomic_add(out_ptr + target, values[:, None] * signed_weight, mask=mask)


@triton.jit
def _spectrum_grad_kernel(grad_ptr, indices_ptr, rows_ptr, cols_ptr, out_ptr, k, d_out, d_in,
                          LEVELS_R: tl.constexpr, LEVELS_C: tl.constexpr, SUPPORT_R: tl.constexpr, SUPPORT_C: tl.constexpr,
                          HAS_ROWS: tl.constexpr, HAS_COLS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < k
    target, signed_weight, mask = _support_tile(indices_ptr, rows_ptr, cols_ptr, offs, valid, d_out, d_in,
                                                LEVELS_R, LEVELS_C, SUPPORT_R, SUPPORT_C, HAS_ROWS, HAS_COLS)
    grad = tl.load(grad_ptr + target, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, tl.sum(grad * signed_weight, axis=1), mask=valid)


def _launch(kernel, source: torch.Tensor, indices: torch.Tensor, out: torch.Tensor, shape: tuple[int, int],
            levels: tuple[int, int], rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    k = indices.numel()
    if k == 0:
        return
    support_r, support_c = 1 << levels[0], 1 << levels[1]
    block = max(1, _TILE // (support_r * support_c))
    grid = (triton.cdiv(k, block),)
    kernel[grid](
        source, indices, rows if rows is not None else indices, cols if cols is not None else indices, out,
        k, shape[0], shape[1],
        LEVELS_R=levels[0], LEVELS_C=levels[1], SUPPORT_R=support_r, SUPPORT_C=support_c,
        HAS_ROWS=rows is not None, HAS_COLS=cols is not None, BLOCK=block,
    )


def synthesis_triton(
    values: torch.Tensor,
    indices: torch.Tensor,
    shape: tuple[int, int],
    levels: tuple[int, int],
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense ΔŴ (float32) from the sparse spectrum, as :func:`haar_reference.synthesis_reference`."""
    out = torch.zeros(shape[0] * shape[1], dtype=torch.float32, device=values.device)
    _launch(_synthesis_kernel, values.contiguous(), indices.contiguous(), out, shape, levels, rows, cols)
    return out.view(shape)


def spectrum_grad_triton(
    grad: torch.Tensor,
    indices: torch.Tensor,
    shape: tuple[int, int],
    levels: tuple[int, int],
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """∂L/∂values (float32, k) from ∂L/∂ΔŴ, as :func:`haar_reference.spectrum_grad_reference`."""
    out = torch.empty(indices.numel(), dtype=torch.float32, device=grad.device)
    _launch(_spectrum_grad_kernel, grad.contiguous(), indices.contiguous(), out, shape, levels, rows, cols)
    return out
