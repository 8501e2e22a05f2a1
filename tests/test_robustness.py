"""Bad bytes, kills and reruns: the tool converts or fails cleanly, never leaves partial output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from wavecompress.cli import main
from conftest import make_peft_lora

OUTPUT_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "wavecompress_report.json"]


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def assert_converted_or_clean(result, out: Path) -> None:
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES
    else:
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, result.output
        assert not out.exists()
    assert not leftovers(out)


@pytest.fixture(scope="module")
def valid_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    path, _ = make_peft_lora(tmp_path_factory.mktemp("valid") / "lora")
    return (path / "adapter_model.safetensors").read_bytes(), (path / "adapter_config.json").read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_bytes_convert_or_fail_cleanly(valid_adapter: tuple[bytes, bytes], tmp_path_factory, data) -> None:
    weights, config = valid_adapter
    header_end = 8 + int.from_bytes(weights[:8], "little")
    mutated = bytearray(weights)
    in_header = data.draw(st.booleans(), label="in_header")
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        position = data.draw(st.integers(0, header_end - 1) if in_header else st.integers(header_end, len(weights) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans(), label="truncate"):
        mutated = mutated[: data.draw(st.integers(0, len(mutated) - 1))]
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "adapter_model.safetensors").write_bytes(bytes(mutated))
    (folder / "adapter_config.json").write_bytes(config)
    out = folder / "out"
    result = CliRunner().invoke(main, ["convert", str(folder), "--budget", "100", "--out", str(out)])
    assert_converted_or_clean(result, out)


def test_header_that_lies_about_sizes(tmp_path: Path, lora_dir: Path) -> None:
    weights = lora_dir / "adapter_model.safetensors"
    raw = weights.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [s * 2 for s in header[key]["shape"]]
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    weights.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "100", "--out", str(out)])
    assert result.exit_code == 2 and "adapter_model.safetensors" in result.output
    assert_converted_or_clean(result, out)


def test_empty_adapter_file(tmp_path: Path, lora_dir: Path) -> None:
    save_file({}, str(lora_dir / "adapter_model.safetensors"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "100", "--out", str(out)])
    assert result.exit_code == 2 and "no LoRA tensors" in result.output
    assert_converted_or_clean(result, out)


def test_float64_adapter_converts(tmp_path: Path, lora_dir: Path) -> None:
    weights = lora_dir / "adapter_model.safetensors"
    save_file({k: v.double() for k, v in load_file(str(weights)).items()}, str(weights))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_file(str(out / "adapter_model.safetensors"))[
        "base_model.model.encoder.layer.0.attention.self.query.waveft_spectrum"
    ].dtype == torch.float32


@pytest.mark.parametrize("method", ["waveft", "wara", "lora"])
def test_two_runs_give_byte_identical_files(tmp_path: Path, lora_dir: Path, method: str) -> None:
    out = tmp_path / "out"
    args = ["convert", str(lora_dir), "--budget", "300", "--method", method, "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    first = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    assert CliRunner().invoke(main, args + ["--force"]).exit_code == 0
    assert first == {name: (out / name).read_bytes() for name in OUTPUT_FILES}


def big_lora(path: Path) -> Path:
    """A LoRA large enough that conversion takes seconds: 48 layers of 512×512, r=16."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(48):
        tensors[f"base_model.model.layers.{i}.proj.lora_A.weight"] = torch.randn(16, 512, generator=generator)
        tensors[f"base_model.model.layers.{i}.proj.lora_B.weight"] = torch.randn(512, 16, generator=generator)
    path.mkdir()
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 16}))
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_conversion_leaves_no_partial_output(tmp_path: Path, sig: int) -> None:
    src = big_lora(tmp_path / "big")
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from wavecompress.cli import main; main()", "convert", str(src),
               "--budget", "3000", "--method", "wara", "--out", str(out)]
    for delay in (0.5, 2.0, 4.0):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        process.send_signal(sig)
        process.wait(timeout=60)
        assert not out.exists() or sorted(p.name for p in out.iterdir()) == OUTPUT_FILES
        if out.exists():  # the run finished before the signal: start again from nothing
            break
        if sig == signal.SIGTERM:
            assert not leftovers(out), "SIGTERM must clean up the staging folder"
    # A rerun after any kill completes and removes what a SIGKILLed run could not.
    rerun = subprocess.run(command + ["--force"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES
    assert not leftovers(out)


def test_allow_nonfinite_skips_and_lists_the_poisoned_layer(tmp_path: Path, lora_dir: Path) -> None:
    weights = lora_dir / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in sorted(tensors) if "layer.1.attention.self.value.lora_B" in k)
    tensors[key][3, 1] = float("inf")
    save_file(tensors, str(weights))
    out = tmp_path / "out"
    refused = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "100", "--out", str(out)])
    assert refused.exit_code == 2 and key in refused.output and not out.exists()
    result = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "100", "--out", str(out), "--allow-nonfinite"])
    assert result.exit_code == 0, result.output
    assert "skipped encoder.layer.1.attention.self.value: non-finite values" in result.output
    report = json.loads((out / "wavecompress_report.json").read_text())
    assert [layer["name"] for layer in report["layers"]] == [
        "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value", "encoder.layer.1.attention.self.query"]
    assert report["skipped"] == [{"name": "encoder.layer.1.attention.self.value", "reason": "non-finite values (NaN/Inf) in its LoRA factors"}]


def test_a_70b_sized_layer_converts_in_bounded_memory(tmp_path: Path) -> None:
    """One 8192×28672 LoRA layer (Llama-70B down_proj shape), with both baselines: peak RSS < 3 GB."""
    src = tmp_path / "big"
    src.mkdir()
    generator = torch.Generator().manual_seed(0)
    save_file({"base_model.model.mlp.down_proj.lora_A.weight": torch.randn(16, 28672, generator=generator).bfloat16(),
               "base_model.model.mlp.down_proj.lora_B.weight": torch.randn(8192, 16, generator=generator).bfloat16()},
              str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32}))
    script = (
        "import resource, sys; from wavecompress.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, "convert", str(src), "--budget", "3000", "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    peak_kb = int(done.stdout.split("peak_kb")[-1])
    assert peak_kb < 3 * 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MiB"
    assert json.loads((tmp_path / "o" / "wavecompress_report.json").read_text())["layers"][0]["shape"] == [8192, 28672]
