"""Converted adapters load through PEFT on real transformers models and give the dense reference's outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import wavecompress
from conftest import REPO, make_peft_lora, peft_delta_weights, randomize_lora, tiny_bert, tiny_gpt2

METHODS = ["waveft", "wara", "lora", "waveft-seeded"]


def tiny_llama(seed: int = 0):
    """A 2-layer Llama (grouped KV heads: v_proj is 16×32, not square) built from a config."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=32)
    return LlamaModel(config).eval()


BUILDERS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}
TARGETS = {"bert": ["query", "value", "intermediate.dense"], "gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "down_proj"]}


def make_lora(tmp_path: Path, arch: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A saved PEFT LoRA of the tiny ``arch`` model and PEFT's own ΔW per layer."""
    from peft import LoraConfig, get_peft_model

    if arch != "llama":
        lora_dir, model = make_peft_lora(tmp_path / "lora", base=arch, target_modules=TARGETS[arch])
        return lora_dir, peft_delta_weights(model)
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch]))
    randomize_lora(model)
    model.save_pretrained(str(tmp_path / "lora"))
    return tmp_path / "lora", peft_delta_weights(model)


def dense_reference(arch: str, deltas: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The base model with W + ΔW written into its weights (Conv1D stores Wᵀ)."""
    from transformers.pytorch_utils import Conv1D

    model = BUILDERS[arch]()
    with torch.no_grad():
        for name, delta in deltas.items():
            module = model.get_submodule(name)
            module.weight += delta.T if isinstance(module, Conv1D) else delta
    return model


def hidden(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).last_hidden_state


def load(arch: str, path: Path, **kwargs):
    from peft import PeftModel

    return PeftModel.from_pretrained(BUILDERS[arch](), str(path), **kwargs).eval()


TOKENS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_every_output_loads_in_peft_and_matches_the_dense_reference(tmp_path: Path, arch: str) -> None:
    lora_dir, lora_deltas = make_lora(tmp_path, arch)
    # The original LoRA through PEFT equals its own dense reference.
    reference = hidden(dense_reference(arch, lora_deltas), TOKENS)
    assert torch.allclose(hidden(load(arch, lora_dir), TOKENS), reference, atol=1e-5)
    for method in METHODS:
        result = wavecompress.compress(lora_dir, budget=300, method=method)
        out = result.save(tmp_path / f"out-{method}")
        ours = result.to_deltas()
        expected = hidden(dense_reference(arch, ours), TOKENS)
        model = load(arch, out)
        got = hidden(model, TOKENS)
        assert torch.allclose(got, expected, atol=1e-5), (method, float((got - expected).abs().max()))
        # A lossy adapter really changes the outputs: the comparison above is not vacuous.
        if method != "lora":
            assert float((got - reference).abs().max()) > 1e-3
        # Round trip: merge_and_unload leaves exactly W + ΔŴ in the weights.
        merged = model.merge_and_unload()
        plain = dense_reference(arch, ours)
        for name in ours:
            assert torch.allclose(merged.get_submodule(name).weight, plain.get_submodule(name).weight, atol=1e-6), (method, name)
        assert torch.allclose(hidden(merged, TOKENS), expected, atol=1e-5)


def test_permutations_and_indices_load_as_buffers_and_values_train(tmp_path: Path) -> None:
    lora_dir, _ = make_lora(tmp_path, "bert")
    out = wavecompress.compress(lora_dir, budget=300, method="waveft", reorder=True).save(tmp_path / "waveft")
    model = load("bert", out, is_trainable=True)
    layer = model.base_model.model.get_submodule("encoder.layer.0.attention.self.query")
    stored = layer.wavecompress_tensors["default"]
    floats = dict(stored.named_parameters())
    ints = dict(stored.named_buffers())
    saved = load_file(str(out / "adapter_model.safetensors"))
    prefix = "base_model.model.encoder.layer.0.attention.self.query."
    assert set(floats) | set(ints) == {key[len(prefix):] for key in saved if key.startswith(prefix)}
    assert "waveft_spectrum" in floats and "waveft_index_gaps" in ints and len(ints) >= 2  # permutations too
    for key, value in ints.items():
        assert torch.equal(value, saved[prefix + key])
    hidden_states = model(input_ids=TOKENS).last_hidden_state
    hidden_states.square().sum().backward()
    assert floats["waveft_spectrum"].grad is not None and float(floats["waveft_spectrum"].grad.abs().sum()) > 0
    # Saving from PEFT gives back the same tensors under the same keys.
    model.save_pretrained(str(tmp_path / "resaved"))
    resaved = load_file(str(tmp_path / "resaved" / "adapter_model.safetensors"))
    assert set(resaved) == set(saved)
    for key in saved:
        assert torch.equal(resaved[key], saved[key]), key


STOCK_PEFT = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, {tests!r})
    from conftest import tiny_bert
    from peft import PeftModel
    assert "wavecompress" not in sys.modules
    result = {{}}
    for name in ("waveft", "wara"):
        try:
            PeftModel.from_pretrained(tiny_bert(), {root!r} + "/" + name)
            result[name] = "loaded"
        except Exception as exc:
            result[name] = type(exc).__name__ + ": " + str(exc)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Unexpected keyword")  # a genuine WaveFTConfig: no unknown keys
        model = PeftModel.from_pretrained(tiny_bert(), {root!r} + "/waveft-seeded")
    deltas = {{name: module.get_delta_weight("default").detach().contiguous()
               for name, module in model.base_model.model.named_modules() if type(module).__name__ == "WaveFTLinear"}}
    save_file(deltas, {root!r} + "/stock_deltas.safetensors")
    with torch.no_grad():
        save_file({{"hidden": model(input_ids=torch.arange(9)[None]).last_hidden_state.contiguous()}}, {root!r} + "/stock_out.safetensors")
    assert "wavecompress" not in sys.modules
    print(json.dumps(result))
    """
)


