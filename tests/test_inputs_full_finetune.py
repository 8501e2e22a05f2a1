"""Full fine-tunes as input: sharded / single-file / model-folder pairs, streamed, PEFT-loadable output."""

from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import wavecompress as wc
from wavecompress.cli import main
from wavecompress.deltas import Checkpoint, LazyLayers, read_full_finetune
from conftest import tiny_bert, tiny_gpt2

LINEAR = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense", "pooler.dense")


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def perturb(model, seed: int = 3, scale: float = 0.02, only: str | None = None):
    """A 'fine-tuned' copy: every parameter (or those whose name contains ``only``) moved randomly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if only is None or only in name:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


@pytest.fixture
def sharded_pair(tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    """A tiny BERT base and its perturbed copy, each saved by transformers in several shards."""
    base, tuned = tiny_bert(), perturb(tiny_bert())
    base.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    tuned.save_pretrained(tmp_path / "tuned", max_shard_size="20KB")
    assert (tmp_path / "tuned" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "tuned").glob("*.safetensors"))) > 1
    return tmp_path / "base", tmp_path / "tuned", base.state_dict(), tuned.state_dict()


def report_matches(report: dict, reference: dict[str, torch.Tensor], rebuilt: dict[str, torch.Tensor]) -> None:
    """Each reported relative error equals ‖ΔW − ΔŴ‖/‖ΔW‖ with ΔW the independent dense delta."""
    for row in report["layers"]:
        true = reference[row["name"]].double()
        approx = rebuilt.get(row["name"], torch.zeros_like(true)).double()
        assert row["relative_error"] == pytest.approx(float((true - approx).norm() / true.norm()), rel=1e-5, abs=1e-6)


def test_sharded_pair_streams_exact_deltas_and_skips_the_rest(sharded_pair) -> None:
    base_dir, tuned_dir, base_sd, tuned_sd = sharded_pair
    deltas = read_full_finetune(base_dir, tuned_dir)
    assert isinstance(deltas.layers, LazyLayers) and deltas.kind == "full-finetune"
    names = deltas.layers.names
    assert len(names) == 2 * 6 + 1 and all(n.endswith(LINEAR) for n in names)
    alive = []
    for layer in deltas.layers:
        assert all(ref() is None for ref in alive)  # the previous layer's ΔW is gone: one at a time
        reference = tuned_sd[layer.name + ".weight"] - base_sd[layer.name + ".weight"]
        torch.testing.assert_close(layer.to_dense(), reference, rtol=0, atol=1e-6)
        alive.append(weakref.ref(layer.dense))
        del layer
    skipped = {s.name: s.reason for s in deltas.skipped}
    assert "embedding" in skipped["embeddings.word_embeddings.weight"]
    assert skipped["encoder.layer.0.output.LayerNorm.weight"].startswith("1-D tensor, not a layer (changed")
    assert deltas.stored_values == sum(tuned_sd[n + ".weight"].numel() for n in names)


def test_a_layer_fine_tuning_left_unchanged_is_reported_skipped_once(tmp_path: Path) -> None:
    """The layers are iterated several times in one convert (the method, the baseline columns, their
    allocation): an unchanged layer is still listed once."""
    base, tuned = tiny_bert(), perturb(tiny_bert(), only="query")
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    report = wc.compress(read_full_finetune(tmp_path / "base", tmp_path / "tuned"), budget=50, method="waveft").report
    names = [entry["name"] for entry in report.skipped]
    assert len(names) == len(set(names))
    unchanged = [n for n in names if n.endswith("attention.self.key")]
    assert len(unchanged) == 2 and {row.name for row in report.layers} == {
        f"encoder.layer.{i}.attention.self.query" for i in range(2)}


def test_convert_cli_full_rank_lora_loads_in_peft_and_reproduces_the_tuned_model(sharded_pair, tmp_path: Path) -> None:
    from peft import PeftModel

    base_dir, tuned_dir, base_sd, tuned_sd = sharded_pair
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    # 64 × (64 + 32) = 6144 values hold every layer at full rank: the LoRA is lossless.
    result = run("convert", "--base", base_dir, "--tuned", tuned_dir, "--budget", 6144, "--method", "lora",
                 "--out", out, "--report", report_path, "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    names = [n[: -len(".weight")] for n in tuned_sd if n.endswith(".weight") and n[: -len(".weight")].endswith(LINEAR)]
    assert sorted(config["target_modules"]) == sorted(names)
    assert config["base_model_name_or_path"] == str(base_dir) and config["peft_type"] == "LORA"
    report = json.loads(report_path.read_text())
    reference = {n: tuned_sd[n + ".weight"] - base_sd[n + ".weight"] for n in names}
    report_matches(report, reference, wc.reconstruct(out))
    assert report["overall"]["lora"]["relative_error"] < 1e-5
    assert any(s["name"] == "embeddings.word_embeddings.weight" for s in report["skipped"])

    merged = PeftModel.from_pretrained(tiny_bert(), str(out)).merge_and_unload().state_dict()
    for name in names:
        torch.testing.assert_close(merged[name + ".weight"], tuned_sd[name + ".weight"], rtol=0, atol=1e-5)


def test_include_exclude_pick_layers(sharded_pair, tmp_path: Path) -> None:
    base_dir, tuned_dir, base_sd, tuned_sd = sharded_pair
    report_path = tmp_path / "r.json"
    args = ["convert", "--base", base_dir, "--tuned", tuned_dir, "--budget", 200, "--include", r"attention\.self",
            "--exclude", r"\.key$", "--out", tmp_path / "o", "--report", report_path, "--quiet"]
    refused = run(*args)  # the unselected linear weights' updates would be lost: only with --drop-unselected
    assert refused.exit_code == 2 and "leave 9 linear weights" in refused.output and "--drop-unselected" in refused.output
    assert not (tmp_path / "o").exists()
    result = run(*args, "--drop-unselected")
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert [r["name"] for r in report["layers"]] == [f"encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]
    reference = {r["name"]: tuned_sd[r["name"] + ".weight"] - base_sd[r["name"] + ".weight"] for r in report["layers"]}
    report_matches(report, reference, wc.reconstruct(tmp_path / "o"))
    assert sum("--include/--exclude" in s["reason"] for s in report["skipped"]) == 13 - 4 + 3  # other linears + the 3 embeddings
    assert sum("dropped (--drop-unselected)" in s["reason"] for s in report["skipped"]) == 13 - 4


def test_bf16_single_files_without_config_compute_in_float32(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    base = {"blocks.0.proj.weight": torch.randn(48, 40, generator=generator).bfloat16(),
            "blocks.0.proj.bias": torch.randn(48, generator=generator).bfloat16(),
            "tok_embeddings.weight": torch.randn(50, 40, generator=generator).bfloat16(),
            "blocks.0.conv.weight": torch.randn(4, 4, 3, 3, generator=generator).bfloat16()}
    tuned = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=generator)).bfloat16() for k, v in base.items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    deltas = wc.load_deltas(tmp_path / "tuned.safetensors", base=tmp_path / "base.safetensors")
    layer, conv = list(deltas.layers)
    assert layer.name == "blocks.0.proj" and layer.dense.dtype == torch.float32
    reference = tuned["blocks.0.proj.weight"].float() - base["blocks.0.proj.weight"].float()
    assert torch.equal(layer.dense, reference)
    # A conv kernel is a layer too: its (c_out, c_in·kh·kw) matrix, the 4-D shape beside it.
    assert conv.name == "blocks.0.conv" and conv.shape == (4, 36) and conv.info["weight_shape"] == (4, 4, 3, 3)
    assert torch.equal(conv.dense, (tuned["blocks.0.conv.weight"].float() - base["blocks.0.conv.weight"].float()).reshape(4, 36))
    reasons = {s.name: s.reason for s in deltas.skipped}
    assert "embedding" in reasons["tok_embeddings.weight"] and "blocks.0.conv.weight" not in reasons


def test_gpt2_conv1d_pair_becomes_a_fan_in_fan_out_lora(tmp_path: Path) -> None:
    from peft import PeftModel

    base, tuned = tiny_gpt2(), perturb(tiny_gpt2(), only="attn")
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    out = tmp_path / "out"
    result = run("convert", "--base", tmp_path / "base", "--tuned", tmp_path / "tuned", "--budget", 32 * 128,
                 "--method", "lora", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    assert sorted(config["target_modules"]) == [f"h.{i}.attn.{m}" for i in (0, 1) for m in ("c_attn", "c_proj")]
    merged = PeftModel.from_pretrained(tiny_gpt2(), str(out)).merge_and_unload().state_dict()
    for key, value in tuned.state_dict().items():
        if ".attn.c_" in key and key.endswith("weight"):
            torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-5)


def test_rebudget_a_written_output_and_change_its_method(sharded_pair, tmp_path: Path) -> None:
    base_dir, tuned_dir, _, _ = sharded_pair
    first, second, report_path = tmp_path / "first", tmp_path / "second", tmp_path / "r2.json"
    assert run("convert", "--base", base_dir, "--tuned", tuned_dir, "--budget", 600, "--method", "waveft",
               "--out", first, "--quiet").exit_code == 0
    result = run("convert", first, "--budget", 300, "--method", "wara", "--out", second, "--report", report_path, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((second / "adapter_config.json").read_text())["peft_type"] == "WAVECOMPRESS_WARA"
    report = json.loads(report_path.read_text())
    assert report["layers"] and all(r["stored_values"] <= 300 for r in report["layers"])
    report_matches(report, wc.reconstruct(first), wc.reconstruct(second))


def test_errors_name_the_problem(sharded_pair, tmp_path: Path) -> None:
    base_dir, tuned_dir, _, _ = sharded_pair
    result = CliRunner().invoke(main, ["convert", "--tuned", str(tuned_dir), "--budget", "10"])
    assert result.exit_code == 2 and "needs --base" in result.output
    result = CliRunner().invoke(main, ["convert", str(tuned_dir), "--budget", "10"])
    assert result.exit_code == 2 and "pass --base" in result.output
    result = CliRunner().invoke(main, ["convert", "--base", str(base_dir), "--tuned", str(tuned_dir), "--budget", "10",
                                       "--include", "(", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--include '('" in result.output
    shutil.copytree(tuned_dir, tmp_path / "broken")
    index = json.loads((tuned_dir / "model.safetensors.index.json").read_text())
    index["weight_map"]["extra.weight"] = "model-missing.safetensors"
    (tmp_path / "broken" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(wc.InputError, match="model-missing.safetensors is listed but missing"):
        Checkpoint(tmp_path / "broken")
