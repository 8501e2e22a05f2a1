"""Row and column orderings computed from a delta, so the wavelet transform sees a smooth matrix.

A trained delta's rows and columns come in the model's arbitrary neuron order, which a wavelet
basis cannot exploit. Permuting rows (and columns) so that neighbours are similar makes the
matrix smooth along both axes. Every ordering here is computed from the delta itself (orderings
from the base weights were measured to give nothing, see DESIGN.md §4), from low-dimensional
row/column features: the leading singular triplets, U_k·S_k for rows and V_k·S_k for columns,
whose pairwise distances are exactly the distances between rows (columns) of the rank-k part.

Orderings (``ORDERINGS``):
- ``svd``: sort by the leading left / right singular vector. O((d_out + d_in)·r²) from LoRA
  factors.
- ``fiedler``: spectral ordering, sort by the Fiedler vector of a Gaussian similarity graph on
  the features (dense eigh up to 2048 rows, LOBPCG above).
- ``greedy``: nearest-neighbour chain on the features, starting at the smallest leading-vector
  entry. O(n²·k) time, O(n·k) memory: on a CPU a Python loop of n steps (~36 ms for n = 4096).
  Layers with a side above ``GREEDY_MAX_SIZE`` use ``snake`` instead (recorded in the metadata).
- ``snake``: a boustrophedon through the leading three feature axes (bands, sub-bands, sorted
  cells; see :func:`snake_order`): a few torch sorts on the features' device, O(n log n).

``greedy`` wins at high budgets per layer and ``snake`` at low ones (``python
benchmarks/ordering_table.py``: on the MiniLM LoRA fixture snake is lower from 300 to 10000 values
per layer and greedy at 30000; on its full fine-tune snake is lower at 300 and 1000, greedy from 3000
(WaRA) or 8192 (WaveFT) up). So the default, ``auto`` (:func:`ordering_candidates`), tries both on
layers whose sides are at most ``AUTO_GREEDY_MAX_SIZE`` (where greedy is cheap) and keeps the lower
error, and takes ``snake`` alone on larger layers (a 7B layer at a few thousand values keeps ~0.02 %
of its entries, far below where greedy wins on the fixture).

A permutation ``p`` means row ``i`` of the reordered matrix is row ``p[i]`` of ΔW:
``M = ΔW[p][:, q]`` and ``ΔW = M[argsort(p)][:, argsort(q)]`` (:func:`unpermute`).
Permutations are orthogonal maps, so errors measured on M are errors on ΔW.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import numpy as np
import torch

ORDERINGS = ("svd", "fiedler", "greedy", "snake")  # one ordering each; methods/options.REORDER_CHOICES adds auto, best
FEATURE_RANK = 8
_DENSE_EIGH_MAX = 2048
# Greedy costs O(n²·k) in a loop of n Python steps; a layer with a side above this uses "snake".
GREEDY_MAX_SIZE = 8192
# "auto" tries greedy beside snake only on layers with no side above this (~12 ms per side on a CPU).
AUTO_GREEDY_MAX_SIZE = 2048
# The snake orders by this many leading feature axes, in cells of about SNAKE_CELL rows.
SNAKE_AXES = 3
SNAKE_CELL = 8
# Nearest rows listed per row for the greedy walk (a fallback scan covers the rest exactly).
GREEDY_NEIGHBOURS = 16


def permutation_dtype(n: int) -> torch.dtype:
    """int16 when every index fits (n ≤ 32767), else int32: the cheapest exact storage."""
    return torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32


def features_from_factors(left: torch.Tensor, right: torch.Tensor, k: int = FEATURE_RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """(row features U_k S_k, column features V_k S_k) of ``left @ right`` via its factored SVD."""
    from .lowrank import factored_svd

    u, s, vh = factored_svd(left, right)
    k = min(k, s.numel())
    return u[:, :k] * s[:k], vh[:k].T * s[:k]


def features_from_dense(dense: torch.Tensor, k: int = FEATURE_RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """(row features, column features) of a dense delta from a seeded randomized ``svd_lowrank``."""
    k = min(k, *dense.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(dense.double(), q=min(k + 8, *dense.shape), niter=4)
    return u[:, :k] * s[:k], v[:, :k] * s[:k]


def _canonical_sign(vector: torch.Tensor) -> torch.Tensor:
    """Flip ``vector`` so its largest-magnitude entry is positive (SVD signs are arbitrary)."""
    pivot = vector[vector.abs().argmax()] if vector.numel() else vector.new_ones(())
    return vector if pivot >= 0 else -vector


def svd_order(features: torch.Tensor) -> torch.Tensor:
    """Sort by the leading singular vector (first feature column); ties keep the original order."""
    if features.shape[1] == 0:
        return torch.arange(features.shape[0], device=features.device)
    return torch.sort(_canonical_sign(features[:, 0]), stable=True).indices


def fiedler_order(features: torch.Tensor) -> torch.Tensor:
    """Sort by the Fiedler vector of a Gaussian-kernel similarity graph on the features."""
    n = features.shape[0]
    if n < 3 or features.shape[1] == 0:
        return svd_order(features)
    x = features.double()
    dist_sq = torch.cdist(x, x).square()
    scale = dist_sq[dist_sq > 0].median() if bool((dist_sq > 0).any()) else dist_sq.new_tensor(1.0)
    affinity = torch.exp(-dist_sq / scale)
    inv_sqrt_degree = affinity.sum(1).rsqrt()
    normalized = inv_sqrt_degree[:, None] * affinity * inv_sqrt_degree[None, :]
    if n <= _DENSE_EIGH_MAX:
        _, vectors = torch.linalg.eigh(normalized)
        second = vectors[:, -2]
    else:
        generator = torch.Generator().manual_seed(0)
        start = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        _, vectors = torch.lobpcg(normalized, k=3, X=start, largest=True, niter=200)
        second = vectors[:, 1]
    return torch.sort(_canonical_sign(second * inv_sqrt_degree), stable=True).indices


def snake_order(features: torch.Tensor) -> torch.Tensor:
    """Boustrophedon through the leading SNAKE_AXES feature axes: the rows are cut into bands along
    the first axis, each band into sub-bands along the second (direction alternating from band to
    band), and each sub-band is sorted along the third (alternating again). Each axis gets bands in
    proportion to its spread, so cells of about SNAKE_CELL rows are roughly square in feature space
    and neighbours in the order are neighbours in feature space. Signs are made canonical first."""
    n, k = features.shape
    if n < 3 or k == 0:
        return svd_order(features)
    axes = min(SNAKE_AXES, k)
    points = torch.stack([_canonical_sign(features[:, a].double()) for a in range(axes)], dim=1)
    return torch.cat(_snake(points, torch.arange(n, device=features.device), 0, False))


def _snake(points: torch.Tensor, rows: torch.Tensor, axis: int, reverse: bool) -> list[torch.Tensor]:
    """:func:`snake_order`'s pieces for ``rows``, cut along ``axis`` and the axes after it."""
    ranked = rows[torch.sort(points[rows, axis], stable=True, descending=reverse).indices]
    last = points.shape[1] - 1
    if axis == last or rows.numel() <= SNAKE_CELL:
        return [ranked]
    spread = points[rows, axis:].std(0).clamp_min(torch.finfo(torch.float64).tiny)
    share = float(spread[0] / spread.log().mean().exp())  # this axis's spread over the geometric mean
    bands = int(round((rows.numel() / SNAKE_CELL) ** (1.0 / (last - axis + 1)) * share))
    pieces = []
    for index, band in enumerate(torch.tensor_split(ranked, max(1, min(rows.numel(), bands)))):
        pieces += _snake(points, band, axis + 1, bool(index % 2))
    return pieces


