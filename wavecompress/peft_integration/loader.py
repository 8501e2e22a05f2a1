"""One call that loads any adapter wavecompress writes or reads into a PeftModel.

``wavecompress.load_adapter(base_model, path)`` registers the WAVECOMPRESS_* adapter types with PEFT
and calls ``PeftModel.from_pretrained``; it works the same for WaRA / top-k WaveFT outputs, LoRA
outputs and exports, stock-PEFT WaveFT and any stock PEFT LoRA. ``base_model`` may be a model or a
model folder / Hub id, built with the head the adapter's ``task_type`` implies.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, overload

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, ModelMixin
    from peft import PeftModel

from ..errors import InputError
from ..layout import CONFIG_NAME, WEIGHTS_NAME

LOADING_HINT = "import wavecompress; model = wavecompress.load_adapter(base_model, {path!r})"


@contextmanager
def quiet_head_initialisation() -> Iterator[None]:
    """Silence transformers' "newly initialized … MISSING" report while a model with a head is built:
    the head comes from the adapter's saved modules (modules_to_save), loaded right after."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _head_passthrough(weights: Path, config: dict[str, Any]) -> dict[str, Any]:
    """{key: tensor-like with .shape} of the weights that are not adapter tensors (e.g. a classifier head).

    Adapter tensors: every key under a layer of the config's ``layers`` table (wavecompress outputs,
    permutations included), a registered method's tensor key (``Method.tensor_keys``) and PEFT's LoRA
    family (``lora_A``, ``lora_B``, ``lora_magnitude_vector``, ``lora_embedding_*``)."""
    from ..deltas.safetensors_file import open_safetensors
    from ..layout import PREFIX
    from ..methods import all_methods

    class _Spec:
        def __init__(self, shape: list[int]) -> None:
            self.shape = tuple(shape)

        def dim(self) -> int:
            return len(self.shape)

    table = config.get("layers")
    prefixes = tuple(f"{PREFIX}{name}." for name in table) if isinstance(table, dict) else ()
    suffixes = tuple(f".{key}" for method in all_methods() for key in method.tensor_keys)

    def is_adapter(key: str) -> bool:
        return key.startswith(prefixes) or key.endswith(suffixes) or ".lora_" in key

    out = {}
    with open_safetensors(weights) as reader:
        for key in reader.keys():
            if not is_adapter(key):
                out[key] = _Spec(reader.get_slice(key).get_shape())
    return out


def build_base_model(name: str | Path, adapter: str | Path) -> Any:
    """The base model ``name`` with the head the adapter at ``adapter`` was trained with (its task_type)."""
    from ..finetune.model_loading import load_base_model

    folder = Path(adapter)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")) if (folder / CONFIG_NAME).is_file() else {}
    weights = folder / WEIGHTS_NAME
    heads = _head_passthrough(weights, config) if weights.is_file() else {}
    with quiet_head_initialisation():
        return load_base_model(str(name), config.get("task_type"), heads)


def _validate_stored(folder: Path) -> None:
    """A WAVECOMPRESS_* output gets the CLI readers' own checks (indices, permutations, bands, wavelet, shapes)
    before PEFT applies its tensors: a tampered file is refused the same way by both."""
    from ..deltas.safetensors_reader import read_json
    from ..deltas.wavecompress_adapter import validate_wavecompress_adapter

    from ..deltas.decoders import decoder_of
    from ..layout import LORA, WAVEFT

    config = read_json(folder / CONFIG_NAME)
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if isinstance(peft_type, str) and peft_type not in (LORA, WAVEFT) and decoder_of(peft_type) is not None:  # stock types: PEFT's own
        validate_wavecompress_adapter(config, folder / WEIGHTS_NAME)


@overload
def load_adapter(base_model: "DiffusionPipeline", path: str | Path, **kwargs: Any) -> "DiffusionPipeline": ...


@overload
def load_adapter(base_model: "ModelMixin", path: str | Path, **kwargs: Any) -> "ModelMixin": ...


@overload
def load_adapter(base_model: "torch.nn.Module | str | Path", path: str | Path, **kwargs: Any) -> "PeftModel": ...


def load_adapter(base_model: Any, path: str | Path, **kwargs: Any) -> Any:
    """``PeftModel.from_pretrained(base_model, path, **kwargs)`` for every adapter type wavecompress knows.

    ``base_model``: an ``nn.Module``, or a model folder / Hub id (then built with the adapter's head).
    ``path``: an output folder (WaRA, top-k WaveFT, LoRA, stock WaveFT), any PEFT LoRA, or a Hub repo id.
    Extra keyword arguments go to PEFT (``is_trainable=True``, ``adapter_name=...``).

    A diffusers pipeline (or its UNet / transformer, or a text encoder given an adapter with kohya / diffusers
    module names) as ``base_model`` gets the adapter applied in place and is
    returned (kohya ``lora_unet_*`` and diffusers ``unet.*`` names are mapped to its modules; ``merge=True`` folds
    ΔŴ into the weights; diffusion/loading.py).
    """
    import torch

    from ..diffusion.loading import is_diffusion_target, names_diffusion_modules

    # a diffusers pipeline or model, or one component (a CLIPTextModel) given an adapter named for a pipeline:
    # applied in place, as load_lora_weights does
    if is_diffusion_target(base_model) or (isinstance(base_model, torch.nn.Module) and names_diffusion_modules(path)):
        from ..diffusion.loading import load_into

        return load_into(base_model, path, **kwargs)
    from .registration import register

    local = Path(path)
    if local.exists():
        if local.is_file():
            local = local.parent
        if not (local / CONFIG_NAME).is_file():
            raise InputError(f"{local}: no {CONFIG_NAME} here; load_adapter needs an adapter folder")
        if not (local / WEIGHTS_NAME).is_file():
            raise InputError(f"{local}: no {WEIGHTS_NAME} here; load_adapter needs an adapter folder")
        _validate_stored(local)
    elif "/" not in str(path) or str(path).startswith((".", "/")):
        raise InputError(f"{path}: no such adapter folder")
    if isinstance(base_model, (str, Path)):
        base_model = build_base_model(base_model, local)
    register()
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(local if local.exists() else path), **kwargs)
