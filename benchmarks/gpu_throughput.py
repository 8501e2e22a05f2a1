"""Conversion time per layer on CUDA, each method against the floor of the work it cannot avoid.

For each Llama-2-7B projection shape (r=16 LoRA factors already on the GPU), times:
- floors: ``coefficients`` (the Haar-transformed factors and their d_out × d_in product: what a
  top-k selection must at least form), ``factored svd`` (QR of both factors + SVD of the r×r
  core in float64: what the truncated-SVD LoRA, WaRA's band SVDs and the orderings' features
  build on);
- each method's ``compress`` (plain order) with its ratio to its own floor (waveft and sparse:
  coefficients; wara and lora: factored svd);
- ``ordering``: the default (auto) row and column orderings of the layer.
Then the whole pipeline, ``wavecompress.compress(..., device="cuda")`` (default ordering, the
other-ordering variant and both baselines, as ``convert`` runs), in ms per 4096×4096 layer
(goal ≤ 20 ms), with the host→device copy of the factors beside it. Without CUDA it says so and
exits 0 (use lora_7b_shapes.py for CPU figures).

    python benchmarks/gpu_throughput.py --quick
    python benchmarks/gpu_throughput.py --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _common import LLAMA2_7B_SHAPES  # noqa: E402

CONVERT_GOAL_MS = 20.0
FLOOR_OF = {"waveft": "coefficients", "sparse": "coefficients", "wara": "factored svd", "lora": "factored svd"}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_time(fn, repeats: int) -> float:
    """Median seconds of ``fn`` (synchronised on CUDA), after one warm-up."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to check the script itself")
    parser.add_argument("--shapes", type=int, default=None, help="only the first N projection shapes")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput: skipped - CUDA is not available on this machine (torch "
              f"{torch.__version__}); run it where `torch.cuda.is_available()` is True")
        print("SUMMARY|convert ms per 4096x4096 layer|skipped (no CUDA)|<= 20 ms|skip")
        return
    repeats = args.repeats or (3 if args.quick else 10)
    from wavecompress import compress
    from wavecompress.deltas import LayerDelta
    from wavecompress.hardware import layer_to_device
    from wavecompress.methods import MethodOptions, get_method
    from wavecompress.transforms.lowrank import factored_svd
    from wavecompress.methods.options import DEFAULT_REORDER
    from wavecompress.methods.wavelet_domain import coefficients, layer_features
    from wavecompress.transforms.reorder import order, ordering_candidates

    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}, budget {args.budget}, median of {repeats}")
    generator = torch.Generator().manual_seed(0)
    methods = ("waveft", "wara", "sparse", "lora")
    print()
    print("| shape | coefficients (ms) | factored svd (ms) | " + " | ".join(f"{m} (ms, × floor)" for m in methods)
          + f" | {DEFAULT_REORDER} ordering (ms) |")
    print("|---|---:|---:|" + "---:|" * len(methods) + "---:|")
    layers = {}
    for module, (d_out, d_in) in list(LLAMA2_7B_SHAPES.items())[: args.shapes]:
        left = torch.randn(d_out, 16, generator=generator) * 1e-3
        right = torch.randn(16, d_in, generator=generator) / d_in**0.5
        layers[module] = (left, right)
        delta = layer_to_device(LayerDelta.from_factors(module, left, right), device)
        floors = {
            "coefficients": cuda_time(lambda: coefficients(delta, "db1", (1, 1)), repeats),
            "factored svd": cuda_time(lambda: factored_svd(delta.left, delta.right), repeats),
        }
        times = {}
        for method in methods:
            compressor = get_method(method)
            # A fresh delta per call: nothing cached from the previous call (SVD, orderings).
            times[method] = cuda_time(lambda: compressor.compress(layer_to_device(LayerDelta.from_factors(module, left, right), device),
                                                                  args.budget, MethodOptions(reorder=None)), repeats)

        def ordering() -> None:  # every ordering the default tries on this shape (auto: snake alone above 2048)
            fresh = layer_to_device(LayerDelta.from_factors(module, left, right), device)
            rows, cols = layer_features(fresh)
            for candidate in ordering_candidates(DEFAULT_REORDER, [(d_out, d_in)]):
                order(rows, candidate), order(cols, candidate)

        t_order = cuda_time(ordering, repeats)
        cells = " | ".join(f"{1000 * times[m]:.2f} ({times[m] / floors[FLOOR_OF[m]]:.1f}×)" for m in methods)
        print(f"| {module} {d_out}×{d_in} | {1000 * floors['coefficients']:.2f} | {1000 * floors['factored svd']:.2f} | {cells} | "
              f"{1000 * t_order:.1f} |", flush=True)
    square = {name: pair for name, pair in layers.items() if tuple(LLAMA2_7B_SHAPES[name]) == (4096, 4096)}
    t_copy = cuda_time(lambda: [(l.to(device), r.to(device)) for l, r in square.values()], repeats) / len(square)
    print()
    for method in ("waveft", "wara"):
        t_convert = cuda_time(lambda: compress(square, budget=args.budget, method=method, device=device), max(1, repeats // 2))
        per_layer = 1000 * t_convert / len(square)
        verdict = "pass" if per_layer <= CONVERT_GOAL_MS else "fail"
        print(f"ratio: {method} as convert on {device.type} (default ordering, both baselines, other-ordering variant): "
              f"{per_layer:.1f} ms per 4096×4096 layer (goal ≤ {CONVERT_GOAL_MS:.0f} ms); host→device copy of the factors "
              f"{1000 * t_copy:.2f} ms")
        print(f"SUMMARY|convert {method} ms per 4096x4096 layer ({device.type})|{per_layer:.1f}|<= {CONVERT_GOAL_MS:.0f}|{verdict}")


if __name__ == "__main__":
    main()
