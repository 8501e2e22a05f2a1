"""The report's baseline columns: each baseline at its planned value budget and at the output's bytes.

A user pays in bytes as well as in trainable values. After the output method is compressed, each
baseline (LoRA, sparse) is compressed at its own planned budget (equal values) and again with the
same stored bytes as the output (``<baseline>@bytes``: Σ of every layer's tensor bytes), allocated
globally by the exact greedy over its rate-distortion curves, in the output's precision. A
baseline's bytes per value are constant (LoRA: one value; sparse: one value plus one uint16 gap
code, escapes aside), so the value total is the byte total divided by that; if escapes push sparse
over, the total shrinks until it fits.

One pass over the layers builds each baseline's curve up to that total and its equal-values
column: the curve's top-k selection is cached on the layer (methods/topk.cached_topk), so the
equal-values column and every equal-bytes round are prefixes of it, not new passes over ΔW.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .deltas import AdapterDeltas
from .methods import CompressedLayer, MethodOptions
from .methods.activation_aware import aware_compress, with_activation_error
from .hardware import CPU, layer_to_device, layer_workers, map_in_threads
from .methods.allocation import Allocation, global_budgets, layer_names
from .methods.precision import stored_layer, value_bytes
from .methods.rate_distortion import RDCurve, rd_curve
from .report import LayerReport, MethodSummary

SUFFIX = "@bytes"
_ROUNDS = 4
# Each layer's equal-bytes curve is first built to this many times the average budget per layer (then
# extended where the allocation reaches its end): a full-length curve per layer costs a top-k of the
# whole model's budget in every layer.
CURVE_SHARE = 4


def add_baseline_columns(
    deltas: AdapterDeltas, rows: Sequence[LayerReport], layers: Sequence[CompressedLayer], baselines: Sequence[str],
    plans: dict[str, Allocation], options: MethodOptions, calibration=None, device: torch.device | None = None,
) -> int:
    """Add every baseline's equal-values column (at ``plans``) and ``<baseline>@bytes`` column to ``rows``;
    returns the byte size the latter were held to (0 columns at bytes when there is nothing to hold)."""
    by_name = {row.name: row for row in rows}
    target = sum(layer.stored_bytes for layer in layers if layer.name in by_name)
    names = [name for name in baselines if not name.endswith(SUFFIX)]
    if not names or not rows:
        return target
    probe = deltas.layers[0]
    totals = {name: max(target // value_bytes(name, options, probe), 1) for name in names}
    shares = {name: CURVE_SHARE * -(-totals[name] // len(rows)) for name in names}
    curves: dict[str, list[RDCurve]] = {name: [] for name in names}
    reaches: dict[str, list[int]] = {name: [] for name in names}

    def layer_columns(delta) -> tuple[str, dict[str, tuple[RDCurve, int]], dict[str, MethodSummary]] | None:
        """(layer, {baseline: (curve, its reach)}, {baseline: summary at equal values}) of one layer."""
        if delta.name not in by_name:
            return None
        moved = layer_to_device(delta, device) if device is not None else delta
        gram = calibration.gram(delta.name) if calibration is not None else None
        built, at_values = {}, {}
        for name in names:
            budget = plans[name].budget_of(delta.name)
            if target > 0:  # first the larger selection, so the equal-values column below is a prefix of it
                reach = min(totals[name], max(shares[name], budget))
                built[name] = rd_curve(moved, name, options, max_cost=reach, gram=gram), reach
            at_values[name] = stored_summary(name, moved, budget, options, gram)
        return delta.name, built, at_values

    workers = layer_workers(deltas.layers, device if device is not None else CPU)
    for done in map_in_threads(layer_columns, deltas.layers, workers):
        if done is None:
            continue
        layer, built, at_values = done
        for name, (curve, reach) in built.items():
            curves[name].append(curve)
            reaches[name].append(reach)
        row = by_name[layer]
        row.baselines = at_values | row.baselines  # the report's order: baselines first, @bytes columns last
    if target <= 0:
        return target
    for name in names:
        extend_saturated(deltas, curves[name], reaches[name], totals[name], options, calibration)
        summaries = _at_bytes(deltas, name, curves[name], totals[name], target, options, calibration, probe)
        for row in rows:
            row.baselines[name + SUFFIX] = replace(summaries[row.name], method=name + SUFFIX)
    return target


def extend_saturated(deltas: AdapterDeltas, curves: list[RDCurve], reaches: list[int], total: int,
                     options: MethodOptions, calibration=None) -> None:
    """Make the global allocation of ``total`` over ``curves`` exact where a curve was cut short.

    Curve i was built up to ``reaches[i]`` stored values, not to ``total``. A single-group curve whose
    allocation leaves a step of it untaken is exact as it is: that step removes no more per value than
    the allocation's last one, and every step beyond removes less still. A curve the allocation used
    to its end (or with several groups) is rebuilt up to ``total``, until none is left.
    """
    position = {name: i for i, name in enumerate(layer_names(deltas.layers))}
    while True:
        budgets = global_budgets(curves, max(total, 1))[0]
        short = [i for i, (curve, budget) in enumerate(zip(curves, budgets)) if _cut_short(curve, budget, reaches[i], total)]
        if not short:
            return
        for i in short:  # only these layers are read again (a streamed input builds no other ΔW)
            delta = deltas.layers[position[curves[i].name]]
            gram = calibration.gram(delta.name) if calibration is not None else None
            curves[i], reaches[i] = rd_curve(delta, curves[i].method, options, max_cost=total, gram=gram), total


def _cut_short(curve: RDCurve, budget: int, reach: int, total: int) -> bool:
    """True when ``curve`` (built up to ``reach``) stops before ``total`` and the allocation may want more of it."""
    if reach >= total or curve.residual <= 0:
        return False
    several_groups = len(curve.groups) > 0 and curve.groups.min() != curve.groups.max()
    return several_groups or budget >= int(curve.costs.sum())


def _at_bytes(deltas: AdapterDeltas, name: str, curves: list[RDCurve], total: int, target: int, options: MethodOptions,
              calibration, probe) -> dict[str, MethodSummary]:
    """{layer: summary} of baseline ``name`` globally allocated within ``target`` stored bytes."""
    summaries = {}
    for _ in range(_ROUNDS):
        budgets = dict(zip([c.name for c in curves], global_budgets(curves, max(total, 1))[0]))
        summaries = _compress_all(deltas, name, budgets, options, calibration)
        used = sum(s.bytes for s in summaries.values())
        if used <= target or total <= 1:
            break
        total -= (used - target) // value_bytes(name, options, probe) + 1
    return summaries


def _compress_all(deltas: AdapterDeltas, name: str, budgets: dict[str, int], options: MethodOptions,
                  calibration) -> dict[str, MethodSummary]:
    """{layer: summary} of baseline ``name`` at ``budgets`` (one pass over the layers)."""
    out = {}
    for delta in deltas.layers:
        gram = calibration.gram(delta.name) if calibration is not None else None
        out[delta.name] = stored_summary(name, delta, budgets.get(delta.name, 0), options, gram)
    return out


def stored_summary(name: str, delta, budget: int, options: MethodOptions, gram) -> MethodSummary:
    """Report summary of method ``name`` on ``delta`` at ``budget``, measured from what would be stored
    (output precision; activation-aware and with the activation error when ``gram`` is given)."""
    layer = aware_compress(name, delta, budget, options, gram)
    layer = stored_layer(layer, delta, options.dtype, refit=gram is not None)
    return with_activation_error(MethodSummary.of(layer), delta, layer, gram)
