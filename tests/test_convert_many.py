"""convert-many: a folder of real PEFT LoRAs, one corrupt; skip-if-done, resume, pool and Ray backends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import wavecompress as wc
from wavecompress.batch import find_inputs, is_done, plan, run_batch
from wavecompress.cli import main
from wavecompress.errors import InputError
from conftest import make_peft_lora, peft_delta_weights

BUDGET = "300"


@pytest.fixture
def adapters(tmp_path: Path) -> tuple[Path, object]:
    """in/a0..a4: copies of one real PEFT LoRA (a2 with its own seed), a3 truncated (corrupt)."""
    folder = tmp_path / "in"
    folder.mkdir()
    _, peft_model = make_peft_lora(folder / "a0")
    for i in (1, 4):
        shutil.copytree(folder / "a0", folder / f"a{i}")
    make_peft_lora(folder / "a2", seed=7)
    shutil.copytree(folder / "a0", folder / "a3")
    weights = folder / "a3" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return folder, peft_model


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}


def test_converts_the_good_ones_names_the_bad_one_and_a_rerun_converts_nothing_twice(tmp_path: Path, adapters) -> None:
    folder, peft_model = adapters
    out = tmp_path / "out"
    first = run("convert-many", str(folder), "--out", str(out), "--budget", BUDGET, "--jobs", "2")  # process pool
    assert first.exit_code == 2, first.output
    assert "4 converted, 0 skipped (already done), 1 failed, of 5" in first.output
    failures = [line for line in first.output.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 1 and failures[0].startswith("failed: a3: ") and "not a valid safetensors file" in failures[0]
    done = sorted(p.name for p in out.iterdir())
    assert done == [f"a{i}-waveft-b{BUDGET}" for i in (0, 1, 2, 4)]

    # Each output is exactly what a single conversion writes, and its numbers are PEFT's.
    single = wc.compress(folder / "a0", budget=int(BUDGET))
    single.save(tmp_path / "single")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / f"a0-waveft-b{BUDGET}" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    report = json.loads((out / f"a1-waveft-b{BUDGET}" / "wavecompress_report.json").read_text())
    reference, rebuilt = peft_delta_weights(peft_model), wc.reconstruct(out / f"a1-waveft-b{BUDGET}")
    num = sum(float((reference[k].double() - rebuilt[k].double()).square().sum()) for k in reference)
    den = sum(float(reference[k].double().square().sum()) for k in reference)
    assert report["overall"]["waveft"]["relative_error"] == pytest.approx((num / den) ** 0.5, rel=1e-5)
    table_row = next(line for line in first.output.splitlines() if line.startswith("a1 "))
    assert f"{report['overall']['waveft']['relative_error']:.4f}" in table_row

    before = snapshot(out)
    second = run("convert-many", str(folder), "--out", str(out), "--budget", BUDGET, "--jobs", "1")
    assert second.exit_code == 2, second.output
    assert "0 converted, 4 skipped (already done), 1 failed, of 5" in second.output
    assert snapshot(out) == before


def test_resume_after_a_crash_converts_only_what_is_missing(tmp_path: Path, adapters) -> None:
    folder, _ = adapters
    shutil.rmtree(folder / "a3")
    out = tmp_path / "out"
    assert run("convert-many", str(folder), "--out", str(out), "--budget", BUDGET, "--jobs", "1").exit_code == 0
    # A crash mid-write leaves only a hidden staging folder (the writer renames at the end).
    shutil.rmtree(out / f"a1-waveft-b{BUDGET}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    staging = out / f".a1-waveft-b{BUDGET}.tmp-{int(dead.stdout)}-crashed"  # its writer's pid is dead
    staging.mkdir()
    (staging / "adapter_model.safetensors").write_bytes(b"partial")
    before = {k: v for k, v in snapshot(out).items() if "a1-" not in k}
    result = run("convert-many", str(folder), "--out", str(out), "--budget", BUDGET, "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert "1 converted, 3 skipped (already done), 0 failed, of 4" in result.output
    assert is_done(out / f"a1-waveft-b{BUDGET}")
    assert not staging.exists()  # the rerun removed the dead run's staging folder
    assert {k: v for k, v in snapshot(out).items() if k in before} == before

    # A folder in the way that wavecompress did not write is reported, never overwritten.
    shutil.rmtree(out / f"a2-waveft-b{BUDGET}")
    (out / f"a2-waveft-b{BUDGET}").mkdir()
    result = run("convert-many", str(folder), "--out", str(out), "--budget", BUDGET, "--jobs", "1")
    assert result.exit_code == 2
    assert "failed: a2: " in result.output and "incomplete" in result.output


def test_glob_inputs_and_colliding_output_names(tmp_path: Path, adapters) -> None:
    folder, _ = adapters
    assert [p.name for p in find_inputs(str(folder / "a[01]"))] == ["a0", "a1"]
    (tmp_path / "other").mkdir()
    shutil.copytree(folder / "a0", tmp_path / "other" / "a0")
    with pytest.raises(InputError, match="would both write"):
        plan([folder / "a0", tmp_path / "other" / "a0"], tmp_path / "out", "waveft", "b300")
    with pytest.raises(InputError, match="matches nothing"):
        find_inputs(str(tmp_path / "nothing-*"))


def test_ray_backend_with_a_local_instance(tmp_path: Path, adapters) -> None:
    if os.environ.get("WAVECOMPRESS_REQUIRE_RAY"):  # .ci/run installs the ray extra: the test must run there
        import ray
    else:
        ray = pytest.importorskip("ray")
    folder, _ = adapters
    items = plan([folder / "a0", folder / "a3"], tmp_path / "ray", "waveft", "b300")
    try:
        results = run_batch(items, {"budget": 300, "method": "waveft"}, jobs=1, backend="ray")
    finally:
        ray.shutdown()
    assert [r.status for r in results] == ["converted", "failed"]
    assert "not a valid safetensors file" in results[1].message and results[1].exit_code == 2
    expected = wc.compress(folder / "a0", budget=300).report.overall()["waveft"].relative_error
    assert results[0].errors["waveft"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_device_cuda_without_cuda_falls_back_with_a_note(tmp_path: Path, adapters) -> None:
    folder, _ = adapters
    result = CliRunner().invoke(main, ["convert", str(folder / "a0"), "--budget", BUDGET, "--device", "cuda",
                                       "--out", str(tmp_path / "gpu")])
    assert result.exit_code == 0, result.output
    assert "CUDA is not available" in result.output
    assert run("convert", str(folder / "a0"), "--budget", BUDGET, "--out", str(tmp_path / "cpu")).exit_code == 0
    assert (tmp_path / "gpu" / "adapter_model.safetensors").read_bytes() == (tmp_path / "cpu" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(InputError, match="not supported"):
        wc.compress(folder / "a0", budget=300, device="mps")


# convert options that name one input or one output, or print one input's table or plan, and so have no
# per-input meaning in a batch (convert-many prints one summary table).
# layout: a batch writes one PEFT-style output folder per input (export --layout rewrites any of them).
CONVERT_ONLY = {"input_path", "out_dir", "tuned", "push_to", "private", "save_calibration", "wide", "dry_run",
                "finetune_steps", "finetune_data", "finetune_lr", "finetune_device", "layout"}
BATCH_ONLY = {"inputs", "out_dir", "jobs", "backend"}


def test_convert_many_accepts_every_per_input_option_of_convert() -> None:
    from wavecompress.cli import convert_command, convert_many_command

    convert_params = {p.name: p for p in convert_command.params}
    many_params = {p.name: p for p in convert_many_command.params}
    assert set(convert_params) - CONVERT_ONLY == set(many_params) - BATCH_ONLY
    for name in set(convert_params) - CONVERT_ONLY:  # same flags, types and defaults
        a, b = convert_params[name], many_params[name]
        assert (a.opts, a.secondary_opts, type(a.type), a.default) == (b.opts, b.secondary_opts, type(b.type), b.default), name


@pytest.mark.parametrize("budget_args, label", [(["--budget", BUDGET], f"b{BUDGET}"), (["--budget-total", "1200"], "t1200")])
def test_convert_and_convert_many_name_outputs_the_same_way(tmp_path: Path, adapters, budget_args, label,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = adapters
    from safetensors.torch import load_file, save_file

    # A single-file kohya LoRA beside the PEFT folders: named after its file, not its folder.
    tensors = load_file(str(folder / "a0" / "adapter_model.safetensors"))
    kohya = {}
    for key, value in tensors.items():
        module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0].replace(".", "_")
        kind = "lora_down" if ".lora_A." in key else "lora_up"
        kohya[f"lora_unet_{module}.{kind}.weight"] = value
        kohya[f"lora_unet_{module}.alpha"] = torch.tensor(8.0)
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copytree(folder / "a0", batch / "peft_folder")
    save_file(kohya, str(batch / "lora_kohya.safetensors"))

    many = run("convert-many", str(batch), "--out", str(tmp_path / "many"), *budget_args, "--jobs", "1", "--quiet")
    assert many.exit_code == 0, many.output
    names = sorted(p.name for p in (tmp_path / "many").iterdir())
    assert names == [f"lora_kohya-waveft-{label}", f"peft_folder-waveft-{label}"]
    single = tmp_path / "single"
    single.mkdir()
    monkeypatch.chdir(single)  # convert writes its default output into the working folder
    for source, stem in ((batch / "peft_folder", "peft_folder"), (batch / "lora_kohya.safetensors", "lora_kohya"),
                         (batch / "peft_folder" / "adapter_model.safetensors", "peft_folder")):
        result = CliRunner().invoke(main, ["convert", str(source), *budget_args, "--quiet", "--force"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines()[-1] == f"wrote {stem}-waveft-{label}"
    assert sorted(p.name for p in single.iterdir()) == names


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm-bbc-lora"


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """in/minilm (the shipped fixture, 31 layers up to 1536×384) and in/tiny (a rank-8 PEFT LoRA of a tiny BERT)."""
    folder = tmp_path_factory.mktemp("two") / "in"
    folder.mkdir()
    shutil.copytree(FIXTURE, folder / "minilm")
    make_peft_lora(folder / "tiny", r=8, seed=3)
    return folder


def _report(target: Path) -> dict:
    return json.loads((target / "wavecompress_report.json").read_text())


def test_dtype_reaches_every_conversion_and_the_fingerprint(tmp_path: Path, two_inputs: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "out"
    args = ["convert-many", str(two_inputs), "--out", str(out), "--budget", BUDGET, "--method", "wara", "--baselines", "none"]
    result = run(*args, "--dtype", "bfloat16", "--jobs", "2")  # the process pool: options pickled to each worker
    assert result.exit_code == 0, result.output
    for name, layers in (("minilm", 31), ("tiny", 4)):
        target = out / f"{name}-wara-b{BUDGET}"
        tensors = load_file(str(target / "adapter_model.safetensors"))
        factors = {k: t.dtype for k, t in tensors.items() if k.endswith(".wara_factors")}
        assert len(factors) == layers and set(factors.values()) == {torch.bfloat16}, name
        assert _report(target)["options"]["values"]["dtype"] == "bfloat16"
        # byte for byte what one `convert --dtype bfloat16` writes
        single = wc.compress(two_inputs / name, budget=int(BUDGET), method="wara", dtype="bfloat16", baselines=())
        single.save(tmp_path / f"single-{name}")
        assert (target / "adapter_model.safetensors").read_bytes() == (tmp_path / f"single-{name}" / "adapter_model.safetensors").read_bytes()
        # the float32 file is larger by exactly 2 bytes per stored value
        wide = wc.compress(two_inputs / name, budget=int(BUDGET), method="wara", dtype="float32", baselines=())
        values = wide.report.overall()["wara"].stored_values
        assert wide.report.overall()["wara"].bytes - single.report.overall()["wara"].bytes == 2 * values > 0
    # the dtype is part of the resume fingerprint: same options skip, another dtype is refused (never reused)
    again = run(*args, "--dtype", "bfloat16", "--jobs", "1")
    assert again.exit_code == 0 and "0 converted, 2 skipped" in again.output, again.output
    other = run(*args, "--dtype", "float32", "--jobs", "1")
    assert other.exit_code == 2 and other.output.count("made with other options") == 2, other.output


def test_optimise_reaches_every_auto_conversion(tmp_path: Path, two_inputs: Path) -> None:
    # --rank 2: tiny's candidates rank waveft first at equal values but lora first at equal bytes
    chosen = {}
    for optimise in ("values", "bytes"):
        out = tmp_path / optimise
        result = run("convert-many", str(two_inputs), "--out", str(out), "--rank", "2", "--method", "auto",
                     "--optimise", optimise, "--baselines", "none", "--jobs", "1")
        assert result.exit_code == 0, result.output
        for name in ("minilm", "tiny"):
            target = out / f"{name}-auto-rank2"
            single = wc.compress(two_inputs / name, rank=2, method="auto", optimise=optimise, baselines=())
            report = _report(target)
            assert report["method"] == single.report.method
            assert f"(optimised {optimise}:" in " ".join(report["notes"])
            assert report["options"]["values"]["optimise"] == optimise
            chosen[name, optimise] = report["method"]
    assert chosen == {("minilm", "values"): "wara", ("minilm", "bytes"): "wara",
                      ("tiny", "values"): "waveft", ("tiny", "bytes"): "lora"}
    other = run("convert-many", str(two_inputs), "--out", str(tmp_path / "bytes"), "--rank", "2", "--method", "auto",
                "--optimise", "values", "--baselines", "none", "--jobs", "1")
    assert other.exit_code == 2 and other.output.count("made with other options") == 2, other.output
