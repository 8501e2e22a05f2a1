"""Compression methods. Each module has ``NAME``, ``compress(delta, budget, options)`` and
``reconstruct(tensors, meta, shape)``; methods never touch files."""

from __future__ import annotations

from types import ModuleType

from ..errors import InputError
from . import lora_svd, sparse, wara, waveft_seeded, waveft_topk
from .compressed_layer import CompressedLayer
from .options import MethodOptions

METHODS: dict[str, ModuleType] = {m.NAME: m for m in (waveft_topk, wara, lora_svd, sparse, waveft_seeded)}
BASELINES = ("lora", "sparse")


def get_method(name: str) -> ModuleType:
    """The method module called ``name``, or InputError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None


__all__ = ["BASELINES", "METHODS", "CompressedLayer", "MethodOptions", "get_method"]
