"""Equal bytes and equal values: lora (global), waveft, wara in bf16, error and held-out BBC accuracy.

Two cases: the shipped LoRA fixture (low-rank) and a full fine-tune of the same base model on the
same task (not low-rank; made once by ``benchmarks/full_finetune_bbc.py``, cached in
out/full-finetune-bbc). Every cell is one ``wavecompress.compress`` with ``allocate="global"`` and
``dtype="bfloat16"``: at equal bytes with ``max_size`` (the whole adapter_model.safetensors, header
and carried classifier included, as ``convert --max-size``), at equal values with ``budget_total``
= per-layer budget × layers. Each output is saved, read back with ``wavecompress.reconstruct`` and
merged into the base weights (W + ΔŴ) for the accuracy on the 420 held-out BBC texts.

    python benchmarks/reorder_table.py --currencies-only     # this table alone
    python benchmarks/currency_table.py --cases fixture      # same, one case
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
sys.path.insert(0, str(REPO / "benchmarks"))

import wavecompress as wc  # noqa: E402
from wavecompress.deltas import read_full_finetune  # noqa: E402
from wavecompress.errors import InputError  # noqa: E402

METHODS = ("lora", "waveft", "wara")
SIZES = ("100kB", "300kB", "1MB")
BUDGETS = (1000, 3000, 8192)


def load_case(name: str):
    """(source deltas, original accuracy label, fn(deltas, passthrough) → accuracy) for one case."""
    from bbc_task import build_base_model, evaluate_accuracy, load_bbc_splits, load_tokenizer
    from reorder_table import merged_model

    test = load_bbc_splits()["test"]
    tokenizer = load_tokenizer()

    def accuracy(deltas: dict[str, torch.Tensor], passthrough: dict[str, torch.Tensor]) -> float:
        return evaluate_accuracy(merged_model(deltas, passthrough, build_base_model), tokenizer, test)

    return case_deltas(name), accuracy


def case_deltas(name: str):
    """The deltas of one case, ``fixture`` or ``full-finetune`` (made once by full_finetune_bbc.py),
    every layer read once (a streamed full fine-tune's layers are listed)."""
    if name == "fixture":
        source = wc.load_deltas(REPO / "fixtures" / "minilm-bbc-lora")
    else:
        from full_finetune_bbc import ensure_full_finetune

        base, tuned, _ = ensure_full_finetune()
        source = read_full_finetune(base, tuned, [], [])
    source.layers = list(source.layers)
    return source


def run_case(name: str, sizes: tuple[str, ...], budgets: tuple[int, ...]) -> None:
    source, accuracy = load_case(name)
    layers = source.layers
    start = time.perf_counter()
    exact = accuracy({layer.name: layer.to_dense() for layer in layers}, source.passthrough)
    zero = accuracy({}, source.passthrough)
    print(f"\n{name}: {len(layers)} layers, {sum(l.shape[0] * l.shape[1] for l in layers)} weights; "
          f"accuracy with the exact ΔW {exact:.4f}, with ΔW = 0 {zero:.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    columns = [("bytes", s) for s in sizes] + [("values", b) for b in budgets]
    header = f"  {'method (bf16, global)':22s}" + "".join(
        f"{(s if kind == 'bytes' else f'{s}/layer values'):>28s}" for kind, s in columns)
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            cells = []
            for kind, size in columns:
                options = {"max_size": size} if kind == "bytes" else {"budget_total": size * len(layers)}
                try:
                    result = wc.compress(source, method=method, allocate="global", dtype="bfloat16", baselines=(), **options)
                except InputError as exc:  # e.g. a size below the permutations' bytes
                    cells.append("—")
                    print(f"    ({method} at {size}: {exc})", flush=True)
                    continue
                out = result.save(Path(tmp) / f"{method}-{kind}-{size}")
                file_bytes = (out / "adapter_model.safetensors").stat().st_size
                acc = accuracy(wc.reconstruct(out), wc.load_deltas(out).passthrough)
                cells.append(f"{result.report.relative_error:.4f} {acc:.4f} ({file_bytes / 1000:.0f}kB)")
            print(f"  {method:22s}" + "".join(f"{c:>28s}" for c in cells), flush=True)
    print("  cells: relative error, held-out accuracy (adapter_model.safetensors size)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["fixture", "full-finetune"], choices=["fixture", "full-finetune"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    for case in args.cases:
        run_case(case, tuple(args.sizes), tuple(args.budgets))


if __name__ == "__main__":
    main()
