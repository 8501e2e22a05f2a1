"""Uniform vs global budget allocation on the fixture at the same total (docs/results.md table).

python benchmarks/allocation_table.py [--adapter fixtures/minilm-bbc-lora]
"""

from __future__ import annotations

import argparse

import wavecompress as wc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", default="fixtures/minilm-bbc-lora")
    parser.add_argument("--budgets", type=int, nargs="+", default=[768, 3000])
    args = parser.parse_args()
    deltas = wc.load_deltas(args.adapter)
    print(f"input stored values {deltas.stored_values}, layers {len(deltas.layers)}")
    print("| budget / layer | method | uniform: error (values, bytes) | global: error (values, bytes) |")
    print("|---|---|---|---|")
    for budget in args.budgets:
        for method in ("waveft", "wara", "lora"):
            cells = []
            for mode in ("uniform", "global"):
                result = wc.compress(deltas, budget=budget, method=method, allocate=mode, baselines=())
                total = result.report.overall()[method]
                cells.append(f"{total.relative_error:.4f} ({total.stored_values}, {total.bytes} B)")
            print(f"| {budget} | {method} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
