"""Shared benchmark helpers: realistic LoRA files on disk, and timed runs in fresh child processes.

Every measured run happens in its own spawned process, so its peak RSS (``ru_maxrss`` of that
process) belongs to that run alone, and the parent's allocations (generating inputs) never count.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

# Llama-2-7B: hidden 4096, MLP 11008, 32 decoder layers; (d_out, d_in) per projection.
LLAMA2_7B_SHAPES = {
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 4096),
    "self_attn.v_proj": (4096, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (11008, 4096),
    "mlp.up_proj": (11008, 4096),
    "mlp.down_proj": (4096, 11008),
}


def write_peft_lora(folder: Path, shapes: dict[str, tuple[int, int]], n_layers: int, rank: int = 16,
                    dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) with Llama-style keys.

    Factors are random with a trained-like scale (A ~ Kaiming-uniform as PEFT initialises it, B
    small and non-zero), stored in ``dtype``.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(n_layers):
        for module, (d_out, d_in) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            bound = (1.0 / d_in) ** 0.5
            tensors[f"{key}.lora_A.weight"] = ((torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound).to(dtype)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(d_out, rank, generator=generator) * 1e-3).to(dtype)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
        "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "target_modules": sorted({m.split(".")[-1] for m in shapes}), "use_rslora": False, "use_dora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def _child(threads: int, fn: Callable[..., Any], args: tuple) -> tuple[float, float, Any]:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    extra = fn(*args)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return seconds, peak_mb, extra


def measure(fn: Callable[..., Any], *args: Any, threads: int | None = None) -> tuple[float, float, Any]:
    """(seconds, peak RSS in MB, fn's return value) of ``fn(*args)`` run in a fresh spawned process.

    The seconds cover ``fn`` only (not the interpreter start or imports); the peak RSS is the whole
    child's, imports included (about 300-400 MB for torch alone).
    """
    threads = threads or torch.get_num_threads()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_child, threads, fn, args).result()


def idle_baseline_mb() -> float:
    """Peak RSS of a child that only imports wavecompress (the floor under every RSS figure)."""
    return measure(_import_only)[1]


def _import_only() -> None:
    import wavecompress  # noqa: F401


def machine_line(threads: int) -> str:
    """One line describing where the numbers were taken (cores, threads, load)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{threads} torch threads, load average {load:.1f} at start")
