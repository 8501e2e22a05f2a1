"""LoRA outputs in the layouts diffusion tools read: kohya / sd-scripts single files and diffusers files.

kohya: ``<name>.lora_down.weight`` (r, d_in) or (r, c_in, kh, kw), ``<name>.lora_up.weight`` (d_out, r) or
(c_out, r, 1, 1) and ``<name>.alpha`` (one value for every module, r/alpha folded into up), names ``lora_unet_*`` /
``lora_te*_*``; the header keeps the input's ``ss_*`` / ``modelspec.*`` entries, updates
``ss_network_dim``/``ss_network_alpha`` ("Dynamic" where ranks differ, as sd-scripts' resize_lora.py
does), notes the conversion in ``ss_training_comment`` and recomputes ``sshs_model_hash`` /
``sshs_legacy_hash`` the way sd-scripts' ``precalculate_safetensors_hashes`` does.

diffusers: ``pytorch_lora_weights.safetensors`` with PEFT keys under the component prefix
(``unet.<module>.lora_A.weight``) and a ``lora_adapter_metadata`` header entry (per component ``r``,
``lora_alpha``, ``rank_pattern``, ``alpha_pattern``, ``target_modules``) that diffusers reads back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..deltas.adapter_deltas import AdapterDeltas
from ..deltas.diffusers_metadata import COMPONENTS, KEY as DIFFUSERS_METADATA_KEY
from ..deltas.kohya import DIFFUSERS_WEIGHTS_NAME
from ..errors import InputError
from ..layout import REPORT_NAME, carried_metadata, input_stem
from ..methods.compressed_layer import CompressedLayer
from ..report import Report
from .atomic import atomic_directory, atomic_write_bytes
from .safetensors_writer import deterministic_bytes

LAYOUTS = ("auto", "peft", "kohya", "diffusers")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
# diffusers component → kohya prefix (SDXL names its two text encoders te1 and te2).
_KOHYA_OF_COMPONENT = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}


def layout_of(names: Iterable[str], kind: str) -> str:
    """The layout an input is in: kohya (``lora_unet_*`` names), diffusers (component prefixes: a diffusers file, or
    an output of one, named ``unet.``/``text_encoder*.``; a ``transformer.`` prefix alone is also GPT-2's, so it
    counts only in a file read as a diffusion LoRA) or peft."""
    names = list(names)
    if names and all(name.startswith(KOHYA_PREFIXES) for name in names):
        return "kohya"
    heads = {name.split(".", 1)[0] for name in names}
    if names and heads <= set(COMPONENTS) and (kind.startswith(("kohya", "lycoris")) or heads & {"unet", "text_encoder", "text_encoder_2"}):
        return "diffusers"
    return "peft"


def kohya_name(name: str, components: set[str]) -> str:
    """The sd-scripts name of a module: kept when already kohya; ``<component>.<path>`` or a plain UNet path
    → prefix + path with dots replaced by underscores (``lora_te1`` when a second text encoder is present)."""
    if name.startswith(KOHYA_PREFIXES):
        return name
    component, _, path = name.partition(".")
    if component not in COMPONENTS or not path:
        component, path = "unet", name  # a PEFT LoRA of a UNet names its modules without a component
    if component not in _KOHYA_OF_COMPONENT:
        raise InputError(f"module {name}: the kohya layout of a {component} LoRA (Flux/SD3 names) is not written; "
                         "use --layout diffusers")
    prefix = "lora_te1" if component == "text_encoder" and "text_encoder_2" in components else _KOHYA_OF_COMPONENT[component]
    return f"{prefix}_{sd_scripts_path(component, path).replace('.', '_')}"


def sd_scripts_path(component: str, path: str) -> str:
    """A module path as sd-scripts, ComfyUI and A1111 spell it: CLIP text-encoder paths under ``text_model.``
    as transformers 4 named them (transformers 5 drops that level)."""
    if component.startswith("text_encoder") and not path.startswith("text_model."):
        return "text_model." + path
    return path


def diffusers_name(name: str) -> str:
    """The diffusers key prefix of a module: ``<component>.<path>`` (a plain path is a UNet's)."""
    if name.startswith(KOHYA_PREFIXES):
        raise InputError(f"module {name}: kohya names cannot be turned back into module paths without the model; "
                         "write --layout kohya (diffusers' load_lora_weights reads kohya files)")
    return name if name.split(".", 1)[0] in COMPONENTS else f"unet.{name}"


def check_layout_names(names: Iterable[str], layout: str) -> None:
    """Refuse, before any work, module names that ``layout`` cannot spell (kohya names have no diffusers path
    without the model; Flux/SD3 components have no kohya prefix)."""
    names = list(names)
    components = {name.split(".", 1)[0] for name in names}
    for name in names:
        if layout == "kohya":
            kohya_name(name, components)
        elif layout == "diffusers":
            diffusers_name(name)


def _lora_factors(layer: CompressedLayer) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(down, up, rank) of a LoRA layer as written (conv factors 4-D)."""
    tensors = layer.written_tensors()
    if not layer.tensors:  # rank 0: the budget was below one rank step; nothing is stored
        return torch.empty(0), torch.empty(0), 0
    if "lora_A.weight" not in tensors or "lora_B.weight" not in tensors:
        raise InputError(f"layer {layer.name}: not a LoRA layer (method {layer.method}); export it with --to lora first")
    return tensors["lora_A.weight"], tensors["lora_B.weight"], int(tensors["lora_A.weight"].shape[0])


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype).contiguous() if dtype is not None and tensor.is_floating_point() else tensor.contiguous()


def kohya_tensors(layers: list[CompressedLayer], source: AdapterDeltas, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """{kohya key: tensor}: every LoRA layer (rank > 0) and every module the input carried verbatim."""
    components = {layer.name.split(".", 1)[0] for layer in layers}
    factors = [(layer, *_lora_factors(layer)) for layer in layers]
    alpha = network_alpha([rank for *_, rank in factors])
    tensors: dict[str, torch.Tensor] = {}
    for layer, down, up, rank in factors:
        if rank == 0:
            continue
        name = kohya_name(layer.name, components)
        tensors[f"{name}.lora_down.weight"] = _cast(down, dtype)
        # One alpha for every module, the scale alpha/r undone in up: loaders that pair a module with another
        # module's alpha (diffusers did, for mid_block names with ranks that differ) still merge it right.
        tensors[f"{name}.lora_up.weight"] = _cast(up * (rank / alpha), dtype)
        tensors[f"{name}.alpha"] = _cast(torch.tensor(alpha), dtype)
    for key, value in source.verbatim_tensors().items():
        if key in tensors:
            raise InputError(f"carried tensor {key} collides with a converted tensor")
        tensors[key] = value.contiguous()
    return dict(sorted(tensors.items()))


def network_alpha(ranks: list[int]) -> float:
    """The one alpha a kohya export writes: the largest rank (scale 1 there)."""
    return float(max(ranks, default=1) or 1)


def _dim_alpha(ranks: list[int], alpha: float) -> tuple[str, str]:
    """ss_network_dim ("Dynamic" when ranks differ, as resize_lora.py writes it) and ss_network_alpha."""
    return (str(ranks[0]) if len(set(ranks)) == 1 else "Dynamic"), f"{alpha}"


def sd_scripts_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts' ``precalculate_safetensors_hashes`` computes them:
    the file serialised with only its ``ss_*`` metadata; the model hash is the sha256 of the bytes after the
    header, the legacy hash the first 8 hex digits of the sha256 of 64 KiB at offset 1 MiB."""
    from safetensors.torch import save

    training = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    data = save(tensors, training)
    header_end = 8 + int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[header_end:]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def kohya_metadata(tensors: dict[str, torch.Tensor], layers: list[CompressedLayer], source: AdapterDeltas,
                   comment: str) -> dict[str, str]:
    """The header: the input's ss_*/modelspec.* entries, dim/alpha of the written ranks, the conversion noted
    in ss_training_comment, and sd-scripts' hashes of the written tensors."""
    metadata = carried_metadata(source.metadata)
    metadata.pop("sshs_model_hash", None)
    metadata.pop("sshs_legacy_hash", None)
    ranks = [rank for rank in (_lora_factors(layer)[2] for layer in layers) if rank > 0]
    if ranks:
        metadata["ss_network_dim"], metadata["ss_network_alpha"] = _dim_alpha(ranks, network_alpha(ranks))
    metadata.setdefault("ss_network_module", "networks.lora")
    previous = metadata.get("ss_training_comment")
    metadata["ss_training_comment"] = comment + (f"; {previous}" if previous and previous != "None" else "")
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = sd_scripts_hashes(tensors, metadata)
    return metadata


def diffusers_tensors(layers: list[CompressedLayer], dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """({diffusers key: tensor}, lora_adapter_metadata): PEFT keys under the component prefix, each component's
    PEFT config (alpha = r per module: the factors carry the scale) flattened as ``<component>.<field>``."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, dict[str, int]] = {}
    for layer in layers:
        down, up, rank = _lora_factors(layer)
        if rank == 0:
            continue
        name = diffusers_name(layer.name)
        component, _, path = name.partition(".")
        tensors[f"{name}.lora_A.weight"] = _cast(down, dtype)
        tensors[f"{name}.lora_B.weight"] = _cast(up, dtype)
        ranks.setdefault(component, {})[path] = rank
    metadata: dict[str, Any] = {}
    for component, by_module in sorted(ranks.items()):
        top = max(by_module.values())
        pattern = {re.escape(path): r for path, r in sorted(by_module.items()) if r != top}
        config = {"r": top, "lora_alpha": top, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
                  "target_modules": sorted(by_module), "use_dora": False, "use_rslora": False, "init_lora_weights": True,
                  "lora_dropout": 0.0, "bias": "none", "peft_type": "LORA"}
        metadata.update({f"{component}.{key}": value for key, value in config.items()})
    return dict(sorted(tensors.items())), metadata


def write_lora_layout(out: Path, layout: str, layers: list[CompressedLayer], source: AdapterDeltas, report: Report,
                      force: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Write ``layers`` (LoRA layers) in ``layout`` ("kohya" or "diffusers") at ``out``; returns the weights file.

    kohya: ``out`` ending in ``.safetensors`` is the file itself, else a folder holding ``<folder name>.safetensors``
    and the report. diffusers: a folder with ``pytorch_lora_weights.safetensors`` and the report."""
    comment = f"converted by wavecompress ({report.method}, relative error {report.relative_error:.4f} vs {input_stem(source.source)})"
    if layout == "kohya":
        tensors = kohya_tensors(layers, source, dtype)
        data = deterministic_bytes(tensors, kohya_metadata(tensors, layers, source, comment))
        file_name = f"{out.name or 'lora'}.safetensors"
    elif layout == "diffusers":
        if source.carried:
            raise InputError(f"{source.source}: {len(source.carried)} modules carried verbatim (first: {source.carried[0].name}) "
                             "have no diffusers key; use --layout kohya or --drop-unconvertible")
        tensors, adapter_metadata = diffusers_tensors(layers, dtype)
        header = {"format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(adapter_metadata, indent=2, sort_keys=True)}
        data = deterministic_bytes(tensors, header)
        file_name = DIFFUSERS_WEIGHTS_NAME
    else:
        raise InputError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS[1:])}")
    if layout == "kohya" and out.suffix == ".safetensors":
        if out.exists() and not force:
            raise InputError(f"{out}: output already exists (pass --force to replace it)")
        atomic_write_bytes(out, data, inputs=source.input_paths(), force=force)
        return out
    with atomic_directory(out, force=force, inputs=source.input_paths()) as staging:
        (staging / file_name).write_bytes(data)
        (staging / REPORT_NAME).write_text(report.dumps(), encoding="utf-8")
    return out / file_name
