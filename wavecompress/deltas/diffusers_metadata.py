"""diffusers' ``lora_adapter_metadata``: the PEFT config of each pipeline component inside the file header.

Current diffusers training scripts save ``pytorch_lora_weights.safetensors`` with one header entry,
``lora_adapter_metadata``, a JSON object whose keys are ``<component>.<PeftConfig field>``
(``unet.r``, ``unet.lora_alpha``, ``unet.rank_pattern``, ``text_encoder.use_rslora``, ...). Without it a
diffusers file carries no alpha and loads with scale 1; with it the scale is PEFT's lora_alpha / r.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import InputError

KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "prior")


def component_configs(metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{component: its PEFT config fields} from a file's ``lora_adapter_metadata`` ({} when absent)."""
    raw = metadata.get(KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except ValueError:
        raise InputError(f"header entry {KEY} is not valid JSON") from None
    if not isinstance(flat, dict):
        raise InputError(f"header entry {KEY} is not a JSON object")
    configs: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, _, field = str(key).partition(".")
        if field:
            configs.setdefault(component, {})[field] = value
    return configs


def diffusers_scales(metadata: dict[str, str]) -> Callable[[str, int], float | None]:
    """``scale(module, rank)``: PEFT's lora_alpha / r (rank/alpha patterns, rsLoRA) for a module named
    ``<component>.<path>``, from the component's metadata; None when the file says nothing for it."""
    from .peft_lora import check_lora_config, lora_scaling

    configs = component_configs(metadata)
    for component, config in configs.items():
        check_lora_config({"peft_type": "LORA", **config}, f"{KEY} of {component}")

    def scale(module: str, rank: int) -> float | None:
        component, _, path = module.partition(".")
        config = configs.get(component)
        if config is None or "lora_alpha" not in config and not config.get("alpha_pattern"):
            return None
        return lora_scaling(config, path, rank)

    return scale
