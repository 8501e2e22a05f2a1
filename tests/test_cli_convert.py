"""The CLI end to end: convert, report, output files, recomputation from the written files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import wavecompress as wc
from wavecompress.cli import main
from conftest import make_peft_lora, peft_delta_weights


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("method", ["waveft", "wara", "lora"])
def test_convert_writes_folder_and_report_that_match_a_recomputation(tmp_path: Path, method: str) -> None:
    src, peft_model = make_peft_lora(tmp_path / "lora", r=8, target_modules=["query", "value", "dense"])
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    result = run("convert", str(src), "--budget", "500", "--method", method, "--out", str(out), "--report", str(report_path))
    assert result.exit_code == 0, result.output
    assert "OVERALL" in result.output and f"wrote {out}" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "wavecompress_report.json"]
    report = json.loads(report_path.read_text())
    assert report == json.loads((out / "wavecompress_report.json").read_text())

    reference = peft_delta_weights(peft_model)
    rebuilt = wc.reconstruct(out)
    num = den = 0.0
    for row in report["layers"]:
        true, approx = reference[row["name"]].double(), rebuilt.get(row["name"])
        approx = torch.zeros_like(true) if approx is None else approx.double()
        err = float((true - approx).norm() / true.norm())
        assert row["relative_error"] == pytest.approx(err, rel=1e-5), row["name"]
        assert row["stored_values"] <= 500
        num += float((true - approx).square().sum())
        den += float(true.square().sum())
    assert report["overall"][method]["relative_error"] == pytest.approx((num / den) ** 0.5, rel=1e-5)


def test_report_layout_is_the_documented_one(tmp_path: Path, lora_dir: Path) -> None:
    report_path = tmp_path / "r.json"
    assert run("convert", str(lora_dir), "--budget", "300", "--out", str(tmp_path / "o"), "--report", str(report_path)).exit_code == 0
    report = json.loads(report_path.read_text())
    assert set(report) == {"version", "source", "method", "budget", "input_stored_values", "layers", "overall", "kept", "skipped",
                           "notes"}
    layer = report["layers"][0]
    for key in ["name", "shape", "method", "stored_values", "bytes", "relative_error", "energy_kept", "budget_clamped", "baselines"]:
        assert key in layer
    # plain ordering beside the reordered default; each baseline also at the output's bytes
    assert set(layer["baselines"]) == {"lora", "sparse", "waveft-plain", "lora@bytes", "sparse@bytes"}
    assert set(report["overall"]) == {"waveft", "lora", "sparse", "waveft-plain", "lora@bytes", "sparse@bytes"}
    overall = report["overall"]
    target = overall["waveft"]["bytes"]
    assert target - 6 < overall["sparse@bytes"]["bytes"] <= target  # less than one value + gap short
    # LoRA: within one rank step of the output's bytes, unless it already holds the whole delta
    lora = overall["lora@bytes"]
    assert lora["bytes"] <= target and (lora["bytes"] > target - 4 * 64 or lora["relative_error"] < 1e-5)
    assert lora["relative_error"] <= overall["lora"]["relative_error"]
    # float32 value + uint16 index gap per kept coefficient (no escape below 65536 entries), plus int16 permutations
    assert layer["bytes"] == layer["stored_values"] * 6 + 2 * sum(layer["shape"])
    assert layer["baselines"]["waveft-plain"]["bytes"] == layer["baselines"]["waveft-plain"]["stored_values"] * 6


def test_weights_file_input_finds_config_beside_it(tmp_path: Path, lora_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("convert", str(lora_dir / "adapter_model.safetensors"), "--budget", "200")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lora-waveft-b200" / "adapter_config.json").exists()


def test_outputs_are_typed_so_stock_peft_cannot_misload_them(tmp_path: Path, lora_dir: Path) -> None:
    for method, peft_type in [("waveft", "WAVECOMPRESS_WAVEFT"), ("wara", "WAVECOMPRESS_WARA"), ("lora", "LORA")]:
        out = tmp_path / f"out-{method}"
        assert run("convert", str(lora_dir), "--budget", "400", "--method", method, "--out", str(out)).exit_code == 0
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["peft_type"] == peft_type
        assert config["base_model_name_or_path"] == json.loads((lora_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    with safe_open(str(tmp_path / "out-waveft" / "adapter_model.safetensors"), "pt") as reader:
        keys = list(reader.keys())
    assert any(k.endswith("attention.self.query.waveft_index_gaps") for k in keys)


def test_lora_output_loads_in_stock_peft_and_matches(tmp_path: Path) -> None:
    from peft import PeftModel
    from conftest import tiny_bert

    src, _ = make_peft_lora(tmp_path / "lora", r=4)
    out = tmp_path / "lora_out"
    assert run("convert", str(src), "--budget", "128", "--method", "lora", "--out", str(out)).exit_code == 0  # rank 2 of 64
    loaded = PeftModel.from_pretrained(tiny_bert(), str(out))
    ours = wc.reconstruct(out)
    theirs = peft_delta_weights(loaded)
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6)


def test_model_card_has_hub_front_matter(tmp_path: Path, lora_dir: Path) -> None:
    out = tmp_path / "o"
    assert run("convert", str(lora_dir), "--budget", "300", "--method", "wara", "--out", str(out)).exit_code == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n")
    assert "- wavecompress" in card and "- wara" in card and "OVERALL" in card


def test_existing_output_is_refused_without_force(tmp_path: Path, lora_dir: Path) -> None:
    out = tmp_path / "o"
    assert run("convert", str(lora_dir), "--budget", "300", "--out", str(out)).exit_code == 0
    again = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "300", "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert run("convert", str(lora_dir), "--budget", "100", "--out", str(out), "--force").exit_code == 0
    assert json.loads((out / "wavecompress_report.json").read_text())["budget"] == 100


def test_clamped_budget_is_reported(tmp_path: Path) -> None:
    lora_dir, peft_model = make_peft_lora(tmp_path / "lora")
    result = run("convert", str(lora_dir), "--budget", "100000", "--method", "wara", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0
    assert "clamped" in result.output
    report = json.loads((tmp_path / "o" / "wavecompress_report.json").read_text())
    assert all(layer["budget_clamped"] for layer in report["layers"])
    assert report["overall"]["wara"]["relative_error"] < 1e-5
    rebuilt = wc.reconstruct(tmp_path / "o")  # the written files give back every B@A (scaled), not just a reported 0
    reference = peft_delta_weights(peft_model)
    assert sorted(rebuilt) == sorted(reference)
    for name, delta in reference.items():
        assert float((rebuilt[name] - delta).norm() / delta.norm()) < 1e-5, name


def test_reconstruct_command_writes_dense_deltas(tmp_path: Path, lora_dir: Path) -> None:
    out = tmp_path / "o"
    assert run("convert", str(lora_dir), "--budget", "300", "--method", "wara", "--out", str(out)).exit_code == 0
    result = run("reconstruct", str(out), "--out", str(tmp_path / "d.safetensors"))
    assert result.exit_code == 0
    with safe_open(str(tmp_path / "d.safetensors"), "pt") as reader:
        assert torch.allclose(reader.get_tensor("encoder.layer.0.attention.self.query"), wc.reconstruct(out)["encoder.layer.0.attention.self.query"])


def test_reading_an_output_back_counts_only_trainable_values(tmp_path: Path, lora_dir: Path) -> None:
    out = tmp_path / "o"
    assert run("convert", str(lora_dir), "--budget", "300", "--method", "waveft", "--out", str(out)).exit_code == 0
    report = json.loads((out / "wavecompress_report.json").read_text())
    assert wc.load_deltas(out).stored_values == report["overall"]["waveft"]["stored_values"]


def test_lora_output_config_has_only_fields_stock_peft_knows(tmp_path: Path, lora_dir: Path) -> None:
    from peft import LoraConfig

    out = tmp_path / "o"
    assert run("convert", str(lora_dir), "--budget", "128", "--method", "lora", "--out", str(out)).exit_code == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config) <= set(LoraConfig(r=1).to_dict()), set(config) - set(LoraConfig(r=1).to_dict())
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as reader:
        assert json.loads(reader.metadata()["wavecompress.provenance"])["method"] == "lora"


def test_single_files_get_the_same_mode_as_output_folders_files(tmp_path: Path, lora_dir: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        out, report = tmp_path / "o", tmp_path / "r.json"
        assert run("convert", str(lora_dir), "--budget", "300", "--out", str(out), "--report", str(report)).exit_code == 0
        assert run("reconstruct", str(out), "--out", str(tmp_path / "d.safetensors")).exit_code == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [report, tmp_path / "d.safetensors", *out.iterdir()]}
    assert set(modes.values()) == {0o644}, modes


def test_rebudgeting_an_output_says_the_error_is_against_that_lossy_input(tmp_path: Path, lora_dir: Path) -> None:
    first = wc.compress(lora_dir, budget=300, method="wara").save(tmp_path / "wara")
    assert not any("lossy input" in note for note in wc.compress(lora_dir, budget=200).report.notes)
    again = wc.compress(first, budget=200, method="waveft").report
    assert any("earlier wavecompress output (wara)" in note and "lossy input" in note for note in again.notes)
