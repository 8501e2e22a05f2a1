"""The fast paths agree with the plain computations: streamed top-k, factored sparse baseline, threads."""

from __future__ import annotations

import pytest
import torch

from wavecompress.deltas import LayerDelta
from wavecompress.hardware import one_thread, resolve_device
from wavecompress.methods import MethodOptions, sparse
from wavecompress.transforms.lowrank import dense_svd, factored_svd
from wavecompress.methods.topk import select_topk, select_topk_product


def plain_topk(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The reference: one torch.topk over every value, dropped energy in float64."""
    flat = matrix.reshape(-1)
    picked = torch.sort(torch.topk(flat.abs(), k, sorted=False).indices).values
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[picked] = True
    return picked, flat[picked], float(flat[~keep].square().double().sum())  # float32 squares, as before


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,k", [((9000, 64), 3000), ((5, 7), 35), ((5, 7), 1), ((1, 1), 1), ((300, 1000), 20000),
                                     ((20000, 64), 500)])
def test_streamed_topk_equals_one_full_topk(shape: tuple[int, int], k: int, threads: int) -> None:
    generator = torch.Generator().manual_seed(shape[0] + k)
    left, right = torch.randn(shape[0], 6, generator=generator), torch.randn(6, shape[1], generator=generator)
    left[: shape[0] // 3] *= 0.01  # magnitudes rising along the rows: later chunks keep replacing candidates
    matrix = left @ right
    expected = plain_topk(matrix, k)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        streamed, product = select_topk(matrix, k), select_topk_product(left, right, k)
        for indices, values, _ in (streamed, product):
            assert indices.dtype == torch.int32
            assert torch.equal(indices.long(), expected[0])
            assert torch.equal(values, expected[1])
        assert streamed[2] == pytest.approx(expected[2], rel=1e-12, abs=1e-30)  # the same float32 squares, summed
        # The product path takes energy (from the factors, float64) minus the kept energy: it differs from the
        # float32 entries' dropped squares by at most their rounding, 2·eps32 of the kept energy (1e-3 of the
        # energy or more is dropped in every case here, so the difference is used, not the exact fallback).
        kept = float(expected[1].double().square().sum())
        exact = float((left.double() @ right.double()).square().sum()) - kept
        assert abs(product[2] - exact) <= 2 * torch.finfo(torch.float32).eps * kept + 1e-12 * exact
    finally:
        torch.set_num_threads(saved)
    assert torch.get_num_threads() == saved


def test_a_product_topk_starts_from_the_k_th_largest_of_its_highest_energy_rows() -> None:
    """The starting threshold is a lower bound of the k-th largest magnitude (any subset's k-th largest
    is), taken from the rows of most energy; with it the selection is still the exact top-k."""
    from wavecompress.methods.topk import sampled_threshold

    generator = torch.Generator().manual_seed(11)
    left, right = torch.randn(20000, 6, generator=generator), torch.randn(6, 64, generator=generator)
    left[12000:12100] *= 5  # the loud rows, far from the first chunk: the sample should be taken there
    row_energy = ((left.double() @ right.double()) ** 2).sum(1)
    threshold = sampled_threshold(20000, 64, 500, lambda rows: left[rows] @ right, row_energy, torch.device("cpu"))
    magnitudes = (left @ right).abs().reshape(-1)
    kth = float(torch.topk(magnitudes, 500).values[-1])
    assert threshold is not None and float(threshold) <= kth
    loudest = torch.topk(row_energy, 64).indices  # SAMPLE_ROWS rows, all among the loud ones
    assert float(threshold) == float(torch.topk((left[loudest] @ right).abs().reshape(-1), 500).values[-1])
    assert float(threshold) > 0.9 * kth  # close to it; a first chunk (4096 quiet rows) gives far less:
    assert float(torch.topk((left[:4096] @ right).abs().reshape(-1), 500).values[-1]) < 0.5 * kth
    assert sampled_threshold(200, 64, 500, lambda rows: left[rows] @ right, row_energy[:200], torch.device("cpu")) is None


def test_a_threshold_that_ties_the_k_th_largest_falls_back_to_the_exact_selection() -> None:
    """A ±1 matrix: every magnitude equals the sampled threshold, so none passes it; the selection is
    streamed again without it and still keeps k entries (the first k, as the plain stream does)."""
    signs = torch.where(torch.arange(20000) % 3 == 0, -1.0, 1.0)
    left, right = signs[:, None], torch.ones(1, 64)
    indices, values, dropped = select_topk_product(left, right, 500)
    assert indices.numel() == 500 and bool((values.abs() == 1).all())
    assert dropped == pytest.approx(20000 * 64 - 500, rel=1e-12)


def test_near_lossless_product_topk_sums_the_dropped_squares_exactly() -> None:
    """Below DIFFERENCE_FLOOR of the energy the difference energy − kept is not trusted: the dropped squares
    are summed themselves, so a tiny dropped energy keeps its relative precision."""
    generator = torch.Generator().manual_seed(7)
    left, right = torch.randn(64, 4, generator=generator), torch.randn(4, 50, generator=generator)
    matrix = left @ right
    flat = matrix.reshape(-1)
    small = torch.topk(flat.abs(), 3, largest=False).indices  # drop only the three smallest entries
    indices, _, dropped = select_topk_product(left, right, flat.numel() - 3)
    assert set(indices.long().tolist()) == set(range(flat.numel())) - set(small.tolist())
    assert dropped == pytest.approx(float(flat[small].double().square().sum()), rel=1e-12)


def test_topk_of_nothing_drops_everything() -> None:
    matrix = torch.randn(40, 30)
    indices, values, dropped = select_topk(matrix, 0)
    assert indices.numel() == values.numel() == 0
    assert dropped == pytest.approx(float(matrix.square().double().sum()), rel=1e-12)


def test_sparse_baseline_from_factors_matches_the_dense_path() -> None:
    generator = torch.Generator().manual_seed(3)
    left, right = torch.randn(700, 8, generator=generator), torch.randn(8, 500, generator=generator)
    factored = sparse.compress(LayerDelta.from_factors("m", left, right), 1234, MethodOptions())
    dense = sparse.compress(LayerDelta.from_dense("m", left @ right), 1234, MethodOptions())
    assert torch.equal(factored.tensors["sparse_index_gaps"], dense.tensors["sparse_index_gaps"])
    assert torch.equal(factored.tensors["sparse_values"], dense.tensors["sparse_values"])
    # Factored: energy of the factors minus the kept energy; dense: the float32 entries' dropped squares. They
    # differ by the float32 rounding of the entries, at most 2·eps32 of the kept energy.
    kept = float(factored.tensors["sparse_values"].double().square().sum())
    assert abs(factored.error_sq - dense.error_sq) <= 2 * torch.finfo(torch.float32).eps * kept


def test_single_threaded_factored_svd_is_the_dense_svd() -> None:
    generator = torch.Generator().manual_seed(4)
    left, right = torch.randn(300, 5, generator=generator), torch.randn(5, 200, generator=generator)
    _, s, _ = factored_svd(left, right)
    assert torch.allclose(s, dense_svd(left.double() @ right.double())[1][:5], rtol=1e-10)
    saved = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == saved


def test_device_resolution() -> None:
    assert resolve_device(None).type == "cpu" and resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.warns(RuntimeWarning, match="CUDA is not available"):
            assert resolve_device("cuda").type == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kth_largest_is_topks_smallest_kept_value(dtype: torch.dtype) -> None:
    from wavecompress.methods.topk import kth_largest

    values = torch.randn(5000, generator=torch.Generator().manual_seed(4)).abs().to(dtype)
    for k in (1, 37, 5000):
        assert kth_largest(values, k) == float(torch.topk(values, k).values[-1])


def test_map_in_threads_keeps_order_runs_each_item_on_one_thread_and_raises_in_order() -> None:
    from wavecompress.hardware import map_in_threads

    seen = []

    def work(i: int) -> tuple[int, int]:
        seen.append(i)
        return i * i, torch.get_num_threads()

    assert list(map_in_threads(work, range(7), 2)) == [(i * i, 1) for i in range(7)]
    taken = iter(range(100))
    first = next(map_in_threads(work, taken, 2))
    assert first == (0, 1) and next(taken) == 2  # only `workers` items are taken ahead of the one returned

    def fails(i: int) -> int:
        if i == 3:
            raise ValueError("layer 3")
        return i

    results = map_in_threads(fails, range(6), 2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="layer 3"):
        next(results)


def test_layers_side_by_side_give_the_files_one_thread_gives(tmp_path) -> None:
    """A convert with two threads (layers side by side, one thread each) writes the same bytes as one
    with a single thread."""
    import wavecompress as wc
    from conftest import make_peft_lora

    lora_dir, _ = make_peft_lora(tmp_path / "lora", r=4, target_modules=["query", "key", "value", "dense"])
    saved = torch.get_num_threads()
    outputs = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            result = wc.compress(lora_dir, budget=200, method="waveft", allocate="global")
            outputs[threads] = ((result.save(tmp_path / f"t{threads}") / "adapter_model.safetensors").read_bytes(),
                                [row.result.relative_error for row in result.report.layers])
    finally:
        torch.set_num_threads(saved)
    assert outputs[1] == outputs[2]
