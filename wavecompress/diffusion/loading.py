"""Apply a wavecompress output (any method, or any LoRA it reads) to a diffusers pipeline or one component.

Like ``pipe.load_lora_weights``, the adapter is applied in place: every adapted Linear or convolution gets
``+ x ΔŴᵀ`` (a convolution with ΔŴ as its kernel) in its forward, or with ``merge=True`` ΔŴ is added to its
weight. Module names are mapped the way sd-scripts and diffusers make them (diffusion/names.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .names import resolve_names

HOOKS_ATTR = "_wavecompress_hooks"
# The pipeline attributes that hold adaptable models.
COMPONENT_NAMES = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


def is_diffusion_target(target: Any) -> bool:
    """True for a diffusers pipeline or a diffusers model (UNet, transformer), without importing diffusers."""
    return (type(target).__module__ or "").startswith("diffusers.")


def names_diffusion_modules(path: str | Path) -> bool:
    """True when a local adapter's tensors are named for a diffusion pipeline: kohya ``lora_unet_*``/``lora_te*_*``
    or diffusers ``unet.``/``text_encoder.``… prefixes (a PEFT output keeps them under ``base_model.model.``).
    Reads the safetensors header only; a Hub id or an unreadable path is False."""
    from ..deltas.diffusers_metadata import COMPONENTS
    from ..deltas.kohya import DIFFUSERS_WEIGHTS_NAME
    from ..formats.kohya_writer import KOHYA_PREFIXES
    from ..layout import WEIGHTS_NAME

    local = Path(path)
    if local.is_dir():
        found = [local / WEIGHTS_NAME, local / DIFFUSERS_WEIGHTS_NAME, *sorted(local.glob("*.safetensors"))]
        local = next((file for file in found if file.is_file()), local)
    if not local.is_file() or local.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(local), framework="pt") as reader:
            keys = [key.removeprefix("base_model.model.") for key in reader.keys()]
    except Exception:  # not a safetensors file: the PEFT loader says what is wrong with it
        return False
    return bool(keys) and all(key.startswith(KOHYA_PREFIXES) or key.split(".", 1)[0] in COMPONENTS for key in keys)


def components_of(target: Any) -> dict[str, nn.Module]:
    """{component name: module}: a pipeline's UNet/transformer and text encoders, or one component under its role."""
    if isinstance(target, nn.Module):
        role = "text_encoder" if "TextModel" in type(target).__name__ or "Encoder" in type(target).__name__ else \
            "transformer" if "Transformer" in type(target).__name__ else "unet"
        return {role: target}
    found = {name: getattr(target, name) for name in COMPONENT_NAMES if isinstance(getattr(target, name, None), nn.Module)}
    if not found:
        raise InputError(f"{type(target).__name__}: no UNet, transformer or text encoder to load an adapter into")
    return found


def _belongs_elsewhere(name: str, components: dict[str, nn.Module]) -> bool:
    """A name that addresses a component other than the ones given (a text-encoder module when only the UNet is)."""
    from .names import KOHYA_PREFIXES

    for prefix, targets in KOHYA_PREFIXES.items():
        if name.startswith(prefix + "_"):
            return not any(t in components for t in targets)
    head = name.split(".", 1)[0]
    return head in COMPONENT_NAMES and head not in components


def load_into(target: Any, path: str | Path, merge: bool = False, base: str | Path | None = None) -> Any:
    """Apply the adapter at ``path`` to ``target`` (a diffusers pipeline or component) in place; returns ``target``.

    ``merge=True`` adds ΔŴ to the weights; otherwise each module's forward adds the adapter's output, and
    :func:`unload` removes it. Modules for components not given (text encoders when only a UNet is) are left out."""
    from ..deltas import load_deltas

    components = components_of(target)
    deltas = load_deltas(path, base=base) if base is not None else load_deltas(path)
    layers = [layer for layer in deltas.layers if not _belongs_elsewhere(layer.name, components)]
    if not layers:
        raise InputError(f"{path}: none of its {len(deltas.layers)} modules belongs to {', '.join(sorted(components))}")
    places = resolve_names([layer.name for layer in layers], components)
    plan = []
    for layer in layers:
        component, module_path = places[layer.name]
        module = components[component].get_submodule(module_path)
        delta = layer.to_dense()
        if delta.numel() != module.weight.numel() or delta.shape[0] != module.weight.shape[0]:
            raise InputError(f"{path}: module {layer.name} has ΔW {list(layer.shape)} but {component}.{module_path} has weight "
                             f"{list(module.weight.shape)}: wrong base model?")
        plan.append((module, delta.reshape(module.weight.shape)))
    for module, delta in plan:
        delta = delta.to(device=module.weight.device, dtype=module.weight.dtype)
        if merge:
            with torch.no_grad():
                module.weight += delta
        else:
            hooks = getattr(module, HOOKS_ATTR, [])
            hooks.append(module.register_forward_hook(_adds(delta)))
            setattr(module, HOOKS_ATTR, hooks)
    return target


def _adds(delta: torch.Tensor):
    """A forward hook adding x ΔŴᵀ (a Linear) or conv(x, ΔŴ) (a convolution) to the module's output."""
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0].to(delta.dtype)
        if isinstance(module, nn.Linear):
            extra = F.linear(x, delta)
        else:
            extra = module._conv_forward(x, delta, None)
        return output + extra.to(output.dtype)

    return hook


def unload(target: Any) -> int:
    """Remove every unmerged wavecompress adapter from ``target``; returns how many modules were restored."""
    count = 0
    for component in components_of(target).values():
        for module in component.modules():
            for handle in getattr(module, HOOKS_ATTR, []):
                handle.remove()
            if hasattr(module, HOOKS_ATTR):
                delattr(module, HOOKS_ATTR)
                count += 1
    return count
