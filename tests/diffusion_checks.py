"""Independent checks for diffusion pipelines: fixed UNet / text-encoder inputs and W + ΔW merged by hand.

Nothing here goes through wavecompress: the references the diffusion tests compare loaders against.
"""

from __future__ import annotations

import pytest
import torch

from diffusion_models import LOCON_TARGETS, TEXT_TARGETS, kohya_modules


@pytest.fixture(autouse=True)
def no_grad():
    """Each diffusion test runs without autograd (weights are edited in place), the rest of the session with it."""
    with torch.no_grad():
        yield


def unet_output(unet) -> torch.Tensor:
    """The UNet's prediction for fixed latents, timesteps and context."""
    generator = torch.Generator().manual_seed(1)
    sample, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 5, 16, generator=generator)
    return unet(sample, torch.tensor([10, 500]), context).sample


def text_output(text_encoder) -> torch.Tensor:
    """The text encoder's last hidden state for fixed token ids."""
    return text_encoder(torch.tensor([[0, 3, 4, 9, 1]])).last_hidden_state


def merged(pipe, deltas: dict[str, torch.Tensor], names: dict[str, tuple[str, str]]) -> None:
    """Add ΔW to the weights by hand: ``names`` maps each delta's name to (component, module path)."""
    for name, delta in deltas.items():
        component, path = names[name]
        module = getattr(pipe, component).get_submodule(path)
        module.weight += delta.reshape(module.weight.shape).to(module.weight.dtype)


def kohya_places(pipe) -> dict[str, tuple[str, str]]:
    """{sd-scripts name: (component, module path)}, built with the same walk sd-scripts makes."""
    places = {}
    for component, prefix, targets in (("unet", "lora_unet", LOCON_TARGETS), ("text_encoder", "lora_te", TEXT_TARGETS)):
        paths = {id(m): p for p, m in getattr(pipe, component).named_modules()}
        for name, module in kohya_modules(getattr(pipe, component), prefix, targets, True).items():
            places[name] = (component, paths[id(module)])
    return places


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())
