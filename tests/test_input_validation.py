"""Inputs that were silently wrong or ended badly (issue 26): each is refused in one line with exit 2
(or read exactly as its folder is read), and start-up interrupts end in one line with exit 130."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "fixtures" / "minilm-bbc-lora"


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path: Path) -> None:
    script = shutil.which("wavecompress")
    if script is None:
        pytest.skip("the wavecompress console script is not installed")
    process = subprocess.Popen([script, "convert", str(FIXTURE), "--budget", "100", "--out", str(tmp_path / "o")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(0.3)  # inside the imports (they take seconds)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert output.strip().splitlines() == ["interrupted while starting; no output was written"], output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("typo", ["fixtures/minilm-bbc-lor", "out/nope"])
def test_a_mistyped_local_path_is_named_as_such_not_a_hub_failure(tmp_path: Path, typo: str) -> None:
    (tmp_path / typo.split("/")[0]).mkdir()
    result = subprocess.run([sys.executable, "-c", "from wavecompress.cli import main; main(prog_name='wavecompress')",
                             "convert", typo, "--budget", "100"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, lines
    assert len(lines) == 1 and "neither a local path" in lines[0] and "Traceback" not in lines[0], lines


# ---------------------------------------------------------------- tampered outputs: one validation for every reader


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """{method: {file name: bytes}} of a waveft and a wara output of a tiny BERT LoRA."""
    from conftest import make_peft_lora
    from test_adversarial import cli

    work = tmp_path_factory.mktemp("outputs")
    lora, _ = make_peft_lora(work / "lora")
    found = {}
    for method in ("waveft", "wara"):
        result = cli("convert", lora, "--budget", 300, "--method", method, "--no-reorder", "--out", work / method, "--quiet")
        assert result.exit_code == 0, result.output
        found[method] = {p.name: p.read_bytes() for p in (work / method).iterdir()}
    return found


def _tampered(tmp_path: Path, files: dict[str, bytes], change_layer=None, change_tensors=None) -> Path:
    import json

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "tampered"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if change_layer is not None:
        config = json.loads((folder / "adapter_config.json").read_text())
        change_layer(config["layers"][sorted(config["layers"])[0]])
        (folder / "adapter_config.json").write_text(json.dumps(config))
    if change_tensors is not None:
        tensors = load_file(folder / "adapter_model.safetensors")
        change_tensors(tensors)
        save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def _first(tensors: dict, part: str) -> str:
    return next(k for k in sorted(tensors) if part in k)


def _negative_plain_index(tensors: dict) -> None:
    from wavecompress.methods.index_codec import GAPS_SUFFIX, PLAIN_SUFFIX, decode_gaps

    key = _first(tensors, GAPS_SUFFIX)
    plain = decode_gaps(tensors.pop(key)).clone()
    plain[0] = -1
    tensors[key[: -len(GAPS_SUFFIX)] + PLAIN_SUFFIX] = plain


TAMPERED = {
    "non-orthogonal-wavelet": ("waveft", dict(change_layer=lambda layer: layer.update(wavelet="bior2.2")), "not orthogonal"),
    "wavelet-as-number": ("waveft", dict(change_layer=lambda layer: layer.update(wavelet=4)), "expected a wavelet name"),
    "levels-as-string": ("waveft", dict(change_layer=lambda layer: layer.update(levels="2")), "two non-negative integers"),
    "levels-too-deep-for-the-shape": ("waveft", dict(change_layer=lambda layer: layer.update(levels=[9, 9])), "do not fit"),
    "wara-band-rank-1e9": ("wara", dict(change_layer=lambda layer: layer["bands"][0].__setitem__(2, 10**9)), "above its size"),
    "wara-band-outside": ("wara", dict(change_layer=lambda layer: layer["bands"][0].__setitem__(0, 99)), "is not [row band"),
    "wara-bands-as-bools": ("wara", dict(change_layer=lambda layer: layer.update(bands=[[True, True, True]])), "is not [row band"),
    "stored-tensors-shape-1e12": ("waveft", dict(change_layer=lambda layer: layer["stored_tensors"]["waveft_spectrum"].update(
        shape=[10**6, 10**6])), "stored_tensors"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_output_is_refused_by_the_cli_in_one_line(case: str, tmp_path: Path, outputs) -> None:
    from test_adversarial import cli, one_error_line, snapshot

    method, change, needle = TAMPERED[case]
    folder = _tampered(tmp_path, outputs[method], **change)
    before = snapshot(tmp_path)
    result = cli("convert", folder, "--budget", 50, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert needle in one_error_line(result.output)
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["negative-index", "non-orthogonal-wavelet", "wara-band-rank-1e9", "stored-tensors-shape-1e12"])
def test_the_peft_loader_refuses_what_the_cli_refuses(case: str, tmp_path: Path, outputs) -> None:
    """load_adapter runs the readers' own validation before PEFT applies stored indices (torch would wrap -1)."""
    import wavecompress
    from conftest import tiny_bert
    from wavecompress.errors import InputError

    method, change, needle = ("waveft", dict(change_tensors=_negative_plain_index), "negative indices") \
        if case == "negative-index" else TAMPERED[case]
    folder = _tampered(tmp_path, outputs[method], **change)
    with pytest.raises(InputError, match=needle):
        wavecompress.load_adapter(tiny_bert(), folder)