def greedy_order(features: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour chain: start at the smallest leading-vector entry, always step to the
    closest unvisited row. On CPU a scan per step (:func:`greedy_scan`); on a GPU the distances run
    there, batched (:func:`greedy_lists`). Both give the same chain (up to exact distance ties)."""
    n = features.shape[0]
    if n < 3 or features.shape[1] == 0:
        return svd_order(features)
    return greedy_scan(features) if features.device.type == "cpu" else greedy_lists(features)


def greedy_scan(features: torch.Tensor) -> torch.Tensor:
    """The greedy chain by a scan of the unvisited rows at every step (numpy, swap-remove of
    visited rows): n small steps, the fastest form on a CPU.

    Each step ranks the unvisited rows by |p|² − 2 p·c (one matrix-vector product with the rows
    augmented by |p|²), then decides among the rows within rounding distance of the minimum by the
    exact ‖p − c‖², so the chain is exactly the one an exact scan gives (ties: the first row in
    scan order).
    """
    n, k = features.shape
    points = features.detach().double().cpu().numpy()
    rows = np.empty((n, k + 1))  # [p, |p|²] per row, swapped together
    rows[:, :k] = points
    rows[:, k] = np.einsum("ij,ij->i", points, points)
    slack = 1e-12 * 2 * float(rows[:, k].max(initial=0.0))  # far above the rounding of |p|² − 2 p·c
    probe = np.ones(k + 1)
    ids = list(range(n))
    order = [0] * n
    ranked, close = np.empty(n), np.empty(n, dtype=bool)  # reused every step: no allocation in the loop
    j = int(svd_order(features)[0])
    current = rows[j, :k].copy()
    for step in range(n):
        m = n - step
        if step:
            np.dot(rows[:m], probe, out=ranked[:m])
            j = int(ranked[:m].argmin())
            np.less_equal(ranked[:m], ranked[j] + slack, out=close[:m])
            if np.count_nonzero(close[:m]) > 1:
                near = np.flatnonzero(close[:m])
                j = int(near[np.square(rows[near, :k] - current).sum(1).argmin()])
        order[step] = ids[j]
        current = rows[j, :k].copy()
        np.multiply(current, -2.0, out=probe[:k])
        last = m - 1  # swap-remove row j: the unvisited rows stay rows[:m - 1]
        rows[j], rows[last] = rows[last], rows[j].copy()
        ids[j], ids[last] = ids[last], ids[j]
    return torch.tensor(order, dtype=torch.int64)


def greedy_lists(features: torch.Tensor) -> torch.Tensor:
    """The greedy chain from neighbour lists computed batched on the features' device.

    :func:`nearest_lists` gives each row its ``GREEDY_NEIGHBOURS`` nearest rows (exactly ranked in
    float64); the walk only reads them. When every listed neighbour is visited the unvisited rows
    are scanned exactly, and the lists are rebuilt over the unvisited rows each time their number
    halves.
    """
    n = features.shape[0]
    first = int(svd_order(features)[0])
    points = features.detach().double()
    host = points.cpu().numpy()
    lists = nearest_lists(points, points, GREEDY_NEIGHBOURS).numpy().tolist()
    visited = bytearray(n)
    visited[first] = 1
    order, current = [first], first
    append = order.append
    live, built = np.arange(n), n  # candidate rows for exact scans; unvisited count at the last build
    for remaining in range(n - 1, 0, -1):
        for step in lists[current]:  # the hot loop: plain Python, no generator or call per step
            if not visited[step]:
                break
        else:
            step, rebuilt = _greedy_jump(current, remaining, lists, visited, points, host, live, built)
            if rebuilt is not None:
                live, built = rebuilt, remaining
        visited[step] = 1
        append(step)
        current = step
    return torch.tensor(order, dtype=torch.int64)


def _greedy_jump(current: int, remaining: int, lists: list, visited: bytearray, points: torch.Tensor, host: np.ndarray,
                 live: np.ndarray, built: int) -> tuple[int, np.ndarray | None]:
    """(nearest unvisited row to ``current`` once its list is used up, the rows the lists were
    rebuilt over or None): a rebuild of every unvisited row's list when their number has halved
    since the last build, else an exact scan of the rows unvisited at the last build."""
    if 2 * remaining <= built and remaining > GREEDY_NEIGHBOURS:
        live = np.flatnonzero(np.frombuffer(bytes(visited), dtype=np.uint8) == 0)
        queries = np.append(live, current)
        fresh = nearest_lists(points[torch.from_numpy(queries).to(points.device)],
                              points[torch.from_numpy(live).to(points.device)], GREEDY_NEIGHBOURS)
        for row, neighbours in zip(queries.tolist(), live[fresh.numpy()].tolist()):
            lists[row] = neighbours
        return next(j for j in lists[current] if not visited[j]), live
    candidates = live[np.frombuffer(bytes(visited), dtype=np.uint8)[live] == 0]
    return int(candidates[np.square(host[candidates] - host[current]).sum(1).argmin()]), None


def nearest_lists(queries: torch.Tensor, pool: torch.Tensor, k: int, block: int = 2048) -> torch.Tensor:
    """For every query row, the indices (CPU int64, nearest first) of its ``k`` nearest pool rows.

    Candidates come from a float32 distance matrix in row blocks (matrix products, on the
    tensors' device), twice as many as needed; they are then ranked by exact float64 distances.
    """
    k = min(k, pool.shape[0])
    wide = min(2 * k, pool.shape[0])
    centre = pool.mean(0)
    pool32, queries32 = (pool - centre).float(), (queries - centre).float()
    pool_sq = pool32.square().sum(1)
    picked = []
    for start in range(0, queries.shape[0], block):
        chunk = queries32[start : start + block]
        dist = torch.addmm(pool_sq[None, :] + chunk.square().sum(1, keepdim=True), chunk, pool32.T, alpha=-2)
        picked.append(torch.topk(dist, wide, dim=1, largest=False, sorted=False).indices)
    candidates = torch.cat(picked)
    exact = (pool[candidates] - queries[:, None]).square().sum(2)
    ranked = torch.sort(exact, dim=1, stable=True).indices[:, :k]
    return torch.gather(candidates, 1, ranked).cpu()


_ORDER_FUNCTIONS = {"svd": svd_order, "fiedler": fiedler_order, "greedy": greedy_order, "snake": snake_order}


def ordering_candidates(reorder: str, shapes: Iterable[tuple[int, int]]) -> tuple[str, ...]:
    """The orderings to try, lowest error kept, for ``reorder`` on layers of these ``shapes`` (one
    layer, or a group sharing a permutation): ``best`` every ordering, ``auto`` greedy and snake
    (snake alone when a side exceeds AUTO_GREEDY_MAX_SIZE), else ``reorder``; greedy becomes snake
    when a side exceeds GREEDY_MAX_SIZE."""
    side = max((max(shape) for shape in shapes), default=0)
    if reorder == "best":
        candidates = ORDERINGS
    elif reorder == "auto":
        candidates = ("greedy", "snake") if side <= AUTO_GREEDY_MAX_SIZE else ("snake",)
    else:
        candidates = (reorder,)
    if side > GREEDY_MAX_SIZE:
        candidates = tuple("snake" if o == "greedy" else o for o in candidates)
    return tuple(dict.fromkeys(candidates))


def order(features: torch.Tensor, ordering: str) -> torch.Tensor:
    """The permutation (int64) that ``ordering`` gives for these row features."""
    if ordering not in _ORDER_FUNCTIONS:
        raise ValueError(f"unknown ordering {ordering!r}; choose one of {', '.join(ORDERINGS)}")
    return _ORDER_FUNCTIONS[ordering](features).to(features.device)


def unpermute(matrix: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """ΔW from the reordered matrix M = ΔW[rows][:, cols] (index_select: differentiable in M).

    Permutations are moved to ``matrix``'s device; their validated inverses are cached, so a
    training step pays no host sync for the check."""
    if rows is not None:
        matrix = matrix.index_select(0, cached_inverse(rows.to(matrix.device), matrix.shape[0], "reorder_rows"))
    if cols is not None:
        matrix = matrix.index_select(1, cached_inverse(cols.to(matrix.device), matrix.shape[1], "reorder_cols"))
    return matrix


_INVERSES: dict[int, tuple[weakref.ref, int, int, torch.Tensor]] = {}


def cached_inverse(perm: torch.Tensor, n: int, label: str = "permutation") -> torch.Tensor:
    """:func:`inverse_permutation`, remembered for as long as ``perm`` lives unchanged (same object
    and version): fixed buffers are checked once, not on every forward pass."""
    entry = _INVERSES.get(id(perm))
    if entry is not None and entry[0]() is perm and entry[1] == perm._version and entry[2] == n:
        return entry[3]
    inverse = inverse_permutation(perm, n, label)
    if len(_INVERSES) > 4096:
        for key in [k for k, v in _INVERSES.items() if v[0]() is None]:
            del _INVERSES[key]
    try:
        _INVERSES[id(perm)] = (weakref.ref(perm), perm._version, n, inverse)
    except TypeError:  # not weak-referenceable: just do not cache
        pass
    return inverse


def inverse_permutation(perm: torch.Tensor, n: int, label: str = "permutation") -> torch.Tensor:
    """argsort of ``perm`` (int64, on its device), after checking it is a permutation of range(n)."""
    perm = perm.long().reshape(-1)
    if perm.numel() != n or not torch.equal(torch.sort(perm).values, torch.arange(n, device=perm.device)):
        raise ValueError(f"{label} is not a permutation of {n} indices")
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n, device=perm.device)
    return inverse
