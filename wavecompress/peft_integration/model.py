"""PEFT tuner (BaseTuner) for wavecompress adapters: builds one layer per entry of ``config.layers``."""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

from ..methods.registry import method_of_peft_type
from ..methods import kept
from ..deltas.shared_tensors import borrowed
from .config import STORED_TENSORS
from .fresh import FreshAdapterConfig, initialise_fresh_layer
from .layer import TENSORS_ATTR, Conv, Linear, WavecompressLayer

PREFIX = "wavecompress_"


class WavecompressModel(BaseTuner):
    """Adapts the modules named in ``config.layers``; checkpoint keys are ``<module>.<stored tensor>``."""

    prefix: str = PREFIX
    tuner_layer_cls = WavecompressLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config, model_config: dict) -> Any:
        if not peft_config.target_modules and isinstance(peft_config, FreshAdapterConfig):
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

            model_type = model_config.get("model_type")
            if model_type not in DEFAULTS:
                raise ValueError(f"give target_modules: no default target modules for model type {model_type!r}")
            peft_config.target_modules = set(DEFAULTS[model_type])  # LoRA's defaults (q/v projections)
        elif not peft_config.target_modules:
            peft_config.target_modules = sorted(peft_config.layers)
        return peft_config

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs):
        if current_key is None:
            raise ValueError("Current Key shouldn't be `None`")
        meta = peft_config.layers.get(current_key)
        fresh = None
        if meta is None and isinstance(peft_config, FreshAdapterConfig):  # a new adapter: the layer's table entry now
            base_layer = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
            meta, fresh = peft_config.fresh_layer(current_key, layer_shape(base_layer))
            peft_config.layers[current_key] = meta
        if meta is None:
            raise ValueError(f"module {current_key} is targeted but has no entry in the adapter config's 'layers' table")
        specs = meta.get(STORED_TENSORS)
        if specs is None:
            raise ValueError(f"layer {current_key}: the adapter config lists no stored tensors (re-save it with wavecompress)")
        method = kept.method_of(method_of_peft_type(peft_config.peft_type).name, meta)  # unselected layers: kept exactly
        layer_meta = {key: value for key, value in meta.items() if key != STORED_TENSORS}
        if isinstance(target, WavecompressLayer):
            target.update_layer(adapter_name, method, layer_meta, specs, inference_mode=peft_config.inference_mode)
            if fresh is not None:
                initialise_fresh_layer(target, adapter_name, fresh)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        conv = isinstance(base, torch.nn.modules.conv._ConvNd) and not base.transposed
        if not isinstance(base, (torch.nn.Linear, Conv1D)) and not conv:
            raise TypeError(f"module {current_key} is a {type(base).__name__}; wavecompress adapters apply to Linear, "
                            "Conv1D and convolutions")
        new_module = (Conv if conv else Linear)(target, adapter_name, method, layer_meta, specs,
                                                fan_in_fan_out=isinstance(base, Conv1D),
                                                inference_mode=peft_config.inference_mode)
        if fresh is not None:
            initialise_fresh_layer(new_module, adapter_name, fresh)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def inject_adapter(self, model, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """PEFT's injection, then each layer that borrows a stored tensor (a shared column
        permutation, deltas/shared_tensors.py) is pointed at the layer that stores it."""
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        link_lenders(model, adapter_name)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """``<module>.wavecompress_tensors.<adapter>.<tensor>`` ↔ the saved ``<module>.<tensor>``."""
        key = super()._remove_adapter_name_from_key(key, adapter_name)
        return re.sub(rf"\.{TENSORS_ATTR}\.(?=[^.]+$)", ".", key)


def layer_shape(base: torch.nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of a Linear, a transformers Conv1D (weight stored d_in × d_out) or a convolution's matrix."""
    if isinstance(base, Conv1D):
        return int(base.weight.shape[1]), int(base.weight.shape[0])
    weight = base.weight
    return int(weight.shape[0]), int(weight[0].numel())


def link_lenders(model: torch.nn.Module, adapter_name: str) -> None:
    """Point every borrowed tensor of ``adapter_name`` at its owner layer (ValueError when the owner is not adapted)."""
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, WavecompressLayer) or adapter_name not in module.wavecompress_meta:
            continue
        for key, owner in borrowed(name, module.wavecompress_meta[adapter_name]).items():
            lender = modules.get(owner)
            if (not isinstance(lender, WavecompressLayer) or adapter_name not in lender.wavecompress_tensors
                    or key not in lender.wavecompress_tensors[adapter_name].as_dict()):
                raise ValueError(f"layer {name} borrows {key} from {owner}, which this adapter does not store")
            module.borrow(adapter_name, key, lender)
