"""``convert --dry-run``: the layers, their budgets and the estimated file size, without converting.

Only the input is read (a lazy input computes no ΔW except the one layer that measures bytes per
stored value); nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .compress import as_adapter_deltas, reorder_choice
from .methods import MethodOptions, method_names
from .methods.allocation import BudgetSpec, bytes_per_value, layer_names, layer_shapes, uniform_budgets
from .report import format_bytes
from .transforms import validate_wavelet

_HEADER_PER_TENSOR = 160  # safetensors JSON header bytes per tensor, roughly


def planned_budgets(spec: BudgetSpec | None, names: list[str], shapes: dict[str, tuple[int, int]], allocate: str,
                    input_values: int) -> tuple[dict[str, int] | None, int | None, str]:
    """({layer: budget} or None when decided during conversion, total or None, how it is decided)."""
    if spec is None:
        return None, None, "smallest total meeting the error target, found on the rate-distortion curves"
    if spec.max_bytes is not None:
        return None, None, f"the largest total whose file fits {format_bytes(spec.max_bytes)}"
    if spec.rank is not None:
        budgets = spec.rank_budgets(names, shapes)
    elif spec.per_layer is not None:
        budgets = {name: spec.per_layer for name in names}
    else:
        total = spec.total if spec.total is not None else int(spec.ratio * input_values)
        budgets = dict(zip(names, uniform_budgets(total, len(names))))
    if allocate == "global":
        return None, sum(budgets.values()), "split across layers by global allocation during conversion"
    return budgets, sum(budgets.values()), "uniform"


def describe_plan(source: Any, spec: BudgetSpec | None, target_error: float | None, method: str, wavelet: str,
                  levels: int | None, reorder: Any, allocate: str, target: Path | None, dtype: str = "auto",
                  drop_unconvertible: bool = False) -> str:
    """The dry-run text: input, output, method and budget form, one row per layer, estimated size."""
    deltas = as_adapter_deltas(source)
    if drop_unconvertible:
        deltas.drop_unconvertible()
    names = layer_names(deltas.layers)
    shapes = layer_shapes(deltas.layers)
    budgets, total, how = planned_budgets(spec, names, shapes, allocate, deltas.stored_values)
    form = f"target error {target_error:g}" if spec is None else spec.describe()
    lines = [f"dry run: {deltas.source} → {target} (nothing computed or written)",
             f"method {method}, budget {form}: {how}; {len(names)} layers to convert, input stores {deltas.stored_values} values"]
    width = min(max((len(n) for n in names), default=5), 60)
    lines.append(f"{'layer'.ljust(width)}  {'shape':>10}  {'budget':>8}")
    for name in names:
        shown = name if len(name) <= width else "…" + name[-(width - 1):]
        d_out, d_in = shapes[name]
        budget = budgets[name] if budgets is not None else None
        mark = "*" if budget is not None and budget > d_out * d_in else ""
        lines.append(f"{shown.ljust(width)}  {f'{d_out}×{d_in}':>10}  {(str(budget) + mark) if budget is not None else '—':>8}")
    if budgets is not None and any(budgets[n] > shapes[n][0] * shapes[n][1] for n in names):
        lines.append("* more than the layer holds: clamped during conversion")
    kept = list(deltas.kept)
    kept_bytes = sum(4 * ((layer.left.numel() + layer.right.numel()) if layer.is_factored else layer.shape[0] * layer.shape[1])
                     for layer in kept)
    carried = sum(t.numel() * t.element_size() for t in deltas.verbatim_tensors().values())
    if kept:
        lines.append(f"kept exactly (not selected): {len(kept)} layers, {format_bytes(kept_bytes)}")
    for label, modules in (("carried verbatim (delta not formed from the input)", deltas.carried),
                           ("dropped by --drop-unconvertible", deltas.dropped)):
        if modules:
            lines.append(f"{label}: {len(modules)} modules (first: {modules[0].name})")
    if total is None:
        lines.append("estimated adapter_model.safetensors: decided during conversion (" + how + ")")
        return "\n".join(lines)
    options = MethodOptions(wavelet=validate_wavelet(wavelet) if wavelet != "auto" else "db1", levels=levels,
                            reorder=reorder_choice(reorder), dtype=dtype)
    probe = deltas.layers[0]
    for name in (method_names(auto=True) if method == "auto" else (method,)):
        per_value, per_layer = bytes_per_value(name, probe, options)
        size = total * per_value + len(names) * (per_layer + 3 * _HEADER_PER_TENSOR) + carried + kept_bytes + 8
        lines.append(f"estimated adapter_model.safetensors for {name}: ≈ {format_bytes(size)} ({total} values × "
                     f"{per_value:.2f} B, measured on {probe.name}; + {format_bytes(carried)} carried tensors"
                     + (f" + {format_bytes(kept_bytes)} kept layers" if kept else "") + ")")
    return "\n".join(lines)
