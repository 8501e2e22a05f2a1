"""Reader for PEFT WaveFT adapters (``peft_type: WAVEFT``): stock PEFT's and our waveft-seeded output.

The file stores only values; PEFT regenerates locations from the layer shape and seed. Shapes come
from our ``wavecompress.shapes`` header entry, or from the base model's weights (``base``, or a
local ``base_model_name_or_path``) for adapters PEFT itself saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .adapter_deltas import AdapterDeltas
from .layer_delta import LayerDelta
from ..layout import WAVEFT, strip_prefix
from .decoders import require_decoder
from .memory_budget import check_layer_size
from .safetensors_file import open_safetensors
from .safetensors_reader import check_finite, read_safetensors

SPECTRUM = ".waveft_spectrum"


def _base_weight_shapes(base: Path, names: list[str], fan_in_fan_out: bool) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of ``<name>.weight`` in the base model's safetensors files, matched by suffix."""
    files = sorted(base.glob("*.safetensors")) if base.is_dir() else [base]
    shapes: dict[str, tuple[int, int]] = {}
    for file in files:
        with open_safetensors(file) as reader:
            for key in reader.keys():
                for name in names:
                    full = f"{name}.weight"
                    if name not in shapes and (key == full or key.endswith("." + full) or full.endswith("." + key)):
                        shape = tuple(reader.get_slice(key).get_shape())
                        if len(shape) == 2:
                            shapes[name] = (shape[1], shape[0]) if fan_in_fan_out else shape
    return shapes


def layer_shapes(names: list[str], metadata: dict[str, str], config: dict[str, Any], weights_path: Path,
                 base: str | Path | None) -> dict[str, tuple[int, int]]:
    """{layer: (d_out, d_in)} from the header, else from the base model's weights; InputError if unknown."""
    if "wavecompress.shapes" in metadata:
        shapes = {name: tuple(shape) for name, shape in json.loads(metadata["wavecompress.shapes"]).items()}
    else:
        candidate = base or config.get("base_model_name_or_path")
        shapes = {}
        if candidate and Path(candidate).exists():
            shapes = _base_weight_shapes(Path(candidate), names, bool(config.get("fan_in_fan_out")))
    missing = [name for name in names if name not in shapes]
    if missing:
        raise InputError(
            f"{weights_path}: PEFT WaveFT adapters do not store layer shapes (locations depend on them); "
            f"pass the base model's weights with --base to read {missing[0]}"
        )
    return shapes


def read_peft_waveft(config: dict[str, Any], weights_path: Path, base: str | Path | None = None) -> AdapterDeltas:
    """Dense deltas of a WAVEFT adapter, exactly as PEFT's get_delta_weight builds them."""
    reconstruct = require_decoder(WAVEFT, str(weights_path)).reconstruct
    tensors, metadata = read_safetensors(weights_path)
    spectra = {strip_prefix(key)[: -len(SPECTRUM)]: key for key in tensors if key.endswith(SPECTRUM)}
    if not spectra:
        raise InputError(f"{weights_path}: no *.waveft_spectrum tensors in this WaveFT adapter")
    shapes = layer_shapes(sorted(spectra), metadata, config, weights_path, base)
    meta = {"wavelet": config.get("wavelet_family", "db1"), "scaling": float(config.get("scaling", 25.0)),
            "seed": int(config.get("random_loc_seed", 777)), "use_idwt": bool(config.get("use_idwt", True))}
    layers = []
    for name in sorted(spectra):
        spectrum = tensors[spectra[name]]
        if not spectrum.is_floating_point():
            raise InputError(f"{weights_path}: tensor {spectra[name]} holds {str(spectrum.dtype).replace('torch.', '')} values; "
                             "a WaveFT spectrum must be floats")
        check_finite(weights_path, spectra[name], spectrum.float())
        check_layer_size(weights_path, name, tuple(int(n) for n in shapes[name]))
        dense = reconstruct({SPECTRUM[1:]: spectrum.to(torch.float32)}, meta, shapes[name])
        layers.append(LayerDelta.from_dense(name, dense, stored_values=spectrum.numel()))
    passthrough = {key: value for key, value in tensors.items() if not key.endswith(SPECTRUM)}
    return AdapterDeltas(source=str(weights_path), kind="peft-waveft", layers=layers, config=config,
                         passthrough=passthrough, metadata=metadata)
