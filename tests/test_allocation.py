"""Budget forms and global allocation: curves match the methods, greedy beats uniform and equals brute force."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import pywt
import torch
from click.testing import CliRunner

import wavecompress as wc
from wavecompress.cli import main
from wavecompress.deltas import LayerDelta
from wavecompress.methods import MethodOptions, get_method
from wavecompress.methods.allocation import budget_spec, parse_size, plan_budgets
from wavecompress.methods.rate_distortion import rd_curve
from conftest import make_peft_lora

PLAIN = MethodOptions(reorder=None)


def uneven_layers(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three layers whose spectra differ: a strong near-rank-2 update, a flat noisy one, a weak one."""
    g = torch.Generator().manual_seed(seed)
    strong = 3.0 * torch.randn(32, 2, generator=g) @ torch.randn(2, 64, generator=g) + 0.05 * torch.randn(32, 64, generator=g)
    flat = 0.5 * torch.randn(32, 64, generator=g)
    weak = 0.1 * torch.randn(64, 32, generator=g) @ torch.diag(torch.linspace(1, 0.01, 32)) @ torch.randn(32, 32, generator=g)
    return {"strong": strong, "flat": flat, "weak": weak}


def total_error(result: wc.CompressedAdapter) -> float:
    return result.report.relative_error


@pytest.mark.parametrize("method", ["waveft", "wara", "lora", "sparse"])
def test_curve_is_the_methods_own_error_at_every_budget(method: str) -> None:
    for name, dense in uneven_layers().items():
        delta = LayerDelta.from_dense(name, dense)
        options = MethodOptions()  # default ordering included: curves come from the method itself
        curve = rd_curve(delta, method, options)
        for budget in (50, 97, 300, 700, 1500):
            layer = get_method(method).compress(delta, budget, options)
            assert curve.error_sq_at(budget) == pytest.approx(layer.error_sq, rel=1e-4, abs=1e-6 * layer.energy), (name, budget)
            assert curve.stored_at(budget) == layer.stored_values


def error_steps(method: str, dense: torch.Tensor) -> tuple[np.ndarray, int]:
    """Energy each stored unit removes, largest first, and its cost in values, computed without wavecompress:
    waveft (plain) = squared coefficients of one periodized Haar level per axis (PyWavelets), cost 1;
    lora = squared singular values (numpy), cost d_out + d_in."""
    matrix = dense.double().numpy()
    if method == "waveft":
        rows = np.concatenate(pywt.wavedec(matrix, "haar", mode="periodization", level=1, axis=0), axis=0)
        coeffs = np.concatenate(pywt.wavedec(rows, "haar", mode="periodization", level=1, axis=1), axis=1)
        return np.sort(np.square(coeffs).ravel())[::-1], 1
    return np.square(np.linalg.svd(matrix, compute_uv=False)), sum(matrix.shape)


