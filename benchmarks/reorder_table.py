"""Plain vs reordered WaveFT top-k and WaRA against truncated SVD and sparse, on a real LoRA.

Prints, per budget (values per layer), the relative Frobenius error over all layers of every
method with and without row/column reordering (each ordering, several depths), the bytes per
layer that each stores (permutations included), and the held-out accuracy of the fixture's
model after conversion: each converted adapter is saved, read back with
``wavecompress.reconstruct`` and merged into the base weights (W + ΔŴ; fan_in_fan_out is False
for BERT) together with the adapter's passthrough classifier tensors.

    python benchmarks/reorder_table.py                      # fixtures/minilm-bbc-lora
    python benchmarks/reorder_table.py --quick              # fewer variants, under ~3 min
    python benchmarks/reorder_table.py --adapter DIR --no-accuracy
    python benchmarks/reorder_table.py --currencies-only    # equal bytes and equal values, bf16, + full fine-tune
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "fixtures"))

import wavecompress as wc  # noqa: E402
from wavecompress.layout import PREFIX  # noqa: E402
from wavecompress.methods import MethodOptions, get_method  # noqa: E402
from wavecompress.methods.options import DEFAULT_REORDER  # noqa: E402
from wavecompress.transforms.reorder import ORDERINGS  # noqa: E402


def variants(quick: bool) -> list[tuple[str, str, MethodOptions]]:
    """(label, method, options) for every row of the error table."""
    rows = [("lora (truncated SVD)", "lora", MethodOptions()), ("sparse (weight domain)", "sparse", MethodOptions())]
    waveft_levels = (1, 5) if quick else (1, 3, 5, 7)
    wara_levels = (3,) if quick else (1, 3, 5)
    orderings = ("svd", "greedy", "snake", DEFAULT_REORDER) if quick else ORDERINGS + (DEFAULT_REORDER,)
    rows += [(f"waveft plain L{lv}", "waveft", MethodOptions(levels=lv)) for lv in (1, 5)]
    rows += [(f"waveft {o} L{lv}", "waveft", MethodOptions(levels=lv, reorder=o)) for o in orderings for lv in waveft_levels]
    rows += [(f"wara plain L{lv}", "wara", MethodOptions(levels=lv)) for lv in (3,)]
    rows += [(f"wara {o} L{lv}", "wara", MethodOptions(levels=lv, reorder=o)) for o in orderings for lv in wara_levels]
    return rows


def overall(layers, method: str, budget: int, options: MethodOptions) -> tuple[float, float, float]:
    """(relative error over all layers, mean stored values per layer, mean bytes per layer)."""
    compressor = get_method(method)
    err = energy = values = size = 0.0
    for delta in layers:
        kept = compressor.compress(delta, budget, options)
        err += kept.error_sq
        energy += kept.energy
        values += kept.stored_values
        size += kept.stored_bytes
    n = len(layers)
    return (err / energy) ** 0.5, values / n, size / n


def error_table(layers, budgets: list[int], quick: bool) -> None:
    rows = variants(quick)
    print(f"\nrelative Frobenius error over all {len(layers)} layers (mean values | bytes per layer)")
    header = f"{'method':26s}" + "".join(f"{'b=' + str(b):>26s}" for b in budgets)
    print(header)
    print("-" * len(header))
    for label, method, options in rows:
        start = time.perf_counter()
        cells = []
        for budget in budgets:
            err, values, size = overall(layers, method, budget, options)
            cells.append(f"{err:.4f} ({values:5.0f} | {size:6.0f})")
        print(f"{label:26s}" + "".join(f"{c:>26s}" for c in cells) + f"   [{time.perf_counter() - start:.1f}s]", flush=True)


def padding_table(layers, budget: int, crop: int = 4) -> None:
    """Shapes that do not divide by 2^L: the exact axis_levels rule vs zero-padding to 2^L."""
    from wavecompress.deltas import LayerDelta

    print(f"\nnon-divisible shapes: every layer cropped by {crop} rows and columns, budget {budget}, waveft svd-reordered")
    for mode in ("axis_levels (exact)", "zero-pad to 2^5"):
        err = energy = 0.0
        for delta in layers:
            dense = delta.to_dense()[: delta.shape[0] - crop, : delta.shape[1] - crop]
            if mode.startswith("axis"):
                kept = get_method("waveft").compress(LayerDelta.from_dense(delta.name, dense), budget, MethodOptions(levels=5, reorder="svd"))
                err += kept.error_sq
            else:
                # Reorder first (on the real rows), then pad the reordered matrix with zeros.
                from wavecompress.methods.wavelet_domain import reorder_delta

                moved, _ = reorder_delta(LayerDelta.from_dense(delta.name, dense), "svd")
                rows, cols = [-(-n // 32) * 32 for n in dense.shape]
                padded = torch.zeros(rows, cols)
                padded[: dense.shape[0], : dense.shape[1]] = moved.dense
                kept = get_method("waveft").compress(LayerDelta.from_dense(delta.name, padded), budget, MethodOptions(levels=5))
                rebuilt = get_method("waveft").reconstruct(kept.tensors, kept.meta, kept.shape)[: dense.shape[0], : dense.shape[1]]
                err += float((rebuilt.double() - moved.dense.double()).square().sum())
            energy += float(dense.double().square().sum())
        shapes = sorted({(d.shape[0] - crop, d.shape[1] - crop) for d in layers})
        print(f"  {mode:22s} error {(err / energy) ** 0.5:.4f}   shapes {shapes}")


def merged_model(deltas: dict[str, torch.Tensor], passthrough: dict[str, torch.Tensor], build_base_model):
    """The base model with W + ΔW in every adapted Linear and the adapter's passthrough tensors."""
    model = build_base_model()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            linear = modules[name]
            linear.weight += delta.to(linear.weight.dtype)  # fan_in_fan_out is False for BERT
        state = {}
        for key, value in passthrough.items():
            key = key[len(PREFIX):] if key.startswith(PREFIX) else key
            state[key.replace(".modules_to_save.default", "")] = value
        missing = set(state) - set(model.state_dict())
        if missing:
            raise KeyError(f"passthrough tensors not in the model: {sorted(missing)}")
        model.load_state_dict(state, strict=False)
    return model.eval()


