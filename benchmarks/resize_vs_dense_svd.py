"""LoRA rank resize: ``wavecompress`` (``--method lora``, SVD from the factors) against the dense-SVD
method of kohya's ``networks/resize_lora.py``, on the same input file, at the same ranks.

The reference is reimplemented from that script's published description: for each layer merge
ΔW = scale · up @ down in float32, take ``torch.linalg.svd(ΔW)`` (its default ``full_matrices``),
keep U[:, :r] diag(S[:r]) as the new up and Vh[:r] as the new down. We also time the thin dense
SVD (``full_matrices=False``), the fastest dense variant, so the ratio is not against a straw man.
Both sides use the rank wavecompress picks for the budget (r·(d_out+d_in) ≤ budget), and each
side's error ‖ΔW − ΔŴ‖/‖ΔW‖ is measured the same way, in float64 against the merged ΔW.

Every time is a median in this process: of ``--repeats`` runs (default 5) for wavecompress (tens
of milliseconds, so single runs are noisy) and of ``--dense-repeats`` runs (default 3) for the dense
SVD (seconds per run); every run's time is printed. The headline is the
command-line path (``wavecompress convert --method lora``: reading, the report's baselines,
writing the folder; the interpreter start is not counted); the bare library call without report
baselines is printed beside it.

    python benchmarks/resize_vs_dense_svd.py --quick     # TinyLlama-1.1B shapes, 1 decoder layer, thin SVD only
    python benchmarks/resize_vs_dense_svd.py             # Llama-2-7B shapes, 1 decoder layer
    python benchmarks/resize_vs_dense_svd.py --layers 4 --new-rank 8
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import LLAMA2_7B_SHAPES, machine_line, write_peft_lora  # noqa: E402

# TinyLlama-1.1B: hidden 2048, 4 KV heads of 64 (k/v 256 × 2048), MLP 5632.
TINYLLAMA_SHAPES = {
    "self_attn.q_proj": (2048, 2048),
    "self_attn.k_proj": (256, 2048),
    "self_attn.v_proj": (256, 2048),
    "self_attn.o_proj": (2048, 2048),
    "mlp.gate_proj": (5632, 2048),
    "mlp.up_proj": (5632, 2048),
    "mlp.down_proj": (2048, 5632),
}


def ours(adapter: Path, budget: int, out: Path, baselines: tuple[str, ...]) -> tuple[float, dict]:
    """wavecompress.compress(method="lora") + save: seconds, and {layer: (rank, B, A)} of the output."""
    import wavecompress

    start = time.perf_counter()
    result = wavecompress.compress(adapter, budget=budget, method="lora", baselines=baselines)
    result.save(out, force=True)
    seconds = time.perf_counter() - start
    return seconds, {layer.name: (layer.meta["rank"], layer.tensors.get("lora_B.weight"), layer.tensors.get("lora_A.weight"))
                     for layer in result.layers}


def cli_convert(adapter: Path, budget: int, out: Path, *extra: str) -> tuple[float, None]:
    """``wavecompress convert ADAPTER --budget N --method lora --out OUT --force --quiet [extra]`` in this process."""
    import contextlib
    import io

    from wavecompress.cli import main as cli

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cli(["convert", str(adapter), "--budget", str(budget), "--method", "lora", "--out", str(out), "--force", "--quiet",
             *extra], standalone_mode=False)
    return time.perf_counter() - start, None


def median_of(repeats: int, fn, *args) -> tuple[float, object, list[float]]:
    """Median seconds of ``repeats`` calls of ``fn(*args)`` (each returns (seconds, value)), the last value, all times."""
    times, value = [], None
    for _ in range(repeats):
        seconds, value = fn(*args)
        times.append(seconds)
    return statistics.median(times), value, times


def kohya_dense(adapter: Path, ranks: dict[str, int], full_matrices: bool) -> tuple[float, dict]:
    """resize_lora.py's method: merge, dense SVD per layer, truncate, save (safetensors)."""
    from safetensors.torch import load_file, save_file

    from wavecompress.deltas import load_deltas

    start = time.perf_counter()
    deltas = load_deltas(adapter)
    state = load_file(str(adapter / "adapter_model.safetensors"))  # as resize_lora.py loads the whole file
    del state
    out, kept = {}, {}
    for delta in deltas.layers:
        rank = ranks[delta.name]
        weight = delta.left @ delta.right  # scale · up @ down, float32
        u, s, vh = torch.linalg.svd(weight, full_matrices=full_matrices)
        up = (u[:, :rank] @ torch.diag(s[:rank])).contiguous()
        down = vh[:rank].contiguous()
        out[f"{delta.name}.lora_up.weight"], out[f"{delta.name}.lora_down.weight"] = up, down
        kept[delta.name] = (rank, up, down)
    save_file(out, str(adapter.parent / f"kohya-{'full' if full_matrices else 'thin'}.safetensors"))
    return time.perf_counter() - start, kept


