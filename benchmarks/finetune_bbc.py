"""Recovery fine-tune on the BBC LoRA fixture: held-out accuracy and KL before/after, the kept step, seconds.

For each method and budget (3000 values per layer, and the per-layer budget that stores ~25% of
the LoRA's values) the fixture is compressed with wavecompress's defaults, then fine-tuned by
distillation from the original LoRA on the *unlabelled* training texts (no labels used; the
fine-tune holds 10% of them out and keeps its best step on those). Every model is evaluated on the
fixture's test split (never seen by the fine-tune) with ``bbc_task.evaluate_accuracy``:
- original LoRA: ``bbc_task.load_adapter_model`` (PEFT),
- compressed / fine-tuned: the base model with each ΔŴ merged into its weights and the adapter's
  saved classifier head loaded (independent of the fine-tune's hooks).
KL is KL(original LoRA ‖ adapter) on the test texts; "ho KL" is the fine-tune's own teacher-student
KL on its held-out slice of the training texts, the loss keep-best compares.

    python benchmarks/finetune_bbc.py [--device cuda|cpu] [--quick]       # the library defaults
    python benchmarks/finetune_bbc.py --sweep --methods waveft --lrs 1e-4 3e-4 1e-3 --steps-grid 100 300
"""

from __future__ import annotations

import argparse
import itertools
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
from wavecompress.finetune import FinetuneConfig, apply_passthrough, defaults, finetune  # noqa: E402
from wavecompress.methods import get_method  # noqa: E402
from wavecompress.methods.options import DEFAULT_REORDER, REORDER_CHOICES  # noqa: E402



@torch.no_grad()
def merged_model(build_base_model, deltas: dict[str, torch.Tensor], passthrough: dict[str, torch.Tensor],
                 device: torch.device) -> torch.nn.Module:
    """Base model + ΔŴ merged into each Linear weight + the adapter's saved head."""
    model = build_base_model(0)
    apply_passthrough(model, passthrough)
    for name, delta in deltas.items():
        model.get_submodule(name).weight += delta.to(torch.float32)
    return model.to(device).eval()


@torch.no_grad()
def test_metrics(model: torch.nn.Module, tokenizer, test: list[tuple[str, int]], reference: torch.Tensor | None,
                 device: torch.device, batch_size: int = 64) -> tuple[float, float, torch.Tensor]:
    """(accuracy, KL(reference ‖ model) or 0, logits) on the test split (float32)."""
    from bbc_task import encode

    model.eval()
    chunks = []
    for i in range(0, len(test), batch_size):
        inputs = {k: v.to(device) for k, v in encode(tokenizer, [t for t, _ in test[i:i + batch_size]]).items()}
        chunks.append(model(**inputs).logits.float().cpu())
    out = torch.cat(chunks)
    accuracy = float((out.argmax(-1) == torch.tensor([y for _, y in test])).float().mean())
    if reference is None:
        return accuracy, 0.0, out
    p, q = reference.log_softmax(-1), out.log_softmax(-1)
    return accuracy, float((p.exp() * (p - q)).sum(-1).mean()), out


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=REPO / "fixtures" / "minilm-bbc-lora")
    parser.add_argument("--device", default="auto", help="cuda, cpu, or auto (CUDA when available)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: waveft wara lora (--sweep: waveft)")
    parser.add_argument("--budgets", nargs="+", default=None,
                        help="values per layer, or 25%% for a quarter of the LoRA's [default: 3000 25%%; --sweep, --quick: 3000]")
    parser.add_argument("--order-by", choices=REORDER_CHOICES, default=DEFAULT_REORDER,
                        help="row/column ordering of the reordered methods [default: the library's, %(default)s]")
    parser.add_argument("--steps", default=None,
                        help=f"steps or auto [default: the library's, {defaults.STEPS} on CUDA, {defaults.CPU_STEPS} on CPU]")
    parser.add_argument("--lr", type=float, default=defaults.LR)
    parser.add_argument("--warmup", type=float, default=defaults.WARMUP_FRACTION)
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    parser.add_argument("--max-length", type=int, default=64,
                        help="tokens per distillation text [default 64, the fixture's own: shorter texts than the test's "
                        "lowered the held-out KL but raised the test KL]")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto",
                        help="bf16 autocast of the student on CUDA [default auto: on for CUDA]")
    parser.add_argument("--train-texts", type=int, default=None,
                        help="unlabelled distillation texts, 10%% held out [default: all 1685; 320 made the test KL worse]")
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized: waveft at 3000 only (one fine-tune), the library's defaults otherwise")
    parser.add_argument("--sweep", action="store_true", help="a table over --lrs × --steps-grid × --warmups × --batches per method")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--steps-grid", nargs="+", type=int, default=[100, 300])
    parser.add_argument("--warmups", nargs="+", type=float, default=[defaults.WARMUP_FRACTION])
    parser.add_argument("--batches", nargs="+", type=int, default=[defaults.BATCH_SIZE])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    return parser.parse_args()


