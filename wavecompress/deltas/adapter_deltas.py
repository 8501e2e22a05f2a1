"""AdapterDeltas: everything read from one input adapter, ready for the methods."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
class CarriedModule:
    """A module of the input whose delta cannot be formed from the input alone (a DoRA module without
    base weights, a bias difference, an unknown tensor): written to the output verbatim, under its
    original keys, unless the user drops it (``--drop-unconvertible``)."""

    name: str
    tensors: dict[str, torch.Tensor]
    reason: str

    @property
    def stored_values(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def entry(self) -> dict[str, Any]:
        """The report's line for this module."""
        return {"name": self.name, "reason": self.reason, "keys": sorted(self.tensors), "stored_values": self.stored_values}


class LazyLayers(Sequence):
    """Layers computed one at a time on access, so only one layer's ΔW needs to be alive at once.

    Built from (name, shape, stored values, factory) entries; ``factory()`` returns the LayerDelta,
    or None when the layer turned out to have nothing to convert (it is then added to ``skipped``
    with ``none_reason`` and left out of the iteration). Streaming readers (full fine-tunes, DoRA)
    use it in place of a list.
    """

    def __init__(self, entries: list[tuple[str, tuple[int, int], int, Callable[[], "LayerDelta | None"]]],
                 skipped: "list[SkippedLayer] | None" = None, none_reason: str = "nothing to convert") -> None:
        self.entries = entries
        self.skipped = skipped
        self.none_reason = none_reason

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return LazyLayers(self.entries[index], self.skipped, self.none_reason)
        name, shape, _, factory = self.entries[index]
        layer = factory()
        return layer if layer is not None else LayerDelta.from_dense(name, torch.zeros(shape))

    def __iter__(self) -> Iterator[LayerDelta]:
        for name, _, _, factory in self.entries:
            layer = factory()
            if layer is None:  # recorded once, however often the layers are iterated (baselines, allocation)
                if self.skipped is not None and all(entry.name != name for entry in self.skipped):
                    self.skipped.append(SkippedLayer(name, self.none_reason))
                continue
            yield layer
            del layer

    @property
    def names(self) -> list[str]:
        return [entry[0] for entry in self.entries]

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {entry[0]: entry[1] for entry in self.entries}

    @property
    def stored_values(self) -> int:
        """Values the input stores for these layers, known without computing any ΔW."""
        return sum(entry[2] for entry in self.entries)


@dataclass
class AdapterDeltas:
    """The layer deltas of one input plus what an output must carry over unchanged.

    ``passthrough`` holds tensors that are not deltas (a saved classifier head from
    ``modules_to_save``, for example) under their original keys; writers copy them verbatim.
    ``kept`` holds layers not selected by --include/--exclude: stored exactly, never compressed.
    ``carried`` holds modules whose delta cannot be formed (see :class:`CarriedModule`): written
    verbatim, or left out with their names in the report when dropped (``dropped``).
    """

    source: str
    kind: str
    layers: list[LayerDelta]
    config: dict[str, Any] = field(default_factory=dict)
    passthrough: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: list[SkippedLayer] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    kept: list[LayerDelta] = field(default_factory=list)
    carried: list[CarriedModule] = field(default_factory=list)
    dropped: list[CarriedModule] = field(default_factory=list)

    def drop_unconvertible(self) -> None:
        """Leave the carried modules out of the output (they stay named in the report as dropped)."""
        self.dropped.extend(self.carried)
        self.carried = []

    def verbatim_tensors(self) -> dict[str, torch.Tensor]:
        """{key: tensor} an output copies unchanged: the passthrough tensors and every carried module's."""
        return {**self.passthrough, **{key: tensor for module in self.carried for key, tensor in module.tensors.items()}}

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def stored_values(self) -> int:
        """Trainable values the input stores for its layers (factors or dense entries) and for the modules it
        carries verbatim or drops (``carried``/``dropped``)."""
        unconverted = sum(module.stored_values for module in (*self.carried, *self.dropped))
        return self.layer_values() + unconverted

    def layer_values(self) -> int:
        """Trainable values the input stores for its layers."""
        if isinstance(self.layers, LazyLayers):
            return self.layers.stored_values
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
