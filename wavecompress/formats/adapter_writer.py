"""Write a compressed adapter as a PEFT-style folder, atomically.

Folder: ``adapter_config.json``, ``adapter_model.safetensors`` (keys
``base_model.model.<module>.<tensor>``, passthrough tensors verbatim), ``README.md`` (model card)
and ``wavecompress_report.json``. Output bytes depend only on the input and options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..deltas.adapter_deltas import AdapterDeltas
from ..deltas.shared_tensors import check_lenders
from ..errors import InputError
from ..layout import CARD_NAME, CONFIG_NAME, PREFIX, REPORT_NAME, WEIGHTS_NAME, carried_metadata
from ..methods.compressed_layer import CompressedLayer
from ..methods.registry import get_method
from ..report import Report
from .adapter_config import lora_adapter_config, provenance, waveft_seeded_config, wavelet_adapter_config
from .atomic import atomic_directory
from .model_card import render_model_card
from .peft_types import LORA, WAVEFT
from .safetensors_writer import deterministic_bytes



def state_dict(layers: list[CompressedLayer], passthrough: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat tensor dict in PEFT's key layout, sorted for deterministic files (a tensor shared by
    several layers stored once, under its owner: deltas/shared_tensors.py)."""
    check_lenders((layer.name, layer.tensors, layer.meta) for layer in layers)
    tensors = {f"{PREFIX}{layer.name}.{key}": value.contiguous() for layer in layers
               for key, value in layer.written_tensors().items()}
    for key, value in passthrough.items():
        if key in tensors:
            raise InputError(f"passthrough tensor {key} collides with a converted tensor")
        tensors[key] = value.contiguous()
    return dict(sorted(tensors.items()))


def build_config(layers: list[CompressedLayer], source: AdapterDeltas, budget: int) -> dict[str, Any]:
    """adapter_config.json for the method's output format (its ``peft_type``): stock LoRA, stock WaveFT,
    or a wavecompress format with a per-layer table."""
    method = get_method(layers[0].method)
    prov = provenance(method.name, budget, source.source_name, source.kind)
    if method.peft_type == LORA:
        return lora_adapter_config(layers, source.config, prov)
    if method.peft_type == WAVEFT:
        return waveft_seeded_config(layers, source.config)
    return wavelet_adapter_config(layers, source.config, prov, method.peft_type)


def weights_metadata(layers: list[CompressedLayer], source: AdapterDeltas, method: str, budget: Any) -> dict[str, str]:
    """The safetensors header metadata of an output's weights file."""
    metadata = {"format": "pt", "wavecompress.method": method, "wavecompress.budget": str(budget)}
    found = get_method(method)
    if found.peft_type == WAVEFT:
        # Stock PEFT regenerates locations from the layer shape; keep shapes so wavecompress can read it back alone.
        metadata["wavecompress.shapes"] = json.dumps({layer.name: list(layer.shape) for layer in layers}, sort_keys=True)
    if found.stock_peft:
        # Configs read by stock PEFT carry no extra keys, so provenance lives in the weights header.
        metadata["wavecompress.provenance"] = json.dumps(provenance(method, budget, source.source_name, source.kind))
    metadata.update(carried_metadata(source.metadata))  # kohya ss_* / modelspec.* training provenance
    return metadata


def serialized_weights(layers: list[CompressedLayer], source: AdapterDeltas, method: str, budget: Any) -> bytes:
    """Exactly the bytes of ``adapter_model.safetensors`` that :func:`write_adapter` writes."""
    tensors = state_dict([layer for layer in layers if layer.tensors], source.verbatim_tensors())
    return deterministic_bytes(tensors, weights_metadata(layers, source, method, budget))


def write_adapter(
    out_dir: Path, layers: list[CompressedLayer], source: AdapterDeltas, report: Report, force: bool = False
) -> Path:
    """Write the folder at ``out_dir`` (all files appear together, or none)."""
    config = build_config(layers, source, report.budget)
    weights = serialized_weights(layers, source, report.method, report.budget)
    # The card names the folder as the user gave it, never an absolute local path (the card travels).
    card_path = str(out_dir) if not Path(out_dir).is_absolute() else Path(out_dir).name
    card = render_model_card(report, config, source.config.get("license"), repo=card_path)
    with atomic_directory(Path(out_dir), force=force, inputs=source.input_paths()) as staging:
        (staging / WEIGHTS_NAME).write_bytes(weights)
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (staging / REPORT_NAME).write_text(report.dumps(), encoding="utf-8")
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
    return Path(out_dir)
