"""CompressedAdapter: the result of a conversion (kept tensors per layer, the report, the source), saved to
and loaded from an output folder, turned into a PeftModel, applied to a model, pushed to the Hub."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from .deltas import AdapterDeltas
from .formats import write_adapter
from .methods import CompressedLayer, MethodOptions, get_method
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
        from .output_reader import read_output

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
