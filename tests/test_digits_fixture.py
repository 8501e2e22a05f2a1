"""The committed digits UNet fixture: it loads, its kohya files are what sd-scripts writes, and its metrics reproduce."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import digits_task as task  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

METRICS = json.loads((task.FOLDER / "metrics.json").read_text())


def kohya_file(label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = task.FOLDER / f"{label}.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata


@pytest.fixture(scope="module")
def base():
    return task.load_base()


def test_kohya_files_name_every_module_sd_scripts_walks(base):
    unet, embeddings = base
    assert embeddings.shape == (10, task.CLASS_TOKENS, task.UNET_CONFIG["cross_attention_dim"])
    for label, targets, convs in (("lora", task.LORA_TARGETS, False), ("locon", task.LOCON_TARGETS, True)):
        tensors, metadata = kohya_file(label)
        names = task.kohya_modules(unet, targets, convs=convs)
        # Exactly the modules sd-scripts' walk names, each with down, up and alpha.
        assert {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in tensors} == set(names)
        assert len(tensors) == 3 * len(names) == 3 * METRICS[label]["modules"]
        for name, path in names.items():
            weight = unet.get_submodule(path).weight
            down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
            assert down.dim() == up.dim() == weight.dim()
            assert up.shape[0] == weight.shape[0] and down.shape[1:] == weight.shape[1:]
            rank = down.shape[0]
            assert (rank, float(tensors[f"{name}.alpha"])) == ((4, 2.0) if weight.dim() == 4 and weight.shape[-1] == 3 else (8, 4.0))
        assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_network_dim"] == "8"
        assert json.loads(metadata["ss_network_args"]) == ({"conv_dim": "4", "conv_alpha": "2.0"} if convs else {})
        # The LoRA adapts the 1×1 proj_in/proj_out; only the LoCon adapts 3×3 convolutions.
        kernels = {tuple(t.shape[-2:]) for k, t in tensors.items() if k.endswith("lora_down.weight") and t.dim() == 4}
        assert kernels == ({(1, 1), (3, 3)} if convs else {(1, 1)})
        assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names


def test_sd_scripts_hashes_match_the_tensors():
    from train_diffusion_fixture import sd_scripts_hashes

    for label in ("lora", "locon"):
        tensors, metadata = kohya_file(label)
        assert sd_scripts_hashes(tensors, metadata) == (metadata["sshs_model_hash"], metadata["sshs_legacy_hash"])


def test_metrics_reproduce_and_the_adapters_learn_the_new_digit(base):
    unet, embeddings = base
    losses = METRICS["held_out_denoising_loss"]
    assert task.denoising_loss(unet, embeddings) == pytest.approx(losses["base"], rel=1e-4)
    names = task.kohya_modules(unet, task.LOCON_TARGETS, convs=True)
    for label in ("lora", "locon"):
        tensors, _ = kohya_file(label)
        merged = task.merge_kohya(task.load_base()[0], tensors, names)
        assert task.denoising_loss(merged, embeddings) == pytest.approx(losses[label], rel=1e-4)
    # Both adapters improve the held-out 9s clearly, and the LoCon's extra convolutions help.
    assert losses["lora"] < 0.9 * losses["base"]
    assert losses["locon"] < losses["lora"]
