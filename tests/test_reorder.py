"""Row/column reordering before the wavelet transform: recovery of shuffled smooth deltas, exact
round trips of the stored permutations, and the report's plain-vs-reordered columns."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import wavecompress as wc
from wavecompress.cli import main as cli
from wavecompress.deltas import LayerDelta
from wavecompress.methods import MethodOptions, get_method
from wavecompress.transforms.reorder import ORDERINGS, inverse_permutation, permutation_dtype, unpermute

from conftest import make_peft_lora


def smooth_factors(d_out: int = 128, d_in: int = 192, rank: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank-``rank`` delta that is smooth along rows and columns, with a monotone leading term."""
    x = torch.linspace(0, 1, d_out, dtype=torch.float64)
    y = torch.linspace(0, 1, d_in, dtype=torch.float64)
    left = torch.stack([x] + [0.3 / k * torch.cos(math.pi * k * x) for k in range(1, rank)], 1)
    right = torch.stack([y] + [0.3 / k * torch.sin(math.pi * k * y) for k in range(1, rank)], 0)
    return left.float(), right.float()


def shuffled(left: torch.Tensor, right: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return left[torch.randperm(left.shape[0], generator=g)], right[:, torch.randperm(right.shape[1], generator=g)]


@pytest.mark.parametrize("method,budget,levels", [("waveft", 200, 5), ("waveft", 600, 5), ("wara", 150, 3), ("wara", 400, 3)])
@pytest.mark.parametrize("factored", [True, False])
def test_reordering_a_shuffled_smooth_delta_recovers_its_compression(method: str, budget: int, levels: int, factored: bool) -> None:
    left, right = smooth_factors()
    smooth = LayerDelta.from_factors("l", left, right)
    mixed_l, mixed_r = shuffled(left, right)
    mixed = LayerDelta.from_factors("l", mixed_l, mixed_r) if factored else LayerDelta.from_dense("l", mixed_l @ mixed_r)
    compressor = get_method(method)
    unshuffled = compressor.compress(smooth, budget, MethodOptions(levels=levels)).relative_error
    plain = compressor.compress(mixed, budget, MethodOptions(levels=levels)).relative_error
    layer = compressor.compress(mixed, budget, MethodOptions(levels=levels, reorder="svd"))
    assert unshuffled < 0.05
    assert plain > 5 * unshuffled
    assert layer.relative_error == pytest.approx(unshuffled, rel=0.1, abs=1e-4)
    # The stored error is the true error of what reconstruct gives, permutations undone.
    rebuilt = compressor.reconstruct(layer.tensors, layer.meta, layer.shape)
    truth = mixed.to_dense().double()
    assert float((rebuilt.double() - truth).norm() / truth.norm()) == pytest.approx(layer.relative_error, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("ordering", ORDERINGS + ("best",))
def test_every_ordering_beats_the_shuffled_order(ordering: str) -> None:
    mixed = LayerDelta.from_factors("l", *shuffled(*smooth_factors()))
    plain = get_method("wara").compress(mixed, 300, MethodOptions(levels=3)).relative_error
    layer = get_method("wara").compress(mixed, 300, MethodOptions(levels=3, reorder=ordering))
    assert layer.relative_error < 0.3 * plain
    assert layer.meta["reorder"] in ORDERINGS
    assert layer.stored_values <= 300
    assert layer.index_values == sum(mixed.shape)


def test_best_keeps_the_lowest_error_ordering() -> None:
    mixed = LayerDelta.from_factors("l", *shuffled(*smooth_factors()))
    errors = {o: get_method("waveft").compress(mixed, 400, MethodOptions(reorder=o)).error_sq for o in ORDERINGS}
    best = get_method("waveft").compress(mixed, 400, MethodOptions(reorder="best"))
    assert best.error_sq == pytest.approx(min(errors.values()), rel=1e-9)
    assert best.meta["reorder"] == min(errors, key=errors.get)


def test_permutations_are_int16_when_they_fit_and_invert_exactly() -> None:
    assert permutation_dtype(32767) == torch.int16
    assert permutation_dtype(32768) == torch.int32
    g = torch.Generator().manual_seed(3)
    matrix = torch.randn(7, 5, generator=g)
    rows, cols = torch.randperm(7, generator=g), torch.randperm(5, generator=g)
    assert torch.equal(unpermute(matrix[rows][:, cols], rows.short(), cols.short()), matrix)
    with pytest.raises(ValueError, match="not a permutation"):
        inverse_permutation(torch.tensor([0, 0, 2]), 3)


def test_reconstruct_is_differentiable_in_the_stored_values() -> None:
    mixed = LayerDelta.from_factors("l", *shuffled(*smooth_factors()))
    for method, key in (("waveft", "waveft_spectrum"), ("wara", "wara_factors")):
        layer = get_method(method).compress(mixed, 300, MethodOptions(reorder="svd"))
        tensors = dict(layer.tensors)
        tensors[key] = tensors[key].clone().requires_grad_(True)
        rebuilt = get_method(method).reconstruct(tensors, layer.meta, layer.shape)
        weight = torch.randn(layer.shape, generator=torch.Generator().manual_seed(0))
        (rebuilt * weight).sum().backward()
        # Finite difference along one stored value: the map is linear, so it is exact.
        bumped = dict(layer.tensors)
        bumped[key] = layer.tensors[key].clone()
        bumped[key][0] += 1.0
        step = get_method(method).reconstruct(bumped, layer.meta, layer.shape) - rebuilt.detach()
        assert float(tensors[key].grad[0]) == pytest.approx(float((step * weight).sum()), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("method", ["waveft", "wara"])
def test_permutations_round_trip_through_save_and_reconstruct(tmp_path, method: str) -> None:
    lora_dir, _ = make_peft_lora(tmp_path / "lora", r=4, lora_alpha=8, target_modules=["query", "value", "dense"])
    result = wc.compress(lora_dir, budget=200, method=method)
    saved = result.save(tmp_path / "out")
    tensors = load_file(str(saved / "adapter_model.safetensors"))
    perm_keys = [k for k in tensors if k.endswith(".reorder_rows") or k.endswith(".reorder_cols")]
    assert len(perm_keys) == 2 * len(result.layers)
    assert all(tensors[k].dtype == torch.int16 for k in perm_keys)
    config = json.loads((saved / "adapter_config.json").read_text())
    assert {meta["reorder"] for meta in config["layers"].values()} <= {"greedy", "snake"}  # auto: the lower error of the two
    expected = result.to_deltas()
    rebuilt = wc.reconstruct(saved)
    assert set(rebuilt) == set(expected)
    for name in expected:
        assert torch.equal(rebuilt[name], expected[name])
    # The stored permutations are the ones that matter: the reported error is the true error.
    source = {layer.name: layer.to_dense().double() for layer in wc.load_deltas(lora_dir).layers}
    err_sq = sum(float((rebuilt[n].double() - source[n]).square().sum()) for n in source)
    energy = sum(float(d.square().sum()) for d in source.values())
    assert math.sqrt(err_sq / energy) == pytest.approx(result.report.relative_error, rel=1e-4)
    # Bytes count the permutations; stored values stay the trainable values.
    for layer in result.layers:
        assert layer.stored_values <= 200
        assert layer.stored_bytes >= 2 * sum(layer.shape) + 4 * layer.stored_values


def test_a_corrupted_permutation_is_a_one_line_error(tmp_path) -> None:
    lora_dir, _ = make_peft_lora(tmp_path / "lora")
    saved = wc.compress(lora_dir, budget=150, method="wara").save(tmp_path / "out")
    weights = saved / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith(".reorder_rows"))
    tensors[key] = torch.zeros_like(tensors[key])
    save_file(tensors, str(weights))
    with pytest.raises(wc.InputError, match="reorder_rows is not a permutation"):
        wc.reconstruct(saved)


def test_report_shows_plain_and_reordered_side_by_side(tmp_path) -> None:
    lora_dir, _ = make_peft_lora(tmp_path / "lora")
    on = wc.compress(lora_dir, budget=150, method="waveft")
    off = wc.compress(lora_dir, budget=150, method="waveft", reorder=False)
    totals_on, totals_off = on.report.overall(), off.report.overall()
    assert totals_on["waveft-plain"].error_sq == pytest.approx(totals_off["waveft"].error_sq, rel=1e-9)
    assert totals_off["waveft-reordered"].error_sq == pytest.approx(totals_on["waveft"].error_sq, rel=1e-9)
    assert totals_on["waveft"].stored_values == totals_off["waveft"].stored_values
    perm_bytes = sum(2 * sum(layer.shape) for layer in on.layers)
    assert totals_on["waveft"].bytes == totals_off["waveft"].bytes + perm_bytes
    assert not any("reorder_rows" in t for layer in off.layers for t in layer.tensors)
    table = on.report.format_table()
    assert "(plain/reordered: waveft in the other row/column order)" in table and f"({totals_on['waveft'].bytes} B)" in table


def test_cli_no_reorder_and_order_by(tmp_path) -> None:
    lora_dir, _ = make_peft_lora(tmp_path / "lora")
    runner = CliRunner()
    plain = runner.invoke(cli, ["convert", str(lora_dir), "--budget", "150", "--method", "wara", "--no-reorder",
                                "--out", str(tmp_path / "plain"), "--report", str(tmp_path / "plain.json")])
    assert plain.exit_code == 0, plain.output
    assert "wara-reordered" in plain.output
    assert not any(k.endswith("reorder_rows") for k in load_file(str(tmp_path / "plain" / "adapter_model.safetensors")))
    greedy = runner.invoke(cli, ["convert", str(lora_dir), "--budget", "150", "--method", "wara", "--order-by", "fiedler",
                                 "--out", str(tmp_path / "greedy")])
    assert greedy.exit_code == 0, greedy.output
    config = json.loads((tmp_path / "greedy" / "adapter_config.json").read_text())
    assert {meta["reorder"] for meta in config["layers"].values()} == {"fiedler"}


def test_greedy_is_the_nearest_neighbour_chain_and_falls_back_to_snake_on_large_layers(monkeypatch) -> None:
    from wavecompress.transforms import reorder
    from wavecompress.transforms.reorder import greedy_order, svd_order

    features = torch.randn(40, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    current = int(svd_order(features)[0])
    chain, left = [current], set(range(40)) - {current}
    while left:
        current = min(left, key=lambda i: float((features[i] - features[current]).square().sum()))
        chain.append(current)
        left.remove(current)
    assert greedy_order(features).tolist() == chain
    mixed = LayerDelta.from_factors("l", *shuffled(*smooth_factors()))
    monkeypatch.setattr(reorder, "GREEDY_MAX_SIZE", 150)
    layer = get_method("waveft").compress(mixed, 300, MethodOptions(reorder="greedy"))
    assert layer.meta["reorder"] == "snake"
    snake = get_method("waveft").compress(mixed, 300, MethodOptions(reorder="snake"))
    assert torch.equal(layer.tensors["reorder_rows"], snake.tensors["reorder_rows"])
    assert layer.error_sq == snake.error_sq


def test_snake_walks_a_lattice_between_neighbours() -> None:
    """On a shuffled 8×8×8 lattice (spacings 4, 2, 1 along the three feature axes) the snake steps only
    between neighbouring lattice points: no step is longer than one spacing of the widest axis, and the
    mean squared step is a few units where a random order's is ~230 (= 2·Σ variances)."""
    from wavecompress.transforms.reorder import snake_order

    axes = torch.meshgrid(*(torch.arange(8, dtype=torch.float64),) * 3, indexing="ij")
    lattice = torch.stack(axes, -1).reshape(-1, 3) * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    features = lattice[torch.randperm(512, generator=torch.Generator().manual_seed(0))]
    path = features[snake_order(features)]
    assert sorted(snake_order(features).tolist()) == list(range(512))
    steps = (path[1:] - path[:-1]).square().sum(1)
    assert float(steps.max()) == 16.0  # one x spacing, between bands
    random_mean = 2 * float(lattice.var(0, unbiased=False).sum())
    assert float(steps.mean()) < 0.03 * random_mean


def test_snake_is_the_svd_order_on_one_axis_and_ignores_feature_signs() -> None:
    from wavecompress.transforms.reorder import snake_order, svd_order

    features = torch.randn(300, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(snake_order(features[:, :1]), svd_order(features[:, :1]))
    flipped = features * torch.tensor([-1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.equal(snake_order(flipped), snake_order(features))
    assert not torch.equal(snake_order(features), svd_order(features))


@pytest.mark.parametrize("n,duplicates", [(40, 0), (700, 0), (700, 300), (2500, 0)])
def test_the_device_greedy_walk_gives_the_scanned_chain(n: int, duplicates: int) -> None:
    """greedy_lists (neighbour lists, the GPU path) and greedy_scan (the CPU path) build the same chain."""
    from wavecompress.transforms.reorder import greedy_lists, greedy_scan

    generator = torch.Generator().manual_seed(n + duplicates)
    features = torch.randn(n, 8, generator=generator, dtype=torch.float64) * torch.logspace(0, -2, 8, dtype=torch.float64)
    features[:duplicates] = features[0]  # exact ties: either order is a nearest-neighbour chain
    scanned, listed = greedy_scan(features), greedy_lists(features)
    assert sorted(listed.tolist()) == list(range(n))
    if duplicates == 0:
        assert torch.equal(listed, scanned)
    length = [float((features[o[1:]] - features[o[:-1]]).norm(dim=1).sum()) for o in (scanned, listed)]
    assert length[1] == pytest.approx(length[0], rel=1e-12)


def test_auto_keeps_the_lower_error_of_greedy_and_snake_and_takes_snake_alone_on_large_layers() -> None:
    from wavecompress.transforms.reorder import ORDERINGS, ordering_candidates

    assert ordering_candidates("auto", [(384, 1536)]) == ("greedy", "snake")
    assert ordering_candidates("auto", [(384, 384), (4096, 384)]) == ("snake",)  # a group: its largest side counts
    assert ordering_candidates("greedy", [(4096, 4096)]) == ("greedy",)
    assert ordering_candidates("greedy", [(11008, 4096)]) == ("snake",)
    assert ordering_candidates("best", [(384, 384)]) == ORDERINGS
    assert ordering_candidates("best", [(11008, 4096)]) == ("svd", "fiedler", "snake")
    mixed = LayerDelta.from_factors("l", *shuffled(*smooth_factors()))
    for method in ("waveft", "wara"):
        errors = {o: get_method(method).compress(mixed, 300, MethodOptions(reorder=o)).error_sq for o in ("greedy", "snake")}
        auto = get_method(method).compress(mixed, 300, MethodOptions(reorder="auto"))
        assert auto.error_sq == min(errors.values())
        assert auto.meta["reorder"] == min(errors, key=errors.get)