def independent_errors(method: str, layers: dict[str, torch.Tensor], budget: int) -> tuple[float, float]:
    """(uniform, global) relative error at ``budget`` per layer: uniform keeps each layer's best steps that fit
    its budget; global keeps the best steps over all layers that fit the total (exact here: equal step costs)."""
    steps = [error_steps(method, dense) for dense in layers.values()]
    total = sum(float(energy.sum()) for energy, _ in steps)
    uniform = sum(float(energy[budget // cost:].sum()) for energy, cost in steps)
    cost = steps[0][1]
    assert all(c == cost for _, c in steps)
    pooled = np.sort(np.concatenate([energy for energy, _ in steps]))[::-1]
    global_ = float(pooled[len(layers) * budget // cost:].sum())
    return (uniform / total) ** 0.5, (global_ / total) ** 0.5


@pytest.mark.parametrize("method,budget", [
    ("waveft", 200),  # uniform wastes 400 values on two layers that hold little energy
    ("lora", 150),  # uniform: rank 1 per layer and 54 values unusable in each
])
def test_global_allocation_beats_uniform_on_uneven_layers(method: str, budget: int) -> None:
    layers = uneven_layers()
    uniform = wc.compress(layers, budget=budget, method=method, reorder=False)
    greedy = wc.compress(layers, budget=budget, method=method, reorder=False, allocate="global")
    assert sum(row.result.stored_values for row in greedy.report.layers) <= 3 * budget
    budgets = {row.name: row.budget for row in greedy.report.layers}
    assert budgets["strong"] > budget  # the budget goes where the update is
    uniform_err, global_err = independent_errors(method, layers, budget)
    assert global_err < 0.7 * uniform_err
    assert total_error(uniform) == pytest.approx(uniform_err, rel=1e-5)
    assert total_error(greedy) == pytest.approx(global_err, rel=1e-5)
    # each baseline is allocated on its own curves at the same total (the @bytes ones at the same bytes)
    totals = greedy.report.overall()
    for name, summary in totals.items():
        if name.endswith("@bytes"):
            assert summary.bytes <= totals[method].bytes, name
        else:
            assert summary.stored_values <= 3 * budget, name


def test_global_allocation_beats_uniform_for_wara() -> None:
    layers = uneven_layers()
    uniform = wc.compress(layers, budget=200, method="wara", reorder=False)
    greedy = wc.compress(layers, budget=200, method="wara", reorder=False, allocate="global")
    assert sum(row.result.stored_values for row in greedy.report.layers) <= 600
    assert {row.name: row.budget for row in greedy.report.layers}["strong"] > 200
    assert total_error(greedy) < 0.5 * total_error(uniform)
    # regression pins (this code's own output when written, not an independent value): flag any change
    assert (total_error(uniform), total_error(greedy)) == (pytest.approx(0.6199, abs=1e-3), pytest.approx(0.2410, abs=1e-3))


def brute_force(layers: dict[str, torch.Tensor], method: str, total: int, step: int = 1) -> float:
    """Smallest total squared error over every split of ``total`` (per-layer budgets in ``step``s)."""
    compress = get_method(method).compress
    errors = {}
    for name, dense in layers.items():
        delta = LayerDelta.from_dense(name, dense)
        errors[name] = [compress(delta, b, PLAIN).error_sq for b in range(0, total + 1, step)]
    best = float("inf")
    for split in itertools.product(*(range(len(e)) for e in errors.values())):
        if sum(split) * step <= total:
            best = min(best, sum(e[i] for e, i in zip(errors.values(), split)))
    return best


@pytest.mark.parametrize("total", [5, 13, 29, 40])
def test_global_topk_equals_brute_force_optimum(total: int) -> None:
    g = torch.Generator().manual_seed(3)
    layers = {"a": 2.0 * torch.randn(4, 4, generator=g), "b": torch.randn(4, 2, generator=g) @ torch.randn(2, 8, generator=g),
              "c": 0.3 * torch.randn(8, 2, generator=g)}
    plans = plan_budgets([LayerDelta.from_dense(n, d) for n, d in layers.items()], ["waveft"], PLAIN,
                         budget_spec(budget_total=total), "global")
    result = wc.compress(layers, budget_total=total, method="waveft", reorder=False, allocate="global")
    error_sq = result.report.overall()["waveft"].error_sq
    assert error_sq == pytest.approx(brute_force(layers, "waveft", total), rel=1e-9, abs=1e-12)
    assert plans["waveft"].predicted_error_sq == pytest.approx(error_sq, rel=1e-6)  # float32 coefficients
    assert sum(plans["waveft"].budgets.values()) == total


@pytest.mark.parametrize("total", [16 * 3, 16 * 5 + 7, 16 * 9])
def test_global_lora_equals_brute_force_when_rank_costs_match(total: int) -> None:
    g = torch.Generator().manual_seed(4)
    layers = {n: s * torch.randn(8, 8, generator=g) @ torch.diag(torch.logspace(0, -2, 8)) for n, s in (("a", 1.0), ("b", 3.0), ("c", 0.5))}
    result = wc.compress(layers, budget_total=total, method="lora", allocate="global")
    assert result.report.overall()["lora"].error_sq == pytest.approx(brute_force(layers, "lora", total, step=16), rel=1e-9)


def test_budget_ratio_and_size_forms(tmp_path: Path) -> None:
    src, _ = make_peft_lora(tmp_path / "lora", r=8, target_modules=["query", "value", "dense"])
    deltas = wc.load_deltas(src)
    ratio = wc.compress(src, budget_ratio=0.25, method="waveft", reorder=False, baselines=())
    assert ratio.report.overall()["waveft"].stored_values <= int(0.25 * deltas.stored_values)
    assert ratio.report.overall()["waveft"].stored_values >= int(0.25 * deltas.stored_values) - len(deltas.layers)
    for method in ("waveft", "lora"):
        limit = 24_000
        result = wc.compress(src, max_size=limit, method=method, allocate="global", reorder=False, baselines=())
        out = result.save(tmp_path / f"sized-{method}")
        size = (out / "adapter_model.safetensors").stat().st_size
        assert limit - 8 * 4 <= size <= limit, (method, size)  # filled to within a few values (8 bytes each)
    assert parse_size("2MB") == 2_000_000 and parse_size("1.5KiB") == 1536 and parse_size(512) == 512


def test_cli_budget_total_global_writes_per_layer_budgets(tmp_path: Path) -> None:
    src, _ = make_peft_lora(tmp_path / "lora", r=8, target_modules=["query", "value", "dense"])
    out, report_path = tmp_path / "out", tmp_path / "r.json"
    result = CliRunner().invoke(main, ["convert", str(src), "--budget-total", "4000", "--allocate", "global", "--no-reorder",
                                       "--out", str(out), "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "allocated global" in result.output
    report = json.loads(report_path.read_text())
    assert report["allocation"]["mode"] == "global" and report["allocation"]["total"] == 4000
    assert sum(row["stored_values"] for row in report["layers"]) <= 4000
    assert len({row["budget"] for row in report["layers"]}) > 1
    config = json.loads((out / "adapter_config.json").read_text())
    # the config's per-layer table describes each layer as allocated: its shape and its stored values
    assert {name: (entry["shape"], entry["stored_tensors"]["waveft_spectrum"]["shape"]) for name, entry in config["layers"].items()} == {
        row["name"]: (row["shape"], [row["stored_values"]]) for row in report["layers"]}
    bad = CliRunner().invoke(main, ["convert", str(src), "--budget", "10", "--budget-total", "40", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "exactly one budget" in bad.output


def test_method_auto_picks_the_lowest_error_and_says_why() -> None:
    layers = uneven_layers()
    errors = {m: wc.compress(layers, budget=150, method=m, reorder=False, baselines=()).report.relative_error
              for m in ("waveft", "wara", "lora")}
    auto = wc.compress(layers, budget=150, method="auto", reorder=False)
    best = min(errors, key=errors.get)
    assert auto.report.method == best == "lora"
    assert auto.report.relative_error == pytest.approx(errors[best], rel=1e-9)
    note = next(n for n in auto.report.notes if n.startswith("auto:"))
    assert f"chose {best}" in note and all(m in note for m in errors)


def test_top_k_curves_are_allocated_like_the_sorted_greedy_without_sorting() -> None:
    """global_budgets' top-k path (unit costs, one group, gains never rising) gives the budgets and the
    error of the sorted greedy itself, ties included (taken in layer order, then position)."""
    import numpy as np

    from wavecompress.methods.allocation import global_budgets
    from wavecompress.methods.rate_distortion import RDCurve, greedy_take

    rng = np.random.default_rng(0)
    for trial in range(200):
        curves = []
        for i in range(int(rng.integers(1, 8))):
            m = int(rng.integers(0, 40))
            gains = rng.integers(0, 5, m).astype(float) if trial % 2 else rng.random(m)  # even trials: many ties
            curves.append(RDCurve(f"l{i}", "sparse", (8, 8), 10.0, np.ones(m, dtype=np.int64), np.sort(gains)[::-1].copy(),
                                  np.zeros(m, dtype=np.int64), float(rng.random())))
        steps = sum(len(c.gains) for c in curves)
        gains = np.concatenate([c.gains for c in curves])
        layer_of = np.concatenate([np.full(len(c.gains), i) for i, c in enumerate(curves)])
        groups = np.concatenate([np.full(len(c.gains), i) for i, c in enumerate(curves)])
        for total in (1, steps // 3, steps - 1, steps, steps + 5):
            taken = greedy_take(np.ones(steps, dtype=np.int64), groups, np.argsort(-gains, kind="stable"), total)
            expected = [int(np.count_nonzero(taken[layer_of == i])) for i in range(len(curves))]
            error = float(gains[~taken].sum() + sum(c.residual for c in curves))
            assert global_budgets(curves, total) == (expected, error)
