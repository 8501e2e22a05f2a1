"""Baselines at the output's byte size: ``<baseline>@bytes`` columns of the report.

A user pays in bytes as well as in trainable values. After the output method is compressed, each
baseline (LoRA, sparse) is compressed again with the same stored bytes as the output (Σ of every
layer's tensor bytes), allocated globally by the exact greedy over its rate-distortion curves, in
the output's precision. A baseline's bytes per value are constant (LoRA: one value; sparse: one
value plus one uint16 gap code, escapes aside), so the value total is the byte total divided by
that; if escapes push sparse over, the total shrinks until it fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .deltas import AdapterDeltas
from .methods import CompressedLayer, MethodOptions, get_method
from .methods.activation_aware import aware_compress, with_activation_error
from .methods.allocation import BudgetSpec, global_budgets, plan_budgets
from .methods.precision import layer_dtype, stored_layer
from .report import LayerReport, MethodSummary

SUFFIX = "@bytes"
_ROUNDS = 4


def value_bytes(name: str, options: MethodOptions, probe) -> int:
    """Bytes one stored value of baseline ``name`` costs (value, plus a gap code for top-k)."""
    size = layer_dtype(options.dtype, probe).itemsize
    return size + (2 if get_method(name).indices_key else 0)


def add_equal_byte_baselines(
    deltas: AdapterDeltas, rows: Sequence[LayerReport], layers: Sequence[CompressedLayer], baselines: Sequence[str],
    options: MethodOptions, calibration=None,
) -> int:
    """Add ``<baseline>@bytes`` to every row of ``rows``; returns the byte size they were held to."""
    target = sum(layer.stored_bytes for layer in layers if layer.name in {row.name for row in rows})
    names = [name for name in baselines if not name.endswith(SUFFIX)]
    if not names or not rows or target <= 0:
        return target
    probe = deltas.layers[0]
    for name in names:
        total = target // value_bytes(name, options, probe)
        plan = plan_budgets(deltas.layers, [name], options, BudgetSpec(total=max(total, 1)), "global",
                            calibration=calibration)[name]
        budgets = plan.budgets
        for _ in range(_ROUNDS):
            summaries = _compress_all(deltas, name, budgets, options, calibration)
            used = sum(s.bytes for s in summaries.values())
            if used <= target or total <= 1:
                break
            total -= (used - target) // value_bytes(name, options, probe) + 1
            budgets = dict(zip([c.name for c in plan.curves], global_budgets(plan.curves, max(total, 1))[0]))
        for row in rows:
            row.baselines[name + SUFFIX] = replace(summaries[row.name], method=name + SUFFIX)
    return target


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
