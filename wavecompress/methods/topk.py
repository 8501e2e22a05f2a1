"""Top-k selection in an orthonormal basis: keep the k largest-magnitude coefficients.

In an orthonormal basis the error of any support is the energy of the dropped coefficients, so
the k largest magnitudes are the optimal support and their own values are the optimal values
(no refit needed). Used by WaveFT top-k (wavelet basis) and the weight-domain sparse baseline
(identity basis).

Selection streams over row chunks that fit in cache: a threshold (for a product of factors, the k-th
largest within its rows of most energy; else the first chunk's k-th largest) is raised as candidates
pile up, and chunks contribute only the entries above it (searched in the blocks whose max passes it). For
a dense matrix the dropped energy is summed in float64 over the dropped squares. For a product of
factors (:func:`select_topk_product`, which never forms the matrix) it is the factors' exact Gram
energy minus the kept energy, so each chunk is read once; below DIFFERENCE_FLOOR of the energy that
difference is not trusted and the dropped squares are summed instead. A full-matrix ``torch.topk``
on CPU is an order of magnitude slower and needs several matrix-sized temporaries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..deltas.layer_delta import LayerDelta
from .compressed_layer import CompressedLayer
from .index_codec import index_tensor

from ..hardware import map_in_threads

# Elements per chunk: 2 MB of float32 keeps each chunk's passes in cache on CPU (measured on 7B
# shapes: 5-15% faster than 1 MB with one thread, 10-25% with two; 4 MB no better); on CUDA fewer,
# larger launches win.
CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 26}
# A dropped energy found as (energy − kept energy) is trusted down to this fraction of the energy:
# float32 entries put ~1e-7·energy of rounding into the difference, so ≥1e-3 keeps it to ~1e-4 relative.
DIFFERENCE_FLOOR = 1e-3
# Rows (those of most energy) whose k-th largest magnitude starts a product's search (sampled_threshold).
SAMPLE_ROWS = 64
# Values per block of the candidate search (one max per block decides whether it is searched).
BLOCK = 128


def index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def chunk_rows(shape: tuple[int, int], device: torch.device) -> int:
    """Rows per chunk for a matrix of ``shape`` on ``device``."""
    target = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cpu"])
    return max(1, min(shape[0], target // max(1, shape[1])))


class _StreamingTopK:
    """Exact top-k by magnitude over a matrix fed as consecutive row chunks.

    Scratch buffers are reused across chunks: fresh chunk-sized allocations page-fault on every
    chunk and cost more than the arithmetic.
    """

    def __init__(self, k: int, chunk_numel: int, device: torch.device, dtype: torch.dtype, track_dropped: bool = True,
                 threshold: float | None = None) -> None:
        self.k = k
        self.track_dropped = track_dropped  # False: the caller derives the dropped energy (energy − kept)
        # Only entries above it are candidates (a Python float: comparisons with a scalar dispatch
        # faster than with a 0-d tensor, and it is exact for float32 values); None: set by the first chunk.
        self.threshold = threshold
        self.indices = torch.zeros(0, dtype=torch.int64, device=device)
        self.values = torch.zeros(0, dtype=dtype, device=device)
        self.dropped = torch.zeros((), dtype=torch.float64, device=device)
        self._magnitude = torch.empty(chunk_numel, dtype=dtype, device=device)
        self._squares = torch.empty(chunk_numel if track_dropped else 0, dtype=dtype, device=device)

    def add(self, chunk: torch.Tensor, offset: int) -> None:
        """Take the candidates of a row chunk (2-D) whose first flat index is ``offset``."""
        chunk = chunk.reshape(chunk.shape[0], -1) if chunk.dim() > 1 else chunk.reshape(1, -1)
        flat = chunk.reshape(-1)
        n = flat.numel()
        magnitude, squares = self._magnitude[:n], self._squares[:n]
        if self.threshold is None:
            torch.abs(flat, out=magnitude)
            _, local = torch.topk(magnitude, min(self.k, n), sorted=False)
        elif not self.track_dropped:
            local = self._candidates(flat, signed=True)  # one read of the chunk, no squares
        else:
            torch.abs(flat, out=magnitude)
            local = self._candidates(magnitude, signed=False)
        if self.track_dropped:
            torch.mul(flat, flat, out=squares)
            if local.numel():
                squares.index_fill_(0, local, 0)
            self.dropped += squares.sum(dtype=torch.float64)
        if local.numel():
            self.indices = torch.cat([self.indices, local + offset])
            self.values = torch.cat([self.values, flat[local]])
        if self.indices.numel() >= 2 * self.k or (self.threshold is None and self.indices.numel() >= self.k):
            self._shrink()

    def _candidates(self, flat: torch.Tensor, signed: bool) -> torch.Tensor:
        """Ascending chunk positions whose magnitude passes the threshold (``flat`` holds magnitudes
        unless ``signed``).

        Candidates are rare once the threshold has settled but spread over every row, so the chunk is
        cut into blocks of BLOCK values: one max (and min, when signed) pass finds the blocks holding
        any, and only those are searched.
        """
        threshold, n = self.threshold, flat.numel()
        body = n - n % BLOCK
        blocks = flat[:body].view(-1, BLOCK)
        # (separate amax/amin: torch.aminmax along a dim is an order of magnitude slower on CPU)
        passing = blocks.amax(dim=1) > threshold
        if signed:
            passing |= blocks.amin(dim=1) < -threshold
        picked = torch.nonzero(passing).squeeze(1)
        if 4 * picked.numel() > blocks.shape[0]:  # candidates in most blocks (a large k): one pass, no gather
            found = torch.nonzero(flat[:body].abs() > threshold).squeeze(1)
        elif picked.numel():
            hits = torch.nonzero(blocks[picked].abs() > threshold)
            found = picked[hits[:, 0]] * BLOCK + hits[:, 1]
        else:
            found = self.indices[:0]
        if body == n:
            return found
        return torch.cat([found, torch.nonzero(flat[body:].abs() > threshold).squeeze(1) + body])

    def _shrink(self) -> None:
        """Keep the k largest candidates; the rest join the dropped energy."""
        if self.indices.numel() > self.k:
            _, keep = torch.topk(self.values.abs(), self.k, sorted=False)
            out = torch.ones(self.values.numel(), dtype=torch.bool, device=self.values.device)
            out[keep] = False
            if self.track_dropped:
                self.dropped += self.values[out].square().sum(dtype=torch.float64)
            self.indices, self.values = self.indices[keep], self.values[keep]
        if self.indices.numel() == self.k:
            self.threshold = float(self.values.abs().min())

    def merge(self, other: "_StreamingTopK") -> None:
        """Fold in the candidates and dropped energy of another row range."""
        self.indices = torch.cat([self.indices, other.indices])
        self.values = torch.cat([self.values, other.values])
        self.dropped += other.dropped
        self.threshold = None
        self._shrink()

    def result(self, numel: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        self._shrink()
        order = torch.argsort(self.indices)
        return self.indices[order].to(index_dtype(numel)), self.values[order].clone(), float(self.dropped)


ChunkMaker = Callable[[int, int, torch.Tensor | None], torch.Tensor]  # (first row, stop row, scratch) -> those rows
RowSampler = Callable[[torch.Tensor], torch.Tensor]  # row indices -> those rows


def _stream_rows(first: int, last: int, cols: int, k: int, make_chunk: ChunkMaker, like: torch.Tensor,
                 track_dropped: bool = True, threshold: float | None = None) -> _StreamingTopK:
    """Top-k candidates (and dropped energy when ``track_dropped``) of rows [first, last), one chunk at a time."""
    step = chunk_rows((last - first, cols), like.device)
    selector = _StreamingTopK(k, step * cols, like.device, like.dtype, track_dropped, threshold)
    scratch = torch.empty(step * cols, dtype=like.dtype, device=like.device)
    for start in range(first, last, step):
        selector.add(make_chunk(start, min(last, start + step), scratch), start * cols)
    return selector


def _stream(rows: int, cols: int, k: int, make_chunk: ChunkMaker, like: torch.Tensor, energy: float | None = None,
            sample: tuple[RowSampler, torch.Tensor] | None = None):
    """Exact top-k over a rows × cols matrix given by row chunks, using every CPU thread.

    On CPU the rows are split across ``torch.get_num_threads()`` Python threads, each running
    single-threaded torch ops on its own row range (torch releases the GIL). Many small parallel
    regions would instead pay an OpenMP barrier per op, ruinous on a shared, oversubscribed machine.
    A convert runs whole layers side by side instead (hardware.map_in_threads: each stream then sees one
    thread and is not split), which uses the cores better; the split serves a single large layer.

    With ``sample`` (a function giving any rows of the matrix by index, and every row's energy)
    the search starts from :func:`sampled_threshold` instead of a first chunk's k-th largest; either
    is raised as candidates pile up.

    With the matrix's ``energy`` known (float64, e.g. from factor Gram matrices) each chunk is read
    once (no squares): the dropped energy is ``energy − Σ kept²``. That difference is only trusted
    while the dropped part is at least DIFFERENCE_FLOOR of the energy; below it (near-lossless
    budgets) the selection is streamed again summing the dropped squares themselves.
    """
    threshold = sampled_threshold(rows, cols, k, *sample, like.device) if sample is not None else None
    if energy is not None and k > 0:
        indices, values, _ = _stream_selection(rows, cols, k, make_chunk, like, False, threshold)
        dropped = energy - float(values.double().square().sum())
        if dropped >= DIFFERENCE_FLOOR * energy:
            return indices, values, dropped
    return _stream_selection(rows, cols, k, make_chunk, like, True, threshold)


def sampled_threshold(rows: int, cols: int, k: int, sample_rows: RowSampler, row_energy: torch.Tensor,
                      device: torch.device) -> float | None:
    """A lower bound of the k-th largest magnitude: the k-th largest within the SAMPLE_ROWS rows of
    most energy (at most a chunk); None when those rows hold fewer than 4k entries or a quarter of the
    matrix or more.

    Any subset's k-th largest is at most the whole matrix's, and the rows of most energy hold a
    large share of the largest entries, so the bound is close (measured on 7B-shaped LoRA products:
    2–6× k entries pass it, against 50–300× k past a first chunk's k-th largest).
    """
    count = min(chunk_rows((rows, cols), device), SAMPLE_ROWS)
    if k == 0 or 4 * count > rows or count * cols < 4 * k:
        return None
    picked = torch.topk(row_energy, count, sorted=False).indices
    return kth_largest(sample_rows(picked).reshape(-1).abs(), k)


def kth_largest(values: torch.Tensor, k: int) -> float:
    """The k-th largest of a 1-D tensor, exactly: numpy's introselect on CPU (10× faster than
    ``torch.topk`` there at 3000 of 262144 values), ``torch.topk`` elsewhere."""
    if values.device.type != "cpu":
        return float(torch.topk(values, k, sorted=False).values.min())
    flat = values.detach().to(torch.float64 if values.dtype == torch.float64 else torch.float32).contiguous().numpy()
    return float(np.partition(flat, flat.size - k)[flat.size - k])


def _stream_selection(rows: int, cols: int, k: int, make_chunk: ChunkMaker, like: torch.Tensor, track_dropped: bool = True,
                      threshold: float | None = None):
    """:func:`_stream`'s pass: (sorted indices, values, dropped energy or 0 when not tracked); a
    ``threshold`` that fewer than k entries pass is dropped and the pass run again."""
    if k == 0:
        step = chunk_rows((rows, cols), like.device)
        dropped = sum(float(make_chunk(r, min(rows, r + step), None).square().sum(dtype=torch.float64))
                      for r in range(0, rows, step))
        return torch.zeros(0, dtype=index_dtype(rows * cols), device=like.device), like.new_zeros(0), dropped
    workers = 1
    if like.device.type == "cpu":
        per_worker = max(1, CHUNK_ELEMENTS["cpu"] // max(1, cols))
        workers = max(1, min(torch.get_num_threads(), rows // per_worker))
    if workers == 1:
        merged = _stream_rows(0, rows, cols, k, make_chunk, like, track_dropped, threshold)
    else:
        spans = [(rows * i // workers, rows * (i + 1) // workers) for i in range(workers)]
        parts = list(map_in_threads(lambda span: _stream_rows(*span, cols, k, make_chunk, like, track_dropped, threshold),
                                    spans, workers))
        merged = parts[0]
        for part in parts[1:]:
            merged.merge(part)
    selection = merged.result(rows * cols)
    if threshold is not None and selection[0].numel() < k:
        return _stream_selection(rows, cols, k, make_chunk, like, track_dropped)
    return selection


def select_topk(coefficients: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(sorted flat indices, values, dropped energy in float64) of the k largest |coefficients|."""
    matrix = coefficients.reshape(coefficients.shape[0], -1) if coefficients.dim() >= 2 else coefficients.reshape(1, -1)
    rows, cols = matrix.shape
    k = min(k, matrix.numel())
    return _stream(rows, cols, k, lambda start, stop, scratch: matrix[start:stop], matrix)


def select_topk_product(left: torch.Tensor, right: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`select_topk` of ``left @ right`` without forming it (one cache-sized row chunk at a time);
    its energy comes from the r × r Gram matrices, so each chunk is read once."""
    rows, cols = left.shape[0], right.shape[1]
    k = min(k, rows * cols)
    left64, right64 = left.double(), right.double()
    right_gram = right64 @ right64.T
    energy = float(((left64.T @ left64) * right_gram).sum())
    row_energy = ((left64 @ right_gram) * left64).sum(1)  # ‖(left @ right)_i‖², to sample by

    def product_rows(start: int, stop: int, scratch: torch.Tensor | None) -> torch.Tensor:
        if scratch is None:
            return left[start:stop] @ right
        return torch.matmul(left[start:stop], right, out=scratch[: (stop - start) * cols].view(stop - start, cols))

    if k == rows * cols and k > 0 and left.device.type == "cpu":  # everything kept: no selection to make
        return _every_entry(rows, cols, product_rows, left)
    return _stream(rows, cols, k, product_rows, left, energy, (lambda picked: left[picked] @ right, row_energy))


def _every_entry(rows: int, cols: int, make_chunk: ChunkMaker, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """What :func:`_stream` returns when k is every entry (all indices, the values in index order,
    nothing dropped), without its two selection passes and index sort: each chunk is made with the
    same row ranges and thread split as the streamed pass, so every value is the same float."""
    values = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
    per_worker = max(1, CHUNK_ELEMENTS["cpu"] // max(1, cols))
    workers = max(1, min(torch.get_num_threads(), rows // per_worker))
    spans = [(rows * i // workers, rows * (i + 1) // workers) for i in range(workers)]

    def fill(span: tuple[int, int]) -> None:
        first, last = span
        step = chunk_rows((last - first, cols), like.device)
        for start in range(first, last, step):
            stop = min(last, start + step)
            chunk = make_chunk(start, stop, values[start * cols:])
            if chunk.data_ptr() != values[start * cols:].data_ptr():
                values[start * cols: stop * cols] = chunk.reshape(-1)

    if workers == 1:
        fill(spans[0])
    else:
        list(map_in_threads(fill, spans, workers))
    return torch.arange(rows * cols, dtype=index_dtype(rows * cols), device=like.device), values, 0.0


class TopkPrefix:
    """The M largest-magnitude entries of one matrix, by decreasing magnitude, and the energy of the rest.

    The top k for any k ≤ M is a prefix of it, so one streaming pass serves every smaller budget
    (the report's baseline at equal values, its rate-distortion curve and the equal-bytes rounds).
    """

    def __init__(self, selection: tuple[torch.Tensor, torch.Tensor, float], exhaustive: bool) -> None:
        indices, values, dropped = selection
        order = torch.argsort(values.abs(), descending=True, stable=True)
        self.indices, self.values, self.dropped = indices[order], values[order], dropped
        self.size, self.exhaustive = values.numel(), exhaustive

    def covers(self, k: int) -> bool:
        return k <= self.size or self.exhaustive

    def selection(self, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(sorted flat indices, values, dropped energy in float64) of the k largest, as select_topk gives."""
        k = min(k, self.size)
        rest = self.values[k:]
        dropped = self.dropped + float(rest.double().square().sum()) if rest.numel() else self.dropped
        order = torch.argsort(self.indices[:k])
        return self.indices[:k][order], self.values[:k][order].clone(), dropped


def cached_topk(cache: dict, key: object, k: int, numel: int,
                select: Callable[[int], tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``select(k)`` served from the largest selection cached under ``key`` when it holds k or more."""
    found = cache.get(key)
    if found is None or not found.covers(k):
        found = cache[key] = TopkPrefix(select(k), exhaustive=k >= numel)
    return found.selection(k)


def scatter_dense(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A dense matrix with ``values`` at flat ``indices`` and zeros elsewhere."""
    dense = torch.zeros(shape[0] * shape[1], dtype=values.dtype, device=values.device)
    dense[indices.to(values.device, torch.long)] = values
    return dense.reshape(shape)


def topk_layer(
    delta: LayerDelta, method: str, keys: tuple[str, str], meta: dict,
    selection: tuple[torch.Tensor, torch.Tensor, float], budget: int, capacity: int,
) -> CompressedLayer:
    """The CompressedLayer of a top-k selection: ``keys`` = (values key, indices key); a
    ``*_index_gaps`` indices key stores the indices gap-coded (methods/index_codec.py)."""
    indices, values, dropped = selection
    return CompressedLayer(
        name=delta.name,
        shape=delta.shape,
        method=method,
        tensors={keys[0]: values.float(), keys[1]: index_tensor(keys[1], indices)},
        meta=meta,
        stored_values=values.numel(),
        index_values=indices.numel(),
        error_sq=dropped,
        energy=delta.energy(),
        budget=budget,
        budget_clamped=budget > capacity,
    )