def test_a_tampered_band_rank_is_refused_within_a_memory_limit(tmp_path: Path, outputs) -> None:
    """A few-byte config edit asking for a rank of 10⁹ is refused before anything sized by it is allocated:
    peak resident memory of the whole command stays under 1.5 GB."""
    folder = _tampered(tmp_path, outputs["wara"], change_layer=lambda layer: layer["bands"][0].__setitem__(2, 10**9))
    peak_file = tmp_path / "peak"
    measured = ("import atexit, resource; atexit.register(lambda: open(%r, 'w').write(str(resource.getrusage("
                "resource.RUSAGE_SELF).ru_maxrss))); from wavecompress.cli import main; main(prog_name='wavecompress')" % str(peak_file))
    result = subprocess.run([sys.executable, "-c", measured, "convert", str(folder), "--budget", "50", "--out",
                             str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "above its size" in result.stderr and "Traceback" not in result.stderr
    assert int(peak_file.read_text()) < 1.5 * 2**20, f"peak {int(peak_file.read_text()) >> 10} MB"  # ru_maxrss is in KB


# ---------------------------------------------------------------- DoRA on fan_in_fan_out (GPT-2 Conv1D)


def test_dora_on_gpt2_conv1d_equals_peft_merged_minus_base(tmp_path: Path) -> None:
    """GPT-2 stores Conv1D weights (in, out); DoRA's column norms and the delta must both be taken in
    PEFT's orientation. attn.c_proj is square, so a missing transpose would still fit in shape: only
    the values catch it (relative error 0.9 without it)."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    import wavecompress as wc
    from conftest import tiny_gpt2

    base_dir = tmp_path / "base"
    tiny_gpt2().save_pretrained(base_dir)
    peft_model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=["attn.c_proj"],
                                                        fan_in_fan_out=True, use_dora=True))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            elif "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(tmp_path / "dora"))
    base = tiny_gpt2().state_dict()
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    deltas = {layer.name: layer.to_dense() for layer in wc.load_deltas(tmp_path / "dora", base=base_dir).layers}
    assert "h.0.attn.c_proj" in deltas and deltas["h.0.attn.c_proj"].shape == (32, 32)
    assert sorted(deltas) == ["h.0.attn.c_proj", "h.1.attn.c_proj"]  # square: only the values can catch a missing transpose
    for name, delta in deltas.items():
        reference = (merged[name + ".weight"] - base[name + ".weight"]).T  # Conv1D (in, out) → (out, in)
        assert float(reference.norm()) > 0.1
        torch.testing.assert_close(delta, reference, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- one module, one tensor


def _peft_lora_folder(tmp_path: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    from conftest import make_peft_lora

    folder, _ = make_peft_lora(tmp_path / "lora")
    tensors = load_file(folder / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def _also_unprefixed(tensors: dict) -> None:
    key = next(k for k in sorted(tensors) if "lora_A" in k)
    tensors[key[len("base_model.model."):]] = tensors[key] * 2


def _second_adapter_name(tensors: dict) -> None:
    for key in [k for k in sorted(tensors) if "layer.1.attention.self.query" in k]:
        tensors[key.replace(".weight", ".other.weight")] = tensors.pop(key)


@pytest.mark.parametrize("change, needle", [(_also_unprefixed, "same module"), (_second_adapter_name, "two adapters")],
                         ids=["prefixed-and-unprefixed", "two-adapter-names"])
def test_a_module_stored_twice_is_refused_not_dropped(tmp_path: Path, change, needle: str) -> None:
    from test_adversarial import cli, one_error_line

    folder = _peft_lora_folder(tmp_path, change)
    result = cli("convert", folder, "--budget", 100, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert needle in one_error_line(result.output)


def test_a_tensor_in_two_shards_follows_the_index(tmp_path: Path) -> None:
    """The index's weight_map says which shard holds a tensor; a stale copy in another shard is ignored,
    and a copy the index does not settle is refused."""
    import json

    import torch
    from safetensors.torch import save_file

    from wavecompress.deltas.checkpoints import Checkpoint
    from wavecompress.errors import InputError

    folder = tmp_path / "model"
    folder.mkdir()
    right, stale = torch.ones(4, 4), torch.zeros(4, 4)
    save_file({"a.weight": right, "b.weight": torch.ones(2, 2)}, folder / "model-1.safetensors")
    save_file({"a.weight": stale}, folder / "model-2.safetensors")  # read last: it used to win
    index = {"weight_map": {"a.weight": "model-1.safetensors", "b.weight": "model-1.safetensors", "c.weight": "model-2.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    checkpoint = Checkpoint(folder)
    assert checkpoint.location["a.weight"].name == "model-1.safetensors"
    index["weight_map"].pop("a.weight")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="two shards"):
        Checkpoint(folder)


# ---------------------------------------------------------------- bounded work on hostile headers


def test_a_header_of_a_million_empty_tensors_is_refused_within_1_5_gb(tmp_path: Path) -> None:
    """1.2 M empty tensor entries (an 88 MB header) are counted before the header is parsed: one line, exit 2,
    peak resident memory under 1.5 GB."""
    entries = ",".join(f'"m{i}.lora_down.weight":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(1_200_000))
    header = ("{" + entries + "}").encode()
    (tmp_path / "many.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    peak_file = tmp_path / "peak"
    measured = ("import atexit, resource; atexit.register(lambda: open(%r, 'w').write(str(resource.getrusage("
                "resource.RUSAGE_SELF).ru_maxrss))); from wavecompress.cli import main; main(prog_name='wavecompress')" % str(peak_file))
    result = subprocess.run([sys.executable, "-c", measured, "convert", str(tmp_path / "many.safetensors"), "--budget", "50",
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "declares 1200000 tensors" in lines[0], result.stderr[-2000:]
    assert int(peak_file.read_text()) < 1.5 * 2**20, f"peak {int(peak_file.read_text()) >> 10} MB"


def test_a_malformed_test_hold_variable_is_not_an_internal_error(tmp_path: Path) -> None:
    from test_adversarial import cli

    result = cli("convert", FIXTURE, "--budget", 100, "--out", tmp_path / "o", "--quiet", WAVECOMPRESS_TEST_HOLD_STAGING="soon")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "adapter_model.safetensors").is_file()
