"""A target instead of a budget: the smallest adapter whose overall relative error is at most ``target``.

kohya's ``sv_fro`` picks each layer's rank by the share of Frobenius norm it keeps; here the whole
adapter is sized at once. Every layer's rate-distortion curve (methods/rate_distortion.py) is merged
by the exact global greedy (methods/allocation.py), and a binary search over the total finds the
smallest total whose predicted overall error sqrt(Σ‖ΔW−ΔŴ‖²/Σ‖ΔW‖²) is ≤ target. Curves start at a
few ranks' worth of values per layer and are extended until the target is reachable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..deltas.layer_delta import LayerDelta
from ..errors import InputError
from .allocation import global_budgets
from .budget import validate_target  # noqa: F401 - export.py imports it from here
from .options import MethodOptions
from .rate_distortion import RDCurve, rd_curve


@dataclass
class TargetSearch:
    """The total found for ``target``, its predicted error, per-layer budgets and every total tried."""

    target: float
    total: int
    error: float
    budgets: dict[str, int]
    tried: list[tuple[int, float]] = field(default_factory=list)  # (total, predicted overall relative error)

    def describe(self, method: str) -> str:
        below = [t for t in self.tried if t[0] < self.total]
        closest = max(below, default=None)
        text = (f"target error {self.target:g}: {method} needs {self.total} values in total (predicted error "
                f"{self.error:.4f}; binary search over {len(self.tried)} totals, global allocation")
        return text + (f"; {closest[0]} values give {closest[1]:.4f})" if closest else ")")


def _error(curves: list[RDCurve], total: int, energy: float) -> tuple[float, list[int]]:
    budgets, error_sq = global_budgets(curves, total)
    return (math.sqrt(max(error_sq, 0.0) / energy) if energy > 0 else 0.0), budgets


def search_total(curves: list[RDCurve], target: float) -> TargetSearch:
    """Binary search over totals on fixed curves (None budgets when the curves cannot reach ``target``)."""
    energy = sum(c.energy for c in curves)
    full = int(sum(int(c.costs.sum()) for c in curves))
    tried: list[tuple[int, float]] = []
    top, budgets = _error(curves, full, energy)
    tried.append((full, top))
    if top > target:
        return TargetSearch(target, full, top, {}, tried)
    low, high, best = 0, full, (full, top, budgets)
    while high - low > 1:
        middle = (low + high) // 2
        error, budgets = _error(curves, middle, energy)
        tried.append((middle, error))
        if error <= target:
            high, best = middle, (middle, error, budgets)
        else:
            low = middle
    total, error, budgets = best
    return TargetSearch(target, total, error, {c.name: b for c, b in zip(curves, budgets)}, sorted(tried))


def prune_prefix_steps(curves: list[RDCurve], budgets: dict[str, int], target: float) -> dict[str, int]:
    """Drop last steps of prefix curves (one group: LoRA ranks, top-k values) while the overall error stays
    ≤ ``target``, cheapest loss first, so no layer keeps a step the target does not need."""
    energy = sum(c.energy for c in curves)
    steps = {c.name: int(sum(1 for b in c.budgets[1:] if b <= budgets.get(c.name, 0))) for c in curves}
    error_sq = sum(float(c.errors_sq[steps[c.name]]) for c in curves)
    limit = target * target * energy
    while True:
        candidates = [(float(c.gains[steps[c.name] - 1]), c) for c in curves if steps[c.name] > 0]
        candidates = [(gain, c) for gain, c in candidates if error_sq + gain <= limit]
        if not candidates:
            break
        gain, curve = min(candidates, key=lambda item: item[0] / max(int(item[1].costs[steps[item[1].name] - 1]), 1))
        steps[curve.name] -= 1
        error_sq += gain
    return {c.name: int(c.budgets[steps[c.name]]) for c in curves}


def total_for_target(layers: Sequence[LayerDelta], method: str, target: float, options: MethodOptions | None = None,
                     calibration: Any = None, progress: Any = None) -> TargetSearch:
    """The smallest global total of ``method`` over ``layers`` with overall relative error ≤ ``target``."""
    target = validate_target(target)
    options = options or MethodOptions()
    steps = 16  # curve length per layer, in ranks' worth of values (d_out + d_in); doubled until enough
    while True:
        curves = []
        for delta in layers:
            gram = calibration.gram(delta.name) if calibration is not None else None
            cap = min(delta.shape[0] * delta.shape[1], steps * sum(delta.shape))
            curves.append(rd_curve(delta, method, options, max_cost=cap, gram=gram))
            if progress is not None:
                progress(delta.name)
        found = search_total(curves, target)
        complete = all(steps * sum(c.shape) >= c.shape[0] * c.shape[1] for c in curves)
        if found.budgets or complete:
            break
        steps *= 4
    if not found.budgets:
        raise InputError(f"--target-error {target:g} is out of reach for {method}: even storing everything leaves "
                         f"{found.error:.4f}")
    return found
