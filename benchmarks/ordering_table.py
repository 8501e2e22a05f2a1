"""Relative error of each row/column ordering at budgets from 300 to 30000 values per layer, WaRA and
WaveFT, on the shipped LoRA fixture and on a full fine-tune of the same model and task.

Every cell is one ``wavecompress.compress`` (uniform budget per layer, default depths, no report
baselines). The full fine-tune is made once by ``benchmarks/full_finetune_bbc.py`` (cached in
out/full-finetune-bbc, a few minutes of CPU the first time). This is the measurement behind the
default ordering, ``auto`` (transforms/reorder.py).

    python benchmarks/ordering_table.py                        # both cases, auto/greedy/snake/svd
    python benchmarks/ordering_table.py --cases fixture --orderings greedy snake
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wavecompress as wc  # noqa: E402
from currency_table import case_deltas  # noqa: E402
from wavecompress.methods.options import REORDER_CHOICES  # noqa: E402

BUDGETS = (300, 1000, 3000, 8192, 10000, 30000)
METHODS = ("wara", "waveft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["fixture", "full-finetune"], choices=["fixture", "full-finetune"])
    parser.add_argument("--orderings", nargs="+", default=["auto", "greedy", "snake", "svd"], choices=REORDER_CHOICES)
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    args = parser.parse_args()
    for case in args.cases:
        source = case_deltas(case)
        print(f"\n{case}: {len(source.layers)} layers; relative error, values per layer")
        header = " | ".join(f"{m} {b}" for b in args.budgets for m in METHODS)
        print(f"| ordering | {header} |")
        print("|---|" + "---:|" * (len(args.budgets) * len(METHODS)))
        best: dict[tuple[int, str], float] = {}
        rows = {}
        for ordering in args.orderings:
            start = time.perf_counter()
            cells = {}
            for budget in args.budgets:
                for method in METHODS:
                    result = wc.compress(source, budget=budget, method=method, reorder=ordering, baselines=())
                    cells[budget, method] = result.report.overall()[method].relative_error
                    best[budget, method] = min(best.get((budget, method), float("inf")), cells[budget, method])
            rows[ordering] = (cells, time.perf_counter() - start)
        for ordering, (cells, seconds) in rows.items():
            text = " | ".join((f"**{cells[b, m]:.4f}**" if cells[b, m] == best[b, m] else f"{cells[b, m]:.4f}")
                              for b in args.budgets for m in METHODS)
            print(f"| {ordering} | {text} |")
        print("(bold: lowest in its column; seconds per ordering, all cells: "
              + ", ".join(f"{o} {seconds:.0f}" for o, (_, seconds) in rows.items()) + ")")


if __name__ == "__main__":
    main()
