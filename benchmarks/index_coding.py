"""Bytes of each top-k index coding on a real adapter: int32 flat, uint16 gaps with escape, row-compressed.

For every budget, compresses each layer with WaveFT top-k (default reordering) and the weight-domain
sparse baseline, then sums over all layers the bytes of the selected indices under each coding
(values and permutations excluded). The smaller of gaps and rows is what files store
(wavecompress/methods/index_codec.py).

    python benchmarks/index_coding.py                   # fixtures/minilm-bbc-lora, budgets 1000 3000 8192
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import wavecompress as wc
from wavecompress.methods import MethodOptions, get_method
from wavecompress.methods.options import DEFAULT_REORDER
from wavecompress.methods.index_codec import index_bytes, stored_indices

REPO = Path(__file__).resolve().parent.parent
PREFIX = {"waveft": "waveft", "sparse": "sparse"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=REPO / "fixtures" / "minilm-bbc-lora")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 3000, 8192])
    args = parser.parse_args()
    torch.set_num_threads(1)
    layers = wc.load_deltas(args.adapter).layers
    print(f"{args.adapter}: {len(layers)} layers; index bytes summed over all layers")
    print(f"{'method':8s} {'budget':>6s} {'int32':>9s} {'gaps':>9s} {'rows':>9s}  smaller")
    for method in ("waveft", "sparse"):
        options = MethodOptions(reorder=DEFAULT_REORDER) if method == "waveft" else MethodOptions()
        for budget in args.budgets:
            totals = {"int32": 0, "gaps": 0, "rows": 0}
            for delta in layers:
                kept = get_method(method).compress(delta, budget, options)
                for key, size in index_bytes(stored_indices(kept.tensors, PREFIX[method]), delta.shape).items():
                    totals[key] += size
            winner = "gaps" if totals["gaps"] <= totals["rows"] else "rows"
            print(f"{method:8s} {budget:6d} {totals['int32']:9d} {totals['gaps']:9d} {totals['rows']:9d}  {winner}", flush=True)


if __name__ == "__main__":
    main()
