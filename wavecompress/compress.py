"""The conversion pipeline: deltas in, one method plus baselines per layer, report beside it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .deltas import AdapterDeltas, LayerDelta, load_deltas
from .errors import InputError
from .formats import write_adapter
from .methods import BASELINES, CompressedLayer, MethodOptions, get_method
from .methods.options import DEFAULT_REORDER, REORDER_CHOICES, REORDERABLE
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
        method = get_method(self.method)
        return {layer.name: method.reconstruct(layer.tensors, layer.meta, layer.shape) for layer in self.layers}


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
    return name, replace(MethodSummary.of(get_method(method).compress(delta, budget, other)), method=name)


def validate_budget(budget: int) -> int:
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
        raise InputError(f"budget must be a positive integer number of stored values per layer, got {budget!r}")
    return budget


def compress(
    source: DeltaSource,
    budget: int,
    method: str = "waveft",
    wavelet: str = "db1",
    levels: int | None = None,
    baselines: tuple[str, ...] = BASELINES,
    progress: bool | None = False,
    reorder: bool | str | None = True,
    *,
    scaling: float | None = None,
    seed: int | None = None,
) -> CompressedAdapter:
    """Compress every layer of ``source`` to ``budget`` stored values with ``method``.

    Each baseline is computed at the same budget for the report. ``progress=None`` shows a bar
    only on a terminal. ``reorder`` permutes rows and columns before the wavelet transform
    (waveft and wara; True = the measured default ordering, or one of svd/fiedler/greedy/best,
    False = the model's order); the other ordering is reported beside it as a baseline.
    """
    validate_budget(budget)
    chosen = get_method(method)
    options = MethodOptions(wavelet=validate_wavelet(wavelet), levels=levels, reorder=reorder_choice(reorder),
                            scaling=scaling, seed=seed)
    if levels is not None and levels < 0:
        raise InputError(f"levels must be >= 0, got {levels}")
    deltas = as_adapter_deltas(source)
    layers, rows = [], []
    bar = tqdm(deltas.layers, desc=f"{method} b={budget}", unit="layer", disable=None if progress is None else not progress)
    for delta in bar:
        kept = chosen.compress(delta, budget, options)
        others = {}
        for name in baselines:
            if name == method:
                continue
            others[name] = MethodSummary.of(get_method(name).compress(delta, budget, options))
        if method in REORDERABLE:
            variant, summary = order_variant(method, delta, budget, options)
            others[variant] = summary
        layers.append(kept)
        rows.append(LayerReport(delta.name, delta.shape, budget, kept.budget_clamped, MethodSummary.of(kept), others))
        del delta  # lazy (streamed) inputs: let this layer's ΔW go before the next one is built
    report = Report(
        method=method,
        budget=budget,
        source=deltas.source,
        layers=rows,
        skipped=[{"name": s.name, "reason": s.reason} for s in deltas.skipped],
        input_stored_values=deltas.stored_values,
    )
    report.notes.extend(dict.fromkeys(note for layer in layers for note in layer.notes))  # e.g. waveft-seeded's expected loss
    return CompressedAdapter(source=deltas, layers=layers, report=report, options=options)
