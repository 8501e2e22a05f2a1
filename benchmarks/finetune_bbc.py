"""Held-out BBC accuracy of the LoRA fixture, its compressed adapters, and those after a recovery fine-tune.

For each method and budget (3000 values per layer, and the per-layer budget that stores ~25% of
the LoRA's values) the fixture is compressed with wavecompress's defaults, then fine-tuned by
distillation from the original LoRA on the *unlabelled* training texts (no labels used). Every
model is evaluated on the held-out test split with ``bbc_task.evaluate_accuracy``:
- original LoRA: ``bbc_task.load_adapter_model`` (PEFT),
- compressed / fine-tuned: the base model with each ΔŴ merged into its weights and the adapter's
  saved classifier head loaded (independent of the fine-tune's hooks).
Also printed, all from this run: teacher-student KL on the held-out texts, relative weight error,
stored values as a fraction of the LoRA's, and the fine-tune's wall time.

    python benchmarks/finetune_bbc.py [--adapter fixtures/minilm-bbc-lora] [--steps 200] [--quick]
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
from wavecompress.finetune import FinetuneConfig, apply_passthrough, finetune  # noqa: E402
from wavecompress.methods import get_method  # noqa: E402


@torch.no_grad()
def merged_model(build_base_model, deltas: dict[str, torch.Tensor], passthrough: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Base model + ΔŴ merged into each Linear weight + the adapter's saved head."""
    model = build_base_model(0)
    apply_passthrough(model, passthrough)
    for name, delta in deltas.items():
        model.get_submodule(name).weight += delta.to(torch.float32)
    return model.eval()


@torch.no_grad()
def logits(model: torch.nn.Module, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    from bbc_task import encode

    model.eval()
    return torch.cat([model(**encode(tokenizer, texts[i:i + batch_size])).logits.float() for i in range(0, len(texts), batch_size)])


def kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    p, q = reference.log_softmax(-1), other.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=REPO / "fixtures" / "minilm-bbc-lora")
    parser.add_argument("--methods", nargs="+", default=None, help="default: waveft wara lora (quick: waveft, convert's default)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tune steps [default 200, quick 40]")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-texts", type=int, default=None, help="unlabelled training texts to distil on [default all, quick 320]")
    parser.add_argument("--quick", action="store_true", help="one method, 40 steps on 320 texts (a few minutes on 2 free CPU cores)")
    args = parser.parse_args()
    if not (args.adapter / "adapter_config.json").exists():
        sys.exit(f"{args.adapter}: no adapter here (the fixture is built by fixtures/train_fixture.py)")
    from bbc_task import build_base_model, evaluate_accuracy, load_adapter_model, load_bbc_splits, load_tokenizer

    methods = args.methods or (["waveft"] if args.quick else ["waveft", "wara", "lora"])
    steps = args.steps if args.steps is not None else (40 if args.quick else 200)
    n_train = args.train_texts if args.train_texts is not None else (320 if args.quick else None)
    splits = load_bbc_splits()
    tokenizer = load_tokenizer()
    test = splits["test"]
    test_texts = [text for text, _ in test]
    train_texts = [text for text, _ in splits["train"]][:n_train]

    started = time.perf_counter()
    original = load_adapter_model(args.adapter)
    original_acc = evaluate_accuracy(original, tokenizer, test)
    original_logits = logits(original, tokenizer, test_texts)
    teacher = wc.load_deltas(args.adapter)
    lora_values = teacher.stored_values
    n_layers = len(teacher.layers)
    budget_25 = max(1, round(0.25 * lora_values / n_layers))
    print(f"fixture {args.adapter.name}: {n_layers} layers, {lora_values} LoRA values; test texts {len(test)}, "
          f"distillation texts {len(train_texts)} (unlabelled), {steps} steps, lr {args.lr:g}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"original LoRA: held-out accuracy {original_acc:.4f}\n")
    header = (f"{'method':<8} {'budget':>6} {'values %LoRA':>12} | {'acc':>6} {'acc ft':>6} | {'KL':>9} {'KL ft':>9} | "
              f"{'rel.err':>7} {'rel.err ft':>10} | {'ft s':>5}")
    print(header)
    print("-" * len(header))
    config = FinetuneConfig(steps=steps, lr=args.lr, batch_size=args.batch_size, max_length=64, progress=False, device="cpu")
    for budget in (3000, budget_25):
        for method in methods:
            result = wc.compress(teacher, budget=budget, method=method)
            values = result.report.overall()[method].stored_values
            compressed_model = merged_model(build_base_model, result.to_deltas(), teacher.passthrough)
            acc = evaluate_accuracy(compressed_model, tokenizer, test)
            kl_before = kl(original_logits, logits(compressed_model, tokenizer, test_texts))
            t0 = time.perf_counter()
            tuned = finetune(result, build_base_model(0), tokenizer, train_texts, config=config)
            seconds = time.perf_counter() - t0
            deltas = {layer.name: get_method(method).reconstruct(layer.tensors, layer.meta, layer.shape) for layer in tuned.layers if layer.tensors}
            tuned_model = merged_model(build_base_model, deltas, teacher.passthrough)
            acc_ft = evaluate_accuracy(tuned_model, tokenizer, test)
            kl_after = kl(original_logits, logits(tuned_model, tokenizer, test_texts))
            print(f"{method:<8} {budget:>6} {100 * values / lora_values:11.1f}% | {acc:6.4f} {acc_ft:6.4f} | {kl_before:9.5f} {kl_after:9.5f} | "
                  f"{result.report.relative_error:7.4f} {tuned.report.relative_error:10.4f} | {seconds:5.0f}", flush=True)
    print(f"\nacc: held-out accuracy (original LoRA {original_acc:.4f}); KL: mean KL(original LoRA ‖ adapter) on the test texts; "
          f"ft: after the fine-tune; rel.err: ‖ΔW − ΔŴ‖/‖ΔW‖ over all layers. Total {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
