"""Output precision: rounded tensors, errors measured from exactly what is stored."""

from __future__ import annotations

import pytest
import torch

from wavecompress.deltas.layer_delta import LayerDelta
from wavecompress.errors import InputError
from wavecompress.methods import MethodOptions, get_method
from wavecompress.methods.precision import layer_dtype, round_layer, validate_dtype

VALUES_KEY = {"waveft": "waveft_spectrum", "sparse": "sparse_values"}


def _delta(factored: bool) -> LayerDelta:
    gen = torch.Generator().manual_seed(3)
    left, right = torch.randn(48, 6, generator=gen), torch.randn(6, 80, generator=gen) / 10
    if factored:
        return LayerDelta.from_factors("layer", left, right, dtype="bfloat16")
    return LayerDelta.from_dense("layer", left @ right + 0.01 * torch.randn(48, 80, generator=gen), dtype="bf16")


@pytest.mark.parametrize("factored", [True, False])
@pytest.mark.parametrize("method", ["waveft", "sparse", "lora", "wara"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rounded_error_equals_error_of_stored_tensors(method, factored, dtype):
    delta = _delta(factored)
    spec = get_method(method)
    kept = spec.compress(delta, 700, MethodOptions(reorder="greedy" if method in ("waveft", "wara") else None))
    rounded = round_layer(kept, dtype, delta, spec.reconstruct, VALUES_KEY.get(method))
    floats = [t for t in rounded.tensors.values() if t.is_floating_point()]
    assert floats and all(t.dtype == dtype for t in floats)
    rebuilt = spec.reconstruct(rounded.tensors, rounded.meta, rounded.shape).double()
    truth = float((delta.to_dense().double() - rebuilt).square().sum())
    assert rounded.error_sq == pytest.approx(truth, rel=1e-6, abs=1e-9)
    assert rounded.error_sq > kept.error_sq  # rounding costs something on these values
    assert rounded.stored_bytes < kept.stored_bytes  # and saves bytes


def test_auto_keeps_the_input_dtype_and_float32_is_untouched():
    delta = _delta(True)
    assert layer_dtype("auto", delta) == torch.bfloat16
    assert layer_dtype("auto", LayerDelta.from_dense("d", torch.ones(2, 2))) == torch.float32
    assert layer_dtype("float16", delta) == torch.float16
    kept = get_method("waveft").compress(delta, 100, MethodOptions())
    assert round_layer(kept, torch.float32, delta, get_method("waveft").reconstruct, "waveft_spectrum") is kept
    with pytest.raises(InputError, match="--dtype"):
        validate_dtype("int8")


def test_float16_overflow_is_refused_with_the_layer_name():
    delta = LayerDelta.from_dense("big", torch.full((4, 4), 1e6))
    kept = get_method("sparse").compress(delta, 4, MethodOptions())
    with pytest.raises(InputError, match="big: sparse_values overflows float16"):
        round_layer(kept, torch.float16, delta, get_method("sparse").reconstruct, "sparse_values")
