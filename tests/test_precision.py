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


FIXTURE = __import__("pathlib").Path(__file__).resolve().parent.parent / "fixtures" / "minilm-bbc-lora"


@pytest.mark.parametrize("method", ["waveft", "wara", "lora"])
def test_bf16_output_errors_and_bytes_are_those_of_the_file(method, tmp_path):
    from safetensors import safe_open

    import wavecompress as wc
    from wavecompress.layout import PREFIX

    source = wc.load_deltas(FIXTURE)
    result = wc.compress(source, budget=1000, method=method, dtype="bfloat16", baselines=("lora",))
    out = result.save(tmp_path / method)
    rebuilt = wc.reconstruct(out)
    report = result.report
    sizes: dict[str, int] = {}
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as handle:
        for key in handle.keys():
            tensor = handle.get_tensor(key)
            if tensor.is_floating_point() and "classifier" not in key:
                assert tensor.dtype == torch.bfloat16, key
            module = key[len(PREFIX):].rsplit(".", 2 if key.endswith(".weight") else 1)[0]
            sizes[module] = sizes.get(module, 0) + tensor.numel() * tensor.element_size()
    err = energy = 0.0
    for delta, row in zip(source.layers, report.layers):
        assert row.result.bytes == sizes.get(row.name, 0)  # report bytes = bytes of this layer's tensors in the file
        truth = delta.to_dense().double()
        err += float((truth - rebuilt.get(row.name, torch.zeros(row.shape)).double()).square().sum())  # rank 0: absent
        energy += float(truth.square().sum())
    assert report.relative_error == pytest.approx((err / energy) ** 0.5, rel=1e-6)
    fp32 = wc.compress(source, budget=1000, method=method, dtype="float32", baselines=("lora",)).report
    assert report.overall()[method].bytes < fp32.overall()[method].bytes
    assert report.overall()["lora"].bytes * 2 == fp32.overall()["lora"].bytes  # baselines stored in bf16 too
