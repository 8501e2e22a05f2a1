"""Library options: baselines=() computes the method alone (no plain-order column), compare_orders= adds it back."""

from __future__ import annotations

from pathlib import Path

import torch

import wavecompress

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "minilm-bbc-lora"


def test_no_baselines_means_no_comparison_columns():
    alone = wavecompress.compress(FIXTURE, budget=3000, method="wara", baselines=())
    assert sorted(alone.report.overall()) == ["wara"]
    with_orders = wavecompress.compress(FIXTURE, budget=3000, method="wara", baselines=(), compare_orders=True)
    assert sorted(with_orders.report.overall()) == ["wara", "wara-plain"]
    assert alone.report.relative_error == with_orders.report.relative_error
    for mine, theirs in zip(alone.layers, with_orders.layers):
        assert all(torch.equal(mine.tensors[k], theirs.tensors[k]) for k in theirs.tensors)
    lora_only = wavecompress.compress(FIXTURE, budget=3000, method="wara", baselines=("lora",))
    assert sorted(lora_only.report.overall()) == ["lora", "lora@bytes", "wara", "wara-plain"]


def test_library_errors_name_keywords_and_the_cli_names_flags(tmp_path):
    import pytest
    from click.testing import CliRunner

    from wavecompress.cli import main

    with pytest.raises(wavecompress.InputError, match=r"^give exactly one budget: budget=N \(per layer\), budget_total=N"):
        wavecompress.compress(FIXTURE, budget=10, budget_total=100)
    with pytest.raises(wavecompress.InputError, match=r"^target_error= needs one method= and wavelet="):
        wavecompress.compress(FIXTURE, target_error=0.5, method="auto")
    with pytest.raises(wavecompress.InputError, match=r"^unknown dtype= 'f7'"):
        wavecompress.compress(FIXTURE, budget=10, dtype="f7")
    result = CliRunner().invoke(main, ["convert", str(FIXTURE), "--target-error", "0.5", "--method", "auto",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--target-error needs one --method and --wavelet" in result.output
