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