def relative_errors(adapter: Path, kept: dict) -> tuple[float, dict[str, float]]:
    """Overall and per-layer ‖ΔW − ΔŴ‖/‖ΔW‖ in float64 against the merged input ΔW."""
    from wavecompress.deltas import load_deltas

    num = den = 0.0
    per_layer = {}
    for delta in load_deltas(adapter).layers:
        true = delta.left.double() @ delta.right.double()
        rank, up, down = kept[delta.name]
        approx = up.double() @ down.double() if rank else torch.zeros_like(true)
        err, energy = float((true - approx).square().sum()), float(true.square().sum())
        per_layer[delta.name] = (err / energy) ** 0.5
        num, den = num + err, den + energy
    return (num / den) ** 0.5, per_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="TinyLlama-1.1B shapes instead of Llama-2-7B")
    parser.add_argument("--layers", type=int, default=1, help="decoder layers (7 matrices each)")
    parser.add_argument("--rank", type=int, default=16, help="input LoRA rank")
    parser.add_argument("--new-rank", type=int, default=4, help="target rank (for the widest layer)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides [default: 1: on a shared machine, extra threads mostly wait]")
    parser.add_argument("--repeats", type=int, default=5, help="runs per wavecompress timing; the median is reported [default: 5]")
    parser.add_argument("--dense-repeats", type=int, default=3, help="runs per dense-SVD timing [default: 3]")
    parser.add_argument("--no-full", action="store_true", help="skip the full_matrices=True reference (slowest)")
    args = parser.parse_args()
    args.no_full = args.no_full or args.quick  # --quick: the thin dense SVD only (faster, so the stricter reference)
    torch.set_num_threads(args.threads)
    shapes = TINYLLAMA_SHAPES if args.quick else LLAMA2_7B_SHAPES
    budget = args.new_rank * max(sum(shape) for shape in shapes.values())

    print(machine_line(args.threads))
    work = Path(tempfile.mkdtemp(prefix="wavecompress-resize-"))
    try:
        adapter = write_peft_lora(work / "lora", shapes, args.layers, rank=args.rank)
        print(f"input: {'TinyLlama-1.1B' if args.quick else 'Llama-2-7B'} shapes, {args.layers} decoder layer(s) = "
              f"{7 * args.layers} matrices, r={args.rank} bf16; budget {budget} values per layer "
              f"(rank {args.new_rank} for the widest layer, the largest rank that fits elsewhere)")
        import wavecompress  # noqa: F401 - import cost outside the timings

        ours(adapter, 10**9, work / "warm-up", baselines=())  # first-call costs (lazy imports, allocator) untimed
        cli_convert(adapter, 10**9, work / "warm-up-cli")
        torch.linalg.svd(torch.randn(64, 64))
        n = args.repeats
        t_lora, ours_kept, lora_times = median_of(n, ours, adapter, budget, work / "ours-lora-only", ())
        t_convert, _, convert_times = median_of(n, cli_convert, adapter, budget, work / "ours-convert")
        t_bare, _, bare_times = median_of(n, cli_convert, adapter, budget, work / "ours-bare", "--baselines", "none")
        ranks = {name: rank for name, (rank, _, _) in ours_kept.items()}
        rows = [("wavecompress convert --method lora (CLI: report baselines, writing)", t_convert, None, convert_times),
                ("wavecompress convert --method lora --baselines none (CLI, no report baselines)", t_bare, None, bare_times),
                ("wavecompress.compress(method='lora', baselines=()) + save (library, no report baselines)", t_lora, ours_kept, lora_times)]
        print(f"wavecompress: CLI {t_convert:.3f} s, CLI --baselines none {t_bare:.3f} s, library {t_lora:.3f} s (medians of {n})",
              flush=True)
        t_thin, thin_kept, thin_times = median_of(args.dense_repeats, kohya_dense, adapter, ranks, False)
        rows.append(("dense SVD, thin (full_matrices=False)", t_thin, thin_kept, thin_times))
        if not args.no_full:
            t_full, full_kept, full_times = median_of(args.dense_repeats, kohya_dense, adapter, ranks, True)
            rows.append(("kohya resize_lora.py method (dense torch.linalg.svd, full_matrices=True)", t_full, full_kept, full_times))
        ours_err, ours_layers = relative_errors(adapter, ours_kept)
        print()
        print("| method | seconds (median) | all runs | relative error |")
        print("|---|---:|---|---:|")
        worst = 0.0
        for label, seconds, kept, times in rows:
            err = "(same output)" if kept is None else f"{relative_errors(adapter, kept)[0]:.6f}"
            print(f"| {label} | {seconds:.3f} | {' '.join(f'{t:.3f}' for t in times)} | {err} |")
            if kept is not None:
                _, layers = relative_errors(adapter, kept)
                worst = max(worst, max(abs(layers[name] - ours_layers[name]) for name in layers))
        print()
        print(f"ratio: dense thin SVD / wavecompress convert (CLI) = {t_thin / t_convert:.1f}× (goal ≥ 100×); "
              f"CLI with --baselines none: {t_thin / t_bare:.0f}×; library call without report baselines: {t_thin / t_lora:.0f}×")
        if not args.no_full:
            print(f"ratio: kohya method (full_matrices=True) / wavecompress convert (CLI) = {t_full / t_convert:.1f}× (goal ≥ 100×); "
                  f"library call without report baselines: {t_full / t_lora:.0f}×")
        print(f"error: overall {ours_err:.6f}; largest per-layer difference from the dense SVD {worst:.1e} (goal ≤ 1e-5)")
        print(f"ranks kept: {sorted(set(ranks.values()))}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
