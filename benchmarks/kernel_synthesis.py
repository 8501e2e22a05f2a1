"""Time the fused sparse-spectrum → Haar synthesis (ΔŴ from k stored coefficients) and its backward.

In one run, on the same shape: a plain copy of a d_out × d_in float32 tensor into a freshly
allocated output (``clone``; the floor: any way of producing ΔŴ writes it once, and the kernel and
the reference also allocate their output on every call), the Triton kernel (CUDA only), and the torch reference
(scatter + multi-level Haar synthesis + permutations). Printed: median times and the ratios
kernel/copy, reference/copy and reference/kernel, for the forward (ΔŴ from the spectrum) and the
backward (∂L/∂spectrum from ∂L/∂ΔŴ), at Haar depth 1 (plain top-k) and depth 5 with row/column
permutations (the reordered default), plus the largest difference kernel − reference.

Without CUDA (or without triton) the kernel path is unavailable; the script says so and times
the torch reference against the copy only.

    python benchmarks/kernel_synthesis.py [--shape 8192x28672] [--k 3000 ...] [--quick] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wavecompress.kernels import select_backend, spectrum_grad_reference, synthesis_reference  # noqa: E402


def timer(device: torch.device, fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def case(shape: tuple[int, int], k: int, levels: tuple[int, int], permuted: bool, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    indices = torch.randperm(n, generator=generator)[:k].sort().values.to(torch.int32).to(device)
    values = torch.randn(k, generator=generator).to(device)
    rows = torch.randperm(shape[0], generator=generator).to(torch.int16 if shape[0] <= 32767 else torch.int32).to(device) if permuted else None
    cols = torch.randperm(shape[1], generator=generator).to(torch.int16 if shape[1] <= 32767 else torch.int32).to(device) if permuted else None
    return values, indices, rows, cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=None, help="d_out x d_in [default: 8192x28672 on CUDA, 2048x2048 on CPU]")
    parser.add_argument("--k", type=int, nargs="+", default=None, help="stored coefficients [default: 3000 and 1%% of the matrix]")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch threads for every timed side [default: 1]")
    parser.add_argument("--quick", action="store_true", help="smaller shape and fewer repeats (CPU: well under a minute)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    kernel = select_backend(device) == "triton"
    default_shape = "8192x28672" if device.type == "cuda" else ("1024x1024" if args.quick else "2048x2048")
    shape = tuple(int(v) for v in (args.shape or default_shape).lower().split("x"))
    n = shape[0] * shape[1]
    ks = args.k or [3000, n // 100]
    repeats = args.repeats or (11 if args.quick else 21)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU, ' + str(torch.get_num_threads()) + ' threads'}), "
          f"torch {torch.__version__}, shape {shape[0]}x{shape[1]} float32, median of {repeats}")
    if kernel:
        from wavecompress.kernels.haar_triton import spectrum_grad_triton, synthesis_triton
        import triton

        print(f"triton {triton.__version__}: fused kernel path available")
    else:
        why = "no CUDA device" if device.type != "cuda" else "triton is not installed"
        print(f"Triton kernel path unavailable here ({why}): timing the torch reference against a plain copy only")

    src = torch.randn(shape, device=device)
    grad = torch.randn(shape, device=device)
    header = f"{'levels':>7} {'perm':>5} {'k':>9} | {'copy ms':>8} {'ref ms':>8} {'ref/copy':>8}"
    if kernel:
        header += f" {'kernel ms':>9} {'kern/copy':>9} {'ref/kern':>8} {'max|diff|':>9}"
    summary: list[tuple[str, float, float]] = []
    for direction in ("forward", "backward"):
        print(f"\n{direction}: " + ("ΔŴ from the spectrum" if direction == "forward" else "∂L/∂spectrum from ∂L/∂ΔŴ"))
        print(header)
        for levels, permuted in (((1, 1), False), ((5, 5), True)):
            for k in ks:
                values, indices, rows, cols = case(shape, min(k, n), levels, permuted, device)
                if direction == "forward":
                    ref_fn = lambda: synthesis_reference(values, indices, shape, levels, rows, cols)  # noqa: E731
                    ker_fn = (lambda: synthesis_triton(values, indices, shape, levels, rows, cols)) if kernel else None  # noqa: E731
                else:
                    ref_fn = lambda: spectrum_grad_reference(grad, indices, levels, rows, cols)  # noqa: E731
                    ker_fn = (lambda: spectrum_grad_triton(grad, indices, shape, levels, rows, cols)) if kernel else None  # noqa: E731
                copy_ms = timer(device, lambda: src.clone(), repeats)  # allocates its output each call, like the others
                ref_ms = timer(device, ref_fn, repeats)  # timed next to each case, so both see the same machine load
                line = f"{levels[0]:>3},{levels[1]:<3} {'yes' if permuted else 'no':>5} {k:>9} | {copy_ms:8.3f} {ref_ms:8.3f} {ref_ms / copy_ms:8.2f}"
                if kernel:
                    ker_ms = timer(device, ker_fn, repeats)
                    diff = float((ker_fn() - ref_fn()).abs().max())
                    line += f" {ker_ms:9.3f} {ker_ms / copy_ms:9.2f} {ref_ms / ker_ms:8.2f} {diff:9.2e}"
                    scale = float(ref_fn().abs().max()) or 1.0
                    summary.append((f"kernel {direction} / copy, {shape[0]}x{shape[1]}, {levels[0]} levels{', permuted' if permuted else ''}, k={k}",
                                    ker_ms / copy_ms, diff / scale))
                print(line)
    worst = max((rel for _, _, rel in summary), default=None)
    if worst is not None:
        print(f"\nSUMMARY|kernel vs torch reference, worst relative difference|{worst:.1e}|<= 1e-5|{'pass' if worst <= 1e-5 else 'fail'}")
    for label, ratio, _ in summary:
        print(f"SUMMARY|{label}|{ratio:.2f}x||info")


if __name__ == "__main__":
    main()
