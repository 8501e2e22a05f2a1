"""wavecompress.finetune at top level: the caller's model comes back as given; a PeftModel is refused in one line saying what to pass."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from peft import get_peft_model  # noqa: E402

import wavecompress  # noqa: E402
from test_finetune import texts, word_tokenizer  # noqa: E402
from test_library_models import lora_config, tiny_llama  # noqa: E402


def test_finetune_restores_the_callers_model_and_takes_a_peft_model():
    teacher = get_peft_model(tiny_llama(), lora_config())
    result = wavecompress.compress(teacher, budget=120, method="wara", baselines=())
    examples = [text for text, _ in texts(12, seed=3)]
    tokenizer = word_tokenizer()

    base = tiny_llama()
    base.train()
    base.model.embed_tokens.weight.requires_grad_(False)  # a mix the caller chose
    flags = {name: p.requires_grad for name, p in base.named_parameters()}
    weights = {name: p.detach().clone() for name, p in base.named_parameters()}
    tuned = wavecompress.finetune(result, base, tokenizer, examples, steps=3, eval_every=3, device="cpu")
    assert tuned.layers and base.training
    assert {name: p.requires_grad for name, p in base.named_parameters()} == flags
    assert all(torch.equal(p, weights[name]) for name, p in base.named_parameters())  # base weights never change

    with pytest.raises(wavecompress.InputError, match="finetune takes the bare base model, but this PeftModelForCausalLM"):
        wavecompress.finetune(result, teacher, tokenizer, examples, steps=3, device="cpu")
    unloaded = teacher.unload()  # what the message says to pass: the same run as on a fresh base
    again = wavecompress.finetune(result, unloaded, tokenizer, examples, steps=3, eval_every=3, device="cpu")
    assert again.summary().split("\n")[0] == tuned.summary().split("\n")[0]
