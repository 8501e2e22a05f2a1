"""The conversion pipeline: deltas in, one method plus baselines per layer, report beside it.

A :class:`Job` holds everything a conversion needs, validated once (wavecompress/compress.py builds
it). :func:`convert` runs it: :func:`run` for the value-count budget forms, :func:`fit_to_size` for
a size limit and :func:`fit_to_error` for an error target (each runs :func:`run` at a few totals). ``--method auto`` (auto_select.py) calls
:func:`convert` per candidate; nothing here re-enters the public ``compress``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from .compressed_adapter import CompressedAdapter
from .deltas import AdapterDeltas, LayerDelta
from .methods.compressed_layer import with_weight_shape
from .equal_bytes import add_baseline_columns
from .errors import InputError
from .hardware import layer_to_cpu, layer_to_device, layer_workers, map_in_threads, resolve_device
from .methods import BASELINES, CompressedLayer, MethodOptions, get_method
from .methods.activation_aware import aware_compress, with_activation_error
from .methods.allocation import Allocation, bytes_per_value, bytes_total, layer_names, layer_shapes, plan_budgets, total_values
from .methods.budget import Budget
from .layout import LORA, WAVEFT
from .methods.options import DEFAULT_REORDER
from .methods.registry import Method
from .methods.precision import stored_layer
from .methods.shared_permutations import PermutationChoice, bytes_share
from .report import LayerReport, MethodSummary, Report


@dataclass(frozen=True)
class Job:
    """One conversion, validated: output method, budget, method options, baselines, calibration, device.

    ``method`` is the registered :class:`~wavecompress.methods.registry.Method` object; names are resolved
    once, where they enter (compress.py, the CLI). For ``method="auto"`` auto_select.py sets each candidate.
    """

    method: Method
    budget: Budget
    options: MethodOptions
    baselines: tuple[str, ...] = BASELINES
    calibration: Any = None  # a Calibration (second moments per layer) or None
    device: str | torch.device | None = None
    progress: bool | None = False
    # Under a size limit, what a layer's planned values count for permutation choices
    # (methods/shared_permutations.py BYTES_SHARES: "permuted" or "plain"); None: a values budget.
    bytes_share: str | None = None
    # The other-ordering column (<method>-plain / <method>-reordered) beside a reorderable method;
    # compress(baselines=()) turns it off with the baselines (compare_orders=).
    order_variant: bool = True


def check_finite_result(layer: CompressedLayer, source: str) -> None:
    """Refuse a layer whose values overflow float32 arithmetic instead of reporting NaN errors."""
    finite = math.isfinite(layer.energy) and math.isfinite(layer.error_sq)
    finite = finite and all(bool(torch.isfinite(t).all()) for t in layer.tensors.values() if t.is_floating_point())
    if not finite:
        raise InputError(f"{source}: layer {layer.name} has values too large to process in float32 (overflow)")


def order_variant(method: Method, delta: LayerDelta, budget: int, options: MethodOptions) -> tuple[str, MethodSummary]:
    """The other ordering of ``method`` for the report: ``<method>-plain`` when reordered, else
    ``<method>-reordered`` (default ordering), so plain and reordered always show side by side."""
    if options.reorder:
        name, other = f"{method.name}-plain", replace(options, reorder=None)
    else:
        name, other = f"{method.name}-reordered", replace(options, reorder=DEFAULT_REORDER)
    layer = stored_layer(method.compress(delta, budget, other), delta, options.dtype)
    return name, replace(MethodSummary.of(layer), method=name)


def convert(deltas: AdapterDeltas, job: Job) -> CompressedAdapter:
    """Run ``job`` on ``deltas``: within a size limit when the budget is one, else directly."""
    check_kept_fits(deltas, job.method)
    if job.budget.max_bytes is not None:
        return fit_to_size(deltas, job)
    if job.budget.target_error is not None:
        return fit_to_error(deltas, job)
    return run(deltas, job)


def run(deltas: AdapterDeltas, job: Job) -> CompressedAdapter:
    """Compress every layer with ``job.method`` and each baseline at the planned budgets; the report beside it."""
    found, spec, options, baselines, calibration = job.method, job.budget, job.options, job.baselines, job.calibration
    method = found.name
    plans = plan_budgets(deltas.layers, [method, *baselines], options, spec, spec.allocate, deltas.stored_values,
                         calibration=calibration)
    layers, rows = [], []
    progress = job.progress
    target = resolve_device(job.device)  # "cuda": each layer moves there in turn; CPU fallback with a warning
    reorderable = found.reorderable
    # Permutations are chosen per layer / group only under a size limit (job.bytes_share): at a values
    # budget sharing lost in every group measured (methods/shared_permutations.py), so that path is unchanged.
    choice = (permutation_choice(deltas, job, plans[method], target)
              if reorderable and options.reorder and calibration is None and job.bytes_share is not None else None)

    def convert_layer(delta: LayerDelta) -> tuple[CompressedLayer, LayerReport]:
        delta = layer_to_device(delta, target)
        budget = plans[method].budget_of(delta.name)
        gram = calibration.gram(delta.name) if calibration is not None else None
        if choice is not None:  # own, shared or no permutations, whichever wins (methods/shared_permutations.py)
            kept = choice.compress(delta)
        else:
            kept = stored_layer(aware_compress(method, delta, budget, options, gram), delta, options.dtype, refit=gram is not None)
        check_finite_result(layer_to_cpu(kept), deltas.source)
        with_weight_shape(kept, delta.info)
        others = {}
        if reorderable and job.order_variant:
            variant, summary = order_variant(found, delta, budget, options)
            others[variant] = summary
        summary = with_activation_error(MethodSummary.of(kept), delta, kept, gram)
        return kept, LayerReport(delta.name, delta.shape, budget, kept.budget_clamped, summary, others)

    # Layers side by side on the CPU's cores, except where a layer's work reaches other layers (the
    # permutation choice reads a group's members) or layers are streamed (one ΔW alive at a time).
    workers = layer_workers(deltas.layers, target) if choice is None else 1
    for kept, row in tqdm(map_in_threads(convert_layer, deltas.layers, workers), total=len(deltas.layers),
                          desc=f"{method} {spec.label()}", unit="layer", disable=None if progress is None else not progress):
        layers.append(kept)
        rows.append(row)
    compared = [b for b in baselines if b != method]
    if compared:  # each baseline at equal values and at the output's bytes (<baseline>@bytes), one pass
        add_baseline_columns(deltas, rows, layers, compared, plans, options, calibration, target)
    kept = [keep_exactly(delta, found) for delta in deltas.kept]
    layers.extend(kept)
    report = Report(
        method=method,
        budget=spec.per_layer if spec.per_layer is not None else plans[method].total // max(len(rows), 1),
        source=deltas.source,
        layers=rows,
        skipped=[{"name": s.name, "reason": s.reason} for s in deltas.skipped],
        input_stored_values=deltas.stored_values,
        kept=[kept_entry(layer) for layer in kept],
        carried=[module.entry() for module in deltas.carried],
        dropped=[module.entry() for module in deltas.dropped],
    )
    describe_allocation(report, spec, plans[method], calibration)
    if (note := lossy_input_note(deltas)) is not None:
        report.notes.append(note)
    if choice is not None and (note := choice.note()) is not None:
        report.notes.append(note)
    report.notes.extend(dict.fromkeys(note for layer in layers for note in layer.notes))  # e.g. waveft-seeded's expected loss
    return CompressedAdapter(source=deltas, layers=layers, report=report, options=options)


def permutation_choice(deltas: AdapterDeltas, job: Job, plan: Allocation, target) -> PermutationChoice:
    """The per-layer / shared permutation choice for a reordered method (other group members are read on demand)."""
    names = layer_names(deltas.layers)
    index = {name: i for i, name in enumerate(names)}
    return PermutationChoice(
        job.method.name, job.options, layer_shapes(deltas.layers),
        fetch=lambda name: layer_to_device(deltas.layers[index[name]], target),
        budget_of=plan.budget_of, finish=lambda layer, delta: stored_layer(layer, delta, job.options.dtype),
        bytes_share=job.bytes_share)


def check_kept_fits(deltas: AdapterDeltas, method: Method) -> None:
    """Stock-PEFT WaveFT cannot hold exactly kept layers: refuse before any work."""
    if len(deltas.kept) and method.peft_type == WAVEFT:
        raise InputError(f"{deltas.source}: --method {method.name} (stock PEFT WaveFT) cannot store the "
                         f"{len(deltas.kept)} layers --include/--exclude leave unselected exactly (first: "
                         f"{deltas.kept[0].name if not hasattr(deltas.kept, 'names') else deltas.kept.names[0]}); "
                         "pass --drop-unselected to drop them, or use another method")


def keep_exactly(delta: LayerDelta, method: Method) -> CompressedLayer:
    """An unselected layer as stored in the output: a plain LoRA layer in LoRA outputs, else a ``kept`` layer."""
    from .methods import kept

    return with_weight_shape(kept.as_lora(delta) if method.peft_type == LORA else kept.compress(delta), delta.info)


def kept_entry(layer: CompressedLayer) -> dict[str, Any]:
    """The report's line for a kept layer: what is stored and what it costs."""
    form = layer.meta.get("kept", "factors")
    stored_as = f"factors, rank {layer.meta['rank']}" if form == "factors" else "dense ΔW"
    if get_method(layer.method).peft_type == LORA and form == "dense":
        stored_as = f"exact LoRA factors (dense ΔW × identity), rank {layer.meta['rank']}"
    return {"name": layer.name, "shape": list(layer.shape), "stored_as": stored_as, "stored_values": layer.stored_values,
            "bytes": layer.stored_bytes}


