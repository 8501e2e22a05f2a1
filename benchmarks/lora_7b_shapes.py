"""7B-shaped LoRA (Llama-2-7B q/k/v/o 4096², gate/up 11008×4096, down 4096×11008, r=16, bf16):
conversion time and peak RSS against floors measured in the same run.

Floors (what any tool must do, each measured as its own run):
- ``read``: read every tensor and build each layer's factors;
- ``read + coefficients``: also form each layer's dense d_out × d_in (level-1 Haar) coefficient
  matrix once — the least a method that selects from a dense matrix (waveft, the sparse baseline)
  costs; the goal of a default convert is stated against this floor;
- ``read + factored svd``: also the SVD of each layer from its factors (QR + r×r core) — the least
  a low-rank method (wara, lora) costs; WaRA never forms the dense matrix, so its method-only run is
  compared with this floor, not with the dense one.
Measured runs:
- ``<method> (method only)``: the method itself per layer, plain order, no report baselines;
- ``<method> as convert``: exactly what ``wavecompress convert`` does — the method with the
  default row/column reordering, the other ordering, the truncated-SVD LoRA and weight-domain
  sparse baselines for the report, and the output folder written.

Each run is a fresh child process (its own peak RSS). Goals: a default convert ≤ 2× the
read + coefficients floor, peak RSS ≤ 2 GB.

    python benchmarks/lora_7b_shapes.py --quick          # 2 decoder layers (14 matrices)
    python benchmarks/lora_7b_shapes.py                  # all 32 layers (224 matrices)
    python benchmarks/lora_7b_shapes.py --layers 8 --threads 1
    python benchmarks/lora_7b_shapes.py --quick --threads 1 --repeat 3   # medians of 3 interleaved rounds
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import LLAMA2_7B_SHAPES, idle_baseline_mb, machine_line, measure, write_peft_lora  # noqa: E402


def floor_read(adapter: str) -> int:
    """Read every tensor and build each layer's factors."""
    from wavecompress.deltas import load_deltas

    deltas = load_deltas(adapter)
    return sum(1 for delta in deltas.layers if delta.left is not None)


def floor(adapter: str) -> int:
    """Read every tensor and form each layer's (level-1 Haar) coefficient matrix once."""
    from wavecompress.deltas import load_deltas
    from wavecompress.methods.wavelet_domain import coefficients, layer_levels

    checksum = 0.0
    deltas = load_deltas(adapter)
    for delta in deltas.layers:
        coeffs = coefficients(delta, "db1", layer_levels(delta.shape, 1))
        checksum += float(coeffs[0, 0])  # keep the product observable
        del coeffs
    return len(deltas.layers)


def floor_svd(adapter: str) -> int:
    """Read every tensor and take each layer's SVD from its factors."""
    from wavecompress.deltas import load_deltas
    from wavecompress.transforms.lowrank import factored_svd

    deltas = load_deltas(adapter)
    for delta in deltas.layers:
        factored_svd(delta.left, delta.right)
    return len(deltas.layers)


def method_only(adapter: str, method: str, budget: int) -> int:
    """The method alone on every layer (plain order, no baselines, nothing written)."""
    from wavecompress.deltas import load_deltas
    from wavecompress.methods import MethodOptions, get_method

    module = get_method(method)
    deltas = load_deltas(adapter)
    for delta in deltas.layers:
        module.compress(delta, budget, MethodOptions(reorder=None))
    return len(deltas.layers)


