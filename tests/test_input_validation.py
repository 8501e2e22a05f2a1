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


@pytest.mark.parametrize("case", ["negative-index", "non-orthogonal-wavelet", "wara-band-rank-1e9"])
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
