"""adapter_config.json for each output type, carrying what the source config said about the model."""

from __future__ import annotations

import re
from typing import Any

from ..version import __version__
from ..methods.compressed_layer import CompressedLayer
from ..errors import InputError
from .peft_types import LORA

# Source config fields that describe the model rather than the adapter type; copied verbatim.
CARRIED_FIELDS = ("base_model_name_or_path", "revision", "task_type", "modules_to_save", "fan_in_fan_out", "bias")


def carried_fields(source_config: dict[str, Any]) -> dict[str, Any]:
    return {key: source_config.get(key) for key in CARRIED_FIELDS if key in source_config}


def peft_model_kwargs(source_config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a stock PEFT config that describe the model, taken from the source config."""
    carried = carried_fields(source_config)
    return {
        "modules_to_save": carried.get("modules_to_save"),
        "fan_in_fan_out": bool(carried.get("fan_in_fan_out", False)),
        "bias": carried.get("bias", "none"),
        "task_type": carried.get("task_type"),
        "base_model_name_or_path": carried.get("base_model_name_or_path"),
        "revision": carried.get("revision"),
        "inference_mode": True,
    }


def json_ready(peft_config: Any) -> dict[str, Any]:
    """A stock PEFT config as a JSON-ready dict: sets sorted into lists, enums as their values."""
    config = {}
    for key, value in peft_config.to_dict().items():
        if isinstance(value, set):
            value = sorted(value)
        elif hasattr(value, "value"):
            value = value.value
        config[key] = value
    return config


def provenance(method: str, budget: int, source_name: str, source_kind: str) -> dict[str, Any]:
    return {"version": __version__, "method": method, "budget": budget, "source": source_name, "source_kind": source_kind}


def wavelet_adapter_config(
    layers: list[CompressedLayer], source_config: dict[str, Any], prov: dict[str, Any], peft_type: str
) -> dict[str, Any]:
    """Config of a wavecompress-format output (top-k WaveFT, WaRA, ...): per-layer shape, method
    metadata and stored tensor specs under ``layers``."""
    config: dict[str, Any] = {"peft_type": peft_type, "inference_mode": True}
    config.update(carried_fields(source_config))
    config["target_modules"] = sorted(layer.name for layer in layers)
    config["layers"] = {
        layer.name: {"shape": list(layer.shape), **layer.meta, "stored_tensors": stored_tensor_specs(layer)} for layer in layers
    }
    config["wavecompress"] = prov
    return config


def lora_adapter_config(
    layers: list[CompressedLayer], source_config: dict[str, Any], prov: dict[str, Any]
) -> dict[str, Any]:
    """A plain PEFT LoRA config: per-layer ranks via rank_pattern, scaling 1 via alpha = rank.

    Written as a dict, without importing peft (seconds of start-up): the standard LoraConfig
    fields, every one known to PEFT since long before the oldest version we support; PEFT
    fills any field not written with its own default when it loads the file."""
    kept = [layer for layer in layers if layer.meta["rank"] > 0]
    if not kept:
        smallest = min(sum(layer.shape) for layer in layers)
        raise InputError(f"budget {prov['budget']} is below one LoRA rank in every layer (rank 1 costs at least {smallest} values)")
    top = max(layer.meta["rank"] for layer in kept)
    rank_pattern = {re.escape(layer.name): layer.meta["rank"] for layer in kept if layer.meta["rank"] != top}
    model = peft_model_kwargs(source_config)
    modules_to_save = model["modules_to_save"]
    # No extra key: stock PEFT warns about unknown LoraConfig fields. Provenance goes in the weights header.
    return {
        "peft_type": LORA,
        "task_type": model["task_type"],
        "base_model_name_or_path": model["base_model_name_or_path"],
        "revision": model["revision"],
        "inference_mode": True,
        "r": top,
        "lora_alpha": top,
        "lora_dropout": 0.0,
        "target_modules": sorted(layer.name for layer in kept),
        "fan_in_fan_out": model["fan_in_fan_out"],
        "bias": model["bias"],
        "modules_to_save": sorted(modules_to_save) if isinstance(modules_to_save, (set, frozenset)) else modules_to_save,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern),
        "use_rslora": False,
        "use_dora": False,
    }


def stored_tensor_specs(layer: CompressedLayer) -> dict[str, dict[str, Any]]:
    """{tensor key: {"shape", "dtype"}} of the tensors a layer's own keys store: lets PEFT build the
    layer before loading (tensors shared with another layer are that layer's)."""
    return {
        key: {"shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", "")}
        for key, tensor in sorted(layer.written_tensors().items())
    }


def waveft_seeded_config(layers: list[CompressedLayer], source_config: dict[str, Any]) -> dict[str, Any]:
    """A genuine PEFT ``WaveFTConfig`` dict (peft_type WAVEFT) that stock PEFT loads without warnings.

    n_frequency is the most common per-layer count (the larger on ties); layers that differ (clamped budgets) go in
    n_frequency_pattern with escaped full names. No extra keys: provenance lives in the weights header.
    """
    from collections import Counter

    from peft import WaveFTConfig

    meta = layers[0].meta
    counts = {layer.name: layer.stored_values for layer in layers}
    common = max(Counter(counts.values()).items(), key=lambda item: (item[1], item[0]))[0]  # ties: the larger
    waveft = WaveFTConfig(
        n_frequency=common,
        scaling=meta["scaling"],
        wavelet_family=meta["wavelet"],
        use_idwt=True,
        random_loc_seed=meta["seed"],
        n_frequency_pattern={re.escape(name): n for name, n in sorted(counts.items()) if n != common},
        target_modules=sorted(counts),
        **peft_model_kwargs(source_config),
    )
    return json_ready(waveft)
