"""WaRA: a low-rank factorization of each wavelet subband, ranks chosen greedily under the budget.

The separable L-level transform splits rows into L+1 bands and columns into L+1 bands; band
(i, j) is a block of the coefficient matrix. A rank-1 term in band (i, j) costs rows_i + cols_j
values and removes σ² of error, so the greedy takes, across all bands, the next singular value
with the largest σ²/cost that still fits. From a LoRA's factors each block is
(W_r B)[rows_i] · (W_c Aᵀ)[cols_j]ᵀ and its SVD is a factored SVD: no dense SVD anywhere.
"""

from __future__ import annotations

import functools
import heapq

import numpy as np
import torch

from ..deltas.layer_delta import LayerDelta
from ..hardware import SMALL_RANK, one_thread
from ..transforms import analysis2d, band_slices, synthesis
from ..transforms.apply import band_gains, band_groups, permuted_apply, raw_analysis_bands, raw_synthesis_bands
from ..transforms.lowrank import RELATIVE_ZERO, dense_svd, split_factors, tail_energy
from ..transforms.reorder import unpermute
from .compressed_layer import CompressedLayer
from .options import MethodOptions
from .rate_distortion import RDCurve
from .registry import Method, register_method
from .wavelet_domain import compress_reordered, layer_levels, transformed_factors

NAME = "wara"
FACTORS_KEY = "wara_factors"


def _band_svds(delta: LayerDelta, wavelet: str, levels: tuple[int, int]) -> dict[tuple[int, int], tuple]:
    row_bands = band_slices(delta.shape[0], levels[0])
    col_bands = band_slices(delta.shape[1], levels[1])
    svds = {}
    if delta.is_factored:
        left_t, right_t = transformed_factors(delta, wavelet, levels)
        return _factored_band_svds(left_t, right_t, row_bands, col_bands)
    else:
        coeffs = analysis2d(delta.dense, wavelet, levels)
        for i, rows in enumerate(row_bands):
            for j, cols in enumerate(col_bands):
                svds[(i, j)] = dense_svd(coeffs[rows, cols])
    return svds


def _factored_band_svds(left_t: torch.Tensor, right_t: torch.Tensor, row_bands: list[slice],
                        col_bands: list[slice]) -> dict[tuple[int, int], tuple]:
    """Every band's SVD from one QR per row band and per column band and one batched SVD of the
    r×r cores (the same maths as :func:`factored_svd` per band, in far fewer calls)."""
    with one_thread(left_t.shape[1] <= SMALL_RANK):
        row_qr = [torch.linalg.qr(left_t[rows].double()) for rows in row_bands]
        col_qr = [torch.linalg.qr(right_t[cols].double()) for cols in col_bands]
        pairs = [(i, j) for i in range(len(row_bands)) for j in range(len(col_bands))]
        cores = [row_qr[i][1] @ col_qr[j][1].T for i, j in pairs]
        if len({tuple(core.shape) for core in cores}) == 1:
            u, s, vh = torch.linalg.svd(torch.stack(cores))
            parts = [(u[n], s[n], vh[n]) for n in range(len(pairs))]
        else:
            parts = [torch.linalg.svd(core) for core in cores]
        return {(i, j): (row_qr[i][0] @ u_core, s_core, vh_core @ col_qr[j][0].T)
                for (i, j), (u_core, s_core, vh_core) in zip(pairs, parts)}


def allocate_ranks(
    singular_values: dict[tuple[int, int], torch.Tensor], costs: dict[tuple[int, int], int], budget: int
) -> tuple[dict[tuple[int, int], int], bool]:
    """Greedy ranks by σ²/cost under ``budget``; also whether every useful σ fit (budget clamped)."""
    top = max((float(s[0]) for s in singular_values.values() if s.numel()), default=0.0)
    floor = top * RELATIVE_ZERO
    ranks = {band: 0 for band in singular_values}
    heap = []
    for band, s in singular_values.items():
        if s.numel() and float(s[0]) > floor:
            heap.append((-float(s[0]) ** 2 / costs[band], band))
    heapq.heapify(heap)
    remaining = budget
    exhausted = True
    while heap:
        _, band = heapq.heappop(heap)
        if costs[band] > remaining:
            exhausted = False
            continue
        remaining -= costs[band]
        ranks[band] += 1
        s = singular_values[band]
        nxt = ranks[band]
        if nxt < s.numel() and float(s[nxt]) > floor:
            heapq.heappush(heap, (-float(s[nxt]) ** 2 / costs[band], band))
    return ranks, exhausted


