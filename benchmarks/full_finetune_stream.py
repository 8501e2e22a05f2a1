"""Full fine-tune input at 7B shapes: streaming W_tuned − W_base vs plainly reading the tensors.

Writes a sharded bf16 base/tuned pair with Llama-2-7B decoder-layer shapes (hidden 4096,
intermediate 11008; q/k/v/o 4096×4096, gate/up 11008×4096, down 4096×11008, RMSNorm weights),
one shard per decoder layer plus ``model.safetensors.index.json``. Then, each phase in a fresh
subprocess so peak memory is its own:

- ``read``: plainly read every tensor the conversion reads (both sides) with ``safe_open``
  (``get_tensor`` maps the file lazily, so each tensor is copied into memory, as a loader would);
- ``stream``: ``read_full_finetune`` — every ΔW formed in float32, one at a time (the input stage);
- ``convert`` (optional): the whole pipeline, ``wavecompress.compress`` + ``save``.

Read and stream run on one thread each. Peak memory is sampled from /proc every 2 ms after imports (anonymous RSS — what the process
allocates — and total RSS, which also counts mapped file pages). Printed as ratios against the
read phase of the same run and against the largest single tensor (bf16 bytes on disk).
Goal (issue 5): stream time ≤ 2× read, stream peak ≤ 3× the largest tensor.

    python benchmarks/full_finetune_stream.py                 # 2 decoder layers, 7B shapes
    python benchmarks/full_finetune_stream.py --layers 4 --convert-layers 1
    python benchmarks/full_finetune_stream.py --quick         # 1/4-size shapes, convert too, < 3 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HIDDEN, INTERMEDIATE = 4096, 11008


def layer_shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    """Tensors of one Llama decoder layer, by name suffix."""
    return {
        "self_attn.q_proj.weight": (hidden, hidden),
        "self_attn.k_proj.weight": (hidden, hidden),
        "self_attn.v_proj.weight": (hidden, hidden),
        "self_attn.o_proj.weight": (hidden, hidden),
        "mlp.gate_proj.weight": (intermediate, hidden),
        "mlp.up_proj.weight": (intermediate, hidden),
        "mlp.down_proj.weight": (hidden, intermediate),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }


def write_pair(root: Path, layers: int, hidden: int, intermediate: int) -> tuple[Path, Path, int]:
    """Sharded bf16 base and tuned (= base + a small full-rank update); returns the largest tensor's bytes."""
    import torch
    from safetensors.torch import save_file

    from wavecompress.deltas.checkpoints import write_index

    generator = torch.Generator().manual_seed(0)
    largest = 0
    for side in ("base", "tuned"):
        (root / side).mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i in range(layers):
        shard = f"model-{i + 1:05d}-of-{layers:05d}.safetensors"
        base, tuned = {}, {}
        for suffix, shape in layer_shapes(hidden, intermediate).items():
            key = f"model.layers.{i}.{suffix}"
            weight = torch.randn(shape, generator=generator) * 0.02 if len(shape) == 2 else torch.ones(shape)
            base[key] = weight.bfloat16()
            tuned[key] = (weight + torch.randn(shape, generator=generator) * 1e-3).bfloat16()
            weight_map[key] = shard
            largest = max(largest, base[key].numel() * base[key].element_size())
            del weight
        if i == layers - 1:
            base["model.norm.weight"] = torch.ones(hidden).bfloat16()
            tuned["model.norm.weight"] = (torch.ones(hidden) + 1e-3).bfloat16()
            weight_map["model.norm.weight"] = shard
        save_file(base, str(root / "base" / shard), metadata={"format": "pt"})
        save_file(tuned, str(root / "tuned" / shard), metadata={"format": "pt"})
        del base, tuned
    for side in ("base", "tuned"):
        write_index(root / side, weight_map)
    return root / "base", root / "tuned", largest


