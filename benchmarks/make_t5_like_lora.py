"""Write a t5-large-shaped PEFT LoRA (144 layers of 1024×1024, r=16) with trained-like spectra.

Each layer's ΔW = B @ A has singular values decaying like a trained adapter's (σ_k ∝ 0.8^k, the
scale varying by layer) between random orthogonal factors, seeded, so every run writes the same
file. Names follow t5-large's: 24 encoder blocks (SelfAttention q, v) and 24 decoder blocks
(SelfAttention q, v and EncDecAttention q, v). The folder is for benchmarks: never commit it.

Usage: python benchmarks/make_t5_like_lora.py [OUT]   (default /tmp/t5-like-lora)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK, SIDE, BLOCKS, ALPHA = 16, 1024, 24, 32


def layer_names() -> list[str]:
    """The 144 target module paths of a t5-large LoRA on q and v."""
    names = []
    for block in range(BLOCKS):
        for proj in ("q", "v"):
            names.append(f"encoder.block.{block}.layer.0.SelfAttention.{proj}")
    for block in range(BLOCKS):
        for proj in ("q", "v"):
            names.append(f"decoder.block.{block}.layer.0.SelfAttention.{proj}")
            names.append(f"decoder.block.{block}.layer.1.EncDecAttention.{proj}")
    return names


def factors(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B @ A = U diag(σ) Vᵀ: orthonormal U, V from QR of Gaussians, σ decaying geometrically."""
    u, _ = torch.linalg.qr(torch.randn(SIDE, RANK, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(SIDE, RANK, generator=generator))
    scale = 0.02 * float(torch.empty(1).uniform_(0.5, 2.0, generator=generator))
    sigma = scale * 0.8 ** torch.arange(RANK, dtype=torch.float32)
    root = sigma.sqrt() * (RANK / ALPHA) ** 0.5  # PEFT scales B @ A by alpha / r
    return (u * root).contiguous(), (root[:, None] * v.T).contiguous()


def write(out: Path, seed: int = 0) -> Path:
    """Write adapter_model.safetensors and adapter_config.json into ``out``; returns ``out``."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in layer_names():
        b, a = factors(generator)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": ["q", "v"],
              "base_model_name_or_path": "google-t5/t5-large", "task_type": "SEQ_2_SEQ_LM", "bias": "none",
              "fan_in_fan_out": False, "lora_dropout": 0.0, "use_dora": False, "use_rslora": False}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    target = write(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/t5-like-lora"))
    print(f"wrote {target} (144 layers of {SIDE}x{SIDE}, r={RANK})")