def compress(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Per-subband truncated SVDs whose total stored values stay within ``budget`` (rows/columns
    reordered first when ``options.reorder`` is set)."""
    return compress_reordered(delta, budget, options, _compress_in_order)


def _compress_in_order(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """WaRA of ``delta`` as given (no reordering)."""
    levels = layer_levels(delta.shape, options.levels_for(METHOD))
    svds = _band_svds(delta, options.wavelet, levels)
    row_bands = band_slices(delta.shape[0], levels[0])
    col_bands = band_slices(delta.shape[1], levels[1])
    costs = {
        (i, j): (rows.stop - rows.start) + (cols.stop - cols.start)
        for i, rows in enumerate(row_bands)
        for j, cols in enumerate(col_bands)
    }
    order = sorted(svds)
    # All singular values to the host in one transfer: the greedy reads them one by one.
    host = dict(zip(order, torch.cat([svds[band][1] for band in order]).cpu().split([svds[band][1].numel() for band in order])))
    ranks, exhausted = allocate_ranks(host, costs, budget)
    pieces, bands, error_sq, stored = [], [], 0.0, 0
    for band in order:
        u, s, vh = svds[band]
        rank = ranks[band]
        error_sq += tail_energy(host[band], rank)
        if rank:
            p, q = split_factors(u, s, vh, rank)
            pieces += [p.reshape(-1), q.reshape(-1)]
            bands.append([band[0], band[1], rank])
            stored += rank * costs[band]
    factors = torch.cat(pieces) if pieces else torch.zeros(0, device=_device_of(delta))
    return CompressedLayer(
        name=delta.name,
        shape=delta.shape,
        method=NAME,
        tensors={FACTORS_KEY: factors},
        meta={"wavelet": options.wavelet, "levels": list(levels), "bands": bands},
        stored_values=stored,
        index_values=0,
        error_sq=error_sq,
        energy=delta.energy(),
        budget=budget,
        budget_clamped=exhausted and stored < budget,
    )


def _device_of(delta: LayerDelta) -> torch.device:
    return (delta.left if delta.is_factored else delta.dense).device


def unpack_bands(
    factors: torch.Tensor, meta: dict, shape: tuple[int, int]
) -> list[tuple[slice, slice, torch.Tensor, torch.Tensor]]:
    """(row slice, col slice, P, Q) per stored band, from the packed ``wara_factors`` vector."""
    levels = tuple(meta["levels"])
    row_bands = band_slices(shape[0], levels[0])
    col_bands = band_slices(shape[1], levels[1])
    out, offset = [], 0
    for i, j, rank in meta["bands"]:
        rows, cols = row_bands[i], col_bands[j]
        n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
        p = factors[offset : offset + n_rows * rank].reshape(n_rows, rank)
        offset += n_rows * rank
        q = factors[offset : offset + rank * n_cols].reshape(rank, n_cols)
        offset += rank * n_cols
        out.append((rows, cols, p, q))
    if offset != factors.numel():
        raise ValueError(f"wara_factors holds {factors.numel()} values but the band ranks need {offset}")
    return out


@functools.lru_cache(maxsize=256)
def _factor_layout(levels: tuple[int, int], bands: tuple[tuple[int, int, int], ...], shape: tuple[int, int],
                   numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather maps (d_out × R, R × d_in) from the packed vector (plus a trailing zero slot at
    ``numel``) to the block factors P_all, Q_all whose product is the whole coefficient matrix."""
    row_bands = band_slices(shape[0], levels[0])
    col_bands = band_slices(shape[1], levels[1])
    total_rank = sum(rank for _, _, rank in bands)
    left = torch.full((shape[0], total_rank), numel, dtype=torch.int64)
    right = torch.full((total_rank, shape[1]), numel, dtype=torch.int64)
    offset = column = 0
    for i, j, rank in bands:
        rows, cols = row_bands[i], col_bands[j]
        n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
        left[rows, column : column + rank] = torch.arange(offset, offset + n_rows * rank).reshape(n_rows, rank)
        offset += n_rows * rank
        right[column : column + rank, cols] = torch.arange(offset, offset + rank * n_cols).reshape(rank, n_cols)
        offset += rank * n_cols
        column += rank
    if offset != numel:
        raise ValueError(f"wara_factors holds {numel} values but the band ranks need {offset}")
    return left, right


@functools.lru_cache(maxsize=256)
def _layout_on(levels, bands, shape, numel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    left, right = _factor_layout(levels, bands, shape, numel)
    return left.to(device), right.to(device)


def reconstruct_factors(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with ΔŴ = L @ Rᵀ (d_out × R_total, d_in × R_total), on the stored tensors' device.

    Bands do not overlap, so the coefficient matrix is P_all @ Q_all with each band's P and Q
    placed in its rows/columns; the synthesis and permutations act on the factors, never on a
    d_out × d_in matrix: a few kernels per layer, differentiable in the stored values."""
    factors = tensors[FACTORS_KEY].float().reshape(-1)
    levels = tuple(int(v) for v in meta["levels"])
    bands = tuple(tuple(int(v) for v in band) for band in meta["bands"])
    left_map, right_map = _layout_on(levels, bands, tuple(shape), factors.numel(), factors.device)
    padded = torch.cat([factors, factors.new_zeros(1)])
    left = synthesis(padded[left_map], meta["wavelet"], levels[0])
    right = synthesis(padded[right_map].T, meta["wavelet"], levels[1])
    rows, cols = tensors.get("reorder_rows"), tensors.get("reorder_cols")
    if rows is not None:
        left = unpermute(left, rows, None)
    if cols is not None:
        right = unpermute(right, cols, None)
    return left, right


def _product_factors(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return left, right.T


def reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    """Dense ΔŴ (float32, on the stored tensors' device): band factors synthesised, permutations
    undone, then one product."""
    left, right = reconstruct_factors(tensors, meta, shape)
    return left @ right.T


@functools.lru_cache(maxsize=256)
def _apply_layout(levels: tuple[int, int], bands: tuple[tuple[int, int, int], ...], shape: tuple[int, int], numel: int):
    """Gather maps of the dense-free forward: per column band j, (j, Q_j index map R_j × cols_j) with the
    Q factors of its bands stacked; per row band i, (i, P_i index map rows_i × R_i, the columns of the
    stacked inner products Z (tokens × R_total, column bands in order) that P_i multiplies)."""
    row_bands = band_slices(shape[0], levels[0])
    col_bands = band_slices(shape[1], levels[1])
    p_maps, q_maps, offset = {}, {}, 0
    for number, (i, j, rank) in enumerate(bands):
        n_rows = row_bands[i].stop - row_bands[i].start
        n_cols = col_bands[j].stop - col_bands[j].start
        p_maps[number] = torch.arange(offset, offset + n_rows * rank).reshape(n_rows, rank)
        offset += n_rows * rank
        q_maps[number] = torch.arange(offset, offset + rank * n_cols).reshape(rank, n_cols)
        offset += rank * n_cols
    if offset != numel:
        raise ValueError(f"wara_factors holds {numel} values but the band ranks need {offset}")
    by_col, by_row = band_groups([tuple(band) for band in bands])
    columns, inner_position, position = [], {}, 0
    for j in sorted(by_col):
        columns.append((j, torch.cat([q_maps[b] for b in by_col[j]])))
        for b in by_col[j]:
            inner_position[b] = torch.arange(position, position + bands[b][2])
            position += bands[b][2]
    rows = []
    for i in sorted(by_row):
        positions = torch.cat([inner_position[b] for b in by_row[i]])
        # None: Z's columns in order already (one row band holding every stored band)
        rows.append((i, torch.cat([p_maps[b] for b in by_row[i]], dim=1),
                     None if torch.equal(positions, torch.arange(position)) else positions))
    return columns, rows


def apply(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """``x @ ΔŴᵀ`` without ΔŴ: each token's column bands (1-D analysis), the stacked Q factors of each
    column band then the stacked P factors of each row band (2·stored values per token, like LoRA's
    2·r·(m + n)), a 1-D synthesis; one gather of the packed factors per band group."""
    factors = tensors[FACTORS_KEY].to(x.dtype).reshape(-1)
    levels = (int(meta["levels"][0]), int(meta["levels"][1]))
    bands = tuple(tuple(int(v) for v in band) for band in meta["bands"])
    wavelet = meta["wavelet"]
    columns, rows = _apply_layout(levels, bands, tuple(shape), factors.numel())
    row_sizes = [s.stop - s.start for s in band_slices(shape[0], levels[0])]
    device = factors.device

    col_gains, row_gains = band_gains(wavelet, levels[1]), band_gains(wavelet, levels[0])

    def core(flat: torch.Tensor) -> torch.Tensor:
        col_bands = raw_analysis_bands(flat, wavelet, levels[1])
        inner = [col_bands[j] @ (factors[q_map.to(device)] * col_gains[j]).T for j, q_map in columns]
        stacked = torch.cat(inner, dim=1) if len(inner) > 1 else (inner[0] if inner else None)
        out_bands = [None] * len(row_sizes)
        for i, p_map, positions in rows:
            z = stacked if positions is None else stacked.index_select(1, positions.to(device))
            out_bands[i] = z @ (factors[p_map.to(device)] * row_gains[i]).T
        out_bands = [b if b is not None else flat.new_zeros(flat.shape[0], size) for b, size in zip(out_bands, row_sizes)]
        return raw_synthesis_bands(out_bands, wavelet, levels[0])

    return permuted_apply(tensors, shape, x, core)


def rd_curve(delta: LayerDelta, options: MethodOptions, max_cost: int) -> RDCurve:
    """The greedy's own σ²/cost sequence over subbands (cost rows_i + cols_j per rank-1 term)."""
    layer = compress(delta, max_cost, options)
    bands = unpack_bands(layer.tensors[FACTORS_KEY].double(), layer.meta, layer.shape)
    sequences = []
    for (i, j, _rank), (rows, cols, p, q) in zip(layer.meta["bands"], bands):
        # Balanced factors P = U√S, Q = √S Vh, so σ_k = ‖P[:, k]‖·‖Q[k, :]‖.
        sigma = (p.norm(dim=0) * q.norm(dim=1)).numpy()
        cost = (rows.stop - rows.start) + (cols.stop - cols.start)
        sequences.append(((i, j), np.sort(sigma)[::-1] ** 2, cost))
    # Replay the greedy's order: next σ² / cost across bands, ties broken by band like allocate_ranks.
    heap = [(-seq[0] / cost, band, 0, n) for n, (band, seq, cost) in enumerate(sequences) if len(seq)]
    heapq.heapify(heap)
    costs, gains, groups = [], [], []
    while heap:
        _, band, k, n = heapq.heappop(heap)
        _, seq, cost = sequences[n]
        costs.append(cost)
        gains.append(seq[k])
        groups.append(n)
        if k + 1 < len(seq):
            heapq.heappush(heap, (-seq[k + 1] / cost, band, k + 1, n))
    return RDCurve(delta.name, NAME, delta.shape, layer.energy, np.asarray(costs, dtype=np.int64),
                   np.asarray(gains, dtype=np.float64), np.asarray(groups, dtype=np.int64), max(layer.error_sq, 0.0))


METHOD = register_method(Method(
    name=NAME,
    peft_type="WAVECOMPRESS_WARA",
    compress=compress,
    reconstruct=reconstruct,
    tensor_keys=(FACTORS_KEY,),
    rd_curve=rd_curve,
    reorderable=True,
    wavelet=True,
    default_levels=3,
    default_levels_reordered=3,
    auto=True,
    description="low-rank wavelet subbands",
    apply=apply,
    low_rank_factors=lambda tensors, meta, shape: _product_factors(*reconstruct_factors(tensors, meta, shape)),
))