class PeakMemory:
    """Samples anonymous and total RSS from /proc/self/status in a thread; peaks above the start."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = self.read()
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict[str, int]:
        values = {}
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "RssAnon:")):
                    name, amount, _ = line.split()
                    values[name[:-1]] = int(amount) * 1024
        return values

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, value in self.read().items():
                self.peak[name] = max(self.peak[name], value)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for name, value in self.read().items():
            self.peak[name] = max(self.peak[name], value)

    def extra(self) -> dict[str, int]:
        return {name: self.peak[name] - self.start[name] for name in self.peak}


def run_phase(phase: str, base: Path, tuned: Path, budget: int, method: str, convert_layers: int, out: Path) -> dict:
    """One phase in this process (called in a fresh subprocess): seconds and peak memory."""
    import torch
    from safetensors import safe_open

    import wavecompress as wc
    from wavecompress.deltas import Checkpoint, read_full_finetune
    from wavecompress.deltas.full_finetune import filter_layers

    # read and stream on one thread each (the reader's block ops never fan out; a threaded clone on
    # busy cores measured the machine's contention, not the read); convert uses every core.
    torch.set_num_threads(1 if phase != "convert" else max(1, os.cpu_count() or 1))
    result: dict = {"phase": phase}
    with PeakMemory() as memory:
        started = time.perf_counter()
        if phase == "read":
            total = 0
            for side in (base, tuned):
                checkpoint = Checkpoint(side)
                for file in checkpoint.files:
                    with safe_open(str(file), framework="pt") as reader:
                        for key in reader.keys():
                            tensor = reader.get_tensor(key)
                            loaded = tensor.clone()  # get_tensor maps lazily: copy it so every byte is really read
                            total += loaded.numel()
                            del tensor, loaded
            result["values"] = total
        elif phase == "stream":
            deltas = read_full_finetune(base, tuned)
            count = 0
            for layer in deltas.layers:  # each ΔW is read, formed and checked (its norm) by the reader
                count += layer.dense.shape[0] > 0
                del layer
            result.update(layers=count)
        elif phase == "convert":
            deltas = read_full_finetune(base, tuned)
            names = deltas.layers.names[:convert_layers]
            deltas = filter_layers(deltas, [f"^{n}$".replace(".", r"\.") for n in names], None)
            compressed = wc.compress(deltas, budget=budget, method=method, baselines=("sparse",), reorder=False)
            compressed.save(out, force=True)
            result.update(layers=len(names), relative_error=compressed.report.relative_error)
        result["seconds"] = time.perf_counter() - started
    result["peak_extra"] = memory.extra()
    return result


def spawn(phase: str, args: argparse.Namespace, base: Path, tuned: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--base", str(base), "--tuned", str(tuned),
               "--budget", str(args.budget), "--method", args.method, "--convert-layers", str(args.convert_layers),
               "--out", str(out)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers to write (7 linear weights each)")
    parser.add_argument("--convert-layers", type=int, default=0, help="also run the full conversion on the first N linear weights")
    parser.add_argument("--budget", type=int, default=8192)
    parser.add_argument("--method", default="waveft")
    parser.add_argument("--quick", action="store_true", help="1/4-size shapes (1024, 2752), 2 layers, convert 7 weights")
    parser.add_argument("--repeat", type=int, default=2, help="runs per phase; the fastest is kept (disk cache warm)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the pair (default: a temp folder)")
    parser.add_argument("--phase", choices=["read", "stream", "convert"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tuned", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.base, args.tuned, args.budget, args.method, args.convert_layers, args.out)))
        return

    hidden, intermediate = (1024, 2752) if args.quick else (HIDDEN, INTERMEDIATE)
    if args.quick:
        args.convert_layers = args.convert_layers or 7
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        base, tuned, largest = write_pair(root, args.layers, hidden, intermediate)
        size = sum(f.stat().st_size for f in (root / "base").glob("*.safetensors"))
        print(f"pair: {args.layers} decoder layers of hidden {hidden} / intermediate {intermediate}, bf16, "
              f"{mib(size)} per side in {args.layers} shards (written in {time.perf_counter() - t0:.1f} s); "
              f"largest tensor {mib(largest)}")
        phases = ["read", "stream"] + (["convert"] if args.convert_layers else [])
        results = {}
        for phase in phases:
            runs = [spawn(phase, args, base, tuned, root / "out") for _ in range(args.repeat if phase != "convert" else 1)]
            results[phase] = min(runs, key=lambda r: r["seconds"])
        read, stream = results["read"], results["stream"]
        n = stream["layers"]
        print(f"{'phase':8} {'seconds':>8} {'per layer':>10} {'x read':>7} {'peak anon':>10} {'x largest':>9} "
              f"{'peak RSS':>10} {'x largest':>9}")
        for phase, r in results.items():
            layers = r.get("layers", n)
            ratio = r["seconds"] / read["seconds"] if phase != "convert" else r["seconds"] / (read["seconds"] * layers / n)
            anon, total = r["peak_extra"]["RssAnon"], r["peak_extra"]["VmRSS"]
            print(f"{phase:8} {r['seconds']:8.2f} {r['seconds'] / layers:9.3f}s {ratio:7.2f} {mib(anon):>10} "
                  f"{anon / largest:9.2f} {mib(total):>10} {total / largest:9.2f}")
        print(f"stream: {n} ΔW (float32) from {2 * n} bf16 tensors; time {stream['seconds'] / read['seconds']:.2f}× plain read "
              f"(goal ≤ 2), peak {stream['peak_extra']['VmRSS'] / largest:.2f}× the largest tensor (goal ≤ 3)")
        if "convert" in results:
            c = results["convert"]
            print(f"convert: {c['layers']} layers with {args.method} b={args.budget} + sparse baseline, no reorder: "
                  f"{c['seconds'] / c['layers']:.2f} s per layer, relative error {c['relative_error']:.4f}; "
                  "x read compares with reading the same share of tensors")


if __name__ == "__main__":
    main()
