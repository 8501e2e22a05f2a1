"""A compressed adapter's stored tensors per layer (not dense ΔŴ), from a folder or from memory.

Fine-tuning needs what the writer stores, unchanged in layout: float tensors become trainable,
integer tensors (indices, permutations) stay fixed. Reads wavecompress's WAVECOMPRESS_* folders
and LoRA folders (a wavecompress ``--method lora`` output or any PEFT LoRA, whose scaling is
folded into ``lora_B`` so the rewritten adapter has scaling 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..compressed_adapter import CompressedAdapter
from ..deltas import AdapterDeltas, locate_adapter
from ..deltas.peft_lora import read_peft_lora
from ..deltas.wavecompress_adapter import read_stored_layers
from ..deltas.safetensors_reader import read_json
from ..errors import InputError
from ..layout import LORA, REPORT_NAME
from ..methods import CompressedLayer, kept, method_of_peft_type



@dataclass
class CompressedSource:
    """Per-layer stored tensors of one compressed adapter, with what its output must carry over."""

    method: str
    budget: int
    layers: list[CompressedLayer]
    passthrough: dict[str, torch.Tensor]
    config: dict[str, Any]
    origin: str
    teacher: AdapterDeltas | None = None
    report: Any = None
    report_json: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kept_names(self) -> set[str]:
        """Layers stored exactly because --include/--exclude left them unselected: not trained, not reported."""
        names = {layer.name for layer in self.layers if layer.method == kept.NAME}
        report_kept = self.report.kept if self.report is not None else (self.report_json or {}).get("kept") or []
        return names | {entry["name"] for entry in report_kept if isinstance(entry, dict) and "name" in entry}


def _layer(name: str, shape: tuple[int, int], method: str, tensors: dict[str, torch.Tensor], meta: dict, budget: int) -> CompressedLayer:
    stored = sum(t.numel() for t in tensors.values() if t.is_floating_point())
    index = sum(t.numel() for t in tensors.values() if not t.is_floating_point())
    return CompressedLayer(name=name, shape=shape, method=method, tensors=tensors, meta=meta, stored_values=stored,
                           index_values=index, error_sq=0.0, energy=0.0, budget=budget)


def _read_report_json(folder: Path) -> dict[str, Any] | None:
    path = folder / REPORT_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_compressed(path: str | Path) -> CompressedSource:
    """Stored tensors of a wavecompress output (or a PEFT LoRA) folder, per layer."""
    config_path, weights_path = locate_adapter(path)
    config = read_json(config_path)
    peft_type = config.get("peft_type")
    provenance = config.get("wavecompress") if isinstance(config.get("wavecompress"), dict) else {}
    report_json = _read_report_json(config_path.parent)
    writer = method_of_peft_type(peft_type)
    if peft_type == LORA:
        deltas = read_peft_lora(config, weights_path)
        layers = []
        for delta in deltas.layers:
            rank = delta.left.shape[1]
            tensors = {"lora_A.weight": delta.right.contiguous(), "lora_B.weight": delta.left.contiguous()}
            layers.append(_layer(delta.name, delta.shape, method_of_peft_type(LORA).name, tensors, {"rank": rank}, 0))
        method, passthrough = method_of_peft_type(LORA).name, deltas.passthrough
    elif writer is not None and not writer.stock_peft:
        method = writer.name
        stored_layers, passthrough, _ = read_stored_layers(config, weights_path)
        layers = [_layer(stored.name, stored.shape, kept.method_of(method, stored.meta), stored.tensors, stored.meta, 0)
                  for stored in stored_layers]
    else:
        raise InputError(f"{config_path}: peft_type {peft_type!r} cannot be fine-tuned (use a wavecompress output or a LoRA)")
    budget = int(provenance.get("budget") or (report_json or {}).get("budget") or max(layer.stored_values for layer in layers))
    for layer in layers:
        layer.budget = budget
    return CompressedSource(method=method, budget=budget, layers=layers, passthrough=passthrough, config=config,
                            origin=str(config_path.parent), report_json=report_json)


def from_compressed_adapter(result: CompressedAdapter) -> CompressedSource:
    """The in-memory result of :func:`wavecompress.compress`; its source is the teacher."""
    layers = [
        replace(layer, tensors={k: v.detach().clone() for k, v in layer.tensors.items()}, meta=dict(layer.meta),
                notes=list(layer.notes))
        for layer in result.layers
    ]
    return CompressedSource(method=result.method, budget=result.report.budget, layers=layers,
                            passthrough=dict(result.source.passthrough), config=dict(result.source.config),
                            origin="<memory>", teacher=result.source, report=result.report)


def as_compressed_source(compressed: CompressedAdapter | CompressedSource | str | Path) -> CompressedSource:
    """Accept a folder path, a :class:`CompressedAdapter`, or an already read source."""
    if isinstance(compressed, CompressedSource):
        return compressed
    if isinstance(compressed, CompressedAdapter):
        return from_compressed_adapter(compressed)
    return read_compressed(compressed)