def test_stock_peft_refuses_wavecompress_types_and_loads_the_seeded_export(tmp_path: Path) -> None:
    lora_dir, _ = make_lora(tmp_path, "bert")
    results = {}
    for method in ("waveft", "wara", "waveft-seeded"):
        results[method] = wavecompress.compress(lora_dir, budget=300, method=method)
        results[method].save(tmp_path / method)
    script = STOCK_PEFT.format(tests=str(REPO / "tests"), root=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    refused = json.loads(run.stdout.strip().splitlines()[-1])
    assert refused["waveft"] != "loaded" and "WAVECOMPRESS_WAVEFT" in refused["waveft"]
    assert refused["wara"] != "loaded" and "WAVECOMPRESS_WARA" in refused["wara"]
    stock = load_file(str(tmp_path / "stock_deltas.safetensors"))
    ours = results["waveft-seeded"].to_deltas()
    assert set(stock) == set(ours)
    for name in ours:
        assert float((stock[name] - ours[name]).abs().max()) <= 1e-6, name
    expected = hidden(dense_reference("bert", ours), torch.arange(9)[None])
    assert torch.allclose(load_file(str(tmp_path / "stock_out.safetensors"))["hidden"], expected, atol=1e-5)


def test_import_wavecompress_does_not_import_peft_but_registers_when_it_is(tmp_path: Path) -> None:
    lora_dir, _ = make_lora(tmp_path, "bert")
    out = wavecompress.compress(lora_dir, budget=300, method="wara").save(tmp_path / "wara")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        import wavecompress
        assert "peft" not in sys.modules, "import wavecompress imported peft"
        import importlib.util
        assert importlib.util.find_spec("peft") is not None  # as transformers' is_peft_available does
        from conftest import tiny_bert
        tiny_bert()
        from peft import PeftModel
        model = PeftModel.from_pretrained(tiny_bert(), {str(out)!r})
        print(type(model.base_model).__name__)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "WavecompressModel"


def test_wrong_base_model_is_refused(tmp_path: Path) -> None:
    lora_dir, _ = make_lora(tmp_path, "llama")
    out = wavecompress.compress(lora_dir, budget=300, method="wara").save(tmp_path / "wara")
    config = json.loads((out / "adapter_config.json").read_text())
    name = sorted(config["layers"])[0]
    config["layers"][name]["shape"] = [7, 5]
    (out / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match the model"):
        load("llama", out)


def test_half_precision_base_model(tmp_path: Path) -> None:
    lora_dir, _ = make_lora(tmp_path, "bert")
    result = wavecompress.compress(lora_dir, budget=300, method="wara")
    out = result.save(tmp_path / "wara")
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_bert().to(torch.bfloat16), str(out)).eval()
    deltas = result.to_deltas()
    expected = hidden(dense_reference("bert", deltas), TOKENS)
    got = hidden(model, TOKENS).float()
    # The tolerance is bf16 rounding itself: the float32 dense reference cast to bf16 (measured 0.027 here),
    # small enough that applying only half of ΔŴ (measured 0.23) fails the check.
    rounding = float((hidden(dense_reference("bert", deltas).to(torch.bfloat16), TOKENS).float() - expected).abs().max())
    half = hidden(dense_reference("bert", {name: 0.5 * delta for name, delta in deltas.items()}), TOKENS)
    assert float((got - expected).abs().max()) <= 2 * rounding
    assert float((half - expected).abs().max()) > 4 * rounding
    merged = model.merge_and_unload()
    assert merged.get_submodule("encoder.layer.0.attention.self.query").weight.dtype == torch.bfloat16


FIXTURE = REPO / "fixtures" / "minilm-bbc-lora"


@pytest.mark.skipif(not FIXTURE.exists(), reason="fixtures/minilm-bbc-lora not present")
def test_fixture_on_its_real_base_model(tmp_path: Path) -> None:
    """The shipped MiniLM LoRA: each converted adapter through PEFT equals W + ΔŴ on real BBC text."""
    sys.path.insert(0, str(REPO / "fixtures"))
    from bbc_task import build_base_model, encode, load_bbc_splits, load_tokenizer
    from peft import PeftModel

    texts = [text for text, _ in load_bbc_splits()["test"][:4]]
    inputs = encode(load_tokenizer(), texts)
    for method in ("wara", "waveft-seeded"):
        result = wavecompress.compress(FIXTURE, budget=3000, method=method, baselines=())
        model = PeftModel.from_pretrained(build_base_model(), str(result.save(tmp_path / method))).eval()
        dense = build_base_model()
        with torch.no_grad():
            for name, delta in result.to_deltas().items():
                dense.get_submodule(name).weight += delta
            dense.classifier.load_state_dict(model.base_model.model.classifier.modules_to_save["default"].state_dict())
            got, expected = model(**inputs).logits, dense(**inputs).logits
        assert torch.allclose(got, expected, atol=1e-4), (method, float((got - expected).abs().max()))
