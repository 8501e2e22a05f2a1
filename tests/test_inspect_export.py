"""`wavecompress inspect` describes every adapter type; `export --to lora` gives a plain LoRA with the same ΔŴ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import wavecompress
from conftest import make_peft_lora, peft_delta_weights, tiny_gpt2
from wavecompress.cli import main
from wavecompress.cli.inspect import describe_adapter


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A GPT-2 LoRA (Conv1D, fan_in_fan_out) and its conversions by every output method."""
    tmp_path = tmp_path_factory.mktemp("outputs")
    lora_dir, _ = make_peft_lora(tmp_path / "lora", base="gpt2")
    paths = {"lora-input": lora_dir}
    for method in ("waveft", "wara", "waveft-seeded", "lora"):
        paths[method] = wavecompress.compress(lora_dir, budget=300, method=method).save(tmp_path / f"out-{method}")
    return paths


def file_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_inspect_counts_match_the_files(outputs: dict[str, Path]) -> None:
    expected_types = {"lora-input": "LORA", "waveft": "WAVECOMPRESS_WAVEFT", "wara": "WAVECOMPRESS_WARA",
                      "waveft-seeded": "WAVEFT", "lora": "LORA"}
    for name, path in outputs.items():
        info = describe_adapter(path)
        assert info["peft_type"] == expected_types[name]
        tensors = file_tensors(path)
        assert len(info["layers"]) == 6, name
        floats = sum(t.numel() for t in tensors.values() if t.is_floating_point())
        ints = sum(t.numel() for t in tensors.values() if not t.is_floating_point())
        assert info["stored_values"] == floats and info["index_values"] == ints, name
        assert info["bytes"] == sum(t.numel() * t.element_size() for t in tensors.values()), name
        shapes = {row["name"]: tuple(row["shape"]) for row in info["layers"]}
        assert shapes["h.0.attn.c_attn"] == (96, 32) and shapes["h.0.mlp.c_proj"] == (32, 128), name
    wavelet = describe_adapter(outputs["waveft"])
    assert wavelet["stored_values"] == 1800  # 300 values in each of 6 layers; indices and permutations counted apart
    row = wavelet["layers"][0]
    assert row["index_values"] == 300 + sum(row["shape"])  # coefficient indices + row and column permutations


def test_inspect_cli_text_json_and_errors(outputs: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["inspect", str(outputs["wara"])])
    assert text.exit_code == 0, text.output
    assert "WAVECOMPRESS_WARA" in text.output and "h.1.mlp.c_proj" in text.output and "32×128" in text.output
    as_json = runner.invoke(main, ["inspect", str(outputs["waveft-seeded"]), "--json"])
    assert as_json.exit_code == 0
    info = json.loads(as_json.output)
    assert info["config"]["peft_type"] == "WAVEFT" and info["config"]["n_frequency"] == 300
    missing = runner.invoke(main, ["inspect", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such file" in missing.output


@pytest.mark.parametrize("method", ["wara", "waveft", "waveft-seeded"])
def test_export_to_lora_is_lossless_and_loads_in_stock_peft(outputs: dict[str, Path], tmp_path: Path, method: str) -> None:
    from peft import PeftModel

    out = tmp_path / f"{method}-as-lora"
    result = CliRunner().invoke(main, ["export", str(outputs[method]), "--to", "lora", "--max-error", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] is True
    expected = wavecompress.reconstruct(outputs[method])
    model = PeftModel.from_pretrained(tiny_gpt2(), str(out))
    got = peft_delta_weights(model)
    assert set(got) == set(expected)
    for name in expected:
        scale = float(expected[name].abs().max())
        assert float((got[name] - expected[name]).abs().max()) <= 1e-5 * scale, name


def test_export_with_a_rank_cap_reports_the_dropped_energy(outputs: dict[str, Path], tmp_path: Path) -> None:
    from wavecompress.export import export_lora

    report = export_lora(outputs["wara"], tmp_path / "r1", rank=1)
    tensors = file_tensors(tmp_path / "r1")
    assert all(t.shape[0] == 1 for k, t in tensors.items() if k.endswith("lora_A.weight"))
    dense = wavecompress.reconstruct(outputs["wara"])
    rebuilt = wavecompress.reconstruct(tmp_path / "r1")
    error = sum(float((dense[n].double() - rebuilt[n].double()).square().sum()) for n in dense)
    energy = sum(float(dense[n].double().square().sum()) for n in dense)
    assert report.relative_error == pytest.approx((error / energy) ** 0.5, rel=1e-4)
    assert report.relative_error > 0.1
    with pytest.raises(wavecompress.InputError, match="rank"):
        export_lora(outputs["wara"], tmp_path / "r0", rank=0)


def rank_error(deltas: dict[str, torch.Tensor], ranks: dict[str, int]) -> float:
    """Overall relative error of truncating each layer to ``ranks``, from singular values (independent of the export)."""
    error = energy = 0.0
    for name, delta in deltas.items():
        s = torch.linalg.svdvals(delta.double())
        error += float(s[ranks.get(name, 0):].square().sum())
        energy += float(s.square().sum())
    return (error / energy) ** 0.5


@pytest.mark.parametrize("max_error", [0.01, 0.1])
def test_export_ranks_are_no_bigger_than_the_stated_error_needs(outputs: dict[str, Path], tmp_path: Path, max_error: float) -> None:
    out = tmp_path / "exported"
    result = CliRunner().invoke(main, ["export", str(outputs["wara"]), "--max-error", str(max_error), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "lossless would need ranks" in result.output and "on disk (input" in result.output
    dense = wavecompress.reconstruct(outputs["wara"])
    ranks = {k[len("base_model.model."):-len(".lora_A.weight")]: t.shape[0] for k, t in file_tensors(out).items()
             if k.endswith("lora_A.weight")}
    assert rank_error(dense, ranks) <= max_error  # the stated error holds, recomputed independently
    for name in ranks:  # and no layer has a rank the error does not need
        assert rank_error(dense, {**ranks, name: ranks[name] - 1}) > max_error, name
    lossless = {name: int((torch.linalg.svdvals(d.double()) > 1e-7 * float(d.double().norm(2))).sum()) for name, d in dense.items()}
    assert sum(ranks.values()) < sum(lossless.values())
    report = json.loads((out / "wavecompress_report.json").read_text())
    assert report["overall"]["lora"]["relative_error"] == pytest.approx(rank_error(dense, ranks), rel=1e-4)
