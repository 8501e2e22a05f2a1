"""Readers: turn an input path into AdapterDeltas (one LayerDelta per adapted layer)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..layout import CARD_NAME, CONFIG_NAME, LORA, WAVEFT, WEIGHTS_NAME
from ..hub import card_license, download_adapter, hub_reference
from .adapter_deltas import AdapterDeltas, LazyLayers, SkippedLayer
from .checkpoints import Checkpoint
from .decoders import decoder_of
from .full_finetune import filter_layers, read_full_finetune
from .kohya import DIFFUSERS_WEIGHTS_NAME, is_single_file_lora, read_kohya, refuse_peft_without_config
from .lycoris import PEFT_LYCORIS_TYPES, read_peft_lycoris
from .layer_delta import LayerDelta
from .peft_lora import read_peft_lora
from .peft_waveft import read_peft_waveft
from .safetensors_reader import read_json
from .wavecompress_adapter import read_wavecompress_adapter


def locate_adapter(path: str | Path) -> tuple[Path, Path]:
    """(config path, weights path) for an adapter folder or a weights file with its config beside it.

    A string that is not an existing local path but looks like ``owner/name[@revision]`` is a Hub
    repo: its adapter files are fetched through huggingface_hub's cache (a local path always wins).
    """
    hub = hub_reference(path)
    path = download_adapter(*hub) if hub is not None else Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            if (path / "adapter_model.bin").exists():
                raise InputError(f"{path / 'adapter_model.bin'}: pickled .bin adapters are not read; save it with safe_serialization=True")
            raise InputError(f"{path}: no {WEIGHTS_NAME} in this folder")
        config = path / CONFIG_NAME
    else:
        weights = path
        config = path.parent / CONFIG_NAME
    if not config.exists():
        raise InputError(f"{weights}: no {CONFIG_NAME} beside it (needed for lora_alpha, r and the target modules)")
    return config, weights


def load_deltas(
    path: str | Path, base: str | Path | None = None, include: list[str] | None = None, exclude: list[str] | None = None,
    drop_unselected: bool = False,
) -> AdapterDeltas:
    """Read any supported adapter (PEFT LoRA, wavecompress output), local or a Hub repo id, into layer deltas.

    Hub inputs get the source ``hf://owner/name@commit``. A ``license`` from the model card beside the
    adapter is added to the in-memory config when the config has none, so the output card keeps it.

    ``base`` is the base model's weights (needed by DoRA; with a model checkpoint as ``path`` it makes
    a full fine-tune, ΔW = W_path − W_base). ``include``/``exclude`` regexes select the layers to convert;
    the others are kept exactly (``kept``), or dropped with ``drop_unselected``.
    """
    local = _read_local_kind(path, base, include, exclude, drop_unselected)
    if local is not None:
        return local
    if include or exclude:
        return filter_layers(load_deltas(path, base=base), include, exclude, drop_unselected)
    hub = hub_reference(path)
    config_path, _ = locate_adapter(path)
    deltas = _read_adapter(config_path.parent if hub is not None else path, base)
    if hub is not None:
        deltas.source = f"hf://{hub[0]}@{config_path.parent.name}"  # the snapshot folder is named by commit
    if not deltas.config.get("license"):
        license_ = card_license(config_path.parent / CARD_NAME)
        if license_:
            deltas.config["license"] = license_
    return deltas


def read_input(input_path: str | Path | None, base: str | Path | None = None, tuned: str | Path | None = None,
               include: tuple[str, ...] | list[str] = (), exclude: tuple[str, ...] | list[str] = (),
               drop_unselected: bool = False) -> tuple[Path, Path | AdapterDeltas]:
    """(the path that names the output, what to compress) from INPUT / --base / --tuned / --include /
    --exclude / --drop-unselected.

    A plain adapter path stays a path (read later, lazily); anything that needs the base model or a
    layer selection is read here.
    """
    if tuned is not None:
        if input_path is not None:
            raise InputError(f"give either INPUT ({input_path}) or --tuned ({tuned}), not both")
        if base is None:
            raise InputError(f"--tuned {tuned} needs --base: a full fine-tune's delta is W_tuned − W_base")
        return Path(tuned), read_full_finetune(base, tuned, list(include), list(exclude), drop_unselected)
    if input_path is None:
        raise InputError("missing INPUT (an adapter) or --base BASE --tuned TUNED (a full fine-tune)")
    if base is None and not include and not exclude:
        return Path(input_path), Path(input_path)
    return Path(input_path), load_deltas(input_path, base=base, include=list(include), exclude=list(exclude),
                                         drop_unselected=drop_unselected)


def _read_local_kind(
    path: str | Path, base: str | Path | None, include: list[str] | None, exclude: list[str] | None,
    drop_unselected: bool = False,
) -> AdapterDeltas | None:
    """Inputs without adapter_config.json: a model checkpoint with ``base`` (full fine-tune), or a
    single-file kohya / LyCORIS / diffusers LoRA. None when ``path`` is something else."""
    local = Path(path)
    if not local.exists():
        return None
    has_config = (local / CONFIG_NAME).exists() if local.is_dir() else (local.parent / CONFIG_NAME).exists()
    if has_config:
        return None
    if local.is_dir() and (local / DIFFUSERS_WEIGHTS_NAME).is_file():  # a diffusers LoRA folder (save_lora_weights)
        local = local / DIFFUSERS_WEIGHTS_NAME
    if local.is_file() and local.suffix == ".safetensors" and is_single_file_lora(local):
        refuse_peft_without_config(local)
        deltas = read_kohya(local)
        return filter_layers(deltas, include, exclude, drop_unselected) if include or exclude else deltas
    if base is not None:
        return read_full_finetune(base, local, include, exclude, drop_unselected)
    if local.is_dir() and ((local / "model.safetensors").exists() or (local / "model.safetensors.index.json").exists()):
        raise InputError(f"{local}: a full model checkpoint, not an adapter; pass --base BASE to convert the fine-tune W − W_base")
    return None


def _read_adapter(path: str | Path, base: str | Path | None = None) -> AdapterDeltas:
    config_path, weights_path = locate_adapter(path)
    config = read_json(config_path)
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise InputError(f"{config_path}: peft_type is {json.dumps(peft_type)[:60]}; expected a string such as \"LORA\"")
    if peft_type == LORA:
        return read_peft_lora(config, weights_path, base)
    if peft_type in PEFT_LYCORIS_TYPES:
        return read_peft_lycoris(config, weights_path)
    if peft_type == WAVEFT:
        return read_peft_waveft(config, weights_path, base)
    if decoder_of(peft_type) is not None:  # a registered method's own format (stock types are read above)
        return read_wavecompress_adapter(config, weights_path)
    raise InputError(f"{config_path}: unsupported peft_type {peft_type!r} (supported: LORA and wavecompress outputs)")


__all__ = ["AdapterDeltas", "Checkpoint", "LayerDelta", "LazyLayers", "SkippedLayer", "load_deltas", "locate_adapter",
           "read_full_finetune", "read_input", "read_kohya"]
