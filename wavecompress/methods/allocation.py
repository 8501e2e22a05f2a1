"""Budget forms and how a budget is split across layers (uniform, or the exact global greedy).

The budget itself (its four forms and the allocation mode) is a :class:`~.budget.Budget`, built and
validated once (methods/budget.py).

``global`` allocation merges every layer's rate-distortion curve (methods/rate_distortion.py) and
takes steps in decreasing error-removed-per-stored-value order until the total is spent. For
curves with unit steps (top-k) this is the exact optimum for every total; with larger steps (SVD
ranks, WaRA band ranks) it is the optimum at every total the greedy fills exactly (the Lagrangian
breakpoints), and a knapsack heuristic for the few values left over in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace, dataclass, field
from typing import Any

import numpy as np

from ..deltas.layer_delta import LayerDelta
from ..errors import InputError
from .budget import ALLOCATIONS, Budget, BudgetSpec, budget_spec, parse_size  # noqa: F401 - re-exported
from .options import MethodOptions
from .rate_distortion import RDCurve, greedy_take, rd_curve
from .registry import get_method

# safetensors header: 8-byte length, then ~100 bytes of JSON per tensor; checked exactly afterwards.
_HEADER_PER_TENSOR = 160


def bytes_per_value(method: str, delta: LayerDelta, options: MethodOptions) -> tuple[float, float]:
    """(bytes per stored value, fixed bytes per layer) of ``method``, measured on ``delta``.

    Two probes at different budgets separate the per-value cost (values plus indices) from what a
    layer stores regardless of budget (row/column permutations, for instance).
    """
    from .precision import stored_layer

    def compress(delta: LayerDelta, budget: int, options: MethodOptions):
        return stored_layer(get_method(method).compress(delta, budget, options), delta, options.dtype)

    size = delta.shape[0] * delta.shape[1]
    small = compress(delta, min(size, sum(delta.shape)), options)
    large = compress(delta, min(size, 3 * sum(delta.shape)), options)
    if large.stored_values > small.stored_values:
        slope = (large.stored_bytes - small.stored_bytes) / (large.stored_values - small.stored_values)
        return slope, max(small.stored_bytes - slope * small.stored_values, 0.0)
    if small.stored_values:
        return small.stored_bytes / small.stored_values, 0.0
    return 4.0, 0.0


def total_values(
    spec: Budget, names: Sequence[str], method: str, options: MethodOptions, input_stored_values: int,
    fixed_bytes: int = 0, probe: LayerDelta | None = None,
) -> int:
    """The whole adapter's budget in stored values for ``method`` over the layers ``names``.

    For ``max_bytes``: ``fixed_bytes`` (carried-over tensors) and a header estimate are taken off,
    and the rest divided by the bytes per value of ``method`` measured on ``probe``.
    """
    if spec.per_layer is not None:
        return spec.per_layer * len(names)
    if spec.total is not None:
        return spec.total
    if spec.ratio is not None:
        total = int(spec.ratio * input_stored_values)
        if total <= 0:
            raise InputError(f"budget-ratio {spec.ratio:g} of {input_stored_values} input values leaves nothing to store")
        return total
    total, overhead = bytes_total(spec, names, method, options, fixed_bytes, probe)
    if total <= 0 and options.reorder and get_method(method).reorderable:
        # The permutations alone do not fit: layers pay for them out of their own values or are
        # stored plain (methods/shared_permutations.py), so size the total from the plain layer.
        total, overhead = bytes_total(spec, names, method, replace(options, reorder=None), fixed_bytes, probe)
    if total <= 0:
        raise InputError(f"max size {spec.max_bytes} bytes is below the file's fixed part ({overhead} bytes: header and carried tensors)")
    return total


def bytes_total(spec: Budget, names: Sequence[str], method: str, options: MethodOptions, fixed_bytes: int,
                probe: LayerDelta) -> tuple[int, int]:
    """(values of ``method`` that fit in ``spec.max_bytes``, the bytes taken first: header, carried tensors and
    per-layer fixed bytes)."""
    per_value, per_layer = bytes_per_value(method, probe, options)
    overhead = int(fixed_bytes + 8 + len(names) * (4 * _HEADER_PER_TENSOR + per_layer))
    return int((spec.max_bytes - overhead) // per_value), overhead


@dataclass
class Allocation:
    """Per-layer budgets for one method (by layer name), and how they were chosen."""

    method: str
    mode: str
    total: int
    budgets: dict[str, int]
    default: int | None = None
    predicted_error_sq: float | None = None
    curves: list[RDCurve] = field(default_factory=list, repr=False)

    def budget_of(self, name: str) -> int:
        """The budget of layer ``name`` (``default`` for layers the plan did not list)."""
        if name in self.budgets:
            return self.budgets[name]
        if self.default is None:
            raise KeyError(f"no budget planned for layer {name}")
        return self.default


def uniform_budgets(total: int, n_layers: int) -> list[int]:
    """``total`` split as evenly as integers allow (the first ``total % n`` layers get one more)."""
    share, extra = divmod(total, n_layers)
    return [share + (1 if i < extra else 0) for i in range(n_layers)]


def global_budgets(curves: list[RDCurve], total: int) -> tuple[list[int], float]:
    """Exact greedy over all layers' curves: (per-layer budgets, predicted total squared error)."""
    if not curves:
        return [], 0.0
    if all(_unit_prefix(c) for c in curves):
        return _unit_prefix_budgets(curves, total)
    costs = np.concatenate([c.costs for c in curves])
    gains = np.concatenate([c.gains for c in curves])
    layer_of = np.concatenate([np.full(len(c.costs), i, dtype=np.int64) for i, c in enumerate(curves)])
    group_offset = np.cumsum([0] + [int(c.groups.max()) + 1 if len(c.groups) else 0 for c in curves])
    groups = np.concatenate([c.groups + group_offset[i] for i, c in enumerate(curves)])
    ratio = gains / np.maximum(costs, 1)
    order = np.argsort(-ratio, kind="stable")  # best ratio first; ties keep (layer, position) order, as concatenated
    taken = greedy_take(costs, groups, order, total)
    budgets = np.bincount(layer_of[taken], weights=costs[taken], minlength=len(curves)).astype(np.int64)
    error = float(gains[~taken].sum() + sum(c.residual for c in curves))
    return [int(b) for b in budgets], error