def lossy_input_note(deltas: AdapterDeltas) -> str | None:
    """A note when the input is itself a wavecompress output: errors are then relative to that (lossy) input."""
    metadata = getattr(deltas, "metadata", None) or {}
    made_by = metadata.get("wavecompress.method") or (deltas.config or {}).get("wavecompress", {}).get("method")
    if not made_by:
        return None
    return (f"input is an earlier wavecompress output ({made_by}): errors are measured against that lossy input, "
            "not against the adapter it was made from")


def describe_allocation(report: Report, spec: Budget, plan: Allocation, calibration: Any) -> None:
    """Record the budget form and allocation in the report (only when not the plain per-layer form)."""
    if spec.per_layer is not None and plan.mode == "uniform" and calibration is None:
        return
    report.allocation = {"form": spec.form, "budget": spec.describe(), "mode": plan.mode, "total": plan.total}
    if calibration is not None:
        report.allocation["calibration"] = calibration.describe()
    report.notes.append(f"budget: {spec.describe()} ({plan.total} values for {report.method}), allocated {plan.mode}ly"
                        if plan.mode == "uniform" else
                        f"budget: {spec.describe()} ({plan.total} values for {report.method}), allocated globally by "
                        "marginal error reduction per stored value; each baseline allocated the same way")


