"""CompressedAdapter: the result of a conversion (kept tensors per layer, the report, the source)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .deltas import AdapterDeltas
from .formats import write_adapter
from .methods import CompressedLayer, MethodOptions, get_method
from .report import Report


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

    def to_deltas(self) -> dict[str, torch.Tensor]:
        """{module name: dense ΔŴ} rebuilt from exactly what would be written."""
        return {layer.name: get_method(layer.method).reconstruct(layer.tensors, layer.meta, layer.shape) for layer in self.layers}