def as_convert(adapter: str, method: str, budget: int, out: str) -> dict:
    """What ``wavecompress convert ADAPTER --budget B --method M --out OUT`` does."""
    import wavecompress

    result = wavecompress.compress(adapter, budget=budget, method=method)
    result.save(out, force=True)  # a later --repeat round replaces the earlier output
    return {name: s.relative_error for name, s in result.report.overall().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 decoder layers instead of 32")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 32, --quick 2)")
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--methods", default="waveft,wara")
    parser.add_argument("--skip-convert", action="store_true", help="only the method-only runs")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every run, interleaved; medians reported (steadier ratios on a shared machine)")
    args = parser.parse_args()
    n_layers = args.layers or (2 if args.quick else 32)
    methods = args.methods.split(",")

    print(machine_line(args.threads))
    work = Path(tempfile.mkdtemp(prefix="wavecompress-bench-"))
    try:
        adapter = write_peft_lora(work / "llama2-7b-lora-r16", LLAMA2_7B_SHAPES, n_layers)
        size_mb = (adapter / "adapter_model.safetensors").stat().st_size / 2**20
        matrices = n_layers * len(LLAMA2_7B_SHAPES)
        print(f"input: {n_layers} decoder layers × 7 projections = {matrices} matrices, r=16 bf16, {size_mb:.0f} MB on disk; "
              f"budget {args.budget} values per matrix")
        base_mb = idle_baseline_mb()
        runs = [("floor: read + coefficients", floor, (str(adapter),)), ("floor: read", floor_read, (str(adapter),)),
                ("floor: read + factored svd", floor_svd, (str(adapter),))]
        for method in methods:
            runs.append((f"{method} (method only)", method_only, (str(adapter), method, args.budget)))
            if not args.skip_convert:
                runs.append((f"{method} as convert", as_convert, (str(adapter), method, args.budget, str(work / f"out-{method}"))))
        samples: dict[str, list[tuple[float, float, object]]] = {label: [] for label, _, _ in runs}
        for round_ in range(max(1, args.repeat)):  # round-robin: every run sees the same load drift
            for label, fn, fn_args in runs:
                seconds, peak, extra = measure(fn, *fn_args, threads=args.threads)
                samples[label].append((seconds, peak, extra))
                print(f"  round {round_ + 1}: {label}: {seconds:.2f} s, peak RSS {peak:.0f} MB", flush=True)
        rows = []
        for label, _, _ in runs:
            taken = samples[label]
            rows.append((label, statistics.median(t[0] for t in taken), max(t[1] for t in taken), taken[-1][2]))
        if args.repeat > 1:
            print(f"(medians of {args.repeat} interleaved rounds; peak RSS: the largest)")
        floor_s = rows[0][1]
        floors = {"coefficients": rows[0][1], "read": rows[1][1], "factored svd": rows[2][1]}
        own = {"waveft": "coefficients", "sparse": "coefficients", "wara": "factored svd", "lora": "factored svd"}
        print()
        print("| run | seconds | ms per matrix | × read + coefficients | × read | peak RSS (MB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, seconds, peak, _ in rows:
            print(f"| {label} | {seconds:.2f} | {1000 * seconds / matrices:.0f} | {seconds / floor_s:.2f} | "
                  f"{seconds / floors['read']:.2f} | {peak:.0f} |")
        print(f"(peak RSS of a child that only imports wavecompress: {base_mb:.0f} MB)")
        print()
        for label, seconds, peak, extra in rows[3:]:
            method = label.split()[0]
            if "method only" in label:
                name = own.get(method, "coefficients")
                ratio, against = seconds / floors[name], f"the read + {name} floor"
            else:
                ratio, against = seconds / floor_s, "the read + coefficients floor"
            verdict = "meets" if ratio <= 2 and peak <= 2048 else "misses"
            print(f"ratio: {label}: {ratio:.2f}× {against} (goal ≤ 2×), peak RSS {peak:.0f} MB (goal ≤ 2048) -> {verdict} the goal")
            if isinstance(extra, dict):
                print("       relative error: " + ", ".join(f"{k} {v:.4f}" for k, v in extra.items()))
        print(f"rate: read + coefficients floor {1000 * floor_s / matrices:.0f} ms per matrix; a full 7B adapter (224 matrices) "
              f"extrapolates to {224 * floor_s / matrices:.0f} s floor")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