def _unit_prefix(curve: RDCurve) -> bool:
    """A top-k curve: every step stores one value, one group, gains never rising (the greedy takes a prefix)."""
    costs, gains = curve.costs, curve.gains
    return bool((costs == 1).all() and (len(curve.groups) == 0 or curve.groups.min() == curve.groups.max())
                and (gains[1:] <= gains[:-1]).all())


def _unit_prefix_budgets(curves: list[RDCurve], total: int) -> tuple[list[int], float]:
    """:func:`global_budgets` of top-k curves without sorting every step: the greedy takes the
    ``total`` largest gains, ties in layer order, so each layer's budget is its count above the
    total-th largest gain plus its share of the ties. Same budgets and error as the sort (a full 7B
    convert's sparse curves held ~190 bytes per step in the sort's arrays, here ~10)."""
    lengths = [len(c.gains) for c in curves]
    gains = np.concatenate([c.gains for c in curves])
    budgets = list(lengths)
    if 0 < total < gains.size:
        cut = float(np.partition(gains, gains.size - total)[gains.size - total])  # the total-th largest gain
        above = [int(np.count_nonzero(c.gains > cut)) for c in curves]
        ties = total - sum(above)
        budgets = []
        for curve, count in zip(curves, above):
            tied = min(ties, int(np.count_nonzero(curve.gains == cut)))
            ties -= tied
            budgets.append(count + tied)
    elif total <= 0:
        budgets = [0] * len(curves)
    taken = np.zeros(gains.size, dtype=bool)
    offset = 0
    for length, budget in zip(lengths, budgets):
        taken[offset : offset + budget] = True
        offset += length
    error = float(gains[~taken].sum() + sum(c.residual for c in curves))
    return budgets, error


def layer_names(layers: Sequence[LayerDelta]) -> list[str]:
    """Names of ``layers`` without computing lazy ones."""
    names = getattr(layers, "names", None)
    return list(names) if names is not None else [layer.name for layer in layers]


def layer_shapes(layers: Sequence[LayerDelta]) -> dict[str, tuple[int, int]]:
    """{name: (d_out, d_in)} of ``layers`` without computing lazy ones."""
    shapes = getattr(layers, "shapes", None)
    return dict(shapes) if shapes is not None else {layer.name: tuple(layer.shape) for layer in layers}


def plan_budgets(
    layers: Sequence[LayerDelta],
    methods: Sequence[str],
    options: MethodOptions,
    spec: Budget,
    mode: str = "uniform",
    input_stored_values: int = 0,
    fixed_bytes: int = 0,
    calibration: Any = None,
) -> dict[str, Allocation]:
    """{method: Allocation} for each of ``methods`` under ``spec``, one pass over ``layers``.

    ``uniform`` gives every layer the same budget (the total split evenly); ``global`` runs the
    exact greedy over every layer's rate-distortion curve, each method on its own curves
    (activation-weighted curves for the activation-aware methods when ``calibration`` is given).
    """
    if mode not in ALLOCATIONS:
        raise InputError(f"unknown allocation {mode!r}; choose one of {', '.join(ALLOCATIONS)}")
    methods = list(dict.fromkeys(methods))
    names = layer_names(layers)
    if not names:
        return {m: Allocation(m, mode, 0, {}, spec.per_layer) for m in methods}
    if spec.per_layer is not None and mode == "uniform":
        return {m: Allocation(m, mode, spec.per_layer * len(names), {}, spec.per_layer) for m in methods}
    if spec.rank is not None:
        shapes = layer_shapes(layers)
        per_layer = spec.rank_budgets(names, shapes)
        if mode == "uniform":  # the same rank everywhere: each layer's own rank·(d_out + d_in)
            return {m: Allocation(m, mode, sum(per_layer.values()), dict(per_layer)) for m in methods}
        spec = BudgetSpec(total=sum(per_layer.values()))  # global: that many values, split by error removed
    probe = layers[0] if spec.max_bytes is not None else None
    totals = {m: total_values(spec, names, m, options, input_stored_values, fixed_bytes, probe) for m in methods}
    if mode == "uniform":
        return {m: Allocation(m, mode, totals[m], dict(zip(names, uniform_budgets(totals[m], len(names))))) for m in methods}
    curves: dict[str, list[RDCurve]] = {m: [] for m in methods}
    for delta in layers:
        gram = calibration.gram(delta.name) if calibration is not None else None
        for m in methods:
            curves[m].append(rd_curve(delta, m, options, max_cost=totals[m], gram=gram))
    plans = {}
    for m in methods:
        budgets, error = global_budgets(curves[m], totals[m])
        plans[m] = Allocation(m, mode, totals[m], {c.name: b for c, b in zip(curves[m], budgets)}, 0, error, curves[m])
    return plans