def main() -> None:
    args = parse()
    if not (args.adapter / "adapter_config.json").exists():
        sys.exit(f"{args.adapter}: no adapter here (the fixture is built by fixtures/train_fixture.py)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    from bbc_task import build_base_model, load_adapter_model, load_bbc_splits, load_tokenizer

    methods = args.methods or (["waveft"] if args.quick or args.sweep else ["waveft", "wara", "lora"])
    n_train = args.train_texts
    max_length = args.max_length
    steps = args.steps if args.steps is None or args.steps == "auto" else int(args.steps)
    amp = {"auto": None, "on": True, "off": False}[args.mixed_precision]
    splits = load_bbc_splits()
    tokenizer = load_tokenizer()
    test = splits["test"]
    train_texts = [text for text, _ in splits["train"]][:n_train]

    started = time.perf_counter()
    original = load_adapter_model(args.adapter).to(device)
    original_acc, _, original_logits = test_metrics(original, tokenizer, test, None, device)
    del original
    teacher = wc.load_deltas(args.adapter)
    lora_values = teacher.stored_values
    n_layers = len(teacher.layers)
    budgets = [round(0.25 * lora_values / n_layers) if b == "25%" else int(b)
               for b in (args.budgets or (["3000"] if args.sweep or args.quick else ["3000", "25%"]))]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"fixture {args.adapter.name}: {n_layers} layers, {lora_values} LoRA values; test texts {len(test)}; "
          f"distillation texts {len(train_texts)} (unlabelled, 10% held out), max {max_length} tokens; order-by {args.order_by}; "
          f"device {name}; mixed precision {args.mixed_precision}")
    print(f"original LoRA: test accuracy {original_acc:.4f}\n", flush=True)

    def base_config(**change) -> FinetuneConfig:
        settings = dict(lr=args.lr, warmup_fraction=args.warmup, batch_size=args.batch_size, max_length=max_length,
                        eval_every=args.eval_every, patience=args.patience, device=str(device), mixed_precision=amp,
                        progress=False)
        if steps is not None:
            settings["steps"] = steps
        settings.update(change)
        return FinetuneConfig(**settings)

    if args.sweep:
        grid = list(itertools.product(args.lrs, args.steps_grid, args.warmups, args.batches))
        header = (f"{'method':<7} {'budget':>6} {'lr':>7} {'steps':>5} {'warm':>4} {'batch':>5} | {'ho KL':>8} {'ho KL ft':>8} | "
                  f"{'KL':>8} {'KL ft':>8} | {'acc':>6} {'acc ft':>6} | {'kept':>9} | {'ft s':>5}")
        configs = [(f"{lr:7.0e} {n:5d} {w:4.2f} {b:5d}", base_config(lr=lr, steps=n, warmup_fraction=w, batch_size=b))
                   for lr, n, w, b in grid]
    else:
        header = (f"{'method':<7} {'budget':>6} {'values %LoRA':>12} | {'ho KL':>8} {'ho KL ft':>8} | {'KL':>8} {'KL ft':>8} | "
                  f"{'acc':>6} {'acc ft':>6} | {'kept':>9} | {'s/step':>6} {'ft s':>5} {'cpu s':>5}")
        configs = [("", base_config())]
        c = configs[0][1]
        n, every, patience = c.plan(device.type)
        print(f"fine-tune settings: steps {c.steps or n}, lr {c.lr:g}, warm-up {c.warmup_fraction:g}, batch {c.batch_size}, "
              f"eval every {every}, patience {patience}")
    print(header)
    print("-" * len(header), flush=True)
    for budget in budgets:
        for method in methods:
            result = wc.compress(teacher, budget=budget, method=method, reorder=args.order_by)
            values = result.report.overall()[method].stored_values
            acc, kl, _ = test_metrics(merged_model(build_base_model, result.to_deltas(), teacher.passthrough, device),
                                      tokenizer, test, original_logits, device)
            for label, config in configs:
                t0, c0 = time.perf_counter(), time.process_time()
                log = None if args.sweep else (lambda line: print(f"  {method} @{budget}: {line}", flush=True))
                tuned = finetune(result, build_base_model(0), tokenizer, train_texts, config=config, log=log)
                seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
                deltas = {layer.name: get_method(method).reconstruct(layer.tensors, layer.meta, layer.shape)
                          for layer in tuned.layers if layer.tensors}
                acc_ft, kl_ft, _ = test_metrics(merged_model(build_base_model, deltas, teacher.passthrough, device),
                                                tokenizer, test, original_logits, device)
                kept = f"{tuned.kept_step}/{len(tuned.losses)}"
                common = (f"{tuned.before.distill_loss:8.5f} {tuned.after.distill_loss:8.5f} | {kl:8.5f} {kl_ft:8.5f} | "
                          f"{acc:6.4f} {acc_ft:6.4f} | {kept:>9}")
                if args.sweep:
                    print(f"{method:<7} {budget:>6} {label} | {common} | {seconds:5.0f}", flush=True)
                else:
                    per_step = seconds / max(1, len(tuned.losses))
                    print(f"{method:<7} {budget:>6} {100 * values / lora_values:11.1f}% | {common} | {per_step:6.3f} {seconds:5.0f} "
                          f"{cpu_seconds:5.0f}", flush=True)
    print(f"\nKL: mean KL(original LoRA ‖ adapter) on the {len(test)} test texts; ho KL: the fine-tune's teacher-student KL "
          f"on its held-out 10% of the distillation texts; acc: test accuracy (original LoRA {original_acc:.4f}); ft: after "
          f"the fine-tune; kept: the step keep-best returned / steps run (0 = the input unchanged); ft s: fine-tune wall time "
          f"with its evaluations (s/step includes them); cpu s: this process's CPU time in the fine-tune (all threads; "
          f"on a shared machine the wall time is longer). Total {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
