"""Rate-distortion curves: a layer's error after each stored value a method would add, in its own order.

A curve is a sequence of *steps* (cost in stored values, error removed) in the order the method's own
compressor takes them, grouped so that a step that does not fit blocks the rest of its group. Each
curve comes from the method itself, so it matches what ``compress`` stores:

- top-k in an orthonormal basis (``waveft``, ``sparse``; :func:`topk_curve`): the squared kept
  coefficients in decreasing order, one value each (sorted coefficient energies give the curve for free);
- truncated SVD (``lora``, in methods/lora_svd.py): σ_i², each costing d_out + d_in;
- WaRA (methods/wara.py): the greedy's own σ²/cost sequence over subbands (cost rows_i + cols_j per rank-1 term);
- any method without its own (``Method.rd_curve`` None): a sampled curve (its compressor at a grid
  of budgets), lower convex hull.

Within a group the gain per cost never increases, so taking steps in decreasing gain/cost order is
the exact greedy for convex curves (:mod:`wavecompress.methods.allocation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..deltas.layer_delta import LayerDelta
from .options import MethodOptions
from .registry import Method, get_method


@dataclass
class RDCurve:
    """Steps (cost, gain, group) of one method on one layer, plus the error nothing removes."""

    name: str
    method: str
    shape: tuple[int, int]
    energy: float
    costs: np.ndarray  # int64, stored values per step
    gains: np.ndarray  # float64, squared error removed per step
    groups: np.ndarray  # int64, steps of one group are taken in order; a misfit blocks the group
    residual: float  # squared error left after every step

    @property
    def budgets(self) -> np.ndarray:
        """Stored values after 0, 1, ..., n steps."""
        return np.concatenate([[0], np.cumsum(self.costs)])

    @property
    def errors_sq(self) -> np.ndarray:
        """Squared error after 0, 1, ..., n steps (suffix sums, no subtraction of large numbers)."""
        tail = np.concatenate([np.cumsum(self.gains[::-1])[::-1], [0.0]])
        return tail + self.residual

    def taken(self, budget: int) -> np.ndarray:
        """Mask of the steps the method's greedy takes within ``budget``."""
        return greedy_take(self.costs, self.groups, np.arange(len(self.costs)), budget)

    def _prefix_steps(self, budget: int) -> int | None:
        """Steps taken at ``budget`` when the curve is one group (the greedy takes a prefix), else None."""
        if len(self.groups) and self.groups.min() != self.groups.max():
            return None
        if not hasattr(self, "_cumulative"):
            self._cumulative = self.budgets
            self._suffix = self.errors_sq
        return int(np.searchsorted(self._cumulative, budget, side="right")) - 1

    def error_sq_at(self, budget: int) -> float:
        """Squared error of the method at ``budget`` stored values for this layer."""
        steps = self._prefix_steps(budget)
        if steps is not None:
            return float(self._suffix[steps])
        mask = self.taken(budget)
        return float(self.gains[~mask].sum() + self.residual)

    def stored_at(self, budget: int) -> int:
        steps = self._prefix_steps(budget)
        if steps is not None:
            return int(self._cumulative[steps])
        return int(self.costs[self.taken(budget)].sum())


@dataclass
class LowestCurve:
    """One layer's curves under several candidate orderings, read at each budget as the lowest error
    among them: what ``convert`` reports when it keeps the lowest-error ordering per layer (auto, best).
    Ties go to the first candidate, as in convert."""

    curves: list[RDCurve]

    @property
    def name(self) -> str:
        return self.curves[0].name

    @property
    def energy(self) -> float:
        return self.curves[0].energy

    @property
    def costs(self) -> np.ndarray:
        """The steps of the candidate that stores the most (its total is where every candidate saturates)."""
        return max((c.costs for c in self.curves), key=lambda costs: int(costs.sum()))

    def _lowest(self, budget: int) -> RDCurve:
        return min(self.curves, key=lambda c: c.error_sq_at(budget))

    def error_sq_at(self, budget: int) -> float:
        return self._lowest(budget).error_sq_at(budget)

    def stored_at(self, budget: int) -> int:
        return self._lowest(budget).stored_at(budget)


