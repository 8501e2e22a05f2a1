"""Reader for wavecompress's own WAVECOMPRESS_* outputs: every layer rebuilt as a dense ΔŴ."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..layout import CONFIG_NAME, PREFIX
from . import conv, kept_layers
from .adapter_deltas import AdapterDeltas
from .decoders import require_decoder
from .layer_delta import LayerDelta
from .memory_budget import check_layer_size
from .safetensors_file import printable
from .safetensors_reader import check_finite, read_safetensors
from .shared_tensors import resolve_shared


@dataclass
class StoredLayer:
    """One layer of a WAVECOMPRESS_* output as written: its stored tensors and per-layer metadata."""

    name: str
    shape: tuple[int, int]
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def check_stored_tensor(weights_path: Path, key: str, tensor: torch.Tensor) -> None:
    """Refuse tampered stored tensors: indices that are not integers, negative, unsorted or repeated
    (torch would wrap or overwrite them silently), and values that are not floats. The format's
    integer tensors: ``*indices`` (sorted flat indices), ``*index_gaps`` (gap-coded indices, decoded
    and checked by the method) and ``reorder_*`` (permutations); every other stored tensor is a float."""
    if key.endswith("indices"):
        if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.dim() != 1:
            raise InputError(f"{weights_path}: tensor {key} must be a 1-D integer tensor, got {str(tensor.dtype).replace('torch.', '')} {list(tensor.shape)}")
        flat = tensor.to(torch.int64)
        if flat.numel() and int(flat.min()) < 0:
            raise InputError(f"{weights_path}: tensor {key} holds negative indices")
        if flat.numel() > 1 and not bool((flat[1:] > flat[:-1]).all()):
            raise InputError(f"{weights_path}: tensor {key} holds repeated or unsorted indices")
    elif key.endswith("_gaps"):  # gap-coded top-k indices (methods/index_codec.py), decoded and checked there
        if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.dim() != 1:
            raise InputError(f"{weights_path}: tensor {key} must be a 1-D integer tensor, got {str(tensor.dtype).replace('torch.', '')} {list(tensor.shape)}")
    elif not key.split(".")[-1].startswith("reorder_") and not tensor.is_floating_point():
        raise InputError(f"{weights_path}: tensor {key} holds {str(tensor.dtype).replace('torch.', '')} values; stored values must be floats")


def read_stored_layers(
    config: dict[str, Any], weights_path: Path
) -> tuple[list[StoredLayer], dict[str, torch.Tensor], dict[str, str]]:
    """(layers, passthrough tensors, header metadata) of a top-k WaveFT or WaRA output, values checked finite."""
    tensors, metadata = read_safetensors(weights_path)
    table = config.get("layers")
    if not isinstance(table, dict) or not table:
        raise InputError(f"{weights_path.parent / CONFIG_NAME}: missing the per-layer 'layers' table")
    claimed: set[str] = set()
    layers = []
    for name in sorted(table):
        if printable(name) != name:
            raise InputError(f"{weights_path.parent / 'adapter_config.json'}: layer name {printable(name)!r} holds control characters; refusing it")
        prefix = f"{PREFIX}{name}."
        own = {key[len(prefix) :]: tensors[key] for key in tensors if key.startswith(prefix)}
        for key, value in own.items():
            check_stored_tensor(weights_path, prefix + key, value)
            check_finite(weights_path, prefix + key, value)
        claimed.update(prefix + key for key in own)
        entry = table[name]
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list):
            raise InputError(f"{weights_path.parent / CONFIG_NAME}: layer {name} has no 'shape' [d_out, d_in]")
        check_layer_size(weights_path.parent / CONFIG_NAME, name, tuple(shape))
        meta = {key: value for key, value in entry.items() if key != "shape"}
        layers.append(StoredLayer(name, tuple(shape), meta, own))
    try:  # tensors stored once for several layers (a shared column permutation) go back to each
        resolve_shared({layer.name: (layer.tensors, layer.meta) for layer in layers}, str(weights_path))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    passthrough = {key: value for key, value in tensors.items() if key not in claimed}
    return layers, passthrough, metadata


def _weight_shape(weights_path: Path, stored: StoredLayer) -> tuple[int, ...] | None:
    """A conv layer's recorded 4-D shape, checked against its matrix shape (None for linear layers)."""
    raw = stored.meta.get(conv.KEY)
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) < 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw) \
            or conv.matrix_shape(raw) != tuple(stored.shape):
        raise InputError(f"{weights_path.parent / CONFIG_NAME}: layer {stored.name}: weight_shape {str(raw)[:60]} does not "
                         f"flatten to its shape {list(stored.shape)}")
    return tuple(raw)


def read_wavecompress_adapter(config: dict[str, Any], weights_path: Path) -> AdapterDeltas:
    """Dense deltas of a top-k WaveFT or WaRA output, plus its passthrough tensors."""
    decoder = require_decoder(config["peft_type"], str(weights_path.parent / CONFIG_NAME))
    stored_layers, passthrough, metadata = read_stored_layers(config, weights_path)
    layers = []
    for stored in stored_layers:
        values = sum(v.numel() for v in stored.tensors.values() if v.is_floating_point())  # not indices/permutations
        info: dict[str, Any] = {"stored_values": values}
        floats = [v.dtype for v in stored.tensors.values() if v.is_floating_point()]
        if floats:  # the stored precision: --dtype auto keeps it when this output is converted or exported again
            info["dtype"] = str(floats[0]).replace("torch.", "")
        weight_shape = _weight_shape(weights_path, stored)
        if weight_shape is not None:  # a conv layer (deltas/conv.py)
            info[conv.KEY] = weight_shape
        try:
            if kept_layers.KEY in stored.meta:  # a layer --include/--exclude left unselected: exactly as stored
                layers.append(kept_layers.as_delta(stored.name, stored.tensors, stored.shape, **info, kept=True))
                continue
            if decoder.low_rank_factors is not None:  # WaRA: ΔŴ = L @ R, kept factored (re-budgeting needs no dense SVD)
                left, right = decoder.low_rank_factors(stored.tensors, stored.meta, stored.shape)
                layers.append(LayerDelta.from_factors(stored.name, left, right, **info))
                continue
            dense = decoder.reconstruct(stored.tensors, stored.meta, stored.shape)
        except (KeyError, ValueError, RuntimeError, IndexError) as exc:
            raise InputError(f"{weights_path}: layer {stored.name} cannot be rebuilt ({exc})") from None
        layers.append(LayerDelta.from_dense(stored.name, dense, **info))
    return AdapterDeltas(
        source=str(weights_path), kind=decoder.method, layers=layers, config=config, passthrough=passthrough, metadata=metadata
    )
