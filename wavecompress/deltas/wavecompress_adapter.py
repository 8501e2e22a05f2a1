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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_layer_meta(config_path: Path, name: str, meta: dict[str, Any], shape: tuple[int, ...],
                     tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a tampered layer entry before anything sized by it is allocated: a wavelet that is not an
    orthogonal one PyWavelets knows, levels that are not two small non-negative integers the layer's
    sizes can take, and WaRA bands outside the layer, with ranks above the band's size or not adding up
    to the stored ``wara_factors`` values. Shared by the CLI readers and the PEFT loader."""
    from ..transforms.dwt import axis_levels, band_slices, validate_wavelet

    where = f"{config_path}: layer {printable(name)}"
    if "wavelet" in meta:
        if not isinstance(meta["wavelet"], str):
            raise InputError(f"{where}: wavelet is {str(meta['wavelet'])[:40]}, expected a wavelet name")
        try:
            validate_wavelet(meta["wavelet"])
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    levels = meta.get("levels")
    if levels is not None:
        if not isinstance(levels, list) or len(levels) != 2 or not all(_is_int(v) and 0 <= v <= 62 for v in levels):
            raise InputError(f"{where}: levels is {str(levels)[:40]}, expected two non-negative integers")
        if len(shape) == 2 and any(axis_levels(int(n), v) != v for n, v in zip(shape, levels)):
            raise InputError(f"{where}: levels {levels} do not fit its shape {list(shape)}")
    bands = meta.get("bands")
    if bands is not None:
        if levels is None or len(shape) != 2 or not isinstance(bands, list):
            raise InputError(f"{where}: bands need levels and a 2-D shape")
        rows, cols = band_slices(int(shape[0]), levels[0]), band_slices(int(shape[1]), levels[1])
        needed = 0
        for band in bands:
            if not isinstance(band, list) or len(band) != 3 or not all(_is_int(v) and v >= 0 for v in band) \
                    or band[0] >= len(rows) or band[1] >= len(cols):
                raise InputError(f"{where}: band {str(band)[:40]} is not [row band, column band, rank] of this layer")
            n_rows, n_cols = rows[band[0]].stop - rows[band[0]].start, cols[band[1]].stop - cols[band[1]].start
            if band[2] > min(n_rows, n_cols):
                raise InputError(f"{where}: band {band} has rank {band[2]} above its size {n_rows}×{n_cols}")
            needed += (n_rows + n_cols) * band[2]
        factors = tensors.get("wara_factors")
        if factors is not None and factors.numel() != needed:
            raise InputError(f"{where}: wara_factors holds {factors.numel()} values but its bands need {needed}")
    specs = meta.get("stored_tensors")
    if specs is not None:  # what the PEFT layer allocates before loading: exactly the stored tensors, no bigger
        if not isinstance(specs, dict):
            raise InputError(f"{where}: stored_tensors is {str(specs)[:40]}, expected {{tensor: {{shape, dtype}}}}")
        size = 1
        for n in shape:
            size *= int(n)
        for key, spec in specs.items():
            if key not in tensors:  # a missing tensor is named by the readers below; its spec must still be small
                dims = spec.get("shape") if isinstance(spec, dict) else None
                count = 1
                for n in dims if isinstance(dims, list) else [-1]:
                    count = count * n if _is_int(n) and n >= 0 else -1
                if count < 0 or count > 2 * size + sum(int(n) for n in shape):
                    raise InputError(f"{where}: stored_tensors[{printable(key)!r}] is {str(spec)[:80]}, larger than the layer")
                continue
            stored = [int(n) for n in tensors[key].shape]
            if not isinstance(spec, dict) or spec.get("shape") != stored or \
                    str(spec.get("dtype", "")).replace("torch.", "") != str(tensors[key].dtype).replace("torch.", ""):
                raise InputError(f"{where}: stored_tensors[{printable(key)!r}] is {str(spec)[:80]} but the stored tensor is "
                                 f"{str(tensors[key].dtype).replace('torch.', '')} {stored}")


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
        check_layer_meta(weights_path.parent / CONFIG_NAME, name, meta, tuple(shape), own)
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


def _layer_delta(decoder: Any, weights_path: Path, stored: StoredLayer) -> LayerDelta:
    """The LayerDelta of one stored layer (every decoder check runs: index ranges, permutations, sizes)."""
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
            return kept_layers.as_delta(stored.name, stored.tensors, stored.shape, **info, kept=True)
        if decoder.low_rank_factors is not None:  # WaRA: ΔŴ = L @ R, kept factored (re-budgeting needs no dense SVD)
            left, right = decoder.low_rank_factors(stored.tensors, stored.meta, stored.shape)
            return LayerDelta.from_factors(stored.name, left, right, **info)
        dense = decoder.reconstruct(stored.tensors, stored.meta, stored.shape)
    except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as exc:
        raise InputError(f"{weights_path}: layer {stored.name} cannot be rebuilt ({exc})") from None
    return LayerDelta.from_dense(stored.name, dense, **info)


def validate_wavecompress_adapter(config: dict[str, Any], weights_path: Path) -> None:
    """Every check :func:`read_wavecompress_adapter` makes, one layer at a time and nothing kept: what the
    PEFT loader runs before PEFT applies stored indices and permutations (torch would wrap or repeat them)."""
    decoder = require_decoder(config["peft_type"], str(weights_path.parent / CONFIG_NAME))
    stored_layers, _, _ = read_stored_layers(config, weights_path)
    for stored in stored_layers:
        _layer_delta(decoder, weights_path, stored)


def read_wavecompress_adapter(config: dict[str, Any], weights_path: Path) -> AdapterDeltas:
    """Dense deltas of a top-k WaveFT or WaRA output, plus its passthrough tensors."""
    decoder = require_decoder(config["peft_type"], str(weights_path.parent / CONFIG_NAME))
    stored_layers, passthrough, metadata = read_stored_layers(config, weights_path)
    layers = [_layer_delta(decoder, weights_path, stored) for stored in stored_layers]
    return AdapterDeltas(
        source=str(weights_path), kind=decoder.method, layers=layers, config=config, passthrough=passthrough, metadata=metadata
    )
