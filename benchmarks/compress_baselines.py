"""compress() of the fixture with the default comparison columns vs baselines=() (the method alone).

    python benchmarks/compress_baselines.py [--budget 3000] [--method wara] [--repeats 3]

Both timings come from this run (best of ``--repeats``, interleaved), so the ratio holds under load;
the outputs' tensors are checked equal (the columns only add report figures).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import wavecompress

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "minilm-bbc-lora"


def timed(**kwargs: object) -> tuple[float, wavecompress.CompressedAdapter]:
    start = time.perf_counter()
    result = wavecompress.compress(FIXTURE, **kwargs)  # type: ignore[arg-type]
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--method", default="wara")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    wavecompress.load_deltas(FIXTURE)  # warm the file cache and imports before timing
    full, alone = [], []
    for _ in range(args.repeats):
        seconds, default = timed(budget=args.budget, method=args.method)
        full.append(seconds)
        seconds, bare = timed(budget=args.budget, method=args.method, baselines=())
        alone.append(seconds)
    for mine, theirs in zip(bare.layers, default.layers):
        assert all(torch.equal(mine.tensors[k], theirs.tensors[k]) for k in theirs.tensors), mine.name
    print(f"| columns | report columns | seconds (best of {args.repeats}) |")
    print("|---|---|---|")
    print(f"| default | {', '.join(sorted(default.report.overall()))} | {min(full):.2f} |")
    print(f"| baselines=() | {', '.join(sorted(bare.report.overall()))} | {min(alone):.2f} |")
    print(f"\n{args.method} at {args.budget} on {FIXTURE.name}: baselines=() is {min(full) / min(alone):.2f}x faster "
          "(same tensors)")


if __name__ == "__main__":
    main()
