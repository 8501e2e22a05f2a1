"""Tiny diffusers models built from configs, and LoRA files written the way sd-scripts and diffusers write them.

The UNet has SD1.5's layout at toy size: cross-attention blocks whose ``proj_in``/``proj_out`` are 1×1
convolutions (``use_linear_projection=False``), ResNet blocks with 3×3 convolutions, a down- and an upsampler.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

# sd-scripts' networks/lora.py: the module classes whose Linear / Conv2d children a LoRA adapts.
LORA_TARGETS = ("Transformer2DModel",)
LOCON_TARGETS = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_TARGETS = ("CLIPAttention", "CLIPMLP")


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8, use_linear_projection=False,
    ).eval()


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval()


def tiny_tokenizer(folder: Path):
    """A CLIPTokenizer from a tiny vocabulary written to ``folder`` (no download)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = ["<|startoftext|>", "<|endoftext|>"] + [f"{c}</w>" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def tiny_pipeline(folder: Path, seed: int = 0):
    """A StableDiffusionPipeline of tiny components, built offline."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8, sample_size=8)
    return StableDiffusionPipeline(vae=vae, text_encoder=tiny_text_encoder(seed), tokenizer=tiny_tokenizer(folder), unet=tiny_unet(seed),
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def kohya_modules(model: nn.Module, prefix: str, targets: tuple[str, ...], convs: bool) -> dict[str, nn.Module]:
    """{sd-scripts name: module}: the Linear (and with ``convs`` every Conv2d, else only 1×1) children of the
    target classes, named prefix + '_' + path with dots replaced by underscores."""
    found = {}
    for name, module in model.named_modules():
        if type(module).__name__ not in targets:
            continue
        for child_name, child in module.named_modules():
            is_linear = isinstance(child, nn.Linear)
            is_conv = isinstance(child, nn.Conv2d) and (convs or child.kernel_size == (1, 1))
            if child_name and (is_linear or is_conv):
                path = f"{name}.{child_name}"
                if prefix.startswith("lora_te") and not path.startswith("text_model."):
                    path = "text_model." + path  # sd-scripts' CLIP paths, as transformers 4 named them
                found[f"{prefix}_{path}".replace(".", "_")] = child
    return found


def kohya_lora(path: Path, modules: dict[str, nn.Module], rank: int = 4, alpha: float = 2.0, conv_rank: int = 3,
               conv_alpha: float = 1.5, seed: int = 0, metadata: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Write a kohya LoRA/LoCon of ``modules`` at ``path`` (fp16 factors, alpha tensors) and return
    {name: true ΔW in the module's weight shape}, merged as sd-scripts merges (alpha/r · up @ down)."""
    generator = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for name, module in sorted(modules.items()):
        weight = module.weight
        k3 = weight.dim() == 4 and weight.shape[2:] != (1, 1)
        r, a = (conv_rank, conv_alpha) if k3 else (rank, alpha)
        down = (0.3 * torch.randn((r, *weight.shape[1:]), generator=generator)).half()
        up = (0.3 * torch.randn((weight.shape[0], r, *([1] * (weight.dim() - 2))), generator=generator)).half()
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
        tensors[f"{name}.alpha"] = torch.tensor(a).half()
        deltas[name] = (a / r * (up.float().flatten(1) @ down.float().flatten(1))).reshape(weight.shape)
    header = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
              "modelspec.architecture": "stable-diffusion-v1/lora", "sshs_model_hash": "stale", **(metadata or {})}
    save_file(tensors, str(path), metadata=header)
    return deltas
