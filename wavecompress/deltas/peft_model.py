"""Deltas of a model in memory that holds PEFT LoRA / DoRA layers (PeftModel, LoraModel, a transformers
model with ``add_adapter``, or any module with LoRA layers injected), and of a PEFT state dict.

The adapter's state dict is taken as ``save_pretrained`` would write it and read by the same reader as a
saved folder (:func:`.peft_lora.read_peft_lora`), so ``compress(model)`` and ``compress(saved folder)``
see the same tensors. DoRA layers are merged exactly with the base weights the model holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..layout import PREFIX
from .adapter_deltas import AdapterDeltas
from .layer_delta import LayerDelta
from .peft_lora import read_peft_lora

# A PEFT LoRA state-dict key (as get_peft_model_state_dict / adapter_model.safetensors spell them).
PEFT_KEY = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)(?:\.[^.]+)?(?:\.weight)?$")
# kohya / sd-scripts keys: lora_down / lora_up (+ alpha), LyCORIS hada_* / lokr_*.
KOHYA_KEY = re.compile(r"\.(?:lora_down|lora_up|hada_w1_a|lokr_w1)(?:\.weight)?$|\.lora\.(?:down|up)\.weight$")


def holds_lora_layers(model: Any) -> bool:
    """True when ``model`` is an ``nn.Module`` with at least one PEFT LoRA layer inside."""
    if not isinstance(model, torch.nn.Module):
        return False
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return any(isinstance(module, LoraLayer) for module in model.modules())


def base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model whose module names the adapter keys use: a PeftModel's / tuner's wrapped model, else ``model``."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    if isinstance(model, PeftModel):
        model = model.base_model
    return model.model if isinstance(model, BaseTuner) else model


def active_adapter_of(model: torch.nn.Module) -> str:
    """The adapter a PeftModel / tuner / transformers model calls active (the first LoRA layer's otherwise)."""
    from peft.tuners.lora import LoraLayer

    active = getattr(model, "active_adapter", None)
    if callable(active):  # transformers' PeftAdapterMixin: a method
        try:
            active = active()
        except Exception:  # noqa: BLE001 - no adapter loaded through transformers: fall back to the layers
            active = None
    if isinstance(active, (list, tuple)):
        active = active[0] if active else None
    if isinstance(active, str):
        return active
    for module in model.modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            return str(module.active_adapters[0])
    raise InputError(f"{type(model).__name__}: holds no PEFT LoRA layers")


def config_dict(config: Any) -> dict[str, Any]:
    """A PeftConfig (or an adapter_config dict) as the JSON-ready dict a saved folder's config holds."""
    if isinstance(config, Mapping):
        settings: dict[str, Any] = json.loads(json.dumps(dict(config), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
        return settings
    raw = {key: sorted(value) if isinstance(value, set) else getattr(value, "value", value)  # sets, enums
           for key, value in config.to_dict().items()}
    ready: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    return ready


def _layer_config(root: torch.nn.Module, adapter: str) -> dict[str, Any]:
    """A LoRA config that gives every layer of ``root`` its own scaling (modules injected without a config)."""
    from peft.tuners.lora import LoraLayer

    ranks, alphas = {}, {}
    for name, module in root.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.r:
            ranks[re.escape(name)] = int(module.r[adapter])
            alphas[re.escape(name)] = float(module.scaling[adapter]) * int(module.r[adapter])
    if not ranks:
        raise InputError(f"{type(root).__name__}: no LoRA layers of adapter {adapter!r}")
    first = next(iter(ranks))
    return {"peft_type": "LORA", "r": ranks[first], "lora_alpha": alphas[first], "rank_pattern": ranks,
            "alpha_pattern": alphas, "use_dora": any(getattr(m, "use_dora", {}).get(adapter, False) for m in root.modules())}


def _state_dict(model: torch.nn.Module, adapter: str, has_config: bool) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the keys ``save_pretrained`` writes (``base_model.model.<module>...``)."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    root = base_of(model)
    if has_config:
        from peft.utils import get_peft_model_state_dict

        tensors = get_peft_model_state_dict(model, adapter_name=adapter)
        prefix = "" if isinstance(model, PeftModel) else "base_model." if isinstance(model, BaseTuner) else PREFIX
    else:  # LoRA layers injected without a config: collect them the way PEFT names them
        tensors, prefix = {}, PREFIX
        for key, value in root.state_dict().items():
            if f".{adapter}." in key or key.endswith(f".{adapter}"):
                if PEFT_KEY.search(key.replace(f".{adapter}", "")):
                    tensors[key.replace(f".{adapter}", "")] = value
    return {prefix + key: value.detach().cpu() for key, value in tensors.items()}


def read_peft_model(model: torch.nn.Module, adapter_name: str | None = None, config: Any = None) -> AdapterDeltas:
    """The deltas of adapter ``adapter_name`` (default: the active one) of a model holding PEFT LoRA/DoRA layers,
    with its PeftConfig (task_type, base model, target modules) carried into the output's config."""
    adapter = adapter_name or active_adapter_of(model)
    configs = getattr(model, "peft_config", None)
    peft_config = config if config is not None else configs.get(adapter) if isinstance(configs, Mapping) else None
    if isinstance(configs, Mapping) and config is None and peft_config is None:
        raise InputError(f"{type(model).__name__}: no adapter named {adapter!r} (adapters: {', '.join(map(str, configs))})")
    root = base_of(model)
    settings = config_dict(peft_config) if peft_config is not None else _layer_config(root, adapter)
    peft_type = str(settings.get("peft_type", "LORA"))
    if peft_type != "LORA":
        raise InputError(f"{type(model).__name__}: adapter {adapter!r} is {peft_type}; compress reads LoRA and DoRA adapters "
                         "from a model (save other types and pass the folder)")
    tensors = _state_dict(model, adapter, isinstance(configs, Mapping) and adapter in configs)
    label = Path(f"<{type(model).__name__} adapter {adapter}>") / "adapter_model.safetensors"
    deltas = read_peft_lora({**settings, "use_dora": False}, label, tensors=tensors)
    deltas.source = f"<{type(model).__name__}:{adapter}>"
    if settings.get("use_dora"):
        deltas = _merge_dora(deltas, root, adapter, bool(settings.get("fan_in_fan_out")))
    deltas.config = settings
    return deltas


def _merge_dora(lora: AdapterDeltas, root: torch.nn.Module, adapter: str, transpose: bool) -> AdapterDeltas:
    """Exact DoRA deltas from the LoRA part, the magnitudes and the base weights ``root`` holds."""
    from .dora import KIND, dora_delta

    layers = []
    for layer in lora.layers:
        module: Any = root.get_submodule(layer.name)
        magnitude = module.lora_magnitude_vector[adapter].weight.detach().cpu().reshape(-1).to(torch.float32)
        weight = module.get_base_layer().weight.detach().cpu().to(torch.float32)
        weight = (weight.T if transpose else weight).reshape(layer.shape).clone()
        assert layer.left is not None and layer.right is not None  # the LoRA reader keeps factors
        delta = dora_delta(weight, layer.left, layer.right, magnitude)
        stored = int(layer.info.get("stored_values", 0)) + layer.shape[0]
        layers.append(LayerDelta.from_dense(layer.name, delta, **{**layer.info, "stored_values": stored}, dora=True))
    return AdapterDeltas(source=lora.source, kind=KIND, layers=layers, config=lora.config, passthrough=lora.passthrough,
                         skipped=lora.skipped, metadata=lora.metadata)


def read_adapter_state_dict(tensors: Mapping[str, Any], config: Any = None) -> AdapterDeltas | None:
    """A mapping keyed like an adapter file read as that adapter; None when its keys are not adapter keys.

    PEFT keys (``lora_A``/``lora_B``) need ``config`` (lora_alpha and r give the scaling; guessing
    alpha = r would be silently wrong); kohya keys (``lora_down``/``lora_up``) carry their own ``alpha``.
    """
    keys = [key for key in tensors if isinstance(key, str)]
    peft_keys = [key for key in keys if PEFT_KEY.search(key)]
    kohya_keys = [key for key in keys if KOHYA_KEY.search(key)]
    if not peft_keys and not kohya_keys:
        return None
    for key in keys:
        if not isinstance(tensors[key], torch.Tensor):
            raise InputError(f"tensor {key}: an adapter state dict holds tensors, got {type(tensors[key]).__name__}")
    if kohya_keys and not peft_keys:
        return _read_kohya_mapping(tensors)
    if config is None:
        raise InputError(f"a PEFT LoRA state dict (keys such as {peft_keys[0]}) needs its config for lora_alpha and r: "
                         "call compress(state_dict, config=peft_config)")
    settings = config_dict(config)
    if settings.get("use_dora"):
        raise InputError("a DoRA state dict needs the base weights: pass the model itself (compress(peft_model)) "
                         "or save it and pass the folder with base=")
    label = Path("<state dict>") / "adapter_model.safetensors"
    deltas = read_peft_lora(settings, label, tensors={key: value.detach().cpu() for key, value in tensors.items()})
    deltas.source = "<state dict>"
    return deltas


def _read_kohya_mapping(tensors: Mapping[str, torch.Tensor]) -> AdapterDeltas:
    """A kohya / LyCORIS state dict read by the file reader (through a temporary file: same rules, same alphas)."""
    import tempfile

    from safetensors.torch import save_file

    from .kohya import read_kohya

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lora.safetensors"
        save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, str(path))
        deltas = read_kohya(path)
        deltas.layers = list(deltas.layers)
    deltas.source = "<state dict>"
    return deltas
