"""AdapterDeltas: everything read from one input adapter, ready for the methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .layer_delta import LayerDelta


@dataclass
class SkippedLayer:
    """A module present in the input that wavecompress does not convert, and why."""

    name: str
    reason: str


@dataclass
class AdapterDeltas:
    """The layer deltas of one input plus what an output must carry over unchanged.

    ``passthrough`` holds tensors that are not deltas (a saved classifier head from
    ``modules_to_save``, for example) under their original keys; writers copy them verbatim.
    """

    source: str
    kind: str
    layers: list[LayerDelta]
    config: dict[str, Any] = field(default_factory=dict)
    passthrough: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: list[SkippedLayer] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def stored_values(self) -> int:
        """Trainable values the input stores for its layers (factors or dense entries)."""
        total = 0
        for layer in self.layers:
            if "stored_values" in layer.info:
                total += int(layer.info["stored_values"])
            elif layer.is_factored:
                total += layer.left.numel() + layer.right.numel()
            else:
                total += layer.dense.numel()
        return total

    @property
    def source_name(self) -> str:
        path = Path(self.source)
        return path.parent.name if path.is_file() else path.name
