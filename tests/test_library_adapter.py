"""CompressedAdapter from and to models: load(path) inverts save, to_peft_model equals save + load_adapter and
trains exactly the stored values, apply_to adds it beside other adapters, push_to_hub makes the push commit."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")

from peft import get_peft_model  # noqa: E402

import wavecompress  # noqa: E402
from wavecompress import CompressedAdapter  # noqa: E402
from test_library_models import lora_config, tiny_llama  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "minilm-bbc-lora"
TOKENS = torch.tensor([[1, 5, 9, 3, 7, 2]])


@pytest.fixture(scope="module")
def lora_model():
    return get_peft_model(tiny_llama(), lora_config())


@pytest.mark.parametrize("method", ["wara", "waveft", "lora"])
def test_load_inverts_save(method, tmp_path):
    result = wavecompress.compress(FIXTURE, budget=3000, method=method)
    result.save(tmp_path / "a")
    loaded = CompressedAdapter.load(tmp_path / "a")
    assert loaded.method == method and [layer.name for layer in loaded.layers] == [layer.name for layer in result.layers]
    for mine, theirs in zip(loaded.layers, result.layers):
        for key in theirs.tensors:
            assert torch.equal(mine.tensors[key], theirs.tensors[key])
    for name, summary in result.report.overall().items():  # totals rebuilt from the saved report
        assert loaded.report.overall()[name].relative_error == pytest.approx(summary.relative_error, rel=1e-6)
        assert loaded.report.overall()[name].bytes == summary.bytes
    loaded.save(tmp_path / "b")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name


@pytest.mark.parametrize("method", ["wara", "lora"])
def test_to_peft_model_equals_load_adapter(lora_model, method, tmp_path):
    result = wavecompress.compress(lora_model, budget=120, method=method, baselines=())
    result.save(tmp_path / "out")
    expected = wavecompress.load_adapter(tiny_llama(), tmp_path / "out")
    model = result.to_peft_model(tiny_llama())
    assert type(model) is type(expected) and model.peft_config["default"].peft_type == expected.peft_config["default"].peft_type
    with torch.no_grad():
        assert torch.equal(model(TOKENS).logits, expected(TOKENS).logits)
        assert not torch.equal(model(TOKENS).logits, tiny_llama()(TOKENS).logits)  # the adapter does something
    assert not any(p.requires_grad for p in model.parameters())


def test_to_peft_model_trains_exactly_the_stored_values(lora_model):
    result = wavecompress.compress(lora_model, budget=120, method="wara", baselines=())
    model = result.to_peft_model(tiny_llama(), is_trainable=True)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    stored = sum(t.numel() for layer in result.layers for t in layer.tensors.values() if t.is_floating_point())
    assert sum(p.numel() for p in trainable.values()) == stored == result.report.overall()["wara"].stored_values
    stored_values = sorted(float(v) for layer in result.layers for t in layer.tensors.values() if t.is_floating_point()
                           for v in t.flatten())
    assert sorted(float(v) for p in trainable.values() for v in p.detach().flatten()) == stored_values
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    model(TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == set(trainable)  # only the stored values moved


def test_apply_to_adds_beside_existing_adapters(lora_model):
    result = wavecompress.compress(lora_model, budget=120, method="lora", baselines=())
    model = get_peft_model(tiny_llama(), lora_config(r=2))
    result.apply_to(model, adapter_name="compressed")
    assert set(model.peft_config) == {"default", "compressed"} and model.active_adapter == "compressed"
    alone = result.to_peft_model(tiny_llama())
    with torch.no_grad():
        assert torch.allclose(model(TOKENS).logits, alone(TOKENS).logits, atol=1e-6)
    with pytest.raises(ValueError, match="already holds an adapter named 'compressed'"):
        result.apply_to(model, adapter_name="compressed")
    wara = wavecompress.compress(lora_model, budget=120, method="wara", baselines=())
    with pytest.raises(ValueError, match="the model's adapters are LORA and this adapter is WAVECOMPRESS_WARA"):
        wara.apply_to(model, adapter_name="wara")
    with pytest.raises(TypeError, match="apply_to"):
        result.to_peft_model(model)


def test_push_to_hub_makes_the_push_commit(tmp_path):
    """push_to_hub in a fresh process against the local fake Hub uploads the files `wavecompress push` uploads
    (the card's repo id aside), in one commit with the same message."""
    from hub_server import FakeHub

    with FakeHub({"hf_alice_write": ("alice", "write")}) as hub:
        # TRANSFORMERS_OFFLINE too: huggingface_hub reads it as HF_HUB_OFFLINE (fixtures/bbc_task.py sets it when imported)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "home"), HF_TOKEN="hf_alice_write", HF_HUB_DISABLE_TELEMETRY="1")
        code = (f"import wavecompress; r = wavecompress.compress({str(FIXTURE)!r}, budget=3000, method='wara'); "
                "r.save('out'); print(r.push_to_hub('alice/lib').commit_url)")
        for args in (["-c", code], ["-c", "from wavecompress.cli import main; main(prog_name='wavecompress')",
                                    "push", "out", "alice/cli"]):
            done = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
        lib, cli = hub.repos["alice/lib"], hub.repos["alice/cli"]
        (lib_sha, lib_files), (cli_sha, cli_files) = lib.files("main"), cli.files("main")
    assert len(lib.commits) == len(cli.commits) and sorted(lib_files) == sorted(cli_files)
    assert lib.messages[lib_sha] == cli.messages[cli_sha]
    assert {"adapter_model.safetensors", "adapter_config.json", "wavecompress_report.json", "README.md"} <= set(lib_files)
    for name in lib_files:
        assert lib_files[name].replace(b"alice/lib", b"alice/cli") == cli_files[name], name
