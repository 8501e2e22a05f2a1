"""Module names of diffusion LoRAs mapped to a pipeline's modules.

sd-scripts names a module ``<prefix>_<path with dots replaced by underscores>`` (``lora_unet_down_blocks_0_
attentions_0_proj_in``; prefixes ``lora_unet``, ``lora_te``, SDXL ``lora_te1``/``lora_te2``); the mapping back
needs the model, so it is built from the component's own modules. diffusers names a module
``<component>.<path>`` (``unet.down_blocks.0.attentions.0.proj_in``); a PEFT LoRA of one component names the
path alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from ..errors import InputError
from ..formats.kohya_writer import sd_scripts_path

# kohya prefix → the pipeline components it may address, in order of preference.
KOHYA_PREFIXES: dict[str, tuple[str, ...]] = {
    "lora_unet": ("unet", "transformer"),
    "lora_te1": ("text_encoder",),
    "lora_te2": ("text_encoder_2",),
    "lora_te3": ("text_encoder_3",),
    "lora_te": ("text_encoder",),
}
ADAPTED = (nn.Linear, nn.modules.conv._ConvNd)


def adaptable_modules(component: nn.Module) -> dict[str, nn.Module]:
    """{module path: module} of every Linear and convolution of ``component``."""
    return {name: module for name, module in component.named_modules() if name and isinstance(module, ADAPTED)}


def _kohya_index(components: Mapping[str, nn.Module]) -> dict[str, tuple[str, str]]:
    """{kohya name: (component, module path)} for every adaptable module of every component."""
    index: dict[str, tuple[str, str]] = {}
    for prefix, targets in KOHYA_PREFIXES.items():
        for component in targets:
            if component in components:
                for path in adaptable_modules(components[component]):
                    # the path as the model names it, and as sd-scripts spells it (CLIP under text_model.)
                    for spelled in (path, sd_scripts_path(component, path)):
                        index.setdefault(f"{prefix}_{spelled.replace('.', '_')}", (component, path))
                break
    return index


def resolve_names(names: Iterable[str], components: Mapping[str, nn.Module]) -> dict[str, tuple[str, str]]:
    """{output module name: (component, module path)} for kohya, diffusers-prefixed and plain names.

    A plain path is looked up in the one component that has it. Names that match no module: one
    InputError naming a few of them and the components searched."""
    names = list(names)
    kohya = _kohya_index(components) if any(name.startswith("lora_") for name in names) else {}
    modules = {component: adaptable_modules(module) for component, module in components.items()}
    resolved, missing = {}, []
    for name in names:
        component, _, path = name.partition(".")
        if name in kohya:
            resolved[name] = kohya[name]
        elif component in modules and path in modules[component]:
            resolved[name] = (component, path)
        else:
            owners = [c for c, found in modules.items() if name in found]
            if len(owners) == 1:
                resolved[name] = (owners[0], name)
            else:
                missing.append(name)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{len(missing)} of {len(names)} adapter modules match no Linear or convolution of "
                         f"{', '.join(sorted(components))}: {shown}")
    return resolved
