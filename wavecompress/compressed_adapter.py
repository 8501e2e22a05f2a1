"""CompressedAdapter: the result of a conversion (kept tensors per layer, the report, the source), saved to
and loaded from an output folder, turned into a PeftModel, applied to a model, pushed to the Hub."""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from .deltas import AdapterDeltas, locate_adapter
from .deltas.peft_lora import read_peft_lora
from .deltas.safetensors_reader import read_json
from .deltas.wavecompress_adapter import read_stored_layers
from .errors import InputError
from .formats import write_adapter
from .layout import LORA, REPORT_NAME
from .methods import CompressedLayer, MethodOptions, get_method, kept, method_of_peft_type
from .report import LayerReport, MethodSummary, Report

if TYPE_CHECKING:
    from peft import PeftModel

    from .hub import PushResult


@dataclass
class CompressedAdapter:
    """The result of :func:`wavecompress.compress`: kept tensors per layer, the report, and the source."""

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

    @classmethod
    def load(cls, path: str | Path) -> "CompressedAdapter":
        """The adapter an output folder holds (WaRA, top-k WaveFT or LoRA output), as :meth:`save` wrote it.

        ``source`` holds the folder's config, passthrough tensors and header metadata (not the original
        deltas, which the folder does not store); the report is rebuilt from ``wavecompress_report.json``
        (each layer's energy recovered as ‖ΔŴ‖² / energy_kept, so totals match the saved ones).
        """
        return read_output(path)

    def to_deltas(self) -> dict[str, torch.Tensor]:
        """{module name: dense ΔŴ} rebuilt from exactly what would be written."""
        return {layer.name: get_method(layer.method).reconstruct(layer.tensors, layer.meta, layer.shape) for layer in self.layers}

    @contextmanager
    def saved(self) -> Iterator[Path]:
        """This adapter written to a temporary folder (removed afterwards): what PEFT and the Hub read."""
        with tempfile.TemporaryDirectory(prefix="wavecompress-") as folder:
            yield self.save(Path(folder) / "adapter")

    def to_peft_model(self, base: torch.nn.Module, is_trainable: bool = False, adapter_name: str = "default") -> "PeftModel":
        """A PeftModel of ``base`` with this adapter: the same model ``load_adapter`` builds from the saved
        folder (``is_trainable=True``: the stored float values train, indices and permutations stay fixed)."""
        from .peft_integration.loader import load_adapter

        from peft import PeftModel

        if isinstance(base, PeftModel):
            raise TypeError("to_peft_model takes the base model; for a PeftModel that already holds adapters use apply_to(model)")
        with self.saved() as folder:
            model: PeftModel = load_adapter(base, folder, is_trainable=is_trainable, adapter_name=adapter_name)
            return model

    def apply_to(self, model: "PeftModel", adapter_name: str = "compressed", is_trainable: bool = False,
                 activate: bool = True) -> "PeftModel":
        """Add this adapter to a PeftModel that already holds adapters (``load_adapter`` under ``adapter_name``);
        ``activate`` makes it the active one. PEFT keeps one adapter type per model: a LoRA output joins
        LoRA adapters, a WaRA output WaRA adapters (anything else is refused in one line)."""
        from .peft_integration.registration import register

        register()
        from peft import PeftModel

        if not isinstance(model, PeftModel):
            raise TypeError(f"apply_to takes a PeftModel, got {type(model).__name__}; for a base model use to_peft_model(base)")
        if adapter_name in model.peft_config:
            raise ValueError(f"the model already holds an adapter named {adapter_name!r}; pass another adapter_name")
        peft_type = get_method(self.method).peft_type
        if str(model.peft_type) != peft_type and getattr(model.peft_type, "value", None) != peft_type:
            have = getattr(model.peft_type, "value", model.peft_type)
            raise ValueError(f"the model's adapters are {have} and this adapter is {peft_type}; PEFT holds one adapter "
                             "type per model: use to_peft_model(base) for a separate model")
        with self.saved() as folder:
            model.load_adapter(str(folder), adapter_name=adapter_name, is_trainable=is_trainable)
        if activate:
            model.set_adapter(adapter_name)
        return model

    def push_to_hub(self, repo_id: str, *, private: bool = False, revision: str | None = None, token: str | None = None,
                    replace: bool = False) -> "PushResult":
        """Upload this adapter (weights, config, report, card) to ``repo_id`` in one commit: the same commit
        ``wavecompress push <saved folder> repo_id`` makes."""
        from .hub import push_adapter

        with self.saved() as folder:
            return push_adapter(folder, repo_id, private=private, revision=revision, token=token, replace=replace)


# Reading an output folder back (the inverse of CompressedAdapter.save).

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
