"""The outcome of a fine-tune: updated layers, before/after figures, and the report to write."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..deltas import AdapterDeltas, LayerDelta
from ..formats import write_adapter
from ..methods import BASELINES, CompressedLayer, MethodOptions, get_method
from ..report import LayerReport, MethodSummary, Report
from .compressed_source import CompressedSource


def layer_error_sq(reference: LayerDelta | None, approx: torch.Tensor | None, shape: tuple[int, int]) -> tuple[float, float]:
    """(‖ΔW − ΔŴ‖²_F, ‖ΔW‖²_F) in float64, a missing side counting as zero."""
    true = reference.to_dense().double() if reference is not None else torch.zeros(shape, dtype=torch.float64)
    approx = approx.detach().cpu().double() if approx is not None else torch.zeros(shape, dtype=torch.float64)
    return float((true - approx).square().sum()), float(true.square().sum())


@dataclass
class Figures:
    """Teacher-student agreement figures on the held-out texts, and the weight-domain error."""

    distill_loss: float
    distill_kind: str
    relative_error: float
    agreement: float | None = None
    accuracy: float | None = None
    teacher_accuracy: float | None = None

    def describe(self) -> str:
        name = "KL" if self.distill_kind == "logits" else "hidden MSE"
        text = f"teacher-student {name} {self.distill_loss:.5g}, relative error vs original ΔW {self.relative_error:.4f}"
        if self.agreement is not None:
            text += f", top-1 agreement {self.agreement:.4f}"
        if self.accuracy is not None:
            text += f", accuracy {self.accuracy:.4f} (teacher {self.teacher_accuracy:.4f})"
        return text


@dataclass
class FinetuneResult:
    """Updated layers (same format, new values), the report for them, and before/after figures."""

    source: CompressedSource
    teacher: AdapterDeltas
    layers: list[CompressedLayer]
    report: Report
    before: Figures
    after: Figures
    losses: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss), step 0 = the input
    kept_step: int = 0
    kept: str = ""  # which step was kept and why

    @property
    def kept_input(self) -> bool:
        """True when no step beat the input on the held-out texts: the layers are the input's values unchanged."""
        return self.kept_step == 0

    def save(self, out_dir: str | Path, force: bool = False) -> Path:
        """Write the fine-tuned adapter with the standard writer (atomically, same layout as its input)."""
        carrier = AdapterDeltas(source=self.teacher.source, kind=self.teacher.kind, layers=self.teacher.layers,
                                config=self.teacher.config or self.source.config, passthrough=self.source.passthrough,
                                skipped=self.teacher.skipped, metadata=self.teacher.metadata)
        return write_adapter(Path(out_dir), self.layers, carrier, self.report, force=force)

    def summary(self) -> str:
        text = f"before: {self.before.describe()}\nafter:  {self.after.describe()}"
        return text + (f"\n{self.kept}" if self.kept else "")


def _summary_from_json(row: dict[str, Any], energy: float) -> MethodSummary:
    detail = {k: v for k, v in row.items() if k not in {"method", "stored_values", "bytes", "relative_error", "energy_kept",
                                                          "activation_relative_error"}}
    error_sq = float(row.get("relative_error", 1.0)) ** 2 * energy
    return MethodSummary(row["method"], int(row["stored_values"]), int(row["bytes"]), error_sq, energy, detail)


def _baselines(source: CompressedSource, teacher: dict[str, LayerDelta], layer: CompressedLayer) -> dict[str, MethodSummary]:
    """The same layer's baselines: from the in-memory report, the folder's report, or recomputed."""
    if source.report is not None:
        for row in source.report.layers:
            if row.name == layer.name:
                return dict(row.baselines)
    if source.report_json is not None:
        for row in source.report_json.get("layers", []):
            if row.get("name") == layer.name and isinstance(row.get("baselines"), dict):
                return {name: _summary_from_json({"method": name, **value}, layer.energy) for name, value in row["baselines"].items()}
    delta = teacher.get(layer.name)
    if delta is None:
        return {}
    return {name: MethodSummary.of(get_method(name).compress(delta, layer.budget, MethodOptions()))
            for name in BASELINES if name != layer.method}


def build_report(source: CompressedSource, teacher: dict[str, LayerDelta], layers: list[CompressedLayer], notes: list[str]) -> Report:
    """A report for the fine-tuned layers, with the original baselines beside them and ``notes``."""
    rows = []
    for layer in layers:
        if layer.name in source.kept_names:
            continue  # listed in the report's "kept", outside the per-layer figures
        clamped = layer.budget_clamped
        rows.append(LayerReport(layer.name, tuple(layer.shape), layer.budget, clamped, MethodSummary.of(layer),
                                _baselines(source, teacher, layer)))
    if source.report is not None:
        return replace(source.report, layers=rows, notes=list(source.report.notes) + notes)
    extra = source.report_json or {}
    return Report(method=source.method, budget=source.budget, source=str(extra.get("source", source.origin)), layers=rows,
                  skipped=list(extra.get("skipped", [])), input_stored_values=int(extra.get("input_stored_values", 0)),
                  notes=list(extra.get("notes", [])) + notes, kept=list(extra.get("kept", [])))
