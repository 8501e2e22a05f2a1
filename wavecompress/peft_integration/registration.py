"""Register wavecompress's own adapter types with PEFT (config class, tuner, key prefix per peft_type)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_registered = False


def register() -> None:
    """Register every wavecompress-format method's peft_type, config class and tuner with PEFT,
    now and for methods registered later (idempotent)."""
    global _registered
    if _registered:
        return
    from ..methods.registry import on_register

    _registered = True
    on_register(_register_method)


def _register_method(method: Any) -> None:
    """Make PEFT load ``method``'s own peft_type (stock PEFT formats need nothing)."""
    if method.stock_peft:
        return
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    from .config import config_class
    from .model import PREFIX, WavecompressModel

    PEFT_TYPE_TO_CONFIG_MAPPING[method.peft_type] = config_class(method.peft_type, method.description)
    PEFT_TYPE_TO_TUNER_MAPPING[method.peft_type] = WavecompressModel
    PEFT_TYPE_TO_PREFIX_MAPPING[method.peft_type] = PREFIX


def load_peft_model(model: Any, path: str | Path, **kwargs: Any) -> Any:
    """``PeftModel.from_pretrained(model, path, **kwargs)`` after registering: the one-line loader."""
    register()
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), **kwargs)
