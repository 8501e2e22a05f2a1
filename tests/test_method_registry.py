"""A method is one registration: a toy method defined here (no file of the package touched) converts
through the CLI, saves, loads in PEFT and reconstructs exactly what it stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import wavecompress
from conftest import make_peft_lora, peft_delta_weights, tiny_bert
from wavecompress.cli import main
from wavecompress.deltas import LayerDelta
from wavecompress.errors import InputError
from wavecompress.methods import CompressedLayer, Method, MethodOptions, get_method, register_method
from wavecompress.methods.registry import unregister_method

TOY = "toy-rows"


def toy_compress(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Keep the rows of largest energy whole, as many as fit ``budget``; store them and their indices."""
    dense = delta.to_dense().float()
    energy = dense.double().square().sum(dim=1)
    rows = min(budget // dense.shape[1], dense.shape[0])
    keep = torch.sort(torch.topk(energy, rows).indices).values
    dropped = float(energy.sum() - energy[keep].sum())
    return CompressedLayer(name=delta.name, shape=delta.shape, method=TOY,
                           tensors={"toy_rows": dense[keep].contiguous(), "toy_indices": keep.to(torch.int32)},
                           meta={"rows": rows}, stored_values=rows * dense.shape[1], index_values=rows,
                           error_sq=dropped, energy=float(energy.sum()), budget=budget)


def toy_reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    out = tensors["toy_rows"].new_zeros(shape)
    out[tensors["toy_indices"].long()] = tensors["toy_rows"]
    return out


@pytest.fixture
def toy_method():
    method = register_method(Method(name=TOY, peft_type="WAVECOMPRESS_TOY_ROWS", compress=toy_compress,
                                    reconstruct=toy_reconstruct, tensor_keys=("toy_rows", "toy_indices"),
                                    description="whole rows of largest energy"))
    yield method
    unregister_method(TOY)


def test_unknown_method_lists_the_registered_ones() -> None:
    with pytest.raises(InputError, match=r"unknown method 'nope'; choose one of .*wara.*waveft"):
        get_method("nope")


def test_a_method_registered_in_a_test_converts_saves_loads_in_peft_and_reconstructs(tmp_path: Path, toy_method) -> None:
    from peft import PeftModel

    lora_dir, peft_model = make_peft_lora(tmp_path / "lora", target_modules=["query", "value", "intermediate.dense"])
    truth = peft_delta_weights(peft_model)
    out = tmp_path / "toy"
    result = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "320", "--method", TOY, "--out", str(out),
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "WAVECOMPRESS_TOY_ROWS"
    report = json.loads((out / "wavecompress_report.json").read_text())

    # 320 values = 10 rows of the 32-wide query/value, 10 rows of intermediate.dense (64×32).
    expected = {}
    for name, delta in truth.items():
        energy = delta.double().square().sum(dim=1)
        keep = torch.topk(energy, 10).indices
        rebuilt = torch.zeros_like(delta)
        rebuilt[keep] = delta[keep]
        expected[name] = rebuilt
        row = next(layer for layer in report["layers"] if layer["name"] == name)
        assert row["stored_values"] == 320
        assert row["relative_error"] == pytest.approx(float((energy.sum() - energy[keep].sum()) / energy.sum()) ** 0.5, rel=1e-5)

    # wavecompress reads its own output back through the registered reconstruct.
    rebuilt = wavecompress.reconstruct(out)
    assert sorted(rebuilt) == sorted(expected)
    for name in expected:
        assert torch.allclose(rebuilt[name], expected[name], atol=1e-6), name

    # PEFT loads it (the toy peft_type was registered with PEFT when the method was) and applies ΔŴ.
    model = PeftModel.from_pretrained(tiny_bert(), str(out)).eval()
    reference = tiny_bert().eval()
    with torch.no_grad():
        for name, delta in expected.items():
            reference.get_submodule(name).weight += delta
    tokens = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(input_ids=tokens).last_hidden_state
        want = reference(input_ids=tokens).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)


def test_every_registered_method_reconstructs_what_it_reports(tmp_path: Path) -> None:
    lora_dir, peft_model = make_peft_lora(tmp_path / "lora")
    deltas = wavecompress.load_deltas(lora_dir)
    for method in (m for m in wavecompress.methods.all_methods()):
        for delta in deltas.layers:
            layer = method.compress(delta, 200, MethodOptions())
            rebuilt = method.reconstruct(layer.tensors, layer.meta, layer.shape).double()
            error_sq = float((delta.to_dense().double() - rebuilt).square().sum())
            assert error_sq == pytest.approx(layer.error_sq, rel=1e-4, abs=1e-10), (method.name, delta.name)
            assert set(layer.tensors) <= set(method.tensor_keys) | {"reorder_rows", "reorder_cols"}, method.name
