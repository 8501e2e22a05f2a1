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

import math
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import InputError
from . import lycoris
from . import conv
from .adapter_deltas import AdapterDeltas, CarriedModule
from .diffusers_metadata import diffusers_scales
from .layer_delta import LayerDelta
from .memory_budget import check_layer_size
from ..layout import CONFIG_NAME, PREFIX
from .safetensors_file import open_safetensors, printable
from .safetensors_reader import check_finite, read_safetensors

KIND = "kohya-lora"
DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights
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
    ".diff": "diff",
    ".diff_b": "diff_b",
    **{f".{key}": key for key in lycoris.LOHA_KEYS + lycoris.LOKR_KEYS + lycoris.TUCKER_KEYS},
}
_KEY = re.compile(r"^(?P<module>.+?)(?P<suffix>" + "|".join(re.escape(s) for s in sorted(_SUFFIXES, key=len, reverse=True)) + r")$")


def is_single_file_lora(path: Path) -> bool:
    """True when a safetensors file's keys look like kohya, LyCORIS or diffusers LoRA modules."""
    try:
        with open_safetensors(path) as reader:
            keys = list(reader.keys())
    except InputError:  # an invalid safetensors file: its own reason, not "no adapter_config.json beside it"
        raise
    except Exception:  # noqa: BLE001 - not a readable safetensors file: let the caller's reader say why
        return False
    roles = {_SUFFIXES[m["suffix"]] for key in keys if (m := _KEY.match(key))}
    return bool(roles & ({"down", "up"} | set(lycoris.LOHA_KEYS) | set(lycoris.LOKR_KEYS)))


def refuse_peft_without_config(path: Path) -> None:
    """A PEFT adapter file (``base_model.model.*`` keys) read without its adapter_config.json would lose
    lora_alpha / r (ΔW off by alpha/r): refuse it in one line instead of reading it as a kohya file."""
    with open_safetensors(path) as reader:
        peft_keys = [key for key in reader.keys() if key.startswith(PREFIX)]
    if peft_keys:
        raise InputError(f"{path}: a PEFT adapter file (keys such as {printable(peft_keys[0])}) without the "
                         f"{CONFIG_NAME} written beside it; its lora_alpha and r are needed — put the config beside it")


def _alpha(path: Path, module: str, parts: dict[str, torch.Tensor]) -> float | None:
    if "alpha" not in parts:
        return None
    value = parts["alpha"]
    if value.numel() != 1:
        raise InputError(f"{path}: tensor {module}.alpha has {value.numel()} values, expected one")
    alpha = float(value.reshape(()).double())
    if not math.isfinite(alpha) or abs(alpha) >= 1e30:  # the PEFT reader's rule for lora_alpha: scaled factors must stay finite
        raise InputError(f"{path}: tensor {printable(module)}.alpha is {alpha:g}; expected a finite number below 1e30")
    return alpha


def _lora_layer(path: Path, module: str, parts: dict[str, torch.Tensor],
                scale_without_alpha: Callable[[str, int], float | None]) -> LayerDelta:
    """The LayerDelta of a down/up module: linear, convolution (4-D factors; sd-scripts' LoCon) or CP
    (``lora_mid``: a k×k core between 1×1 factors), a conv's ΔW as its (c_out, c_in·kh·kw) matrix. The scale
    is alpha / r with the module's alpha tensor, else ``scale_without_alpha(module, r)`` (diffusers' metadata),
    else 1."""
    if "down" not in parts or "up" not in parts:
        missing = "up" if "down" in parts else "down"
        raise InputError(f"{path}: module {module} has no lora_{missing} tensor")
    down, up = parts["down"], parts["up"]
    for role, tensor in (("down", down), ("up", up)):
        if not tensor.is_floating_point():
            raise InputError(f"{path}: tensor {module}.lora_{role}.weight has non-float dtype {str(tensor.dtype).replace('torch.', '')}")
    if not conv.is_lora_pair(down, up):
        raise InputError(f"{path}: module {module}: lora_down {list(down.shape)} and lora_up {list(up.shape)} are neither "
                         "linear (2-D) nor convolution factors (lora_up (d_out, r, 1, 1))")
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise InputError(f"{path}: module {module}: down is {list(down.shape)} but up is {list(up.shape)} (up must be d_out × {rank})")
    if rank == 0:
        raise InputError(f"{path}: module {module} has rank 0")
    alpha = _alpha(path, module, parts)
    scale = alpha / rank if alpha is not None else (scale_without_alpha(module, rank) or 1.0)
    stored = down.numel() + up.numel()
    info = {"rank": rank, "scaling": scale, "dtype": str(down.dtype).replace("torch.", "")}
    if "mid" in parts:
        mid = parts["mid"]
        if mid.dim() != down.dim() or tuple(mid.shape[:2]) != (rank, rank) or down.shape[2:] != (1,) * (down.dim() - 2):
            raise InputError(f"{path}: module {module}: lora_mid {list(mid.shape)} does not fit lora_down {list(down.shape)} "
                             f"(expected ({rank}, {rank}, kh, kw) between 1×1 factors)")
        weight_shape = (up.shape[0], down.shape[1], *mid.shape[2:])
        check_layer_size(path, module, conv.matrix_shape(weight_shape))
        delta = conv.cp_delta(up.float(), mid.float(), down.float()) * scale
        return LayerDelta.from_dense(module, delta.reshape(up.shape[0], -1), **info, stored_values=stored + mid.numel(),
                                     **{conv.KEY: weight_shape})
    up2, down2, weight_shape = conv.conv_factors(down, up)
    check_layer_size(path, module, (up2.shape[0], down2.shape[1]))
    if weight_shape is not None:
        info[conv.KEY] = weight_shape
    return LayerDelta.from_factors(module, up2.to(torch.float32) * scale, down2.to(torch.float32), **info, stored_values=stored)


