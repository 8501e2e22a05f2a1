"""Bad input: a one-line error naming the file or tensor, exit code 2, and no output left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from wavecompress.cli import main


def convert(src: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["convert", str(src), "--budget", "300", "--out", str(out), *extra])


def assert_clean_failure(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_missing_input(tmp_path: Path) -> None:
    assert_clean_failure(convert(tmp_path / "nope", tmp_path / "o"), tmp_path / "o", "nope", "no such file")


def test_not_a_safetensors_file(tmp_path: Path, lora_dir: Path) -> None:
    (lora_dir / "adapter_model.safetensors").write_bytes(b"this is not a safetensors file at all")
    assert_clean_failure(convert(lora_dir, tmp_path / "o"), tmp_path / "o", "adapter_model.safetensors", "not a valid safetensors")


def test_truncated_file(tmp_path: Path, lora_dir: Path) -> None:
    weights = lora_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_clean_failure(convert(lora_dir, tmp_path / "o"), tmp_path / "o", "adapter_model.safetensors")


def test_config_without_lora_tensors(tmp_path: Path, lora_dir: Path) -> None:
    save_file({"base_model.model.classifier.weight": torch.ones(2, 2)}, str(lora_dir / "adapter_model.safetensors"))
    assert_clean_failure(convert(lora_dir, tmp_path / "o"), tmp_path / "o", "no LoRA tensors")


def test_shape_mismatch_between_a_and_b(tmp_path: Path, lora_dir: Path) -> None:
    weights = lora_dir / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("layer.0.attention.self.query.lora_B.weight"))
    tensors[key] = torch.ones(32, 3)
    save_file(tensors, str(weights))
    assert_clean_failure(convert(lora_dir, tmp_path / "o"), tmp_path / "o", "shape mismatch", key)


def test_nan_values(tmp_path: Path, lora_dir: Path) -> None:
    weights = lora_dir / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(weights))
    assert_clean_failure(convert(lora_dir, tmp_path / "o"), tmp_path / "o", key, "non-finite")


def test_missing_config(tmp_path: Path, lora_dir: Path) -> None:
    (lora_dir / "adapter_config.json").unlink()
    assert_clean_failure(convert(lora_dir, tmp_path / "o"), tmp_path / "o", "adapter_config.json")


def test_broken_config_json(tmp_path: Path, lora_dir: Path) -> None:
    (lora_dir / "adapter_config.json").write_text("{not json")
    assert_clean_failure(convert(lora_dir, tmp_path / "o"), tmp_path / "o", "adapter_config.json", "invalid JSON")


def test_unsupported_peft_type(tmp_path: Path, lora_dir: Path) -> None:
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (lora_dir / "adapter_config.json").write_text(json.dumps(config))
    assert_clean_failure(convert(lora_dir, tmp_path / "o"), tmp_path / "o", "unsupported peft_type 'IA3'")


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_non_positive_budget(tmp_path: Path, lora_dir: Path, budget: str) -> None:
    result = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", budget, "--out", str(tmp_path / "o")])
    assert_clean_failure(result, tmp_path / "o", "budget must be a positive integer")


def test_internal_errors_exit_1_without_traceback(tmp_path: Path, lora_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wavecompress.cli.convert as cli

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli, "compress", boom)
    result = convert(lora_dir, tmp_path / "o")
    assert result.exit_code == 1 and "internal error: RuntimeError: kaboom" in result.output
    assert "Traceback" not in result.output
