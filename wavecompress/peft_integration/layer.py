"""PEFT tuner layer for wavecompress adapters: ΔŴ comes from the method's own ``reconstruct``.

Each adapter's tensors live in one small module (``wavecompress_tensors[adapter]``) under their
stored names: float tensors as trainable Parameters, integer tensors (indices, permutations) as
buffers. The layer never interprets them; ``reconstruct(tensors, meta, shape)`` does, so any tensor
a method stores (row/column permutations included) works without code here.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils.other import transpose

TENSORS_ATTR = "wavecompress_tensors"


class StoredTensors(nn.Module):
    """One adapter's stored tensors for one layer, registered under their stored names."""

    def __init__(self, specs: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        for key, spec in sorted(specs.items()):
            if not key.isidentifier() or hasattr(nn.Module, key):
                raise ValueError(f"stored tensor name {key!r} cannot be a module attribute")
            dtype = getattr(torch, str(spec["dtype"]).replace("torch.", ""))
            empty = torch.zeros([int(v) for v in spec["shape"]], dtype=dtype)
            if empty.is_floating_point():
                self.register_parameter(key, nn.Parameter(empty))
            else:
                self.register_buffer(key, empty)

    def as_dict(self) -> dict[str, torch.Tensor]:
        out = dict(self.named_parameters(recurse=False))
        out.update(self.named_buffers(recurse=False))
        return out


class WavecompressLayer(BaseTunerLayer):
    """Shared state of a wavecompress-adapted Linear or Conv1D layer."""

    adapter_layer_names = (TENSORS_ATTR,)
    other_param_names = ("wavecompress_method", "wavecompress_meta")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.wavecompress_tensors = nn.ModuleDict({})
        self.wavecompress_method: dict[str, str] = {}
        self.wavecompress_meta: dict[str, dict[str, Any]] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._delta_cache: dict[str, tuple[tuple, torch.Tensor]] = {}
        # "auto": the dense-free forward where the cost model finds it cheaper; "on"/"off" force it (tests, benchmarks).
        self.fast_forward = "auto"
        # {adapter: {tensor key: the layer that stores it}}: tensors shared with (stored by) another
        # layer, e.g. a column permutation q/k/v share (deltas/shared_tensors.py). A plain dict, so
        # the lender is not registered as a submodule (its tensors are saved once, by itself).
        self._lenders: dict[str, dict[str, "WavecompressLayer"]] = {}
        self.kwargs = kwargs
        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            self.in_features, self.out_features = base.in_features, base.out_features
        elif isinstance(base, Conv1D):
            weight = base.weight
            self.in_features, self.out_features = weight.ds_shape if hasattr(weight, "ds_shape") else weight.shape
        elif isinstance(base, nn.modules.conv._ConvNd) and not base.transposed:
            # A convolution's ΔW is its (c_out, c_in/groups·kh·kw) matrix (deltas/conv.py).
            self.out_features, self.in_features = base.weight.shape[0], base.weight[0].numel()
        else:
            raise TypeError(f"wavecompress adapters apply to nn.Linear, transformers Conv1D and convolutions, not {type(base).__name__}")

    def update_layer(self, adapter_name: str, method: str, meta: dict[str, Any], specs: dict[str, dict[str, Any]],
                     inference_mode: bool = False) -> None:
        """Create empty stored tensors for ``adapter_name``; PEFT then loads the saved values into them."""
        shape = tuple(int(v) for v in meta["shape"])
        if shape != (self.out_features, self.in_features):
            raise ValueError(
                f"adapter layer shape {shape[0]}×{shape[1]} does not match the model's "
                f"{self.out_features}×{self.in_features} (d_out×d_in): wrong base model?"
            )
        self.wavecompress_tensors[adapter_name] = StoredTensors(specs)
        self.wavecompress_method[adapter_name] = method
        self.wavecompress_meta[adapter_name] = dict(meta)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def borrow(self, adapter: str, key: str, lender: "WavecompressLayer") -> None:
        """Use ``lender``'s stored tensor ``key`` of ``adapter`` as this layer's own."""
        self._lenders.setdefault(adapter, {})[key] = lender

    def stored_tensors(self, adapter: str) -> dict[str, torch.Tensor]:
        """{stored key: tensor} of ``adapter``, borrowed ones included, as ``reconstruct`` expects them."""
        tensors = self.wavecompress_tensors[adapter].as_dict()
        for key, lender in self._lenders.get(adapter, {}).items():
            tensors[key] = getattr(lender.wavecompress_tensors[adapter], key)
        return tensors

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """ΔŴ (d_out × d_in, float32) of ``adapter`` from the method's ``reconstruct``."""
        from ..methods import get_method

        tensors = self.stored_tensors(adapter)
        key = tuple((name, id(t), t._version, t.device) for name, t in sorted(tensors.items()))
        cacheable = not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors.values())
        cached = self._delta_cache.get(adapter)
        if cacheable and cached is not None and cached[0] == key:
            return cached[1]
        meta = self.wavecompress_meta[adapter]
        shape = (self.out_features, self.in_features)
        delta = get_method(self.wavecompress_method[adapter]).reconstruct(tensors, meta, shape)
        delta = delta.to(self.get_base_layer().weight.device)
        if cacheable:
            self._delta_cache[adapter] = (key, delta.detach())
        else:
            self._delta_cache.pop(adapter, None)
        return delta

    def delta_cached(self, adapter: str) -> bool:
        """Whether ``get_delta_weight(adapter)`` would return a cached ΔŴ now (no values training)."""
        tensors = self.stored_tensors(adapter)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
            return False
        cached = self._delta_cache.get(adapter)
        key = tuple((name, id(t), t._version, t.device) for name, t in sorted(tensors.items()))
        return cached is not None and cached[0] == key

    def uses_fast_forward(self, adapter: str, tokens: int) -> bool:
        """Whether ``adapter``'s forward takes the method's dense-free ``apply`` (transforms/apply.py) for
        ``tokens`` tokens: the method has one and the cost model finds it cheaper than x @ ΔŴᵀ."""
        from ..methods import get_method
        from ..transforms.apply import fast_is_cheaper

        method = get_method(self.wavecompress_method[adapter])
        if method.apply is None or self.fast_forward == "off":
            return False
        if self.fast_forward == "on":
            return True
        tensors = self.stored_tensors(adapter)
        stored = sum(t.numel() for t in tensors.values() if t.is_floating_point())
        meta = self.wavecompress_meta[adapter]
        return fast_is_cheaper((self.out_features, self.in_features), stored, tokens, meta.get("wavelet"),
                               self.delta_cached(adapter))

    def adapter_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """x ΔŴᵀ (float32, or float64 for float64 stored values) of ``adapter``: the dense-free forward
        when :meth:`uses_fast_forward`, else x @ ΔŴᵀ from ``get_delta_weight``."""
        from ..methods import get_method

        tokens = x.numel() // max(x.shape[-1], 1)
        if not self.uses_fast_forward(adapter, tokens):
            delta = self.get_delta_weight(adapter)
            return F.linear(self._cast_input_dtype(x, delta.dtype), delta)
        tensors = self.stored_tensors(adapter)
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors.values()) else torch.float32
        shape = (self.out_features, self.in_features)
        method = get_method(self.wavecompress_method[adapter])
        return method.apply(tensors, self.wavecompress_meta[adapter], shape, x.to(dtype))


