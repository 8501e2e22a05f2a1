"""One ``Method`` object per compression method, registered once (as PEFT's ``register_peft_method``).

A method's module builds its :class:`Method` and calls :func:`register_method` at import;
everything else (CLI choices, output configs, model cards, rate-distortion curves, the
activation-aware variant, PEFT loading) looks the method up with :func:`get_method` and reads its
fields instead of comparing method names. Adding a method is one module plus its registration::

    from wavecompress.methods.registry import Method, register_method
    register_method(Method(name="toy", peft_type="WAVECOMPRESS_TOY", compress=..., reconstruct=...))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..deltas.decoders import register_decoder, unregister_decoder
from ..errors import InputError

if TYPE_CHECKING:
    from ..deltas.layer_delta import LayerDelta
    from .compressed_layer import CompressedLayer
    from .options import MethodOptions
    from .rate_distortion import RDCurve

Compress = Callable[["LayerDelta", int, "MethodOptions"], "CompressedLayer"]
Reconstruct = Callable[[dict[str, torch.Tensor], dict[str, Any], tuple[int, int]], torch.Tensor]
Apply = Callable[[dict[str, torch.Tensor], dict[str, Any], tuple[int, int], torch.Tensor], torch.Tensor]
CurveFn = Callable[["LayerDelta", "MethodOptions", int], "RDCurve"]

# The model card's method-specific loading block ({repo}: the output folder or Hub repo), shown
# after the one-call ``wavecompress.load_adapter`` block. Stock-PEFT methods give their own.
WAVECOMPRESS_CARD = """Or through PEFT directly (after `import wavecompress`, which registers the type), and the dense deltas:

```python
import wavecompress
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "{repo}")
dense_deltas = wavecompress.reconstruct("{repo}")  # {{module name: ΔW}}
```"""


@dataclass(frozen=True)
class ActivationAware:
    """A method's activation-aware variant (methods/activation_aware.py): minimises ‖(ΔW − ΔŴ) C^{1/2}‖.

    ``compress(delta, budget, options, gram)`` stores the same format as the plain method;
    ``gains(delta, options, gram)`` → (weighted error removed per step in the order the variant
    takes them, stored values per step, useful steps) for the activation-weighted curve.
    """

    compress: Callable[..., "CompressedLayer"]
    gains: Callable[..., tuple[torch.Tensor, int, int]]


@dataclass(frozen=True)
class Method:
    """Everything the package needs to know about one compression method.

    - ``name``: the ``--method`` value; ``peft_type``: the adapter_config ``peft_type`` it writes
      (``LORA``/``WAVEFT`` are stock PEFT formats, anything else a wavecompress format).
    - ``stock_peft``: unmodified PEFT loads the output (no ``import wavecompress`` needed).
    - ``tensor_keys``: suffixes of the stored tensors per layer (``reorder_rows``/``reorder_cols``
      come on top for reorderable methods); ``values_key``/``indices_key``: the top-k pair, if any.
    - ``compress(delta, budget, options)`` → CompressedLayer; ``reconstruct(tensors, meta, shape)``
      → dense ΔŴ (torch ops, differentiable in the float tensors).
    - ``rd_curve(delta, options, max_cost)`` → RDCurve, exact for the method; None: sampled from
      ``compress`` (methods/rate_distortion.py).
    - ``activation_aware``: an :class:`ActivationAware` variant, or None (compressed as usual).
    - ``reorderable``: rows/columns may be permuted first (the stored format carries permutations);
      ``wavelet``: uses ``--wavelet``/``--levels``; ``default_levels``/``default_levels_reordered``.
    - ``card_snippet``: the model card's loading code with ``{repo}``.
    - ``output``: ``convert --method`` may write it; ``baseline``: reported beside every output by
      default; ``auto``: a candidate of ``--method auto``; ``orthonormal_values``: see precision.py.
    """

    name: str
    peft_type: str
    compress: Compress
    reconstruct: Reconstruct
    stock_peft: bool = False
    tensor_keys: tuple[str, ...] = ()
    values_key: str | None = None
    indices_key: str | None = None
    rd_curve: CurveFn | None = None
    activation_aware: ActivationAware | None = None
    reorderable: bool = False
    wavelet: bool = False
    default_levels: int = 1
    default_levels_reordered: int = 1
    card_snippet: str = WAVECOMPRESS_CARD
    output: bool = True
    baseline: bool = False
    auto: bool = False
    description: str = ""
    # The plain method's values are coefficients of an orthonormal basis and its error is the dropped
    # energy, so rounding the values adds exactly Σ(v − round(v))² (methods/precision.py).
    orthonormal_values: bool = False
    # Top-k coefficients of the periodized wavelet transform (values_key/indices_key, optional row/column
    # permutations): with Haar, kernels/ synthesise ΔŴ from them directly (the fine-tune's fused path).
    fused_synthesis: bool = False
    # ``(tensors, meta, shape) -> (L, R)`` with ΔŴ = L @ R of small inner size (WaRA): the error of
    # rounded tensors then comes from Gram matrices, never a dense ΔŴ (methods/precision.py).
    low_rank_factors: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    # ``(tensors, meta, shape, x) -> x @ ΔŴᵀ`` without forming ΔŴ (transforms/apply.py), in x's dtype and
    # differentiable in x and the float tensors; None: the PEFT layer multiplies by the dense ΔŴ.
    apply: Apply | None = None

    # Compatibility with the former method modules (``get_method(name).NAME``).
    @property
    def NAME(self) -> str:  # noqa: N802
        return self.name


_METHODS: dict[str, Method] = {}
_LISTENERS: list[Callable[[Method], None]] = []


def register_method(method: Method, replace: bool = False) -> Method:
    """Announce ``method`` (once; ``replace=True`` swaps an existing one, e.g. in tests)."""
    if method.name in _METHODS and not replace:
        raise ValueError(f"method {method.name!r} is already registered")
    clash = [m.name for m in _METHODS.values()
             if m.peft_type == method.peft_type and m.name != method.name and not m.stock_peft]
    if clash and not method.stock_peft:
        raise ValueError(f"method {method.name!r}: peft_type {method.peft_type} is already written by {clash[0]!r}")
    _METHODS[method.name] = method
    register_decoder(method.peft_type, method.name, method.reconstruct, method.low_rank_factors)  # readers rebuild its outputs without importing it
    for listener in list(_LISTENERS):
        listener(method)
    return method


def unregister_method(name: str) -> None:
    """Forget method ``name`` (tests that register a toy method clean up with this)."""
    _METHODS.pop(name, None)
    unregister_decoder(name)


def on_register(listener: Callable[[Method], None]) -> None:
    """Call ``listener`` for every method registered so far and every one registered later."""
    _LISTENERS.append(listener)
    for method in list(_METHODS.values()):
        listener(method)


def get_method(name: str) -> Method:
    """The method called ``name``, or InputError listing the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(sorted(_METHODS))}") from None


def all_methods() -> list[Method]:
    """Every registered method, in registration order."""
    return list(_METHODS.values())


def method_names(**flags: bool) -> tuple[str, ...]:
    """Names of the registered methods whose fields equal ``flags`` (``method_names(output=True)``)."""
    return tuple(m.name for m in _METHODS.values() if all(getattr(m, key) == value for key, value in flags.items()))


def method_of_peft_type(peft_type: str | None) -> Method | None:
    """The method that writes ``peft_type`` (the first registered for a stock PEFT type), or None."""
    for method in _METHODS.values():
        if method.peft_type == peft_type:
            return method
    return None
