"""Layers kept exactly as they came (not selected by --include/--exclude): stored, not compressed.

A factored layer keeps its factors (``kept_B`` d_out×r with the scaling folded in, ``kept_A`` r×d_in), a
dense one its ΔW (``kept_delta``). Inside a WAVECOMPRESS_* output the layer's metadata says ``"kept"``, so
every reader, PEFT and the fine-tune rebuild it with this module; a LoRA output stores the same layer as a
plain LoRA layer (:func:`as_lora`).
"""

from __future__ import annotations

import torch

from ..deltas.kept_layers import KEY, as_delta  # noqa: F401 - the reading side, re-exported
from ..deltas.layer_delta import LayerDelta
from .compressed_layer import CompressedLayer
from .options import MethodOptions
from .registry import Method, register_method

NAME = "kept"


def _layer(delta: LayerDelta, method: str, tensors: dict[str, torch.Tensor], meta: dict) -> CompressedLayer:
    values = sum(t.numel() for t in tensors.values())
    return CompressedLayer(name=delta.name, shape=delta.shape, method=method, tensors=tensors, meta=meta,
                           stored_values=values, index_values=0, error_sq=0.0, energy=delta.energy(), budget=values)


def compress(delta: LayerDelta, budget: int = 0, options: MethodOptions | None = None) -> CompressedLayer:
    """The layer exactly: its factors when factored, else its dense ΔW (``budget`` is ignored)."""
    if delta.is_factored:
        tensors = {"kept_A": delta.right.contiguous(), "kept_B": delta.left.contiguous()}
        return _layer(delta, NAME, tensors, {KEY: "factors", "rank": int(delta.left.shape[1])})
    return _layer(delta, NAME, {"kept_delta": delta.to_dense().contiguous()}, {KEY: "dense"})


def as_lora(delta: LayerDelta) -> CompressedLayer:
    """The layer exactly, as a plain LoRA layer (scaling 1): its own factors, or for a dense ΔW the
    exact factorisation ΔW·I (or I·ΔW) at rank min(d_out, d_in)."""
    if delta.is_factored:
        left, right = delta.left, delta.right
    elif delta.shape[0] <= delta.shape[1]:
        left, right = torch.eye(delta.shape[0]), delta.to_dense()
    else:
        left, right = delta.to_dense(), torch.eye(delta.shape[1])
    tensors = {"lora_A.weight": right.contiguous(), "lora_B.weight": left.contiguous()}
    return _layer(delta, "lora", tensors, {"rank": int(left.shape[1]), KEY: "factors" if delta.is_factored else "dense"})


def reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    if "kept_delta" in tensors:
        return tensors["kept_delta"].float()
    return tensors["kept_B"].float() @ tensors["kept_A"].float()


def apply(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """``x @ ΔWᵀ``: through the factors (x Aᵀ) Bᵀ when factored, else the stored ΔW."""
    if "kept_delta" in tensors:
        return torch.nn.functional.linear(x, tensors["kept_delta"].to(x.dtype))
    return (x @ tensors["kept_A"].to(x.dtype).T) @ tensors["kept_B"].to(x.dtype).T


def method_of(adapter_method: str, meta: dict) -> str:
    """The method that rebuilds one layer of an output: ``kept`` for kept layers, else the adapter's."""
    return NAME if KEY in meta else adapter_method


# Not chosen with --method: the per-layer method of layers --include/--exclude leave unselected.
METHOD = register_method(Method(
    name=NAME,
    peft_type="WAVECOMPRESS_KEPT",
    compress=compress,
    reconstruct=reconstruct,
    tensor_keys=("kept_A", "kept_B", "kept_delta"),
    apply=apply,
    output=False,
    description="unselected layers stored exactly as they came",
))
