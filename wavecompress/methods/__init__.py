"""Compression methods. Each module builds one :class:`~.registry.Method` (``compress(delta, budget,
options)``, ``reconstruct(tensors, meta, shape)``, flags, curve, card snippet) and registers it once;
look one up with :func:`get_method`. Methods never touch files."""

from __future__ import annotations

# Registration order is the order of CLI choices and report columns.
from . import waveft_topk  # noqa: I001
from . import wara
from . import lora_svd
from . import sparse
from . import waveft_seeded
from . import kept
from .compressed_layer import CompressedLayer
from .options import MethodOptions
from .registry import ActivationAware, Method, all_methods, get_method, method_names, method_of_peft_type, register_method

# Reported beside every output at the same budget, unless the caller names others.
BASELINES = method_names(baseline=True)


def __getattr__(name: str):
    if name == "METHODS":  # {name: Method}, live (includes methods registered later)
        return {m.name: m for m in all_methods()}
    raise AttributeError(name)


__all__ = ["BASELINES", "ActivationAware", "CompressedLayer", "Method", "MethodOptions", "all_methods",
           "get_method", "method_names", "method_of_peft_type", "register_method"]
