"""DoRA adapters made by PEFT (use_dora=True, then perturbed): exact merged deltas with --base."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import wavecompress as wc
from wavecompress.cli import main
from wavecompress.deltas.dora import row_norms
from conftest import tiny_bert

TARGETS = ["query", "value", "dense"]


def make_dora(out_dir: Path, seed: int = 1):
    """A real PEFT DoRA adapter of tiny_bert(): B ≠ 0 and magnitudes away from the weight norms."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(str(out_dir))
    return out_dir, peft_model


def merged_deltas(peft_model) -> dict[str, torch.Tensor]:
    """{module: PEFT's merged weight − base weight}, the independent dense reference."""
    base = tiny_bert().state_dict()
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    modules = [key[: -len(".weight")] for key in base if key.endswith(".weight") and key[: -len(".weight")].endswith(tuple(TARGETS))]
    return {m: merged[m + ".weight"] - base[m + ".weight"] for m in modules if "embeddings" not in m}


@pytest.fixture
def dora(tmp_path: Path):
    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir, max_shard_size="20KB")
    adapter, peft_model = make_dora(tmp_path / "dora")
    return adapter, base_dir, merged_deltas(peft_model)


def test_dora_delta_equals_peft_merged_minus_base(dora) -> None:
    adapter, base_dir, reference = dora
    deltas = wc.load_deltas(adapter, base=base_dir)
    assert deltas.kind == "peft-dora"
    layers = {layer.name: layer.to_dense() for layer in deltas.layers}
    assert sorted(layers) == sorted(reference) and len(layers) == 2 * 5 + 1
    for name, delta in layers.items():
        assert float(reference[name].norm()) > 0.1
        torch.testing.assert_close(delta, reference[name], rtol=0, atol=1e-5)


def test_convert_cli_reports_the_dora_delta(dora, tmp_path: Path) -> None:
    adapter, base_dir, reference = dora
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["convert", str(adapter), "--base", str(base_dir), "--budget", "1500",
                                       "--method", "wara", "--out", str(out), "--report", str(report_path), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    rebuilt = wc.reconstruct(out)
    for row in report["layers"]:
        true, approx = reference[row["name"]].double(), rebuilt[row["name"]].double()
        assert row["relative_error"] == pytest.approx(float((true - approx).norm() / true.norm()), rel=1e-5, abs=1e-6)
    assert report["input_stored_values"] == sum(4 * sum(t.shape) + t.shape[0] for t in reference.values())


def test_without_base_the_error_says_why_it_is_needed(dora) -> None:
    adapter, _, _ = dora
    result = CliRunner().invoke(main, ["convert", str(adapter), "--budget", "100"])
    assert result.exit_code == 2
    assert "needs the base model's weights" in result.output and "--base" in result.output
    assert "Traceback" not in result.output


def test_base_as_single_file_with_a_model_prefix(dora, tmp_path: Path) -> None:
    adapter, _, reference = dora
    prefixed = {f"bert.{k}": v.contiguous() for k, v in tiny_bert().state_dict().items()}
    save_file(prefixed, str(tmp_path / "base.safetensors"))
    layers = {layer.name: layer.to_dense() for layer in wc.load_deltas(adapter, base=tmp_path / "base.safetensors").layers}
    for name, delta in layers.items():
        torch.testing.assert_close(delta, reference[name], rtol=0, atol=1e-5)
    save_file({"other.weight": torch.zeros(2, 2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(wc.InputError, match="no base weight encoder.layer.0.attention.output.dense.weight"):
        wc.load_deltas(adapter, base=tmp_path / "wrong.safetensors")


def test_factored_row_norms_match_the_dense_norms() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 200, generator=generator)
    left, right = torch.randn(300, 6, generator=generator), torch.randn(6, 200, generator=generator)
    dense = (weight.double() + left.double() @ right.double()).norm(dim=1)
    torch.testing.assert_close(row_norms(weight, left, right), dense, rtol=1e-10, atol=0)
