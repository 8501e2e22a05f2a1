"""Output-logit agreement of each converted adapter with the original LoRA, on held-out BBC texts.

For each output method at one budget (default 3000 values per layer) the LoRA fixture is
converted, saved, loaded back through ``PeftModel.from_pretrained`` (wavecompress formats via
``import wavecompress``, the seeded export through PEFT's own WaveFT), and run on the held-out BBC
split. Printed per method, all measured in this run against the original adapter's logits:
mean KL(original ‖ converted), max |Δlogit|, top-1 agreement, accuracy, and the relative weight
error from the report. The scale reference drops every layer delta but keeps the adapter's
trained classifier head (ratio column: KL / KL of that reference). A last column checks that PEFT's forward equals the dense reference
W + ΔŴ merged into the weights (max |Δlogit|).

The reordered variants use ``--order-by`` (default: the library's current default ordering), so a
table measured with another ordering can be regenerated with the same flag.

    python benchmarks/logit_agreement.py [--adapter fixtures/minilm-bbc-lora] [--budget 3000] [--quick] [--texts N]
                                         [--order-by auto|svd|fiedler|greedy|snake|best]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "fixtures"))

import wavecompress  # noqa: E402  (registers the WAVECOMPRESS_* types with PEFT)
from wavecompress.methods.options import DEFAULT_REORDER, REORDER_CHOICES  # noqa: E402

# (label, method, reorder)
VARIANTS = [
    ("waveft (reordered)", "waveft", True),
    ("waveft (plain)", "waveft", False),
    ("wara (reordered)", "wara", True),
    ("wara (plain)", "wara", False),
    ("lora (SVD)", "lora", False),
    ("waveft-seeded (stock PEFT)", "waveft-seeded", False),
]


@torch.no_grad()
def logits_of(model: torch.nn.Module, tokenizer, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    from bbc_task import encode

    model.eval()
    out = [model(**encode(tokenizer, texts[i : i + batch_size])).logits.float() for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def agreement(reference: torch.Tensor, other: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean KL(reference ‖ other), max |Δlogit|, top-1 agreement, accuracy."""
    log_p = reference.log_softmax(-1)
    log_q = other.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return {
        "kl": float(kl),
        "max_abs": float((reference - other).abs().max()),
        "top1": float((reference.argmax(-1) == other.argmax(-1)).float().mean()),
        "accuracy": float((other.argmax(-1) == labels).float().mean()),
    }


def dense_merged(build_base_model, deltas: dict[str, torch.Tensor], peft_model) -> torch.nn.Module:
    """The base model with W + ΔŴ written into its weights and the adapter's classifier head copied in."""
    base = build_base_model()
    with torch.no_grad():
        for name, delta in deltas.items():
            base.get_submodule(name).weight += delta
        head = peft_model.base_model.model.classifier
        trained = head.modules_to_save["default"] if hasattr(head, "modules_to_save") else head
        base.classifier.load_state_dict(trained.state_dict())
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=REPO / "fixtures" / "minilm-bbc-lora")
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="96 held-out texts, no plain variants, no dense-reference check")
    parser.add_argument("--texts", type=int, default=None, help="number of held-out texts (default: all, 96 with --quick)")
    parser.add_argument("--order-by", choices=REORDER_CHOICES, default=DEFAULT_REORDER,
                        help=f"row/column ordering of the reordered variants [default: {DEFAULT_REORDER}]")
    args = parser.parse_args()

    from bbc_task import build_base_model, load_adapter_model, load_bbc_splits, load_tokenizer
    from peft import PeftModel

    started = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    test = load_bbc_splits()["test"]
    count = args.texts or (96 if args.quick else len(test))
    test = test[:count]
    texts = [text for text, _ in test]
    labels = torch.tensor([label for _, label in test])
    tokenizer = load_tokenizer()

    original = load_adapter_model(args.adapter)
    reference = logits_of(original, tokenizer, texts)
    rows = [("original LoRA", agreement(reference, reference, labels), None, 0.0, None)]
    # Scale reference: the adapter's trained classifier head alone, every layer delta dropped.
    base_logits = logits_of(dense_merged(build_base_model, {}, original), tokenizer, texts)
    rows.append(("no ΔW (trained head only)", agreement(reference, base_logits, labels), 1.0, 1.0, None))
    base_kl = rows[-1][1]["kl"]

    with tempfile.TemporaryDirectory() as tmp:
        for label, method, reorder in VARIANTS:
            if args.quick and label.endswith("(plain)"):
                continue
            if reorder:
                label = label.replace("(reordered)", f"(reordered, {args.order_by})")
            result = wavecompress.compress(args.adapter, budget=args.budget, method=method,
                                           reorder=args.order_by if reorder else False, baselines=())
            out = result.save(Path(tmp) / label.split()[0] / ("r" if reorder else "p"))
            model = PeftModel.from_pretrained(build_base_model(), str(out)).eval()
            logits = logits_of(model, tokenizer, texts)
            check = None
            if not args.quick:
                check = float((logits - logits_of(dense_merged(build_base_model, result.to_deltas(), model), tokenizer, texts)).abs().max())
            stats = agreement(reference, logits, labels)
            rows.append((label, stats, result.report.relative_error, stats["kl"] / base_kl if base_kl else float("nan"), check))

    print(f"adapter {args.adapter}, budget {args.budget} values per layer, {count} held-out BBC texts, "
          f"reordered variants ordered by {args.order_by}")
    print("| output | weight rel. err | KL(orig ‖ out) | KL / KL(no ΔW) | max \\|Δlogit\\| | top-1 agree | accuracy | PEFT vs dense W+ΔŴ |")
    print("|---|---|---|---|---|---|---|---|")
    for label, stats, weight_error, ratio, check in rows:
        werr = f"{weight_error:.4f}" if weight_error is not None else "–"
        dense = f"{check:.1e}" if check is not None else "–"
        print(f"| {label} | {werr} | {stats['kl']:.3g} | {ratio:.3f} | {stats['max_abs']:.3g} | "
              f"{stats['top1']:.3f} | {stats['accuracy']:.3f} | {dense} |")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
