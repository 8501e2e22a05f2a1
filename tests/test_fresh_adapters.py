"""Fresh WaRA / top-k WaveFT adapters through peft.get_peft_model: zero at the start, trainable, saved and loaded."""

from __future__ import annotations

import warnings

import pytest
import torch

peft = pytest.importorskip("peft")

from peft import get_peft_model  # noqa: E402

import wavecompress  # noqa: E402
from test_library_models import tiny_llama  # noqa: E402

TOKENS = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("config_class", ["WaraConfig", "WaveFTTopKConfig"])
def test_fresh_adapter_trains_saves_and_loads(config_class, tmp_path):
    config = getattr(wavecompress, config_class)(budget=200, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    base = tiny_llama()
    with torch.no_grad():
        reference = base(TOKENS).logits.clone()
    model = get_peft_model(base, config)
    with torch.no_grad():
        assert torch.equal(model(TOKENS).logits, reference)  # zero-initialised: ΔŴ = 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert 0 < sum(p.numel() for p in trainable) <= 200 * 4  # at most budget values in each of the 4 layers
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(TOKENS, labels=TOKENS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    model.save_pretrained(tmp_path / "fresh")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved config loads through the plain class, no unexpected keys
        loaded = wavecompress.load_adapter(tiny_llama(), tmp_path / "fresh")
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS).logits, model(TOKENS).logits)
    # the trained adapter is an ordinary wavecompress output: its dense deltas are the layers' own
    deltas = wavecompress.reconstruct(tmp_path / "fresh")
    for name, delta in deltas.items():
        module = model.base_model.model.get_submodule(name)
        torch.testing.assert_close(delta, module.get_delta_weight("default").detach())
        assert delta.abs().max() > 0


def test_fresh_config_validates_in_library_words():
    with pytest.raises(wavecompress.InputError, match="budget must be a positive number"):
        wavecompress.WaraConfig(budget=0, target_modules=["q_proj"])
    with pytest.raises(wavecompress.InputError, match="wavelet"):
        wavecompress.WaveFTTopKConfig(budget=10, wavelet="nope", target_modules=["q_proj"])
