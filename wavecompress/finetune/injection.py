"""Add a layer update to a frozen base model without touching its weights: forward hooks.

For each adapted module (``nn.Linear``, or transformers' ``Conv1D`` whose weight is stored
transposed) a hook adds ``x @ ΔWᵀ`` to the module's output. The hooks serve the teacher (the
original adapter, kept factored: ``(x @ Aᵀ) @ (sB)ᵀ``) and, under gradient checkpointing, the
student (a dense ΔŴ formed once per step); otherwise the student runs with ``merged_weights``
(W + ΔŴ, one matmul per layer). One copy of the base model serves both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..deltas import LayerDelta
from ..errors import InputError

Update = Callable[[torch.Tensor], torch.Tensor]


def module_shape(module: nn.Module, name: str) -> tuple[int, int]:
    """(d_out, d_in) of a Linear or transformers Conv1D module, else InputError."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):  # weight stored (d_in, d_out): fan_in_fan_out
        return module.weight.shape[1], module.weight.shape[0]
    raise InputError(f"module {name} of the base model is a {type(module).__name__}; only Linear and Conv1D layers are fine-tuned")


def dense_update(delta: torch.Tensor) -> Update:
    """x ↦ x @ ΔWᵀ for a dense ΔW (cast to the activations' dtype)."""
    return lambda x: F.linear(x, delta.to(x.dtype))


def layer_update(delta: LayerDelta, device: torch.device) -> Update:
    """x ↦ x @ ΔWᵀ for a reader's LayerDelta, factored when it is (never forms B @ A)."""
    if delta.is_factored:
        left, right = delta.left.to(device), delta.right.to(device)
        return lambda x: F.linear(F.linear(x, right.to(x.dtype)), left.to(x.dtype))
    return dense_update(delta.dense.to(device))


class DeltaInjector:
    """Forward hooks on the named modules; :meth:`use` activates one set of updates at a time."""

    def __init__(self, model: nn.Module, shapes: dict[str, tuple[int, int]]) -> None:
        self.active: dict[str, Update] | None = None
        self.handles = []
        self.modules: dict[str, nn.Module] = {}
        for name, shape in shapes.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise InputError(f"the base model has no module {name} (is it the model the adapter was trained on?)") from None
            found = module_shape(module, name)
            if found != tuple(shape):
                raise InputError(f"module {name}: the adapter's ΔW is {shape[0]}×{shape[1]} but the base layer is {found[0]}×{found[1]}")
            self.modules[name] = module
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def merged_weights(self, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"<module>.weight": W + ΔŴ} in each module's own layout, for ``torch.func.functional_call``.

        One matmul per layer instead of two (base + update): the cheaper way to run the student
        when no activation checkpointing re-runs the forward outside the call.
        """
        out = {}
        for name, delta in deltas.items():
            module = self.modules[name]
            weight = module.weight
            update = delta if isinstance(module, nn.Linear) else delta.T
            out[f"{name}.weight"] = weight + update.to(weight.dtype)
        return out

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            update = self.active.get(name) if self.active is not None else None
            if update is None:
                return None
            return output + update(args[0]).to(output.dtype)

        return hook

    @contextlib.contextmanager
    def use(self, updates: dict[str, Update]) -> Iterator[None]:
        """Run the model with ``updates`` added (modules not in it run as the base)."""
        previous, self.active = self.active, updates
        try:
            yield
        finally:
            self.active = previous

    def remove(self) -> None:
        """Detach every hook: the model is the plain base model again."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
