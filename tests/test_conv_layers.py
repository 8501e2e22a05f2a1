"""Convolution layers through PEFT: a PEFT LoRA on Conv2d layers, converted, loaded back in PEFT and merged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import wavecompress as wc


class ConvNet(nn.Module):
    """A 3×3 and a 1×1 convolution and a Linear head: the shapes a UNet block has."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 8, 3, padding=1)
        self.proj = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(torch.relu(self.conv(x))).mean(dim=(2, 3)))


def base_model() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet().eval()


@pytest.fixture
def conv_lora(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A PEFT LoRA (r=4, alpha 8) on both convolutions and the head, saved as PEFT saves it; its true ΔW."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["conv", "proj", "head"],
                                                    init_lora_weights=False))
    model.save_pretrained(tmp_path / "lora")
    true = {name: model.base_model.model.get_submodule(name).get_delta_weight("default").detach() for name in ("conv", "proj", "head")}
    return tmp_path / "lora", true


@pytest.mark.parametrize("method", ["wara", "waveft", "lora"])
def test_conv_outputs_load_in_peft_and_merge_like_a_dense_merge(conv_lora, tmp_path: Path, method: str) -> None:
    path, true = conv_lora
    deltas = {layer.name: layer for layer in wc.load_deltas(path).layers}
    assert deltas["conv"].shape == (8, 54) and deltas["conv"].info["weight_shape"] == (8, 6, 3, 3)
    torch.testing.assert_close(deltas["conv"].to_dense(), true["conv"].reshape(8, 54), rtol=1e-5, atol=1e-6)
    result = wc.compress(path, budget=120, method=method, baselines=())
    result.save(tmp_path / f"out-{method}")
    rebuilt = wc.reconstruct(tmp_path / f"out-{method}")
    reference = base_model()
    with torch.no_grad():  # the independent merge: W + ΔŴ by hand, ΔŴ in each weight's own shape
        for name, delta in rebuilt.items():
            weight = reference.get_submodule(name).weight
            weight += delta.reshape(weight.shape)
    x = torch.randn(3, 6, 5, 5, generator=torch.Generator().manual_seed(1))
    loaded = wc.load_adapter(base_model(), tmp_path / f"out-{method}")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=1e-4, atol=1e-5)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(x), reference(x), rtol=1e-4, atol=1e-5)