class Linear(nn.Module, WavecompressLayer):
    """A Linear (or Conv1D, ``fan_in_fan_out``) layer plus wavecompress adapters: y = base(x) + x ΔŴᵀ."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, method: str, meta: dict[str, Any],
                 specs: dict[str, dict[str, Any]], fan_in_fan_out: bool = False, inference_mode: bool = False,
                 **kwargs: Any) -> None:
        super().__init__()
        WavecompressLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = fan_in_fan_out
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, method, meta, specs, inference_mode=inference_mode)

    def delta_as_weight(self, adapter: str) -> torch.Tensor:
        """ΔŴ of ``adapter`` laid out like the base weight (transposed for Conv1D)."""
        return transpose(self.get_delta_weight(adapter), self.fan_in_fan_out)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Add ΔŴ of the active (or given) adapters to the base weight."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for adapter in adapter_names:
            if adapter not in self.wavecompress_tensors:
                continue
            weight = self.get_base_layer().weight
            delta = self.delta_as_weight(adapter).to(weight.dtype)
            if safe_merge:
                merged = weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights; adapter {adapter} seems broken")
                weight.data = merged
            else:
                weight.data += delta
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtract every merged adapter's ΔŴ again."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.wavecompress_tensors:
                weight = self.get_base_layer().weight
                weight.data -= self.delta_as_weight(adapter).to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            result = self.base_layer(x, *args, **kwargs)
        elif self.merged:
            result = self.base_layer(x, *args, **kwargs)
        else:
            result = self.base_layer(x, *args, **kwargs)
            for adapter in self.active_adapters:
                if adapter not in self.wavecompress_tensors:
                    continue
                result = result + self.adapter_output(adapter, x).to(result.dtype)
        return result.to(previous_dtype)

    def __repr__(self) -> str:
        return "wavecompress." + super().__repr__()


class Conv(Linear):
    """A convolution (Conv1d/2d/3d) plus wavecompress adapters: y = base(x) + conv(x, ΔŴ reshaped to the kernel)
    (always the dense ΔŴ: the dense-free forward is for token × feature inputs)."""

    def delta_as_weight(self, adapter: str) -> torch.Tensor:
        return self.get_delta_weight(adapter).reshape(self.get_base_layer().weight.shape)

    def adapter_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        kernel = self.delta_as_weight(adapter)
        return base._conv_forward(self._cast_input_dtype(x, kernel.dtype), kernel, None)
