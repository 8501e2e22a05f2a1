"""Shared test fixtures: real PEFT LoRA adapters on tiny transformers models built in the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "fixtures" / "minilm-bbc-lora"


def tiny_bert(seed: int = 0):
    """A 2-layer BERT with hidden 32 / intermediate 64: real transformers, instant to build."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    return BertModel(config).eval()


def tiny_bert_with_deltas(deltas: dict[str, torch.Tensor]) -> torch.nn.Module:
    """tiny_bert() with each named module's weight += its dense ΔW (the merged reference)."""
    model = tiny_bert()
    with torch.no_grad():
        for name, delta in deltas.items():
            model.get_submodule(name).weight += delta
    return model


def tiny_gpt2(seed: int = 0):
    """A 2-layer GPT-2 (Conv1D layers, fan_in_fan_out) with n_embd 32."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    return GPT2Model(config).eval()


def randomize_lora(model, seed: int = 1, scale: float = 0.2) -> None:
    """PEFT initialises lora_B to zero; give every factor random values so ΔW is non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def make_peft_lora(out_dir: Path, base: str = "bert", dtype: torch.dtype = torch.float32, seed: int = 1, **lora_kwargs):
    """Save a real PEFT LoRA (random non-zero factors) of a tiny model; return (dir, peft model)."""
    from peft import LoraConfig, get_peft_model

    model = tiny_bert() if base == "bert" else tiny_gpt2()
    defaults = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"] if base == "bert" else ["c_attn", "c_proj"]}
    if base == "gpt2":
        defaults["fan_in_fan_out"] = True
    defaults.update(lora_kwargs)
    peft_model = get_peft_model(model, LoraConfig(**defaults))
    randomize_lora(peft_model, seed=seed)
    if dtype != torch.float32:
        peft_model = peft_model.to(dtype)
    peft_model.save_pretrained(str(out_dir))
    return Path(out_dir), peft_model


def peft_delta_weights(peft_model) -> dict[str, torch.Tensor]:
    """{module name: ΔW (d_out × d_in)} as PEFT itself computes it (get_delta_weight)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            delta = module.get_delta_weight("default").float()
            if module.fan_in_fan_out:
                delta = delta.T
            out[name] = delta.detach()
    return out


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    """A real PEFT LoRA folder of a tiny BERT (query/value, r=4, alpha=8)."""
    return make_peft_lora(tmp_path / "lora")[0]
