"""The digits UNet fixture: WaveFT, WaRA and LoRA at equal values and equal bytes, error and held-out denoising loss.

For the fixture's kohya LoRA (attention Linears + 1×1 proj_in/proj_out) and LoCon (also the ResNet and sampler
3×3 convolutions), each method converts the file with wavecompress's defaults (as ``wavecompress convert``
does, with ``--allocate global``) at equal stored values (``budget_ratio`` of the input's values) and at equal bytes (``max_size``, the
output file at most that many bytes). Every output is read back with ``wavecompress.reconstruct`` and its ΔŴ is
added to the base UNet's weights by this script (``digits_task.merge_deltas``: each matrix reshaped to the
weight's 4-D shape), independent of wavecompress's own loaders; the metric is ``digits_task.denoising_loss``
on the held-out 9s, beside the base UNet and the original adapter (``digits_task.merge_kohya``).

    python benchmarks/diffusion_digits.py                       # both adapters, markdown tables
    python benchmarks/diffusion_digits.py --cases lora --ratios 0.25 --sizes 10kB
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "fixtures"))
sys.path.insert(0, str(REPO / "benchmarks"))

import digits_task as task  # noqa: E402

import wavecompress as wc  # noqa: E402
from _common import machine_line  # noqa: E402
from wavecompress.errors import InputError  # noqa: E402

METHODS = ("waveft", "wara", "lora")
RATIOS = (0.1, 0.25, 0.5)
SIZE_FRACTIONS = (0.25, 0.5)  # of the input file's bytes
# The greedy allocation across layers for every method: with the uniform default a LoRA output gives rank 0 to
# every layer whose (d_out + d_in) exceeds its share (here the GEGLU ff_net_0_proj layers).
ALLOCATE = "global"


def output_bytes(out: Path) -> int:
    """Bytes of the adapter weights a converted output stores (its .safetensors files)."""
    return sum(p.stat().st_size for p in ([out] if out.is_file() else out.rglob("*.safetensors")))


def loss_with(deltas: dict[str, torch.Tensor], names: dict[str, str], embeddings: torch.Tensor) -> float:
    """Held-out denoising loss of the base UNet + ``deltas`` merged densely into its weights."""
    unet, _ = task.load_base()
    return task.denoising_loss(task.merge_deltas(unet, deltas, names), embeddings)


def run_case(label: str, ratios: tuple[float, ...], sizes: tuple[str, ...], methods: tuple[str, ...]) -> list[str]:
    """Markdown rows for one fixture adapter (``lora`` or ``locon``)."""
    path = task.FOLDER / f"{label}.safetensors"
    base, embeddings = task.load_base()
    names = task.kohya_modules(base, task.LOCON_TARGETS, convs=True)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    source = wc.load_deltas(path)
    input_values = sum(t.numel() for k, t in tensors.items() if not k.endswith(".alpha"))
    input_bytes = path.stat().st_size
    original = task.denoising_loss(task.merge_kohya(task.load_base()[0], tensors, names), embeddings)
    # The reader's ΔW merged by our code must give the original's loss: checks names, scales and 4-D reshapes.
    read_back = loss_with({layer.name: layer.to_dense() for layer in source.layers}, names, embeddings)
    convs = sum(1 for k, t in tensors.items() if k.endswith(".lora_down.weight") and t.dim() == 4)
    print(f"\n{label}: {path.name}, {len(source.layers)} modules ({convs} convolutions), {input_values:,} values, "
          f"{input_bytes:,} bytes; held-out loss base {task.denoising_loss(base, embeddings):.5f}, {label} {original:.5f} "
          f"(read back and merged here: {read_back:.5f})", flush=True)
    rows = [f"| {label} | original (kohya fp16) | - | 0 | {input_values:,} | {input_bytes:,} | {original:.5f} |"]
    columns = [("values", f"{r:g}") for r in ratios] + [("bytes", s) for s in sizes]
    with tempfile.TemporaryDirectory() as tmp:
        for kind, size in columns:
            for method in methods:
                options = {"budget_ratio": float(size)} if kind == "values" else {"max_size": size}
                flag = f"--budget-ratio {size}" if kind == "values" else f"--max-size {size}"
                start = time.perf_counter()
                try:
                    result = wc.compress(source, method=method, allocate=ALLOCATE, **options)
                except InputError as exc:
                    print(f"  {method} {flag}: {exc}", flush=True)
                    rows.append(f"| {label} | {method} | `{flag}` | — | — | — | — |")
                    continue
                out = result.save(Path(tmp) / f"{label}-{method}-{kind}-{size}")
                deltas = wc.reconstruct(out)
                unknown = set(deltas) - set(names)
                assert not unknown, f"{method} {flag}: output names no UNet module: {sorted(unknown)[:3]}"
                # Modules absent from the output (a LoRA output skips rank-0 layers) count as ΔŴ = 0.
                absent = len({layer.name for layer in source.layers} - set(deltas))
                summary = result.report.overall()[method]
                loss = loss_with(deltas, names, embeddings)
                rows.append(f"| {label} | {method} | `{flag}` | {result.report.relative_error:.4f} | {summary.stored_values:,} | "
                            f"{output_bytes(out):,} | {loss:.5f} |")
                print(rows[-1], f"({absent} modules at ΔŴ = 0, {time.perf_counter() - start:.0f}s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["lora", "locon"], choices=["lora", "locon"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS),
                        help="equal values: fractions of the input's stored values")
    parser.add_argument("--sizes", nargs="+", default=None,
                        help="equal bytes: --max-size values (default: 25%% and 50%% of each input file)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(machine_line(1))
    base, embeddings = task.load_base()
    rows = []
    for label in args.cases:
        sizes = args.sizes or [f"{f * (task.FOLDER / f'{label}.safetensors').stat().st_size / 1000:.0f}kB" for f in SIZE_FRACTIONS]
        rows += run_case(label, tuple(args.ratios), tuple(sizes), tuple(args.methods))
    print(f"\nBase UNet held-out denoising loss: {task.denoising_loss(base, embeddings):.5f} (lower is better).\n")
    print(f"Every conversion: `wavecompress convert fixtures/digits-unet/<adapter>.safetensors --method M --allocate {ALLOCATE} <budget>`.\n")
    print("| adapter | method | budget | relative error | stored values | bytes | held-out denoising loss |")
    print("|---|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
