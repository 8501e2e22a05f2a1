"""Fine-tune wall time per stored format: the fixture compressed at 3000 values per layer, then
distilled from the original LoRA (unlabelled BBC training texts) for the same number of steps.

Times ``wavecompress.finetune.finetune`` as a whole (model set-up, before/after evaluation and the
steps) and, separately, the student's ΔŴ forward + backward per step (every layer's reconstruct,
the part each format implements). Goal: wara within 2× of waveft.

    python benchmarks/finetune_speed.py                 # 300 steps on CUDA (CPU: 20)
    python benchmarks/finetune_speed.py --quick         # 20 steps, 320 texts
    python benchmarks/finetune_speed.py --device cpu --steps 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "fixtures"))
sys.path.insert(0, str(REPO))

import wavecompress as wc  # noqa: E402
from wavecompress.finetune import FinetuneConfig, finetune  # noqa: E402
from wavecompress.finetune.trainable import StudentDeltas  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def delta_step_ms(layers, device: torch.device, repeats: int) -> float:
    """Median ms of one ΔŴ forward + backward over every layer (what a training step adds per format)."""
    student = StudentDeltas(layers).to(device)
    times = []
    for i in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        loss = sum(delta.square().sum() for delta in student.materialize().values())
        loss.backward()
        sync(device)
        if i >= 2:
            times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=REPO / "fixtures" / "minilm-bbc-lora")
    parser.add_argument("--methods", nargs="+", default=["lora", "waveft", "wara"])
    parser.add_argument("--steps", type=int, default=None, help="[default: 300 on CUDA, 20 on CPU or with --quick]")
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    steps = args.steps or (300 if device.type == "cuda" and not args.quick else 20)
    from bbc_task import build_base_model, load_bbc_splits, load_tokenizer

    tokenizer = load_tokenizer()
    texts = [text for text, _ in load_bbc_splits()["train"]][: 320 if args.quick else 1500]
    teacher = wc.load_deltas(args.adapter)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}; fixture {args.adapter.name} at {args.budget} values per layer, "
          f"{steps} steps, batch 16, {len(texts)} texts")
    print(f"| method | fine-tune s | ms per step | ΔŴ fwd+bwd ms per step |")
    print(f"|---|---:|---:|---:|")
    seconds = {}
    for method in args.methods:
        result = wc.compress(teacher, budget=args.budget, method=method)
        config = FinetuneConfig(steps=steps, lr=3e-4, batch_size=16, max_length=64, progress=False, device=str(device), keep_best=False)
        finetune(result, build_base_model(0), tokenizer, texts[:64], config=FinetuneConfig(**{**config.__dict__, "steps": 2}))  # warm-up
        sync(device)
        start = time.perf_counter()
        finetune(result, build_base_model(0), tokenizer, texts, config=config)
        sync(device)
        seconds[method] = time.perf_counter() - start
        delta_ms = delta_step_ms(result.layers, device, 5 if args.quick else 20)
        print(f"| {method} | {seconds[method]:.1f} | {1000 * seconds[method] / steps:.0f} | {delta_ms:.2f} |", flush=True)
    if "wara" in seconds and "waveft" in seconds:
        ratio = seconds["wara"] / seconds["waveft"]
        verdict = "pass" if ratio <= 2 else "fail"
        print(f"ratio: wara / waveft fine-tune time {ratio:.2f} (goal <= 2)")
        print(f"SUMMARY|finetune wara/waveft time ({device.type}, {steps} steps)|{ratio:.2f}x|<= 2x|{verdict}")
    for method, value in seconds.items():
        print(f"SUMMARY|finetune {method} s ({device.type}, {steps} steps)|{value:.1f}||info")


if __name__ == "__main__":
    main()