def fit_to_size(deltas: AdapterDeltas, job: Job) -> CompressedAdapter:
    """The largest total budget whose adapter_model.safetensors stays within ``job.budget.max_bytes``.

    The total is estimated from the bytes per stored value (values plus indices), then checked
    against the exact serialized size and shrunk until it fits.
    """
    from .formats.adapter_writer import serialized_weights

    spec, method = job.budget, job.method.name
    options = replace(job.options, scaling=None, seed=None)  # the byte probes do not depend on them
    carried = sum(t.numel() * t.element_size() for t in deltas.verbatim_tensors().values())
    names = layer_names(deltas.layers)
    share = None  # how reordered layers pay for their permutations (methods/shared_permutations.py)
    if options.reorder and job.method.reorderable:
        plain = replace(options, reorder=None)
        room = bytes_total(spec, names, method, plain, carried, deltas.layers[0])[0] * bytes_per_value(method, deltas.layers[0], plain)[0]
        share = bytes_share(layer_shapes(deltas.layers).values(), room)
    sizing = replace(options, reorder=None) if share == "plain" else options
    total = total_values(spec, names, method, sizing, deltas.stored_values, carried, deltas.layers[0])
    per_value = bytes_per_value(method, deltas.layers[0], options)[0]
    best, tried = None, set()
    for _ in range(5):
        if total <= 0 or total in tried:
            break
        tried.add(total)
        result = run(deltas, replace(job, budget=spec.with_total(total), baselines=(), bytes_share=share))
        size = len(serialized_weights(result.layers, deltas, method, result.report.budget))
        if size <= spec.max_bytes:
            if best is None or total > best[1]:
                best = (result, total, size)
            room = int((spec.max_bytes - size) // per_value)
            if room < 1:
                break
            total += room
        else:
            total -= int((size - spec.max_bytes) // per_value) + 1
    if best is not None:
        total, size = best[1], best[2]
        result = run(deltas, replace(job, budget=spec.with_total(total), bytes_share=share))
        result.report.allocation = dict(result.report.allocation or {}, form="max_bytes", budget=spec.describe())
        stored = result.report.overall()[method].stored_values
        planned = "" if stored == total else f" of {total} planned"  # rank steps; permutations paid from values
        result.report.notes.append(f"max size {spec.max_bytes} bytes: adapter_model.safetensors about {size} bytes "
                                   f"({stored} values stored{planned} for {method})")
        return result
    raise InputError(f"max size {spec.max_bytes} bytes is too small for {method} on {deltas.source}")


def fit_to_error(deltas: AdapterDeltas, job: Job) -> CompressedAdapter:
    """The smallest globally allocated total whose overall relative error is at most ``job.budget.target_error``.

    The total is found on the rate-distortion curves (methods/target.py), then checked on the
    conversion itself: where the prediction was optimistic (rank steps, rounding to the stored dtype)
    it grows until the result meets the target. The report records the target, the total and every
    total tried.
    """
    from .methods.target import total_for_target

    target, method = job.budget.target_error, job.method.name
    layers = list(deltas.layers)
    with tqdm(total=len(layers), desc=f"{method} curves for error ≤ {target:g}", unit="layer",
              disable=None if job.progress is None else not job.progress) as bar:
        search = total_for_target(layers, method, target, replace(job.options, scaling=None, seed=None, dtype="auto"),
                                  progress=lambda name: bar.update())
    total, checks = search.total, []
    for _ in range(8):
        result = run(deltas, replace(job, budget=Budget(total=total, allocate="global")))
        error = result.report.relative_error
        checks.append((total, error))
        if error <= target:
            break
        total = int(math.ceil(total * 1.02)) + 1
    else:
        raise InputError(f"--target-error {target:g}: {method} did not reach it (error {error:.4f} at {total} values)")
    report = result.report
    # Curve predictions, replaced by the measured error wherever a total was converted: a prediction
    # can be optimistic (WaRA's curve replays its greedy at the largest budget), a conversion is not.
    measured = dict(checks)
    tried = sorted({**dict(search.tried), **measured}.items())
    report.allocation = dict(report.allocation or {}, form="target_error", target_error=target, total=total,
                             budget=f"error ≤ {target:g} ({total} values in total)",
                             tried=[{"total": t, "relative_error": e, "converted": t in measured} for t, e in tried])
    # Below the total: the converted totals (each missed) and the curve predictions under the first
    # conversion (each missed); predictions between a missed conversion and the total were not converted.
    below = [t for t in tried if t[0] < total and (t[0] in measured or t[0] < min(measured))]
    report.notes.append(
        f"target error {target:g}: {method} needed {total} values in total ({total / max(len(report.layers), 1):.0f} per layer "
        f"on average), overall error {error:.5f}; found by binary search over {len(tried)} totals on the global allocation"
        + (f" ({below[-1][0]} values: {below[-1][1]:.5f} {'measured' if below[-1][0] in measured else 'predicted'})"
           if below else ""))
    return result