def greedy_take(costs: np.ndarray, groups: np.ndarray, order: np.ndarray, budget: int) -> np.ndarray:
    """Take steps in ``order`` while they fit; a step that does not fit blocks its group for good.

    The fitting prefix is found with one cumulative sum; only the short tail after the first misfit
    (where the remaining budget is below one step's cost) is walked step by step.
    """
    taken = np.zeros(len(costs), dtype=bool)
    if len(order) == 0 or budget <= 0:
        return taken
    ordered_costs = costs[order]
    cumulative = np.cumsum(ordered_costs)
    prefix = int(np.searchsorted(cumulative, budget, side="right"))
    taken[order[:prefix]] = True
    remaining = budget - (int(cumulative[prefix - 1]) if prefix else 0)
    if prefix == len(order):
        return taken
    blocked = {int(groups[order[prefix]])}
    tail = order[prefix + 1 :]
    tail = tail[costs[tail] <= remaining]
    for step in tail:
        if remaining <= 0:
            break
        group = int(groups[step])
        if group in blocked:
            continue
        cost = int(costs[step])
        if cost <= remaining:
            taken[step] = True
            remaining -= cost
        else:
            blocked.add(group)
    return taken


def topk_curve(delta: LayerDelta, options: MethodOptions, max_cost: int, method: Method) -> RDCurve:
    """Top-k in an orthonormal basis: the squared kept values (``method.values_key``) in decreasing order."""
    full = delta.shape[0] * delta.shape[1]
    layer = method.compress(delta, min(full, max_cost), options)
    values = layer.tensors[method.values_key]
    gains = np.sort(values.double().square().numpy())[::-1].copy()
    return RDCurve(delta.name, method.name, delta.shape, layer.energy, np.ones(len(gains), dtype=np.int64), gains,
                   np.zeros(len(gains), dtype=np.int64), max(layer.error_sq, 0.0))


def sampled_curve(delta: LayerDelta, method: str, options: MethodOptions, max_cost: int, points: int = 24) -> RDCurve:
    """Any method: compress at geometric budgets, keep the lower convex hull of (stored, error²)."""
    compress = get_method(method).compress
    grid = sorted({int(b) for b in np.geomspace(1, max(max_cost, 2), points)})
    samples = [(0, delta.energy())]
    for budget in grid:
        layer = compress(delta, budget, options)
        samples.append((layer.stored_values, layer.error_sq))
    samples.sort()
    hull: list[tuple[int, float]] = []
    for point in samples:
        if hull and point[0] == hull[-1][0]:
            if point[1] < hull[-1][1]:
                hull.pop()
            else:
                continue
        if hull and point[1] >= hull[-1][1]:
            continue
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (y1 - y0) * (point[0] - x0) >= (point[1] - y0) * (x1 - x0):  # hull[-1] above the chord
                hull.pop()
            else:
                break
        hull.append(point)
    costs = np.diff([p[0] for p in hull]).astype(np.int64)
    gains = -np.diff([p[1] for p in hull])
    return RDCurve(delta.name, method, delta.shape, delta.energy(), costs, gains.astype(np.float64),
                   np.zeros(len(costs), dtype=np.int64), float(hull[-1][1]))


def weighted_curve(delta: LayerDelta, method: str, options: MethodOptions, max_cost: int, gram: torch.Tensor) -> RDCurve:
    """Activation-weighted curve (error ‖(ΔW−ΔŴ)C^{1/2}‖²) of an activation-aware method, for allocation."""
    gains, cost, useful = get_method(method).activation_aware.gains(delta, options, gram)
    gains = gains.double().numpy()
    steps = min(useful, max_cost // cost)
    return RDCurve(delta.name, method, delta.shape, float(gains.sum()), np.full(steps, cost, dtype=np.int64),
                   gains[:steps].copy(), np.zeros(steps, dtype=np.int64), float(gains[steps:].sum()))


def rd_curve(delta: LayerDelta, method: str, options: MethodOptions | None = None, max_cost: int | None = None,
             gram: torch.Tensor | None = None) -> RDCurve:
    """The rate-distortion curve of ``method`` on ``delta`` up to ``max_cost`` stored values.

    The method's own curve (``Method.rd_curve``), else one sampled from its compressor. With
    ``gram`` (C = XᵀX/n) and an activation-aware method, the curve is in activation-weighted
    error, the quantity that method minimises (methods/activation_aware.py).
    """
    options = options or MethodOptions()
    full = delta.shape[0] * delta.shape[1]
    max_cost = full * 2 if max_cost is None else max(int(max_cost), 1)
    found = get_method(method)
    if gram is not None and found.activation_aware is not None:
        return weighted_curve(delta, method, options, max_cost, gram)
    if found.rd_curve is not None:
        return found.rd_curve(delta, options, max_cost)
    return sampled_curve(delta, method, options, max_cost)
