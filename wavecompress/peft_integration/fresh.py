"""Fresh (zero-initialised, trainable) WaRA and top-k WaveFT adapters for ``peft.get_peft_model``.

``get_peft_model(base, WaraConfig(budget=2000, target_modules=[...]))`` adapts every targeted Linear /
Conv1D layer with ``budget`` stored values in the model's own row/column order (no permutation), so
ΔŴ = 0 at the start and training moves only the stored values. The support comes from the method's own
rule applied to an isotropic update (a seeded Gaussian matrix of the layer's shape, ``init_seed``):

* WaRA: the sub-bands and ranks WaRA's greedy allocation gives that update; in each band the left
  factor starts at zero and the right factor at LoRA's Kaiming-uniform values (so gradients flow,
  as LoRA's B = 0, A random).
* top-k WaveFT: the ``budget`` largest wavelet coefficients of that update — uniformly random
  positions, as PEFT's WaveFT draws them from ``random_loc_seed`` — with zero values.

The per-layer table (``layers``) is filled as layers are built, so ``save_pretrained`` writes a folder
that ``wavecompress.load_adapter`` / ``PeftModel.from_pretrained`` read like any wavecompress output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .config import STORED_TENSORS, WavecompressConfig

# Fields of a fresh config that describe how layers are initialised; kept in ``wavecompress`` when saved.
FRESH_FIELDS = ("budget", "wavelet", "levels", "init_seed")


@dataclass
class FreshAdapterConfig(WavecompressConfig):
    """A new wavecompress adapter of ``method`` with ``budget`` stored values per targeted layer."""

    method: ClassVar[str] = ""
    budget: int = field(default=1000, metadata={"help": "Stored (trainable) values per adapted layer."})
    wavelet: str = field(default="db1", metadata={"help": "Wavelet family (pywt name), e.g. db1 (Haar)."})
    levels: int | None = field(default=None, metadata={"help": "Decomposition depth (None: the method's default)."})
    init_seed: int = field(default=0, metadata={"help": "Seed of the support choice and the initial factors."})

    def __post_init__(self) -> None:
        from ..errors import InputError
        from ..methods import get_method
        from ..transforms import validate_wavelet
        super().__post_init__()  # type: ignore[no-untyped-call]
        # PEFT knows this peft_type once peft is imported: ``import wavecompress`` arranges it (peft_integration/hook.py).
        self.peft_type = get_method(self.method).peft_type
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget <= 0:
            raise InputError(f"budget must be a positive number of stored values per layer, got {self.budget!r}")
        if self.levels is not None and (not isinstance(self.levels, int) or self.levels < 0):
            raise InputError(f"levels must be >= 0, got {self.levels!r}")
        self.wavelet = validate_wavelet(self.wavelet)
        self.wavecompress = {**self.wavecompress, "method": self.method, "budget": self.budget, "init": "fresh",
                             "wavelet": self.wavelet, "levels": self.levels, "init_seed": self.init_seed}

    def to_dict(self) -> dict[str, Any]:
        """PEFT's dict without the fresh-only fields (recorded under ``wavecompress``), so the saved config
        loads through the method's plain config class."""
        out = super().to_dict()
        for key in FRESH_FIELDS:
            out.pop(key, None)
        return out

    def fresh_layer(self, name: str, shape: tuple[int, int]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(the ``layers`` table entry, initial stored tensors) of a new layer ``name`` of ``shape``."""
        from ..deltas.layer_delta import LayerDelta
        from ..methods import MethodOptions, get_method

        seed = self.init_seed + sum(name.encode()) * 7919  # a layer's own draw, stable across runs
        generator = torch.Generator().manual_seed(seed)
        probe = torch.randn(shape, generator=generator)
        options = MethodOptions(wavelet=self.wavelet, levels=self.levels, reorder=None)
        layer = get_method(self.method).compress(LayerDelta.from_dense(name, probe), self.budget, options)
        tensors = self.initial_tensors(layer.tensors, layer.meta, shape, generator)
        specs = {key: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for key, t in tensors.items()}
        return {**layer.meta, "shape": list(shape), STORED_TENSORS: specs}, tensors

    def initial_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], shape: tuple[int, int],
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The stored tensors at initialisation: float values zero, indices as chosen."""
        return {key: torch.zeros_like(t) if t.is_floating_point() else t.clone() for key, t in tensors.items()}


@dataclass
class WaraConfig(FreshAdapterConfig):
    """A fresh WaRA adapter: low-rank factors per wavelet sub-band, ``budget`` values per layer."""

    method: ClassVar[str] = "wara"

    def initial_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], shape: tuple[int, int],
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Each band's left factor zero, right factor Kaiming-uniform (LoRA's A): ΔŴ = 0, gradients flow."""
        from ..methods.wara import FACTORS_KEY, unpack_bands

        factors = torch.zeros_like(tensors[FACTORS_KEY], dtype=torch.float32)
        for _, cols, _, right in unpack_bands(factors, meta, shape):
            bound = 1.0 / math.sqrt(cols.stop - cols.start)
            right.copy_(torch.rand(right.shape, generator=generator) * 2 * bound - bound)  # a view into ``factors``
        return {**{k: t.clone() for k, t in tensors.items() if k != FACTORS_KEY}, FACTORS_KEY: factors}


@dataclass
class WaveFTTopKConfig(FreshAdapterConfig):
    """A fresh top-k WaveFT adapter: ``budget`` wavelet coefficients per layer at fixed positions, values zero."""

    method: ClassVar[str] = "waveft"


def initialise_fresh_layer(module: Any, adapter_name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Copy the initial stored tensors into a newly built layer's (empty) parameters and buffers."""
    stored = module.wavecompress_tensors[adapter_name]
    with torch.no_grad():
        for key, value in tensors.items():
            getattr(stored, key).copy_(value)


__all__ = ["FreshAdapterConfig", "WaraConfig", "WaveFTTopKConfig", "initialise_fresh_layer"]
