"""Both currencies: baselines at the output's bytes, the verdict line, and --optimise for --method auto."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import pytest
from click.testing import CliRunner

import wavecompress as wc
from wavecompress.cli import main
from wavecompress.methods import MethodOptions, get_method
from wavecompress.methods.rate_distortion import rd_curve


def test_lora_at_equal_bytes_is_the_global_allocation_of_those_bytes(lora_dir: Path) -> None:
    result = wc.compress(lora_dir, budget=60, method="waveft", dtype="bfloat16")
    totals = result.report.overall()
    target = totals["waveft"].bytes
    lora = totals["lora@bytes"]
    assert lora.bytes <= target
    # independently: the best LoRA (any ranks per layer) whose bf16 factors fit in the same bytes
    layers = list(wc.load_deltas(lora_dir).layers)
    curves = [rd_curve(d, "lora", MethodOptions()) for d in layers]
    best = None
    for ranks in np.ndindex(*[len(c.costs) + 1 for c in curves]):
        cost = sum(int(c.costs[:r].sum()) for c, r in zip(curves, ranks))
        if 2 * cost <= target:
            err = sum(float(c.gains[r:].sum()) + c.residual for c, r in zip(curves, ranks))
            best = err if best is None else min(best, err)
    energy = sum(c.energy for c in curves)
    assert best > 0  # the bytes do not hold the whole delta
    assert lora.relative_error == pytest.approx((best / energy) ** 0.5, abs=5e-3)  # + bf16 rounding of the factors
    assert totals["sparse@bytes"].bytes <= target < totals["sparse@bytes"].bytes + 4
    line = result.report.verdict()
    assert "| equal values: lora" in line and f"| equal bytes ({target} B): lora {lora.relative_error:.4f}" in line


def test_optimise_currency_for_auto(tmp_path: Path, lora_dir: Path) -> None:
    def convert(*extra: str):
        return CliRunner().invoke(main, ["convert", str(lora_dir), "--method", "auto", "--quiet", "--baselines", "none",
                                         "--out", str(tmp_path / "o"), "--force", *extra])

    refused = convert("--max-size", "20kB", "--optimise", "values")
    assert refused.exit_code == 2 and "--optimise values" in refused.output
    by_size = convert("--max-size", "20kB")
    assert by_size.exit_code == 0, by_size.output
    assert "at equal bytes (20kB) (optimised bytes:" in by_size.output
    by_values = convert("--budget", "300")
    assert by_values.exit_code == 0 and "at this budget (optimised values:" in by_values.output
    by_bytes = convert("--budget", "300", "--optimise", "bytes")
    unwrapped = " ".join(by_bytes.output.split())  # notes are wrapped at 100 columns
    assert by_bytes.exit_code == 0 and "the smallest candidate file at the value budget" in unwrapped


def test_optimise_bytes_never_compares_against_an_empty_candidate_and_always_fits_its_own_size(tmp_path: Path) -> None:
    from conftest import make_peft_lora

    # fixture at 300 values/layer: LoRA stores nothing (rank 1 costs 768 on 384×384), so its near-empty file is
    # not the size compared at; before, every candidate was refitted to it, none fitted, and convert crashed.
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "minilm-bbc-lora"
    result = wc.compress(fixture, budget=300, method="auto", optimise="bytes", baselines=())
    note = result.report.notes[-1]
    assert result.report.method == "wara" and "lora 0.8108" in note and "at equal bytes (128836 B," in note, note
    assert result.report.overall()["wara"].relative_error == pytest.approx(0.5378, abs=1e-4)
    # tiny rank-8 LoRA at --rank 1: LoRA's own file (about 2.3 kB) is the size; the size estimate has no room
    # for it when refitted, so its value-budget result (which is that size) stands
    tiny = make_peft_lora(tmp_path / "tiny", r=8, seed=3)[0]
    result = wc.compress(tiny, rank=1, method="auto", optimise="bytes", baselines=())
    note = result.report.notes[-1]
    assert result.report.method == "lora" and "lora 0.8206" in note and "wara does not fit" in note, note
    assert result.report.overall()["lora"].relative_error == pytest.approx(0.8206, abs=1e-4)
    result.save(tmp_path / "out")
    size = (tmp_path / "out" / "adapter_model.safetensors").stat().st_size
    assert f"at equal bytes ({size} B," in note


@pytest.mark.parametrize("total", [40, 700, 2000])
def test_curves_cut_short_then_extended_allocate_exactly_as_full_curves(total: int) -> None:
    """Sparse curves built only to a small reach, extended where the allocation uses them up, give the same
    per-layer budgets as curves built to the whole total: one layer holds most of the energy, so it must grow."""
    from wavecompress.deltas import AdapterDeltas, LayerDelta
    from wavecompress.equal_bytes import extend_saturated
    from wavecompress.methods.allocation import global_budgets

    generator = torch.Generator().manual_seed(5)
    layers = [LayerDelta.from_factors(f"l{i}", torch.randn(40, 3, generator=generator) * scale,
                                      torch.randn(3, 30, generator=generator)) for i, scale in enumerate([10.0, 1.0, 0.3, 0.1])]
    deltas = AdapterDeltas(source="synthetic", kind="lora", layers=layers)
    options = MethodOptions()
    full = [rd_curve(d, "sparse", options, max_cost=total) for d in layers]
    reach = max(1, total // 3)  # the four reaches cover 4/3 of the total: only a dominant layer runs out
    cut = [rd_curve(d, "sparse", options, max_cost=reach) for d in layers]
    reaches = [reach] * len(layers)
    extend_saturated(deltas, cut, reaches, total, options)
    assert global_budgets(cut, total)[0] == global_budgets(full, total)[0]
    assert reaches[0] == total and reaches[-1] == reach  # the dominant layer was extended, the weakest was not
