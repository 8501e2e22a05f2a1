"""The conversion pipeline: deltas in, one method plus baselines per layer, report beside it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .deltas import AdapterDeltas, LayerDelta, load_deltas
from .errors import InputError
from .formats import write_adapter
from .hardware import layer_to_cpu, layer_to_device, resolve_device
from .methods import BASELINES, CompressedLayer, MethodOptions, get_method
from .methods.activation_aware import aware_compress, with_activation_error
from .methods.allocation import Allocation, BudgetSpec, budget_spec, plan_budgets
from .methods.precision import stored_layer, validate_dtype
from .methods.options import DEFAULT_REORDER, REORDER_CHOICES
from .report import LayerReport, MethodSummary, Report
from .transforms import validate_wavelet

DeltaSource = str | Path | AdapterDeltas | Mapping[str, Any]


@dataclass
class CompressedAdapter:
    """The result of :func:`compress`: kept tensors per layer, the report, and the source."""

    source: AdapterDeltas
    layers: list[CompressedLayer]
    report: Report
    options: MethodOptions

    @property
    def method(self) -> str:
        return self.report.method

    def save(self, out_dir: str | Path, force: bool = False) -> Path:
        """Write a PEFT-style adapter folder (atomically; refuses to overwrite unless ``force``)."""
        return write_adapter(Path(out_dir), self.layers, self.source, self.report, force=force)

    def to_deltas(self) -> dict[str, torch.Tensor]:
        """{module name: dense ΔŴ} rebuilt from exactly what would be written."""
        return {layer.name: get_method(layer.method).reconstruct(layer.tensors, layer.meta, layer.shape) for layer in self.layers}


def as_adapter_deltas(source: DeltaSource) -> AdapterDeltas:
    """Accept a path, AdapterDeltas, or a mapping {name: dense tensor | (B_scaled, A) | LayerDelta}."""
    if isinstance(source, AdapterDeltas):
        return source
    if isinstance(source, (str, Path)):
        return load_deltas(source)
    if isinstance(source, Mapping):
        layers = []
        for name, value in source.items():
            if isinstance(value, LayerDelta):
                layers.append(value)
            elif isinstance(value, torch.Tensor):
                if value.dim() != 2:
                    raise InputError(f"tensor {name}: expected a 2-D delta, got shape {tuple(value.shape)}")
                layers.append(LayerDelta.from_dense(name, value))
            elif isinstance(value, (tuple, list)) and len(value) == 2:
                layers.append(LayerDelta.from_factors(name, value[0], value[1]))
            else:
                raise InputError(f"tensor {name}: expected a tensor, a (B, A) pair or a LayerDelta")
        if not layers:
            raise InputError("no layers given")
        return AdapterDeltas(source="<tensors>", kind="tensors", layers=layers)
    raise InputError(f"cannot read deltas from {type(source).__name__}")


def check_finite_result(layer: CompressedLayer, source: str) -> None:
    """Refuse a layer whose values overflow float32 arithmetic instead of reporting NaN errors."""
    finite = math.isfinite(layer.energy) and math.isfinite(layer.error_sq)
    finite = finite and all(bool(torch.isfinite(t).all()) for t in layer.tensors.values() if t.is_floating_point())
    if not finite:
        raise InputError(f"{source}: layer {layer.name} has values too large to process in float32 (overflow)")


def reorder_choice(reorder: bool | str | None) -> str | None:
    """The row/column ordering to use: True → the default ordering, False/None → none."""
    if reorder is True:
        return DEFAULT_REORDER
    if reorder is False or reorder is None or reorder == "none":
        return None
    if reorder not in REORDER_CHOICES:
        raise InputError(f"unknown reorder {reorder!r}; choose one of {', '.join(REORDER_CHOICES)} or none")
    return reorder


def order_variant(method: str, delta: LayerDelta, budget: int, options: MethodOptions) -> tuple[str, MethodSummary]:
    """The other ordering of ``method`` for the report: ``<method>-plain`` when reordered, else
    ``<method>-reordered`` (default ordering), so plain and reordered always show side by side."""
    if options.reorder:
        name, other = f"{method}-plain", replace(options, reorder=None)
    else:
        name, other = f"{method}-reordered", replace(options, reorder=DEFAULT_REORDER)
    layer = stored_layer(get_method(method).compress(delta, budget, other), delta, options.dtype)
    return name, replace(MethodSummary.of(layer), method=name)


def validate_budget(budget: int) -> int:
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
        raise InputError(f"budget must be a positive integer number of stored values per layer, got {budget!r}")
    return budget


def compress(
    source: DeltaSource,
    budget: int | None = None,
    method: str = "waveft",
    wavelet: str = "db1",
    levels: int | None = None,
    baselines: tuple[str, ...] = BASELINES,
    progress: bool | None = False,
    reorder: bool | str | None = True,
    *,
    budget_total: int | None = None,
    budget_ratio: float | None = None,
    max_size: str | int | None = None,
    allocate: str = "uniform",
    calibration: Any = None,
    scaling: float | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    dtype: str = "auto",
    rank: int | None = None,
    optimise: str | None = None,
) -> CompressedAdapter:
    """Compress every layer of ``source`` to ``budget`` stored values with ``method``.

    Each baseline is computed at the same budget for the report. ``progress=None`` shows a bar
    only on a terminal. ``reorder`` permutes rows and columns before the wavelet transform
    (waveft and wara; True = the measured default ordering, or one of svd/fiedler/greedy/best,
    False = the model's order); the other ordering is reported beside it as a baseline.

    Budget forms (exactly one): ``budget`` per layer, ``budget_total``, ``budget_ratio`` of the
    input's stored values, ``max_size`` bytes on disk ("2MB"), or ``rank`` (each layer the values of a
    rank-``rank`` LoRA of its shape; wavecompress.targets.compress_to_error takes an error target instead);
    ``allocate="global"`` splits the
    total across layers by the exact greedy over rate-distortion curves (methods/allocation.py),
    every baseline on its own curves at the same total. ``method="auto"`` / ``wavelet="auto"``
    try the candidates and keep the lowest error. ``calibration`` (a Calibration or a saved
    activations file) switches to activation-aware selection and reports both error measures.
    ``device="cuda"`` runs each layer's arithmetic on the GPU (results come back to the CPU; without
    CUDA it warns and stays on the CPU). ``dtype`` is the stored float precision: auto (each layer's
    input dtype), float32, bfloat16 or float16; errors and bytes are those of the rounded tensors.
    ``optimise`` (auto only): compare candidates at equal ``values`` or equal ``bytes`` (default:
    bytes with ``max_size``, else values; see auto_select.py).
    """
    if method == "auto" or wavelet == "auto":
        from .auto_select import compress_auto

        return compress_auto(source, budget, method, wavelet, levels, baselines, progress, reorder, budget_total=budget_total,
                             budget_ratio=budget_ratio, max_size=max_size, allocate=allocate, calibration=calibration,
                             scaling=scaling, seed=seed, device=device, dtype=dtype, rank=rank, optimise=optimise)
    dtype = validate_dtype(dtype)
    spec = budget_spec(budget, budget_total, budget_ratio, max_size, rank)
    if spec.max_bytes is not None:
        return fit_to_size(source, spec, method, wavelet, levels, baselines, progress, reorder, allocate, calibration,
                           extra={"scaling": scaling, "seed": seed, "device": device, "dtype": dtype})
    get_method(method)  # unknown method names fail here, before any work
    options = MethodOptions(wavelet=validate_wavelet(wavelet), levels=levels, reorder=reorder_choice(reorder),
                            scaling=scaling, seed=seed, dtype=dtype)
    if levels is not None and levels < 0:
        raise InputError(f"levels must be >= 0, got {levels}")
    deltas = as_adapter_deltas(source)
    check_kept_fits(deltas, method)
    calibration = load_calibration(calibration)
    plans = plan_budgets(deltas.layers, [method, *baselines], options, spec, allocate, deltas.stored_values,
                         calibration=calibration)
    layers, rows = [], []
    bar = tqdm(deltas.layers, desc=f"{method} {spec.label()}", unit="layer", disable=None if progress is None else not progress)
    target = resolve_device(device)  # "cuda": each layer moves there in turn; CPU fallback with a warning
    for delta in bar:
        delta = layer_to_device(delta, target)
        budget = plans[method].budget_of(delta.name)
        gram = calibration.gram(delta.name) if calibration is not None else None
        kept = stored_layer(aware_compress(method, delta, budget, options, gram), delta, dtype, refit=gram is not None)
        check_finite_result(layer_to_cpu(kept), deltas.source)
        others = {}
        for name in baselines:
            if name == method:
                continue
            other = aware_compress(name, delta, plans[name].budget_of(delta.name), options, gram)
            other = stored_layer(other, delta, dtype, refit=gram is not None)
            others[name] = with_activation_error(MethodSummary.of(other), delta, other, gram)
        if get_method(method).reorderable:
            variant, summary = order_variant(method, delta, budget, options)
            others[variant] = summary
        layers.append(kept)
        summary = with_activation_error(MethodSummary.of(kept), delta, kept, gram)
        rows.append(LayerReport(delta.name, delta.shape, budget, kept.budget_clamped, summary, others))
        del delta  # lazy (streamed) inputs: let this layer's ΔW go before the next one is built
    if baselines:  # every baseline again at the output's bytes (report's <baseline>@bytes columns)
        from .equal_bytes import add_equal_byte_baselines

        add_equal_byte_baselines(deltas, rows, layers, [b for b in baselines if b != method], options, calibration)
    kept = [keep_exactly(delta, method) for delta in deltas.kept]
    layers.extend(kept)
    report = Report(
        method=method,
        budget=spec.per_layer if spec.per_layer is not None else plans[method].total // max(len(rows), 1),
        source=deltas.source,
        layers=rows,
        skipped=[{"name": s.name, "reason": s.reason} for s in deltas.skipped],
        input_stored_values=deltas.stored_values,
        kept=[kept_entry(layer) for layer in kept],
    )
    describe_allocation(report, spec, plans[method], calibration)
    if (note := lossy_input_note(deltas)) is not None:
        report.notes.append(note)
    report.notes.extend(dict.fromkeys(note for layer in layers for note in layer.notes))  # e.g. waveft-seeded's expected loss
    return CompressedAdapter(source=deltas, layers=layers, report=report, options=options)


def check_kept_fits(deltas: AdapterDeltas, method: str) -> None:
    """Stock-PEFT WaveFT cannot hold exactly kept layers: refuse before any work."""
    if len(deltas.kept) and method == "waveft-seeded":
        raise InputError(f"{deltas.source}: --method waveft-seeded (stock PEFT WaveFT) cannot store the "
                         f"{len(deltas.kept)} layers --include/--exclude leave unselected exactly (first: "
                         f"{deltas.kept[0].name if not hasattr(deltas.kept, 'names') else deltas.kept.names[0]}); "
                         "pass --drop-unselected to drop them, or use another method")


def keep_exactly(delta: LayerDelta, method: str) -> CompressedLayer:
    """An unselected layer as stored in the output: a plain LoRA layer in LoRA outputs, else a ``kept`` layer."""
    from .methods import kept

    return kept.as_lora(delta) if method == "lora" else kept.compress(delta)


def kept_entry(layer: CompressedLayer) -> dict[str, Any]:
    """The report's line for a kept layer: what is stored and what it costs."""
    form = layer.meta.get("kept", "factors")
    stored_as = f"factors, rank {layer.meta['rank']}" if form == "factors" else "dense ΔW"
    if layer.method == "lora" and form == "dense":
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


