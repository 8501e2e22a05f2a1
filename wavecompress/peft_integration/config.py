"""PEFT config classes for wavecompress's own adapter types (WAVECOMPRESS_WAVEFT, WAVECOMPRESS_WARA, ...):
one subclass per registered method's peft_type, made by :func:`config_class`.

The per-layer table ``layers`` (shape, method metadata and the names, shapes and dtypes of the stored
tensors) is all the tuner needs to build layers before PEFT loads the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from peft.config import PeftConfig

from ..layout import WEIGHTS_NAME, strip_prefix

STORED_TENSORS = "stored_tensors"


def header_tensor_specs(weights_path: str, names: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{layer name: {tensor key: {"shape", "dtype"}}} read from a safetensors header (no data loaded)."""
    from ..deltas.safetensors_file import open_safetensors, torch_dtype_name

    specs: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    with open_safetensors(weights_path) as reader:
        for key in reader.keys():
            stripped = strip_prefix(key)
            module, _, tensor = stripped.rpartition(".")
            if module in specs:
                piece = reader.get_slice(key)
                specs[module][tensor] = {"shape": list(piece.get_shape()), "dtype": torch_dtype_name(piece.get_dtype())}
    return specs


@dataclass
class WavecompressConfig(PeftConfig):
    """Config of an adapter written by wavecompress; loads through PEFT once wavecompress is imported."""

    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "Adapted module names."})
    layers: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "Per-layer shape and metadata."})
    wavecompress: dict[str, Any] = field(default_factory=dict, metadata={"help": "Provenance (version, method, budget)."})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "True for transformers Conv1D layers (GPT-2)."})
    bias: str = field(default="none", metadata={"help": "Bias handling, as in other PEFT configs."})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "Modules trained and saved in full."})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None)
    target_parameters: Optional[list[str]] = field(default=None)
    layers_to_transform: Optional[Union[list[int], int]] = field(default=None)
    layers_pattern: Optional[Union[list[str], str]] = field(default=None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """PEFT's loader, plus stored-tensor specs from a local weights header for layers that lack them."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        missing = [name for name, meta in config.layers.items() if STORED_TENSORS not in meta]
        folder = os.path.join(pretrained_model_name_or_path, subfolder) if subfolder else pretrained_model_name_or_path
        weights = os.path.join(str(folder), WEIGHTS_NAME)
        if missing and os.path.isfile(weights):
            for name, spec in header_tensor_specs(weights, missing).items():
                config.layers[name][STORED_TENSORS] = spec
        return config


_CLASSES: dict[str, type[WavecompressConfig]] = {}


def config_class(peft_type: str, description: str = "") -> type[WavecompressConfig]:
    """The config class of ``peft_type`` (made once; a module attribute, so instances pickle)."""
    if peft_type not in _CLASSES:

        def __post_init__(self) -> None:
            WavecompressConfig.__post_init__(self)
            self.peft_type = peft_type

        name = "WavecompressConfig_" + "".join(c if c.isalnum() else "_" for c in peft_type)
        cls = dataclass(type(name, (WavecompressConfig,), {
            "__post_init__": __post_init__, "__module__": __name__, "__qualname__": name,
            "__doc__": f"Config of a {peft_type} adapter written by wavecompress{': ' + description if description else ''}.",
        }))
        globals()[name] = cls
        _CLASSES[peft_type] = cls
    return _CLASSES[peft_type]
