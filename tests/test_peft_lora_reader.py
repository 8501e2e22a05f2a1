"""The PEFT LoRA reader against PEFT's own get_delta_weight on real adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import wavecompress as wc
from conftest import make_peft_lora, peft_delta_weights


def assert_deltas_match(path: Path, peft_model, atol: float = 1e-6) -> None:
    ours = {layer.name: layer.to_dense() for layer in wc.load_deltas(path).layers}
    reference = peft_delta_weights(peft_model)
    assert set(ours) == set(reference)
    for name, delta in reference.items():
        assert ours[name].shape == delta.shape, name
        assert torch.allclose(ours[name], delta.float(), atol=atol, rtol=1e-5), name


def test_plain_lora_delta_equals_peft(tmp_path: Path) -> None:
    path, model = make_peft_lora(tmp_path / "a")
    assert_deltas_match(path, model)
    assert_deltas_match(path / "adapter_model.safetensors", model)


def test_rslora_rank_and_alpha_patterns_are_honoured(tmp_path: Path) -> None:
    path, model = make_peft_lora(
        tmp_path / "b", r=4, lora_alpha=16, use_rslora=True,
        target_modules=["query", "value", "dense"],
        rank_pattern={"value": 2, "layer.1.attention.output.dense": 6}, alpha_pattern={"query": 3},
    )
    deltas = wc.load_deltas(path)
    ranks = {layer.name: layer.info["rank"] for layer in deltas.layers}
    assert ranks["encoder.layer.0.attention.self.value"] == 2
    assert ranks["encoder.layer.1.attention.output.dense"] == 6
    assert_deltas_match(path, model)


def test_fan_in_fan_out_conv1d_lora(tmp_path: Path) -> None:
    path, model = make_peft_lora(tmp_path / "g", base="gpt2")
    deltas = wc.load_deltas(path)
    c_attn = next(layer for layer in deltas.layers if layer.name.endswith("0.attn.c_attn"))
    assert c_attn.shape == (96, 32)  # (d_out, d_in) for a 32 -> 96 projection
    assert_deltas_match(path, model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(tmp_path: Path, dtype: torch.dtype) -> None:
    path, model = make_peft_lora(tmp_path / "h", dtype=dtype)
    deltas = wc.load_deltas(path)
    assert all(layer.left.dtype == torch.float32 for layer in deltas.layers)
    assert deltas.layers[0].info["dtype"] == str(dtype).replace("torch.", "")
    in_half = peft_delta_weights(model)  # PEFT's ΔW computed in half precision
    assert_deltas_match(path, model.float())  # float32 maths on the stored factors: agreement is exact (measured 0)
    # ... and the tolerance above sees half-precision maths (fp16 differs by 2.4e-4, bf16 by 1.9e-3)
    reference = peft_delta_weights(model)
    assert max(float((in_half[n] - reference[n]).abs().max()) for n in reference) > 1e-4


def test_modules_to_save_tensors_pass_through(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, num_labels=3)
    model = get_peft_model(BertForSequenceClassification(config), LoraConfig(r=2, target_modules=["query"], modules_to_save=["classifier"]))
    model.save_pretrained(str(tmp_path / "c"))
    deltas = wc.load_deltas(tmp_path / "c")
    assert [layer.name for layer in deltas.layers] == ["bert.encoder.layer.0.attention.self.query"]
    assert any("classifier" in key for key in deltas.passthrough)


def test_contradictory_rank_in_config_is_refused(tmp_path: Path) -> None:
    path, _ = make_peft_lora(tmp_path / "r")
    config = json.loads((path / "adapter_config.json").read_text())
    config["r"] = 8
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(wc.InputError, match=r"lora_A.weight has rank 4 but adapter_config.json says r=8"):
        wc.load_deltas(path)
