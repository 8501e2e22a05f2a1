"""Readers: turn an input path into AdapterDeltas (one LayerDelta per adapted layer)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..formats.peft_types import LORA, METHOD_OF_PEFT_TYPE
from .adapter_deltas import AdapterDeltas, SkippedLayer
from .layer_delta import LayerDelta
from .peft_lora import read_peft_lora
from .safetensors_reader import read_json
from .wavecompress_adapter import read_wavecompress_adapter

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def locate_adapter(path: str | Path) -> tuple[Path, Path]:
    """(config path, weights path) for an adapter folder or a weights file with its config beside it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            if (path / "adapter_model.bin").exists():
                raise InputError(f"{path / 'adapter_model.bin'}: pickled .bin adapters are not read; save it with safe_serialization=True")
            raise InputError(f"{path}: no {WEIGHTS_NAME} in this folder")
        config = path / CONFIG_NAME
    else:
        weights = path
        config = path.parent / CONFIG_NAME
    if not config.exists():
        raise InputError(f"{weights}: no {CONFIG_NAME} beside it (needed for lora_alpha, r and the target modules)")
    return config, weights


def load_deltas(path: str | Path) -> AdapterDeltas:
    """Read any supported adapter (PEFT LoRA, wavecompress output) into layer deltas."""
    config_path, weights_path = locate_adapter(path)
    config = read_json(config_path)
    peft_type = config.get("peft_type")
    if peft_type == LORA:
        return read_peft_lora(config, weights_path)
    if peft_type in METHOD_OF_PEFT_TYPE:
        return read_wavecompress_adapter(config, weights_path)
    raise InputError(f"{config_path}: unsupported peft_type {peft_type!r} (supported: LORA and wavecompress outputs)")


__all__ = ["AdapterDeltas", "LayerDelta", "SkippedLayer", "load_deltas", "locate_adapter"]
