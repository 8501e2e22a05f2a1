"""Output precision: stored float tensors rounded to float32, bfloat16 or float16, errors from what is stored.

``--dtype auto`` keeps each layer's input dtype (a bf16 LoRA gives bf16 outputs, a float32 one
float32). Rounding happens after a method has chosen its values; the layer's ``error_sq`` is then
recomputed against the rounded tensors exactly: for a top-k layer in an orthonormal basis (waveft,
sparse) it is the dropped energy plus Σ(v − round(v))²; for LoRA factors of a factored delta it
comes from r×r Gram matrices, likewise for a method whose ΔŴ is a low-rank product (WaRA's
``low_rank_factors``); otherwise from the dense ΔŴ rebuilt from the rounded tensors,
row block by row block in float64. Integer tensors (indices, permutations) are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from ..deltas.layer_delta import LayerDelta
from ..errors import InputError
from .compressed_layer import CompressedLayer

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
# Spellings of input dtypes (torch names, safetensors codes) → our names; anything else → float32.
_INPUT_NAMES = {"float32": "float32", "f32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "f16": "float16", "half": "float16", "float64": "float32", "f64": "float32"}
_ROW_BLOCK = 1 << 22  # elements per block of the dense error


def validate_dtype(choice: str | None) -> str:
    """``choice`` if it is one of DTYPE_CHOICES (None → auto), else InputError naming --dtype."""
    choice = "auto" if choice is None else str(choice).replace("torch.", "")
    if choice not in DTYPE_CHOICES:
        raise InputError(f"unknown --dtype {choice!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return choice


def layer_dtype(choice: str, delta: LayerDelta) -> torch.dtype:
    """The stored float dtype for ``delta``: the choice, or with ``auto`` the layer's input dtype."""
    if choice != "auto":
        return DTYPES[choice]
    name = str(delta.info.get("dtype", "float32")).replace("torch.", "").lower()
    return DTYPES[_INPUT_NAMES.get(name, "float32")]


def value_bytes(method: str, options, delta: LayerDelta) -> int:
    """Bytes one more stored value of ``method`` costs on ``delta``: the value in its stored dtype,
    plus a uint16 gap code for a top-k method (methods/index_codec.py; escapes aside)."""
    from . import get_method

    return layer_dtype(options.dtype, delta).itemsize + (2 if get_method(method).indices_key else 0)


def _topk_rounding_sq(layer: CompressedLayer, values_key: str, rounded: torch.Tensor) -> float:
    values = layer.tensors[values_key].double()
    return float((values - rounded.double()).square().sum())


def _lora_error_sq(delta: LayerDelta, b: torch.Tensor, a: torch.Tensor) -> float:
    """‖L R − B A‖² from Gram matrices (delta factored as L R; float64)."""
    left, right, b, a = delta.left.double(), delta.right.double(), b.double(), a.double()
    own = float(((left.T @ left) * (right @ right.T)).sum())
    cross = float(((left.T @ b) * (right @ a.T)).sum())
    kept = float(((b.T @ b) * (a @ a.T)).sum())
    return max(own - 2.0 * cross + kept, 0.0)


def _dense_error_sq(delta: LayerDelta, rebuilt: torch.Tensor) -> float:
    """‖ΔW − ΔŴ‖² in float64, one row block at a time."""
    step = max(1, _ROW_BLOCK // max(1, delta.shape[1]))
    total = 0.0
    for start in range(0, delta.shape[0], step):
        stop = min(delta.shape[0], start + step)
        rows = delta.dense[start:stop] if delta.dense is not None else delta.left[start:stop] @ delta.right
        total += float((rows.double() - rebuilt[start:stop].double()).square().sum())
    return total


def round_layer(
    layer: CompressedLayer, dtype: torch.dtype, delta: LayerDelta,
    reconstruct: Callable[[dict[str, torch.Tensor], dict, tuple[int, int]], torch.Tensor],
    values_key: str | None = None,
    low_rank_factors: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> CompressedLayer:
    """``layer`` with its float tensors stored in ``dtype`` and ``error_sq`` measured from them.

    ``values_key`` names a top-k layer's values in an orthonormal basis (exact shortcut);
    ``reconstruct`` is the method's own, used when no shortcut applies.
    """
    floats = {key: t for key, t in layer.tensors.items() if t.is_floating_point()}
    if not floats or all(t.dtype == dtype for t in floats.values()):
        return layer
    tensors = {key: (t.to(dtype) if t.is_floating_point() else t) for key, t in layer.tensors.items()}
    for key in floats:
        if not bool(torch.isfinite(tensors[key]).all()):
            raise InputError(f"layer {layer.name}: {key} overflows {str(dtype).replace('torch.', '')}; "
                             "use --dtype float32 or bfloat16")
    if values_key is not None and values_key in tensors:
        error_sq = layer.error_sq + _topk_rounding_sq(layer, values_key, tensors[values_key])
    elif delta.is_factored and set(floats) == {"lora_A.weight", "lora_B.weight"}:
        error_sq = _lora_error_sq(delta, tensors["lora_B.weight"], tensors["lora_A.weight"])
    elif delta.is_factored and low_rank_factors is not None:
        error_sq = _lora_error_sq(delta, *low_rank_factors(tensors, layer.meta, layer.shape))
    else:
        error_sq = _dense_error_sq(delta, reconstruct(tensors, layer.meta, layer.shape).float())
    return replace(layer, tensors=tensors, error_sq=error_sq, notes=list(layer.notes))


def stored_layer(layer: CompressedLayer, delta: LayerDelta, dtype_choice: str, refit: bool = False) -> CompressedLayer:
    """``layer`` (fresh from its method) as it will be stored under ``--dtype dtype_choice``.

    ``refit``: the values were refitted (activation-aware), so the top-k shortcut does not apply.
    """
    from . import get_method

    method = get_method(layer.method)
    key = method.values_key if method.orthonormal_values and not refit else None
    return round_layer(layer, layer_dtype(dtype_choice, delta), delta, method.reconstruct, key, method.low_rank_factors)
