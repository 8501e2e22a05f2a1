"""Load wavecompress adapters (WAVECOMPRESS_WAVEFT, WAVECOMPRESS_WARA, any registered method's own
peft_type) with ``PeftModel.from_pretrained``.

``import wavecompress`` arranges registration with PEFT's registries the moment ``peft`` is
imported (or at once if it already is), so::

    import wavecompress
    from peft import PeftModel
    model = PeftModel.from_pretrained(base_model, "out/wara")   # merge_and_unload() works too

``register()`` does it explicitly. Stock PEFT without wavecompress does not know these peft_types
and refuses the files with an error instead of loading values at the wrong places.
"""

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


from .loader import LOADING_HINT, load_adapter  # noqa: E402 - after register, which it uses

__all__ = ["LOADING_HINT", "load_adapter", "load_peft_model", "register"]
