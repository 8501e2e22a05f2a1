"""Top-k selection in an orthonormal basis: keep the k largest-magnitude coefficients.

In an orthonormal basis the error of any support is the energy of the dropped coefficients, so
the k largest magnitudes are the optimal support and their own values are the optimal values
(no refit needed). Used by WaveFT top-k (wavelet basis) and the weight-domain sparse baseline
(identity basis).

Selection streams over row chunks that fit in cache: the first chunk's top-k sets a threshold,
later chunks contribute only the entries above it, and the dropped energy is summed exactly
(float64 over the dropped squares, never a difference of two large energies). A full-matrix
``torch.topk`` on CPU is an order of magnitude slower and needs several matrix-sized temporaries;
:func:`select_topk_product` never forms the matrix at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from ..deltas.layer_delta import LayerDelta
from .compressed_layer import CompressedLayer
from .index_codec import index_tensor

from ..hardware import one_thread

# Elements per chunk: a few MB keeps each chunk's passes in cache on CPU; on CUDA fewer, larger
# launches win.
CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 26}


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

    def __init__(self, k: int, chunk_numel: int, device: torch.device, dtype: torch.dtype) -> None:
        self.k = k
        self.threshold: torch.Tensor | None = None
        self.indices = torch.zeros(0, dtype=torch.int64, device=device)
        self.values = torch.zeros(0, dtype=dtype, device=device)
        self.dropped = torch.zeros((), dtype=torch.float64, device=device)
        self._magnitude = torch.empty(chunk_numel, dtype=dtype, device=device)
        self._squares = torch.empty(chunk_numel, dtype=dtype, device=device)

    def add(self, chunk: torch.Tensor, offset: int) -> None:
        """Take the candidates of a row chunk (2-D) whose first flat index is ``offset``."""
        chunk = chunk.reshape(chunk.shape[0], -1) if chunk.dim() > 1 else chunk.reshape(1, -1)
        cols = chunk.shape[1]
        flat = chunk.reshape(-1)
        n = flat.numel()
        magnitude, squares = self._magnitude[:n], self._squares[:n]
        torch.abs(flat, out=magnitude)
        if self.threshold is None:
            _, local = torch.topk(magnitude, min(self.k, n), sorted=False)
        else:
            # Candidates are rare once the threshold has settled: find the rows holding any (a
            # row-max pass), then search only those rows, instead of a nonzero() over the chunk.
            grid = magnitude.view(-1, cols)
            rows = torch.nonzero(grid.amax(dim=1) > self.threshold).squeeze(1)
            if rows.numel():
                hits = torch.nonzero(grid[rows] > self.threshold)
                local = rows[hits[:, 0]] * cols + hits[:, 1]
            else:
                local = self.indices[:0]
        torch.mul(flat, flat, out=squares)
        if local.numel():
            squares.index_fill_(0, local, 0)
        self.dropped += squares.sum(dtype=torch.float64)
        self.indices = torch.cat([self.indices, local + offset])
        self.values = torch.cat([self.values, flat[local]])
        if self.indices.numel() >= 2 * self.k or (self.threshold is None and self.indices.numel() >= self.k):
            self._shrink()

    def _shrink(self) -> None:
        """Keep the k largest candidates; the rest join the dropped energy."""
        if self.indices.numel() > self.k:
            _, keep = torch.topk(self.values.abs(), self.k, sorted=False)
            out = torch.ones(self.values.numel(), dtype=torch.bool, device=self.values.device)
            out[keep] = False
            self.dropped += self.values[out].square().sum(dtype=torch.float64)
            self.indices, self.values = self.indices[keep], self.values[keep]
        if self.indices.numel() == self.k:
            self.threshold = self.values.abs().min()

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


ChunkMaker = Callable[[int, int, torch.Tensor | None], torch.Tensor]


def _stream_rows(first: int, last: int, cols: int, k: int, make_chunk: ChunkMaker, like: torch.Tensor) -> _StreamingTopK:
    """Top-k candidates and dropped energy of rows [first, last), one chunk at a time."""
    step = chunk_rows((last - first, cols), like.device)
    selector = _StreamingTopK(k, step * cols, like.device, like.dtype)
    scratch = torch.empty(step * cols, dtype=like.dtype, device=like.device)
    for start in range(first, last, step):
        selector.add(make_chunk(start, min(last, start + step), scratch), start * cols)
    return selector


def _single_threaded(job: Callable[[], _StreamingTopK]) -> Callable[[], _StreamingTopK]:
    """``job`` wrapped to run with one intra-op thread in whichever thread calls it."""

    def run() -> _StreamingTopK:
        with one_thread():
            return job()

    return run


def _stream(rows: int, cols: int, k: int, make_chunk: ChunkMaker, like: torch.Tensor):
    """Exact top-k over a rows × cols matrix given by row chunks, using every CPU thread.

    On CPU the rows are split across ``torch.get_num_threads()`` Python threads, each running
    single-threaded torch ops on its own row range (torch releases the GIL). Many small parallel
    regions would instead pay an OpenMP barrier per op, ruinous on a shared, oversubscribed machine.
    """
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
        return _stream_rows(0, rows, cols, k, make_chunk, like).result(rows * cols)
    bounds = [rows * i // workers for i in range(workers + 1)]
    jobs = [_single_threaded(functools.partial(_stream_rows, bounds[i], bounds[i + 1], cols, k, make_chunk, like))
            for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = [f.result() for f in [pool.submit(job) for job in jobs]]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    return merged.result(rows * cols)


def select_topk(coefficients: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(sorted flat indices, values, dropped energy in float64) of the k largest |coefficients|."""
    matrix = coefficients.reshape(coefficients.shape[0], -1) if coefficients.dim() >= 2 else coefficients.reshape(1, -1)
    rows, cols = matrix.shape
    k = min(k, matrix.numel())
    return _stream(rows, cols, k, lambda start, stop, scratch: matrix[start:stop], matrix)


def select_topk_product(left: torch.Tensor, right: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`select_topk` of ``left @ right`` without forming it (one cache-sized row chunk at a time)."""
    rows, cols = left.shape[0], right.shape[1]
    k = min(k, rows * cols)

    def product_rows(start: int, stop: int, scratch: torch.Tensor | None) -> torch.Tensor:
        if scratch is None:
            return left[start:stop] @ right
        return torch.matmul(left[start:stop], right, out=scratch[: (stop - start) * cols].view(stop - start, cols))

    return _stream(rows, cols, k, product_rows, left)


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
