"""Orthonormal wavelet transforms: perfect reconstruction, energy, agreement with PyWavelets."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from wavecompress.errors import InputError
from wavecompress.transforms import analysis, analysis2d, axis_levels, band_slices, synthesis, synthesis2d, validate_wavelet

FAMILIES = ["db1", "db2", "db4", "sym4", "coif2"]


def pywt_axis(x: np.ndarray, wavelet: str, levels: int) -> np.ndarray:
    if levels == 0:
        return x
    return np.concatenate(pywt.wavedec(x, wavelet, mode="periodization", level=levels, axis=0), axis=0)


@pytest.mark.parametrize("wavelet", FAMILIES)
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_axis_transform_matches_pywavelets_and_is_orthonormal(wavelet: str, levels: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(48, 5, dtype=torch.float64)
    coeffs = analysis(x, wavelet, levels)
    np.testing.assert_allclose(coeffs.numpy(), pywt_axis(x.numpy(), wavelet, levels), atol=1e-10)
    assert torch.allclose(coeffs.square().sum(), x.square().sum(), rtol=1e-10)
    assert torch.allclose(synthesis(coeffs, wavelet, levels), x, atol=1e-10)


@pytest.mark.parametrize("wavelet", FAMILIES)
@pytest.mark.parametrize("shape,levels", [((32, 48), (3, 3)), ((24, 10), (3, 1)), ((7, 16), (0, 4)), ((2, 2), (1, 1))])
def test_2d_perfect_reconstruction_and_energy(wavelet: str, shape: tuple[int, int], levels: tuple[int, int]) -> None:
    torch.manual_seed(1)
    x = torch.randn(*shape, dtype=torch.float64)
    coeffs = analysis2d(x, wavelet, levels)
    assert coeffs.shape == x.shape
    assert abs(float(coeffs.square().sum() / x.square().sum()) - 1.0) < 1e-10
    assert float((synthesis2d(coeffs, wavelet, levels) - x).abs().max()) < 1e-10


def test_2d_float32_reconstruction_is_at_float_precision() -> None:
    torch.manual_seed(2)
    x = torch.randn(256, 384)
    back = synthesis2d(analysis2d(x, "db1", (5, 5)), "db1", (5, 5))
    assert float((back - x).abs().max()) < 1e-5
    assert float((back - x).norm() / x.norm()) < 1e-6


def test_2d_transform_of_a_product_is_product_of_transformed_factors() -> None:
    torch.manual_seed(3)
    b, a = torch.randn(32, 4, dtype=torch.float64), torch.randn(4, 24, dtype=torch.float64)
    for wavelet in ["db1", "db4"]:
        direct = analysis2d(b @ a, wavelet, (3, 2))
        factored = analysis(b, wavelet, 3) @ analysis(a.T.contiguous(), wavelet, 2).T
        assert torch.allclose(direct, factored, atol=1e-10)


def test_haar_single_level_is_pywt_dwt2_quadrants() -> None:
    x = np.random.default_rng(0).standard_normal((8, 6))
    c_a, (c_h, c_v, c_d) = pywt.dwt2(x, "haar", mode="periodization")
    ours = analysis2d(torch.from_numpy(x), "db1", (1, 1)).numpy()
    # rows low/high split the first axis, columns the second: [[cA, cV], [cH, cD]] in pywt's names
    np.testing.assert_allclose(ours[:4, :3], c_a, atol=1e-12)
    np.testing.assert_allclose(ours[:4, 3:], c_v, atol=1e-12)
    np.testing.assert_allclose(ours[4:, :3], c_h, atol=1e-12)
    np.testing.assert_allclose(ours[4:, 3:], c_d, atol=1e-12)


def test_axis_levels_keep_every_level_exact() -> None:
    assert axis_levels(1024, 5) == 5
    assert axis_levels(12, 3) == 2
    assert axis_levels(7, 3) == 0
    assert axis_levels(384, 10) == 7
    assert [s.stop - s.start for s in band_slices(48, 3)] == [6, 6, 12, 24]
    assert band_slices(7, 0) == [slice(0, 7)]


def test_wavelet_validation() -> None:
    assert validate_wavelet("sym4") == "sym4"
    with pytest.raises(InputError, match="unknown wavelet"):
        validate_wavelet("nope")
    with pytest.raises(InputError, match="not orthogonal"):
        validate_wavelet("bior2.2")
