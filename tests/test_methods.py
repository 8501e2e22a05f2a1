"""Each method against its closed-form optimum, computed independently with PyWavelets / dense SVD."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

import wavecompress as wc
from wavecompress.deltas import LayerDelta
from wavecompress.methods import MethodOptions, get_method
from wavecompress.methods.wara import allocate_ranks


def lora_delta(d_out: int = 64, d_in: int = 96, rank: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_out, rank, generator=g), torch.randn(rank, d_in, generator=g)


def pywt_coefficients(matrix: np.ndarray, wavelet: str, levels: tuple[int, int]) -> np.ndarray:
    """Separable periodized DWT, rows then columns, with PyWavelets alone."""
    out = matrix
    for axis, level in enumerate(levels):
        if level:
            out = np.concatenate(pywt.wavedec(out, wavelet, mode="periodization", level=level, axis=axis), axis=axis)
    return out


def relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    return float((reference.double() - approx.double()).norm() / reference.double().norm())


@pytest.mark.parametrize("wavelet,levels", [("db1", 1), ("db1", 3), ("db4", 2)])
def test_waveft_topk_error_is_energy_of_dropped_coefficients(wavelet: str, levels: int) -> None:
    b, a = lora_delta()
    dense = (b.double() @ a.double()).numpy()
    coeffs = pywt_coefficients(dense, wavelet, (levels, levels))
    k = 700
    squares = np.sort(coeffs.ravel() ** 2)[::-1]
    expected = np.sqrt(squares[k:].sum() / squares.sum())
    layer = get_method("waveft").compress(LayerDelta.from_factors("l", b, a), k, MethodOptions(wavelet, levels))
    assert layer.stored_values == k
    assert layer.relative_error == pytest.approx(expected, rel=1e-5)
    rebuilt = get_method("waveft").reconstruct(layer.tensors, layer.meta, layer.shape)
    assert relative_error(torch.from_numpy(dense), rebuilt) == pytest.approx(expected, rel=1e-5)


def test_lora_svd_error_is_tail_singular_values() -> None:
    b, a = lora_delta(rank=8)
    dense = b.double() @ a.double()
    s = torch.linalg.svdvals(dense)
    budget = 3 * (64 + 96) + 50  # rank 3 fits, rank 4 does not
    layer = get_method("lora").compress(LayerDelta.from_factors("l", b, a), budget, MethodOptions())
    assert layer.meta["rank"] == 3 and layer.stored_values == 3 * 160
    expected = float((s[3:].square().sum() / s.square().sum()).sqrt())
    assert layer.relative_error == pytest.approx(expected, rel=1e-6)
    rebuilt = get_method("lora").reconstruct(layer.tensors, layer.meta, layer.shape)
    assert relative_error(dense, rebuilt) == pytest.approx(expected, rel=1e-5)


def test_wara_error_is_tail_singular_values_of_each_subband() -> None:
    b, a = lora_delta(d_out=64, d_in=48, rank=5)
    dense = (b.double() @ a.double()).numpy()
    layer = get_method("wara").compress(LayerDelta.from_factors("l", b, a), 900, MethodOptions("db1", 3))
    assert layer.stored_values <= 900
    coeffs = torch.from_numpy(pywt_coefficients(dense, "db1", (3, 3)))
    rows = [0, 8, 16, 32, 64]
    cols = [0, 6, 12, 24, 48]
    ranks = {(i, j): k for i, j, k in layer.meta["bands"]}
    tail = 0.0
    for i in range(4):
        for j in range(4):
            s = torch.linalg.svdvals(coeffs[rows[i] : rows[i + 1], cols[j] : cols[j + 1]])
            tail += float(s[ranks.get((i, j), 0) :].square().sum())
    expected = (tail / float(coeffs.square().sum())) ** 0.5
    assert layer.relative_error == pytest.approx(expected, rel=1e-5)
    rebuilt = get_method("wara").reconstruct(layer.tensors, layer.meta, layer.shape)
    assert relative_error(torch.from_numpy(dense), rebuilt) == pytest.approx(expected, rel=1e-5)


def test_wara_greedy_matches_brute_force_on_a_tiny_case() -> None:
    singular = {(0, 0): torch.tensor([5.0, 1.0]), (0, 1): torch.tensor([3.0, 2.5]), (1, 1): torch.tensor([4.0])}
    costs = {(0, 0): 4, (0, 1): 6, (1, 1): 8}
    budget = 16
    ranks, _ = allocate_ranks(singular, costs, budget)
    best = 0.0
    for k0 in range(3):
        for k1 in range(3):
            for k2 in range(2):
                if k0 * 4 + k1 * 6 + k2 * 8 <= budget:
                    gain = float(singular[(0, 0)][:k0].square().sum() + singular[(0, 1)][:k1].square().sum())
                    best = max(best, gain + float(singular[(1, 1)][:k2].square().sum()))
    got = sum(float(singular[b][:k].square().sum()) for b, k in ranks.items())
    assert sum(costs[b] * k for b, k in ranks.items()) <= budget
    assert got == pytest.approx(best)


@pytest.mark.parametrize("method", ["waveft", "wara", "lora", "sparse"])
def test_dense_and_factored_inputs_give_the_same_error(method: str) -> None:
    b, a = lora_delta(d_out=32, d_in=40, rank=3)
    factored = get_method(method).compress(LayerDelta.from_factors("l", b, a), 400, MethodOptions())
    dense = get_method(method).compress(LayerDelta.from_dense("l", b @ a), 400, MethodOptions())
    assert factored.stored_values == dense.stored_values
    assert factored.relative_error == pytest.approx(dense.relative_error, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("method", ["waveft", "wara", "lora", "sparse"])
def test_budget_larger_than_the_layer_is_clamped_and_exact(method: str) -> None:
    b, a = lora_delta(d_out=16, d_in=12, rank=2)
    layer = get_method(method).compress(LayerDelta.from_factors("l", b, a), 10_000, MethodOptions())
    assert layer.budget_clamped
    assert layer.stored_values <= 16 * 12
    rebuilt = get_method(method).reconstruct(layer.tensors, layer.meta, layer.shape)
    assert relative_error(b @ a, rebuilt) < 1e-5  # the stored tensors give back B@A, not just a reported 0
    assert layer.relative_error < 1e-5


def test_odd_and_one_row_shapes_use_an_exact_transform() -> None:
    for shape in [(1, 40), (7, 9), (13, 16)]:
        g = torch.Generator().manual_seed(4)
        matrix = torch.randn(*shape, generator=g)
        for method in ["waveft", "wara", "lora"]:
            result = wc.compress({"l": matrix}, budget=10, method=method)
            rebuilt = result.to_deltas()["l"]
            assert relative_error(matrix, rebuilt) == pytest.approx(result.report.relative_error, rel=1e-5, abs=1e-6)


def test_library_compress_reports_baselines_and_overall() -> None:
    layers = {f"layer{i}": lora_delta(32, 48, 4, seed=i) for i in range(3)}
    result = wc.compress(layers, budget=300, method="wara")
    totals = result.report.overall()
    # plain ordering reported beside the reordered default; each baseline also at the output's bytes
    assert set(totals) == {"wara", "lora", "sparse", "wara-plain", "lora@bytes", "sparse@bytes"}
    deltas = result.to_deltas()
    num = sum(float((deltas[n].double() - (b @ a).double()).square().sum()) for n, (b, a) in layers.items())
    den = sum(float((b @ a).double().square().sum()) for b, a in layers.values())
    assert totals["wara"].relative_error == pytest.approx((num / den) ** 0.5, rel=1e-5)
    assert totals["lora"].stored_values == 3 * 3 * (32 + 48)  # rank 3 fits 300 in each of 3 layers


@pytest.mark.parametrize("budget", [0, -5])
def test_non_positive_budget_is_refused(budget: int) -> None:
    with pytest.raises(wc.InputError, match="budget must be a positive integer"):
        wc.compress({"l": torch.ones(4, 4)}, budget=budget)
