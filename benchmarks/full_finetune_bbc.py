"""A full fine-tune delta that is not low-rank: MiniLM-L6 fine-tuned on BBC News, every linear weight.

Fine-tunes the fixture's base model (all-MiniLM-L6-v2 with the seed-0 classifier head, as
``fixtures/bbc_task.py`` builds it) on the BBC task for a short while on CPU, and writes the base and
tuned models as transformers folders (``config.json`` + ``model.safetensors``) into a cache folder
(default ``out/full-finetune-bbc``, git-ignored), so the training runs once. Convert the pair with

    wavecompress convert --base out/full-finetune-bbc/base --tuned out/full-finetune-bbc/tuned --budget 3000

Every 2-D linear weight is trained (the classifier's included); embeddings, LayerNorms and biases
stay frozen, so W_base + ΔW for the linear layers alone reproduces the tuned model exactly and the
held-out accuracy of a converted delta measures only what the conversion lost. Seeds fixed;
``--steps`` × ``--batch-size`` examples of at most ``--max-length`` tokens (defaults: 60 × 16 × 32,
a few minutes on 2 CPU cores).

    python benchmarks/full_finetune_bbc.py              # trains once, then prints the cached record
    python benchmarks/full_finetune_bbc.py --force      # train again
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "fixtures"))

from bbc_task import build_base_model, evaluate_accuracy, load_bbc_splits, load_tokenizer  # noqa: E402

DEFAULT_CACHE = REPO / "out" / "full-finetune-bbc"
RECORD = "training.json"


def set_seeds(seed: int) -> None:
    """Seed every RNG training touches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trainable_linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight of every nn.Linear (the only parameters trained); everything else frozen."""
    for param in model.parameters():
        param.requires_grad_(False)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    for weight in weights:
        weight.requires_grad_(True)
    return weights


def train(args: argparse.Namespace, out: Path) -> dict:
    """Fine-tune, save base/ and tuned/ under ``out``, return the training record."""
    from transformers import get_linear_schedule_with_warmup

    torch.set_num_threads(args.threads)
    set_seeds(args.seed)
    splits = load_bbc_splits()
    tokenizer = load_tokenizer()
    model = build_base_model(args.seed)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging / "base", safe_serialization=True)
    weights = trainable_linear_weights(model)
    optimizer = torch.optim.AdamW(weights, lr=args.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, args.steps // 10, args.steps)
    train_set = list(splits["train"])
    rng = random.Random(args.seed)
    order: list[int] = []
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        if len(order) < args.batch_size:
            order += rng.sample(range(len(train_set)), len(train_set))
        batch = [train_set[i] for i in order[: args.batch_size]]
        del order[: args.batch_size]
        inputs = tokenizer([t for t, _ in batch], truncation=True, max_length=args.max_length, padding=True,
                           return_tensors="pt")
        loss = nn.functional.cross_entropy(model(**inputs).logits, torch.tensor([y for _, y in batch]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    model.save_pretrained(staging / "tuned", safe_serialization=True)
    accuracy = evaluate_accuracy(model, tokenizer, splits["test"])
    base_accuracy = evaluate_accuracy(build_base_model(args.seed), tokenizer, splits["test"])
    record = {
        "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr,
        "seed": args.seed, "threads": args.threads, "trained": "every nn.Linear weight (embeddings, norms, biases frozen)",
        "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu, 1),
        "test_examples": len(splits["test"]), "tuned_accuracy": accuracy, "base_accuracy": base_accuracy,
    }
    (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return record


def ensure_full_finetune(cache: Path = DEFAULT_CACHE, **overrides) -> tuple[Path, Path, dict]:
    """(base folder, tuned folder, training record), training first unless ``cache`` holds them."""
    args = parser().parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    if not (cache / RECORD).is_file():
        train(args, cache)
    return cache / "base", cache / "tuned", json.loads((cache / RECORD).read_text())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for base/, tuned/ and the record")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true", help="train again even if the cache holds a result")
    return p


def main() -> None:
    args = parser().parse_args()
    if args.force or not (args.cache / RECORD).is_file():
        record = train(args, args.cache)
    else:
        record = json.loads((args.cache / RECORD).read_text())
    print(json.dumps(record, indent=2))
    print(f"convert with: wavecompress convert --base {args.cache / 'base'} --tuned {args.cache / 'tuned'} --budget 3000")


if __name__ == "__main__":
    main()