def load_calibration(calibration: Any) -> Any:
    """None, a Calibration, or a path to a saved activations file (read lazily, one Gram at a time)."""
    if calibration is None:
        return None
    from .calibration import Calibration

    return calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)


def describe_allocation(report: Report, spec: BudgetSpec, plan: Allocation, calibration: Any) -> None:
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


def fit_to_size(source: DeltaSource, spec: BudgetSpec, method: str, wavelet: str, levels: int | None,
                baselines: tuple[str, ...], progress: bool | None, reorder: bool | str | None, allocate: str,
                calibration: Any, extra: dict[str, Any] | None = None) -> CompressedAdapter:
    """The largest total budget whose adapter_model.safetensors stays within ``spec.max_bytes``.

    The total is estimated from the bytes per stored value (values plus indices), then checked
    against the exact serialized size and shrunk until it fits.
    """
    from .formats.adapter_writer import serialized_weights
    from .methods.allocation import bytes_per_value, total_values

    deltas = as_adapter_deltas(source)
    options = MethodOptions(wavelet=validate_wavelet(wavelet), levels=levels, reorder=reorder_choice(reorder),
                            dtype=validate_dtype((extra or {}).get("dtype")))
    carried = sum(t.numel() * t.element_size() for t in deltas.passthrough.values())
    names = [layer.name for layer in deltas.layers] if not hasattr(deltas.layers, "names") else deltas.layers.names
    total = total_values(spec, names, method, options, deltas.stored_values, carried, deltas.layers[0])
    per_value = bytes_per_value(method, deltas.layers[0], options)[0]
    best, tried = None, set()
    for _ in range(5):
        if total <= 0 or total in tried:
            break
        tried.add(total)
        result = compress(deltas, None, method, wavelet, levels, (), progress, reorder, budget_total=total,
                          allocate=allocate, calibration=calibration, **(extra or {}))
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
        result = compress(deltas, None, method, wavelet, levels, baselines, progress, reorder, budget_total=total,
                          allocate=allocate, calibration=calibration, **(extra or {}))
        result.report.allocation = dict(result.report.allocation or {}, form="max_bytes", budget=spec.describe())
        result.report.notes.append(f"max size {spec.max_bytes} bytes: adapter_model.safetensors about {size} bytes "
                                   f"({total} values for {method})")
        return result
    raise InputError(f"max size {spec.max_bytes} bytes is too small for {method} on {deltas.source}")
