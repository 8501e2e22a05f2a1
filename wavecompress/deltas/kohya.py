"""Single-file LoRAs without adapter_config.json: kohya / sd-scripts, LyCORIS and diffusers layouts.

kohya: ``lora_unet_*`` / ``lora_te*_*`` modules with ``.lora_down.weight`` (r × d_in),
``.lora_up.weight`` (d_out × r) and ``.alpha`` (missing: alpha = r); ΔW = (alpha/r)·up@down.
LyCORIS LoHa/LoKr modules use the same names with ``hada_*`` / ``lokr_*`` tensors (see
:mod:`.lycoris`). diffusers keys: ``<module>.lora_A.weight``/``.lora_B.weight``,
``.lora.down/up.weight``, ``.lora_linear_layer.down/up.weight`` or ``_lora.down/up.weight``.
Layer names are the file's module names. The ``ss_*`` / ``modelspec.*`` header metadata is kept
so writers carry it into what they write.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch

from ..errors import InputError
from . import lycoris
from .adapter_deltas import AdapterDeltas, SkippedLayer
from .layer_delta import LayerDelta
from .memory_budget import check_layer_size
from .safetensors_file import open_safetensors
from .safetensors_reader import check_finite, read_safetensors

KIND = "kohya-lora"
# suffix → role; longer suffixes first so ``_lora.down.weight`` is not read as ``.down.weight``.
_SUFFIXES = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_mid.weight": "mid",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    "_lora.down.weight": "down",
    "_lora.up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_magnitude_vector": "magnitude",
    ".dora_scale": "magnitude",
    ".alpha": "alpha",
    **{f".{key}": key for key in lycoris.LOHA_KEYS + lycoris.LOKR_KEYS + lycoris.TUCKER_KEYS},
}
_KEY = re.compile(r"^(?P<module>.+?)(?P<suffix>" + "|".join(re.escape(s) for s in sorted(_SUFFIXES, key=len, reverse=True)) + r")$")


def is_single_file_lora(path: Path) -> bool:
    """True when a safetensors file's keys look like kohya, LyCORIS or diffusers LoRA modules."""
    try:
        with open_safetensors(path) as reader:
            keys = list(reader.keys())
    except Exception:  # noqa: BLE001 - not a readable safetensors file: let the caller's reader say why
        return False
    roles = {_SUFFIXES[m["suffix"]] for key in keys if (m := _KEY.match(key))}
    return bool(roles & ({"down", "up"} | set(lycoris.LOHA_KEYS) | set(lycoris.LOKR_KEYS)))


def _alpha(path: Path, module: str, parts: dict[str, torch.Tensor]) -> float | None:
    if "alpha" not in parts:
        return None
    value = parts["alpha"]
    if value.numel() != 1:
        raise InputError(f"{path}: tensor {module}.alpha has {value.numel()} values, expected one")
    return float(value.reshape(()).float())


def _lora_layer(path: Path, module: str, parts: dict[str, torch.Tensor]) -> LayerDelta | str:
    """A LayerDelta for a down/up module, or the reason it is skipped."""
    if "down" not in parts or "up" not in parts:
        missing = "up" if "down" in parts else "down"
        raise InputError(f"{path}: module {module} has no lora_{missing} tensor")
    down, up = parts["down"], parts["up"]
    if "mid" in parts or down.dim() != 2 or up.dim() != 2:
        if down.dim() == 4 and up.dim() == 4 and down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1) and "mid" not in parts:
            return "1×1 convolution LoRA (not a linear layer)"
        return f"{down.dim()}-D convolution LoRA factors are not converted"
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise InputError(f"{path}: module {module}: down is {list(down.shape)} but up is {list(up.shape)} (up must be d_out × {rank})")
    if rank == 0:
        raise InputError(f"{path}: module {module} has rank 0")
    check_layer_size(path, module, (up.shape[0], down.shape[1]))
    alpha = _alpha(path, module, parts)
    scale = alpha / rank if alpha is not None else 1.0
    return LayerDelta.from_factors(
        module, up.to(torch.float32) * scale, down.to(torch.float32), rank=rank, scaling=scale,
        dtype=str(down.dtype).replace("torch.", ""), stored_values=down.numel() + up.numel(),
    )


def read_kohya(path: str | Path) -> AdapterDeltas:
    """Layer deltas of a single-file kohya / LyCORIS / diffusers LoRA, with its header metadata."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    modules: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    skipped: list[SkippedLayer] = []
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            skipped.append(SkippedLayer(key, "not a LoRA, LoHa or LoKr factor; not carried over"))
            continue
        check_finite(path, key, value)
        modules[match["module"]][_SUFFIXES[match["suffix"]]] = value
    layers: list[LayerDelta] = []
    for module in sorted(modules):
        parts = modules[module]
        if "magnitude" in parts:
            skipped.append(SkippedLayer(module, "DoRA module in a single-file LoRA: its delta needs the base weights; not converted"))
            continue
        if any(key in parts for key in lycoris.TUCKER_KEYS):
            skipped.append(SkippedLayer(module, "Tucker (convolution) LyCORIS module is not converted"))
            continue
        kind = lycoris.module_type(parts)
        if kind is not None:
            try:
                build = lycoris.loha_delta if kind == "loha" else lycoris.lokr_delta
                layers.append(build(module, parts, _alpha(path, module, parts)))
            except InputError as exc:
                if "convolution" in str(exc):
                    skipped.append(SkippedLayer(module, str(exc).split(": ", 1)[1]))
                    continue
                raise InputError(f"{path}: {exc}") from None
            continue
        if set(parts) == {"alpha"}:
            raise InputError(f"{path}: tensor {module}.alpha has no lora_down/lora_up tensors beside it")
        result = _lora_layer(path, module, parts)
        if isinstance(result, str):
            skipped.append(SkippedLayer(module, result))
        else:
            layers.append(result)
    if not layers:
        raise InputError(f"{path}: no convertible LoRA modules (skipped: {', '.join(s.name for s in skipped) or 'none'})")
    kind = "lycoris" if any("lycoris" in layer.info for layer in layers) else KIND
    return AdapterDeltas(source=str(path), kind=kind, layers=layers, config={}, skipped=skipped, metadata=metadata)
