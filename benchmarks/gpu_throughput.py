"""Conversion throughput per layer on CUDA against a plain copy of the same tensors.

For each Llama-2-7B projection shape (r=16 LoRA factors), times on the GPU:
- ``copy``: host→device copy of the layer's factors plus a device copy (clone) of a d_out × d_in
  float32 matrix — the memory traffic any per-layer tool pays;
- ``waveft`` / ``wara`` / ``sparse`` / ``lora``: each method's ``compress`` on a layer already moved
  with ``wavecompress.hardware.layer_to_device`` (what ``--device cuda`` does per layer);
- ``convert``: the whole pipeline (``wavecompress.compress(..., device="cuda")``) on a one-block
  adapter, per layer.
Prints each as milliseconds per layer and as a ratio to the copy. Without CUDA it says so and
exits 0 (nothing is measured on the CPU: use lora_7b_shapes.py for CPU figures).

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

import torch  # noqa: E402

from _common import LLAMA2_7B_SHAPES  # noqa: E402


def cuda_time(fn, repeats: int) -> float:
    """Median seconds of ``fn`` on CUDA (synchronised), after one warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--budget", type=int, default=3000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: skipped - CUDA is not available on this machine (torch "
              f"{torch.__version__}); run it where `torch.cuda.is_available()` is True")
        return
    repeats = args.repeats or (3 if args.quick else 10)
    from wavecompress import compress
    from wavecompress.deltas import LayerDelta
    from wavecompress.hardware import layer_to_device
    from wavecompress.methods import MethodOptions, get_method

    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, budget {args.budget}, "
          f"median of {repeats}")
    generator = torch.Generator().manual_seed(0)
    print()
    print("| shape | copy (ms) | waveft (ms) | wara (ms) | sparse (ms) | lora (ms) | waveft / copy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    layers = {}
    for module, (d_out, d_in) in LLAMA2_7B_SHAPES.items():
        left = torch.randn(d_out, 16, generator=generator) * 1e-3
        right = torch.randn(16, d_in, generator=generator) / d_in**0.5
        layers[module] = (left, right)
        dense = torch.empty(d_out, d_in, device=device)

        def copy() -> None:
            left.to(device), right.to(device)
            dense.clone()

        t_copy = cuda_time(copy, repeats)
        delta = layer_to_device(LayerDelta.from_factors(module, left, right), device)
        times = {}
        for method in ("waveft", "wara", "sparse", "lora"):
            module_ = get_method(method)
            times[method] = cuda_time(lambda: module_.compress(delta, args.budget, MethodOptions(reorder=None)), repeats)
        print(f"| {module} {d_out}×{d_in} | {1000 * t_copy:.2f} | {1000 * times['waveft']:.2f} | {1000 * times['wara']:.2f} | "
              f"{1000 * times['sparse']:.2f} | {1000 * times['lora']:.2f} | {times['waveft'] / t_copy:.1f}× |")
    for method in ("waveft", "wara"):
        t_convert = cuda_time(lambda: compress(layers, budget=args.budget, method=method, device="cuda"), max(1, repeats // 3))
        t_cpu_copy = sum(cuda_time(lambda: (l.to(device), r.to(device)), repeats) for l, r in layers.values())
        print(f"ratio: {method} as convert on CUDA: {1000 * t_convert / len(layers):.1f} ms per layer, "
              f"{t_convert / t_cpu_copy:.0f}× the host→device copy of the factors")


if __name__ == "__main__":
    main()
