"""Read a wavecompress output folder back into a :class:`CompressedAdapter` (the inverse of ``save``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .compressed_adapter import CompressedAdapter
from .deltas import AdapterDeltas, locate_adapter
from .deltas.peft_lora import read_peft_lora
from .deltas.safetensors_reader import read_json
from .deltas.wavecompress_adapter import read_stored_layers
from .errors import InputError
from .layout import LORA, REPORT_NAME
from .methods import CompressedLayer, MethodOptions, get_method, kept, method_of_peft_type
from .report import LayerReport, MethodSummary, Report

SUMMARY_KEYS = ("method", "stored_values", "bytes", "relative_error", "energy_kept", "activation_relative_error")


def _stored_layers(config: dict[str, Any], weights: Path) -> tuple[str, list[tuple[str, tuple[int, int], str, dict[str, torch.Tensor], dict[str, Any]]], dict[str, torch.Tensor], dict[str, str]]:
    """(method, [(name, shape, layer method, tensors, meta)], passthrough, metadata) of an output folder."""
    peft_type = config.get("peft_type")
    writer = method_of_peft_type(peft_type if isinstance(peft_type, str) else None)
    if peft_type == LORA:
        deltas = read_peft_lora(config, weights)
        lora = method_of_peft_type(LORA)
        assert lora is not None
        rows = []
        for delta in deltas.layers:
            assert delta.left is not None and delta.right is not None  # the LoRA reader keeps factors
            tensors = {"lora_A.weight": delta.right.contiguous(), "lora_B.weight": delta.left.contiguous()}
            meta: dict[str, Any] = {"rank": delta.left.shape[1], **({"weight_shape": list(delta.info["weight_shape"])}
                                                                     if "weight_shape" in delta.info else {})}
            rows.append((delta.name, delta.shape, lora.name, tensors, meta))
        return lora.name, rows, deltas.passthrough, deltas.metadata
    if writer is not None and not writer.stock_peft:
        stored, passthrough, metadata = read_stored_layers(config, weights)
        rows = [(s.name, s.shape, kept.method_of(writer.name, s.meta), s.tensors, s.meta) for s in stored]
        return writer.name, rows, passthrough, metadata
    raise InputError(f"{weights.parent}: peft_type {peft_type!r} is not a WaRA, top-k WaveFT or LoRA output "
                     "(CompressedAdapter.load reads wavecompress outputs)")


def _summary(row: dict[str, Any], energy: float) -> MethodSummary:
    """A report row as a MethodSummary, its error recovered from the relative error and the layer's energy."""
    detail = {key: value for key, value in row.items() if key not in SUMMARY_KEYS}
    return MethodSummary(str(row["method"]), int(row["stored_values"]), int(row["bytes"]),
                         float(row["relative_error"]) ** 2 * energy, energy, detail)


def read_output(path: str | Path) -> CompressedAdapter:
    """The CompressedAdapter an output folder holds: stored tensors per layer, config, passthrough, report."""
    config_path, weights = locate_adapter(path)
    config = read_json(config_path)
    method, rows, passthrough, metadata = _stored_layers(config, weights)
    report_path = config_path.parent / REPORT_NAME
    saved = read_json(report_path) if report_path.is_file() else {}
    by_name = {row["name"]: row for row in saved.get("layers", []) if isinstance(row, dict) and "name" in row}
    written = config.get("wavecompress")
    budget = int(saved.get("budget") or (written.get("budget") if isinstance(written, dict) else 0) or 0)
    layers, reports = [], []
    for name, shape, layer_method, tensors, meta in rows:
        stored = sum(t.numel() for t in tensors.values() if t.is_floating_point())
        index = sum(t.numel() for t in tensors.values() if not t.is_floating_point())
        row = by_name.get(name)
        energy, error_sq = 0.0, 0.0
        if row is not None:
            kept_energy = float(get_method(layer_method).reconstruct(tensors, meta, shape).double().square().sum())
            share = float(row.get("energy_kept", 1.0))
            energy = kept_energy / share if share > 0 else kept_energy
            error_sq = float(row["relative_error"]) ** 2 * energy
        layer = CompressedLayer(name=name, shape=(int(shape[0]), int(shape[1])), method=layer_method, tensors=tensors, meta=meta,
                                stored_values=stored, index_values=index, error_sq=error_sq, energy=energy,
                                budget=int(row["budget"]) if row is not None else budget,
                                budget_clamped=bool(row.get("budget_clamped")) if row is not None else False)
        layers.append(layer)
        if row is not None:
            baselines = {key: _summary(value, energy) for key, value in (row.get("baselines") or {}).items()}
            reports.append(LayerReport(name, layer.shape, layer.budget, layer.budget_clamped, _summary(row, energy), baselines))
    report = Report(method=method, budget=budget, source=str(saved.get("source", config_path.parent)), layers=reports,
                    skipped=list(saved.get("skipped", [])), input_stored_values=int(saved.get("input_stored_values", 0)),
                    notes=list(saved.get("notes", [])), kept=list(saved.get("kept", [])),
                    allocation=saved.get("allocation"), carried=list(saved.get("carried", [])),
                    dropped=list(saved.get("dropped", [])))
    provenance: dict[str, Any] = config["wavecompress"] if isinstance(config.get("wavecompress"), dict) else {}
    if not provenance and metadata.get("wavecompress.provenance"):  # stock PEFT formats keep it in the weights header
        try:
            provenance = json.loads(metadata["wavecompress.provenance"])
        except json.JSONDecodeError:
            provenance = {}
    source = AdapterDeltas(source=str(provenance.get("source", config_path.parent)),
                           kind=str(provenance.get("source_kind", method)), layers=[], config=config,
                           passthrough=passthrough, metadata=metadata)
    return CompressedAdapter(source=source, layers=layers, report=report, options=MethodOptions())
