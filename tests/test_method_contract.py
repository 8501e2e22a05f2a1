"""The contract every output method keeps, checked for each registered one (a new method gets these for free).

On a real PEFT LoRA of a tiny BERT: the reported error equals a recomputation from the written files; the saved
output reads back to what was compressed; PEFT's forward and merge equal an independent W + ΔŴ merge; more
values never raise a layer's error; and values rounded to bfloat16 report the error of the rounded values.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import wavecompress
from conftest import make_peft_lora, peft_delta_weights, tiny_bert, tiny_bert_with_deltas
from wavecompress.methods import method_names

OUTPUT_METHODS = method_names(output=True)


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("contract")
    lora_dir, peft_model = make_peft_lora(folder / "lora", target_modules=["query", "value", "intermediate.dense"])
    return lora_dir, {name: delta.double() for name, delta in peft_delta_weights(peft_model).items()}


def errors_against(truth: dict[str, torch.Tensor], rebuilt: dict[str, torch.Tensor]) -> tuple[dict[str, float], float]:
    """Per-layer and overall relative errors of ``rebuilt`` against ``truth``, in float64."""
    per_layer = {n: float((truth[n] - rebuilt[n].double()).norm() / truth[n].norm()) for n in truth}
    overall = math.sqrt(sum(float((truth[n] - rebuilt[n].double()).square().sum()) for n in truth)
                        / sum(float(truth[n].square().sum()) for n in truth))
    return per_layer, overall


@pytest.mark.parametrize("method", OUTPUT_METHODS)
def test_reported_error_is_the_error_of_the_written_files(lora, tmp_path: Path, method: str) -> None:
    lora_dir, truth = lora
    result = wavecompress.compress(lora_dir, budget=300, method=method, baselines=())
    out = result.save(tmp_path / method)
    rebuilt = wavecompress.reconstruct(out)
    per_layer, overall = errors_against(truth, rebuilt)
    for row in result.report.layers:
        assert row.result.relative_error == pytest.approx(per_layer[row.name], rel=1e-4, abs=1e-6), row.name
    assert result.report.relative_error == pytest.approx(overall, rel=1e-4)
    # what was written is what was compressed: the in-memory result and the files agree
    for name, delta in result.to_deltas().items():
        torch.testing.assert_close(rebuilt[name].float(), delta.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", OUTPUT_METHODS)
def test_peft_forward_and_merge_equal_an_independent_dense_merge(lora, tmp_path: Path, method: str) -> None:
    lora_dir, _ = lora
    out = wavecompress.compress(lora_dir, budget=300, method=method, baselines=()).save(tmp_path / method)
    reference = tiny_bert_with_deltas({n: d.float() for n, d in wavecompress.reconstruct(out).items()}).eval()
    model = wavecompress.load_adapter(tiny_bert(), out).eval()
    tokens = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(input_ids=tokens).last_hidden_state
        torch.testing.assert_close(model(input_ids=tokens).last_hidden_state, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.merge_and_unload()(input_ids=tokens).last_hidden_state, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", OUTPUT_METHODS)
def test_more_values_never_raise_a_layers_error(lora, method: str) -> None:
    lora_dir, _ = lora
    errors = [{row.name: row.result.relative_error for row in
               wavecompress.compress(lora_dir, budget=budget, method=method, baselines=()).report.layers}
              for budget in (100, 300, 900)]
    for smaller, larger in zip(errors, errors[1:]):
        for name in smaller:
            assert larger[name] <= smaller[name] * (1 + 1e-6) + 1e-9, (method, name, smaller[name], larger[name])


@pytest.mark.parametrize("method", OUTPUT_METHODS)
def test_rounded_values_report_the_error_of_the_rounded_values(lora, tmp_path: Path, method: str) -> None:
    lora_dir, truth = lora
    result = wavecompress.compress(lora_dir, budget=300, method=method, baselines=(), dtype="bfloat16")
    out = result.save(tmp_path / method)
    stored = {layer.name: layer for layer in result.layers}
    assert all(t.dtype == torch.bfloat16 for layer in stored.values() for t in layer.tensors.values() if t.is_floating_point())
    _, overall = errors_against(truth, wavecompress.reconstruct(out))
    assert result.report.relative_error == pytest.approx(overall, rel=1e-4)
