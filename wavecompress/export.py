"""Export any adapter wavecompress reads (its own outputs included) back to a plain PEFT LoRA.

Every layer's ΔŴ goes through the truncated-SVD path (methods/lora_svd). By default the ranks are the
smallest whose overall relative error vs the input is at most 1% (so the export is no bigger than that
error needs); ``max_error=0`` keeps each layer's numerical rank (lossless up to float rounding), ``rank``
caps every layer. The result loads in any LoRA consumer.
"""

from __future__ import annotations

from pathlib import Path

from .deltas.in_memory import DeltaSource, as_adapter_deltas
from .errors import InputError
from .formats import write_adapter
from .formats.kohya_writer import LAYOUTS, check_layout_names, layout_of, write_lora_layout
from .methods.allocation import layer_names
from .methods.compressed_layer import with_weight_shape
from .methods.precision import stored_layer, validate_dtype
from .methods import MethodOptions, lora_svd
from .methods.target import prune_prefix_steps, search_total, validate_target
from .report import format_bytes
from .report import LayerReport, MethodSummary, Report


DEFAULT_MAX_ERROR = 0.01  # overall relative error vs the input an export may add by default (1%)


def export_lora(source: DeltaSource, out_dir: str | Path, rank: int | None = None, force: bool = False,
                max_error: float | None = DEFAULT_MAX_ERROR, layout: str = "peft", dtype: str = "auto") -> Report:
    """Write ``source`` as a LoRA at ``out_dir`` and return its report.

    Ranks: with ``rank``, every layer truncated to at most ``rank``; else the smallest adapter whose overall
    relative error vs ``source`` is at most ``max_error`` (global allocation of the singular values, so no
    rank is larger than that error needs); ``max_error=0`` (or None) keeps each layer's numerical rank (lossless).
    ``layout``: ``peft`` (a PEFT folder), ``kohya`` (sd-scripts' single file), ``diffusers``
    (``pytorch_lora_weights.safetensors``) or ``auto`` (the input's own layout: kohya in, kohya out).
    ``dtype``: the stored float precision of the factors (``auto``: the input's).
    """
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    if max_error is not None and max_error != 0:
        max_error = validate_target(max_error)
    if layout not in LAYOUTS:
        raise InputError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    stored_dtype = validate_dtype(dtype)
    deltas = as_adapter_deltas(source)
    layers_in = list(deltas.layers)
    chosen = layout_of(layer_names(layers_in), deltas.kind) if layout == "auto" else layout
    check_layout_names(layer_names(layers_in), chosen)  # before the SVDs
    curves = [lora_svd.METHOD.rd_curve(delta, MethodOptions(), min(delta.shape) * sum(delta.shape)) for delta in layers_in]
    lossless = {curve.name: len(curve.costs) for curve in curves}  # numerical rank of each layer
    search = None
    if rank is not None:
        budgets = {delta.name: rank * sum(delta.shape) for delta in layers_in}
    elif max_error:
        # layers an earlier --include/--exclude kept exactly stay exact; the error target applies to the others
        exact = {delta.name for delta in layers_in if delta.info.get("kept")}
        free = [curve for curve in curves if curve.name not in exact] or curves
        search = search_total(free, max_error)
        budgets = prune_prefix_steps(free, search.budgets, max_error)
        budgets.update({name: lossless[name] * sum(c.shape) for c in curves for name in [c.name] if name in exact})
    else:
        budgets = {delta.name: lossless[delta.name] * sum(delta.shape) for delta in layers_in}
    layers, rows = [], []
    for delta in layers_in:
        kept = with_weight_shape(stored_layer(lora_svd.compress(delta, budgets[delta.name], MethodOptions()), delta, stored_dtype),
                                 delta.info)
        layers.append(kept)
        rows.append(LayerReport(delta.name, delta.shape, budgets[delta.name], kept.budget_clamped, MethodSummary.of(kept), {}))
    report = Report(method="lora", budget=max((row.budget for row in rows), default=0), source=deltas.source, layers=rows,
                    skipped=[{"name": s.name, "reason": s.reason} for s in deltas.skipped],
                    input_stored_values=deltas.stored_values)
    full_values = sum(lossless[d.name] * sum(d.shape) for d in layers_in)
    ranks = sorted(lossless.values())
    lossless_text = f"lossless would need ranks {ranks[0]}–{ranks[-1]}, {full_values} values ({format_bytes(4 * full_values)})"
    if rank is not None:
        report.notes.append(f"exported to LoRA by truncated SVD of each layer's ΔŴ at rank ≤ {rank}; {lossless_text}")
    elif search is not None:
        report.notes.append(f"exported to LoRA with the smallest ranks whose overall relative error vs the input is ≤ "
                            f"{max_error:g} (global allocation of singular values); {lossless_text} (--max-error 0)")
    else:
        report.notes.append("exported to LoRA by truncated SVD of each layer's ΔŴ at its numerical rank "
                            "(lossless up to float rounding)")
    report.carried, report.dropped = [m.entry() for m in deltas.carried], [m.entry() for m in deltas.dropped]
    if chosen == "peft":
        write_adapter(Path(out_dir), layers, deltas, report, force=force)
    else:
        write_lora_layout(Path(out_dir), chosen, layers, deltas, report, force=force)
    report.notes.append(f"layout {chosen}")
    return report