def accuracy_table(adapter: Path, budgets: list[int], quick: bool) -> None:
    from bbc_task import build_base_model, evaluate_accuracy, load_adapter_model, load_bbc_splits, load_tokenizer

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    test = load_bbc_splits()["test"]
    tokenizer = load_tokenizer()
    source = wc.load_deltas(adapter)

    def acc(deltas: dict[str, torch.Tensor], passthrough: dict[str, torch.Tensor]) -> float:
        return evaluate_accuracy(merged_model(deltas, passthrough, build_base_model), tokenizer, test)

    start = time.perf_counter()
    exact = wc.reconstruct(adapter)
    peft_acc = evaluate_accuracy(load_adapter_model(adapter), tokenizer, test)
    merged_acc = acc(exact, source.passthrough)
    zero_acc = acc({}, source.passthrough)
    print(f"\nheld-out accuracy on {len(test)} BBC test examples ({time.perf_counter() - start:.0f}s for the references)")
    print(f"  original LoRA through PEFT {peft_acc:.4f}; merged W+ΔW {merged_acc:.4f}; classifier only (ΔW = 0) {zero_acc:.4f}")
    default = DEFAULT_REORDER
    configs = [("lora", "lora", False), ("waveft plain L1", "waveft", False), ("waveft svd L5", "waveft", "svd"),
               ("waveft greedy L5", "waveft", "greedy"), (f"waveft {default} L5", "waveft", default), ("wara plain L3", "wara", False),
               ("wara svd L3", "wara", "svd"), ("wara greedy L3", "wara", "greedy"), (f"wara {default} L3", "wara", default)]
    if quick:
        configs = [c for c in configs if c[0] in ("lora", f"waveft {default} L5", "wara plain L3", f"wara {default} L3")]
    header = f"  {'method':18s}" + "".join(f"{'b=' + str(b):>16s}" for b in budgets)
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, reorder in configs:
            cells = []
            for budget in budgets:
                result = wc.compress(source, budget=budget, method=method, reorder=reorder, baselines=())
                out = result.save(Path(tmp) / f"{method}-{reorder}-{budget}")
                rebuilt = wc.reconstruct(out)
                passthrough = wc.load_deltas(out).passthrough
                cells.append(f"{acc(rebuilt, passthrough):.4f} ({result.report.relative_error:.3f})")
            print(f"  {label:18s}" + "".join(f"{c:>16s}" for c in cells), flush=True)
    print("  cells: accuracy (relative error of the saved adapter)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=REPO / "fixtures" / "minilm-bbc-lora")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 3000, 8192])
    parser.add_argument("--quick", action="store_true", help="fewer orderings and depths (under ~3 minutes)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the task-accuracy table")
    parser.add_argument("--currencies-only", action="store_true",
                        help="only the equal-bytes / equal-values table (fixture and full fine-tune, bf16; currency_table.py)")
    args = parser.parse_args()
    if args.currencies_only:
        import currency_table

        currency_table.main([])
        return
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    source = wc.load_deltas(args.adapter)
    layers = source.layers
    shapes = sorted({d.shape for d in layers})
    ranks = sorted({d.rank_bound for d in layers})
    print(f"{args.adapter}: {len(layers)} layers, shapes {shapes}, rank {ranks}")
    error_table(layers, args.budgets, args.quick)
    if not args.quick:
        padding_table(layers, 3000)
    if not args.no_accuracy:
        accuracy_table(args.adapter, args.budgets, args.quick)
    if not args.quick:  # equal bytes vs equal values, fixture and full fine-tune, bf16 (benchmarks/currency_table.py)
        import currency_table

        currency_table.main([])


if __name__ == "__main__":
    main()
