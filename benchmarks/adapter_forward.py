"""Train step of a WaRA / WaveFT top-k adapter layer against a PEFT LoRA layer at equal stored values.

    python benchmarks/adapter_forward.py            # 7B shapes (4096², 11008×4096), 2048 tokens, CPU
    python benchmarks/adapter_forward.py --quick    # 512² and 1376×512, 256 tokens (a test runs this)

Each layer's adapter is compressed from the same trained-like LoRA delta (rank 64, decaying spectrum) at
LoRA r=16's stored values, r·(d_out + d_in), with the default orderings and levels. A step is forward +
backward (gradients wrt the stored values and the input, as inside a model) of the adapter's
contribution x ΔŴᵀ: the PEFT LoRA layer's lora_B(lora_A(x))·scaling, the wavecompress PEFT layer's
dense-free forward (``Method.apply``), and the dense path it replaces (x @ ΔŴᵀ with ΔŴ rebuilt every
step). The frozen base layer's own x Wᵀ is the same for all three and is timed once beside them.
Timings are the best of a few interleaved rounds on a shared machine; ratios are within one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from wavecompress.deltas.layer_delta import LayerDelta
from wavecompress.methods import get_method
from wavecompress.methods.options import MethodOptions

GOALS = {"wara": 1.3, "waveft": 1.6}


def trained_like(shape: tuple[int, int], rank: int = 64, seed: int = 0) -> LayerDelta:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -2, rank)
    left = torch.randn(shape[0], rank, generator=gen) * scale / shape[0] ** 0.5
    return LayerDelta.from_factors("layer", left, torch.randn(rank, shape[1], generator=gen) / shape[1] ** 0.5)


def timed_rounds(steps: dict[str, object], repeats: int) -> dict[str, float]:
    """Best time of each step over ``repeats`` rounds, the steps interleaved within a round (so a load
    spike on the shared machine hits all of them, and the best of a few is each one's unloaded cost)."""
    for step in steps.values():
        step()  # warm-up (caches, allocator)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def lora_step(shape: tuple[int, int], rank: int, x: torch.Tensor, grad: torch.Tensor):
    from peft import LoraConfig, get_peft_model

    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(shape[1], shape[0], bias=False))
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["proj"]))
    layer = peft_model.base_model.model.proj
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    lora_a, lora_b, dropout = layer.lora_A["default"], layer.lora_B["default"], layer.lora_dropout["default"]
    scaling = layer.scaling["default"]
    params = [lora_a.weight, lora_b.weight]

    def step():
        out = lora_b(lora_a(dropout(x))) * scaling  # PEFT LoRA's adapter term, as in its Linear.forward
        torch.autograd.grad(out, params + [x], grad)
    return step


def wavecompress_step(method: str, delta: LayerDelta, budget: int, x: torch.Tensor, grad: torch.Tensor, dense: bool):
    spec = get_method(method)
    options = MethodOptions(reorder="snake")
    layer = spec.compress(delta, budget, options)
    tensors = {k: (v.float().requires_grad_() if v.is_floating_point() else v) for k, v in layer.tensors.items()}
    params = [t for t in tensors.values() if t.requires_grad]

    def step():
        if dense:
            out = x @ spec.reconstruct(tensors, layer.meta, layer.shape).T
        else:
            out = spec.apply(tensors, layer.meta, layer.shape, x)
        torch.autograd.grad(out, params + [x], grad)
    return step, layer


def base_step(shape: tuple[int, int], x: torch.Tensor, grad: torch.Tensor):
    weight = torch.randn(shape) / shape[1] ** 0.5

    def step():
        out = x @ weight.T
        torch.autograd.grad(out, [x], grad)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and tokens (seconds)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank; the wavelet adapters store as many values")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-dense", action="store_true", help="skip timing the dense ΔŴ path (slow at 7B shapes)")
    args = parser.parse_args()
    shapes = [(512, 512), (1376, 512)] if args.quick else [(4096, 4096), (11008, 4096)]
    tokens = 256 if args.quick else 2048
    repeats = args.repeats or (7 if args.quick else 5)
    torch.manual_seed(0)
    print(f"| layer | tokens | stored values | LoRA r={args.rank} s | WaRA s (×LoRA) | WaveFT s (×LoRA) "
          f"| dense ΔŴ WaRA s | dense ΔŴ WaveFT s | base x Wᵀ s |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {"wara": [], "waveft": []}
    layer_ratios: dict[str, list[float]] = {"wara": [], "waveft": []}
    for shape in shapes:
        x = torch.randn(tokens, shape[1], requires_grad=True)
        grad = torch.randn(tokens, shape[0])
        budget = args.rank * (shape[0] + shape[1])
        delta = trained_like(shape)
        steps = {"lora": lora_step(shape, args.rank, x, grad)}
        row = {}
        for method in ("wara", "waveft"):
            steps[method], layer = wavecompress_step(method, delta, budget, x, grad, dense=False)
            row["values " + method] = layer.stored_values
        row.update(timed_rounds(steps, repeats))
        slow = {"base": base_step(shape, x, grad)}
        if not args.no_dense:
            for method in ("wara", "waveft"):
                slow["dense " + method] = wavecompress_step(method, delta, budget, x, grad, dense=True)[0]
        row.update(timed_rounds(slow, 1 if not args.quick else 2))
        row.setdefault("dense wara", float("nan"))
        row.setdefault("dense waveft", float("nan"))
        t_lora, t_base = row["lora"], row["base"]
        for method in ("wara", "waveft"):
            ratios[method].append(row[method] / t_lora)
            layer_ratios[method].append((t_base + row[method]) / (t_base + t_lora))
        print(f"| {shape[0]}×{shape[1]} | {tokens} | {budget} (WaRA {row['values wara']}, WaveFT {row['values waveft']}) "
              f"| {t_lora:.4f} | {row['wara']:.4f} ({row['wara'] / t_lora:.2f}×) | {row['waveft']:.4f} "
              f"({row['waveft'] / t_lora:.2f}×) | {row['dense wara']:.3f} | {row['dense waveft']:.3f} | {t_base:.3f} |")
    for method, values in ratios.items():
        worst = max(values)
        print(f"SUMMARY|{method} train step / LoRA's (adapter term, worst shape)|{worst:.2f}|goal ≤ {GOALS[method]}")
    for method, values in layer_ratios.items():
        print(f"SUMMARY|{method} layer train step / LoRA's (frozen base x Wᵀ included, worst shape)|{max(values):.2f}")


if __name__ == "__main__":
    main()