def _carried(module: str, parts: dict[str, torch.Tensor], keys: dict[str, str], reason: str) -> CarriedModule:
    """A module kept verbatim: its tensors under their original keys."""
    return CarriedModule(module, {keys[role]: tensor for role, tensor in parts.items()}, reason)


def read_kohya(path: str | Path) -> AdapterDeltas:
    """Layer deltas of a single-file kohya / LyCORIS / diffusers LoRA, with its header metadata.

    Every module becomes a layer (linear and convolution LoRA/LoCon, CP and Tucker forms, LoHa, LoKr,
    full ``diff`` weights), or, when its delta cannot be formed from the file alone (a DoRA module needs
    the base weights; an unknown tensor), is carried verbatim (``AdapterDeltas.carried``)."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    modules: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    keys: dict[str, dict[str, str]] = defaultdict(dict)
    carried: list[CarriedModule] = []
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            carried.append(CarriedModule(key.rsplit(".", 1)[0], {key: value}, "not a LoRA, LoHa, LoKr or diff tensor"))
            continue
        check_finite(path, key, value)
        role = _SUFFIXES[match["suffix"]]
        modules[match["module"]][role] = value
        keys[match["module"]][role] = key
    try:
        scales = diffusers_scales(metadata)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    layers: list[LayerDelta] = []
    for module in sorted(modules):
        parts = modules[module]
        if "magnitude" in parts:
            carried.append(_carried(module, parts, keys[module], "DoRA module: its delta needs the base weights"))
            continue
        if set(parts) <= {"diff", "diff_b", "alpha"}:
            if "diff" in parts:
                layers.append(_diff_layer(path, module, parts["diff"]))
            if "diff_b" in parts:
                carried.append(CarriedModule(module, {keys[module]["diff_b"]: parts["diff_b"]}, "bias difference"))
            continue
        kind = lycoris.module_type(parts)
        if kind is not None:
            try:
                build = lycoris.loha_delta if kind == "loha" else lycoris.lokr_delta
                layers.append(build(module, parts, _alpha(path, module, parts)))
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from None
            continue
        if set(parts) == {"alpha"}:
            raise InputError(f"{path}: tensor {module}.alpha has no lora_down/lora_up tensors beside it")
        layers.append(_lora_layer(path, module, parts, scales))
    if not layers:
        names = ", ".join(c.name for c in carried) or "none"
        raise InputError(f"{path}: no convertible LoRA modules (not convertible: {names})")
    kind = "lycoris" if any("lycoris" in layer.info for layer in layers) else KIND
    return AdapterDeltas(source=str(path), kind=kind, layers=layers, config={}, metadata=metadata, carried=carried)


def _diff_layer(path: Path, module: str, diff: torch.Tensor) -> LayerDelta:
    """A LyCORIS ``full`` module: the weight difference itself (a conv's as its flattened matrix)."""
    if diff.dim() < 2:
        raise InputError(f"{path}: tensor {module}.diff is {diff.dim()}-D; a weight difference is at least 2-D")
    matrix = diff.reshape(diff.shape[0], -1)
    check_layer_size(path, module, tuple(matrix.shape))
    info = {conv.KEY: tuple(diff.shape)} if diff.dim() > 2 else {}
    return LayerDelta.from_dense(module, matrix, stored_values=diff.numel(), lycoris="full", **info)
