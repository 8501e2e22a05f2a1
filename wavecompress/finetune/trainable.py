"""The student: each compressed layer's float tensors as trainable parameters, its ΔŴ on demand.

Generic over methods: every floating-point stored tensor (top-k values, WaRA factors, LoRA
factors) is an ``nn.Parameter``; every integer tensor (coefficient indices, row/column
permutations) is a fixed buffer. ΔŴ comes from the method's own ``reconstruct`` (torch ops, so
autograd reaches the parameters), except for Haar top-k layers on CUDA, where the fused Triton
synthesis of :mod:`wavecompress.kernels` computes the same matrix in one pass.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..deltas.shared_tensors import SHARED_TENSORS
from ..errors import InputError
from ..kernels import select_backend, sparse_haar_synthesis
from ..methods import CompressedLayer, get_method
from ..methods.index_codec import GAPS_SUFFIX, PLAIN_SUFFIX, stored_indices

KERNEL_CHOICES = ("auto", "triton", "torch", "off")
_HAAR = ("db1", "haar")
_PERMUTATIONS = {"reorder_rows", "reorder_cols"}
# Metadata a fused layer may carry: SHARED_TENSORS names the layer storing a shared permutation;
# "stored_tensors" (the config's tensor specs, present on layers read from a folder) says nothing about ΔŴ.
_FUSED_META = {"wavelet", "levels", "reorder", SHARED_TENSORS, "stored_tensors"}


def _index_prefix(method) -> str:
    """``waveft`` for ``waveft_index_gaps`` / ``waveft_indices``: the prefix of the gap-coded and plain index keys."""
    return method.indices_key.removesuffix(GAPS_SUFFIX).removesuffix(PLAIN_SUFFIX)


def _check_permutation(perm: torch.Tensor, n: int, label: str) -> None:
    flat = perm.long().reshape(-1)
    if flat.numel() != n or not torch.equal(torch.sort(flat).values, torch.arange(n, device=flat.device)):
        raise InputError(f"layer tensor {label}: not a permutation of range({n})")


def fused_eligible(layer: CompressedLayer) -> bool:
    """Whether ``layer`` is a Haar top-k layer the fused synthesis reproduces exactly."""
    method = get_method(layer.method)
    if not method.fused_synthesis:
        return False
    index_keys = {_index_prefix(method) + GAPS_SUFFIX, _index_prefix(method) + PLAIN_SUFFIX}  # gap-coded, or plain (earlier files)
    return (
        layer.meta.get("wavelet") in _HAAR
        and method.values_key in layer.tensors
        and any(key in layer.tensors for key in index_keys)
        and set(layer.tensors) <= {method.values_key, *index_keys, *_PERMUTATIONS}
        and set(layer.meta) <= _FUSED_META
    )


class TrainableDelta(nn.Module):
    """One layer: float stored tensors as parameters, integer ones as buffers; ``forward()`` → ΔŴ."""

    def __init__(self, layer: CompressedLayer, kernels: str = "auto") -> None:
        super().__init__()
        self.name, self.shape, self.method, self.meta = layer.name, tuple(layer.shape), layer.method, dict(layer.meta)
        self.keys = sorted(layer.tensors)
        self.dtypes = {key: layer.tensors[key].dtype for key in self.keys}
        self.values = nn.ParameterList()
        self.slots: dict[str, tuple[str, int | str]] = {}
        for key in self.keys:
            tensor = layer.tensors[key].detach()
            if tensor.is_floating_point():
                self.slots[key] = ("param", len(self.values))
                self.values.append(nn.Parameter(tensor.float().clone()))
            else:
                buffer = f"fixed_{len(self.slots)}"
                self.slots[key] = ("buffer", buffer)
                self.register_buffer(buffer, tensor.clone())
        self.kernels = kernels
        method = get_method(layer.method)
        self.fused = kernels != "off" and fused_eligible(layer)
        if self.fused:
            for key, axis in (("reorder_rows", 0), ("reorder_cols", 1)):
                if key in layer.tensors:
                    _check_permutation(layer.tensors[key], self.shape[axis], f"{layer.name}.{key}")
            # The kernel reads int flat indices: decode the stored (possibly gap-coded) ones once.
            self.register_buffer("fused_indices", stored_indices(layer.tensors, _index_prefix(method)), persistent=False)
            self.values_key = method.values_key
        self._reconstruct = method.reconstruct

    def tensors(self) -> dict[str, torch.Tensor]:
        """{stored key: parameter or buffer}, as the method's ``reconstruct`` expects them."""
        out = {}
        for key, (kind, slot) in self.slots.items():
            out[key] = self.values[slot] if kind == "param" else getattr(self, slot)
        return out

    def backend(self, device: torch.device) -> str | None:
        """The fused synthesis backend for this layer on ``device``, or None for ``reconstruct``."""
        if not self.fused:
            return None
        if self.kernels == "auto":
            return "triton" if select_backend(device) == "triton" else None
        return self.kernels

    def forward(self) -> torch.Tensor:
        tensors = self.tensors()
        device = tensors[self.keys[0]].device
        backend = self.backend(device)
        if backend is not None:
            return sparse_haar_synthesis(
                tensors[self.values_key], self.fused_indices, self.shape, tuple(self.meta["levels"]),
                tensors.get("reorder_rows"), tensors.get("reorder_cols"), backend=backend,
            )
        # Every method's reconstruct allocates on its stored tensors' device (no torch.device() mode:
        # that intercepts every op in Python, a measurable cost per training step).
        return self._reconstruct(tensors, self.meta, self.shape)

    def to_layer(self, template: CompressedLayer) -> CompressedLayer:
        """``template`` with its stored tensors replaced by the current values (CPU, original dtypes)."""
        tensors = {key: value.detach().to("cpu", self.dtypes[key]).contiguous() for key, value in self.tensors().items()}
        return replace(template, tensors=tensors, meta=dict(template.meta), notes=list(template.notes))


class StudentDeltas(nn.Module):
    """All trainable layers of a compressed adapter, by module name."""

    def __init__(self, layers: list[CompressedLayer], kernels: str = "auto") -> None:
        super().__init__()
        if kernels not in KERNEL_CHOICES:
            raise InputError(f"unknown kernels option {kernels!r}; choose one of {', '.join(KERNEL_CHOICES)}")
        self.layers = nn.ModuleList(TrainableDelta(layer, kernels) for layer in layers if layer.tensors)
        self.names = [layer.name for layer in self.layers]

    def materialize(self) -> dict[str, torch.Tensor]:
        """{module name: ΔŴ} with autograd to the stored values."""
        return {layer.name: layer() for layer in self.layers}

    @property
    def trainable_values(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
