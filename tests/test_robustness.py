"""Bad bytes, kills and reruns: the tool converts or fails cleanly, never leaves partial output."""

from __future__ import annotations

import json
import os
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
from wavecompress.formats.atomic import HOLD_STAGING_ENV
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


def staging_folders(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


def wait_for_staging(process: subprocess.Popen, out: Path, timeout: float = 120.0) -> Path:
    """Poll until the writer's ``.<out>.tmp-<pid>-*`` staging folder exists; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = staging_folders(out)
        if found:
            return found[0]
        assert process.poll() is None, f"the run ended before staging appeared: {process.stderr.read()}"
        time.sleep(0.01)
    raise AssertionError("no staging folder appeared")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_conversion_leaves_no_partial_output(tmp_path: Path, lora_dir: Path, sig: int) -> None:
    """The signal is sent as soon as the staging folder appears, while it is written or waiting for
    its rename (held open by the test-only WAVECOMPRESS_TEST_HOLD_STAGING), so it races the write."""
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from wavecompress.cli import main; main()", "convert", str(lora_dir),
               "--budget", "300", "--method", "wara", "--out", str(out)]
    env = {**os.environ, HOLD_STAGING_ENV: "60"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    staging = wait_for_staging(process, out)
    assert staging.exists() and process.poll() is None and not out.exists()  # sent while staging exists
    process.send_signal(sig)
    process.wait(timeout=60)
    assert process.returncode == (128 + sig if sig == signal.SIGTERM else -sig), process.stderr.read()
    assert not out.exists(), "no partial output"
    if sig == signal.SIGTERM:
        assert not staging.exists() and not leftovers(out), "SIGTERM must clean up the staging folder"
    else:
        assert staging.exists() and staging_folders(out) == [staging]  # SIGKILL cannot clean up
    # A rerun completes and removes the dead run's staging folder.
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES
    assert not staging.exists() and not leftovers(out)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_rerun_removes_stale_staging_of_dead_runs_only(tmp_path: Path, lora_dir: Path) -> None:
    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{dead_pid()}-x"
    live = tmp_path / f".out.tmp-{os.getpid()}-y"  # a run still in progress (this process) is left alone
    for folder in (stale, live):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"partial")
    result = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES


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
    """One 8192×28672 LoRA layer (Llama-70B down_proj shape), with both baselines: the peak RSS above a
    process that only imports the CLI stays below 1.25 dense float32 copies of ΔW (940 MB; measured
    1.09): never two dense copies at once. The dense weight-domain baseline needs one."""
    src = tmp_path / "big"
    src.mkdir()
    generator = torch.Generator().manual_seed(0)
    save_file({"base_model.model.mlp.down_proj.lora_A.weight": torch.randn(16, 28672, generator=generator).bfloat16(),
               "base_model.model.mlp.down_proj.lora_B.weight": torch.randn(8192, 16, generator=generator).bfloat16()},
              str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32}))
    report = "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    script = ("import resource, sys; from wavecompress.cli import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n" + report + "sys.exit(code)\n")
    floor = subprocess.run([sys.executable, "-c", "import resource; import wavecompress.cli\n" + report],
                           capture_output=True, text=True, timeout=120, check=True)
    done = subprocess.run([sys.executable, "-c", script, "convert", str(src), "--budget", "3000", "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    above_kb = int(done.stdout.split("peak_kb")[-1]) - int(floor.stdout.split("peak_kb")[-1])
    dense_kb = 8192 * 28672 * 4 / 1024
    assert above_kb < 1.25 * dense_kb, f"peak {above_kb / dense_kb:.2f}× one dense float32 ΔW above the import floor"
    assert json.loads((tmp_path / "o" / "wavecompress_report.json").read_text())["layers"][0]["shape"] == [8192, 28672]
