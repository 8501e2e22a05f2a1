"""Shared column permutations (q/k/v, gate/up) and unpermuted layers: choice, file layout, every loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import wavecompress
from conftest import FIXTURE, tiny_bert, tiny_bert_with_deltas
from wavecompress.errors import InputError
from wavecompress.transforms.permutation_groups import find_groups, shared_column_order, stacked_column_features
from wavecompress.transforms.reorder import order

ATTENTION = "encoder.layer.{}.attention.self.{}"
TOKENS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


def test_groups_come_from_sibling_names_with_the_same_input_size() -> None:
    shapes = {ATTENTION.format(0, n): (32, 32) for n in ("query", "key", "value")}
    shapes.update({"encoder.layer.0.intermediate.dense": (64, 32), ATTENTION.format(1, "query"): (32, 32)})
    shapes.update({"model.layers.0.self_attn.q_proj": (32, 32), "model.layers.0.self_attn.k_proj": (16, 32),
                   "model.layers.0.self_attn.v_proj": (16, 32), "model.layers.0.self_attn.o_proj": (32, 32),
                   "model.layers.0.mlp.gate_proj": (64, 32), "model.layers.0.mlp.up_proj": (64, 32),
                   "model.layers.0.mlp.down_proj": (32, 64), "odd.gate_proj": (8, 16), "odd.up_proj": (8, 24)})
    groups = {group.members: group.d_in for group in find_groups(shapes)}
    assert groups == {
        (ATTENTION.format(0, "key"), ATTENTION.format(0, "query"), ATTENTION.format(0, "value")): 32,
        ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"): 32,
        ("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"): 32,
    }  # a lone query, different d_in (odd.*), o_proj/down_proj/dense: no group


def test_stacked_features_of_copies_order_like_one_layer() -> None:
    u, s, _ = torch.linalg.svd(torch.randn(40, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                               full_matrices=False)
    features = u * s  # a layer's column features: V_k S_k
    stacked = stacked_column_features([features, 2 * features])
    # [F, 2F] has Gram 5·F Fᵀ: the same distances up to √5, so the same greedy chain.
    assert torch.allclose(torch.cdist(stacked, stacked), 5 ** 0.5 * torch.cdist(features, features), atol=1e-6)
    assert torch.equal(shared_column_order([features, 2 * features], "greedy"), order(features, "greedy"))


def sharing_deltas() -> dict[str, object]:
    """q/k/v of two tiny-BERT blocks with one input side (ΔW = c·Q A, Q orthonormal): sharing
    loses nothing there; plus an MLP layer that reads another input."""
    generator = torch.Generator().manual_seed(0)
    right = torch.randn(4, 32, generator=generator)
    left = torch.linalg.qr(torch.randn(32, 4, generator=generator))[0]
    deltas: dict[str, object] = {}
    for block in range(2):
        for name, scale in (("query", 1.0), ("key", 0.5), ("value", 2.0)):
            deltas[ATTENTION.format(block, name)] = (left * scale * (block + 1), right)
        deltas[f"encoder.layer.{block}.intermediate.dense"] = torch.randn(64, 32, generator=generator) * 0.1
    return deltas


@pytest.mark.parametrize("method", ["wara", "waveft"])
def test_shared_permutation_round_trips_through_every_loader(tmp_path: Path, method: str) -> None:
    from wavecompress.cli.inspect import describe_adapter
    from wavecompress.finetune.compressed_source import read_compressed
    from wavecompress.finetune.trainable import StudentDeltas, fused_eligible

    # Under a size limit (sharing is chosen only where bytes are the budget): both q/k/v groups share,
    # and the random MLP layers are stored unpermuted (a permutation buys them nothing).
    result = wavecompress.compress(sharing_deltas(), max_size="9kB", allocate="global", method=method)
    assert ("2 groups of layers reading the same input share one column permutation; 2 layers stored unpermuted"
            in " ".join(result.report.notes))
    assert round(result.report.relative_error, 4) == {"wara": 0.3398, "waveft": 0.3429}[method]
    out = result.save(tmp_path / method)
    assert (out / "adapter_model.safetensors").stat().st_size <= 9000
    stored = load_file(out / "adapter_model.safetensors")
    # Stored once per group, under the owner (first name: key); q/v borrow it.
    assert sorted(k.split("model.")[-1] for k in stored if k.endswith("reorder_cols")) == [
        ATTENTION.format(0, "key") + ".reorder_cols", ATTENTION.format(1, "key") + ".reorder_cols"]
    table = json.loads((out / "adapter_config.json").read_text())["layers"]
    assert table[ATTENTION.format(0, "query")]["shared_tensors"] == {"reorder_cols": ATTENTION.format(0, "key")}
    assert "reorder_cols" not in table[ATTENTION.format(0, "query")]["stored_tensors"]
    # Bytes: the report's per-layer bytes add up to the tensors in the file, and inspect agrees.
    report = json.loads((out / "wavecompress_report.json").read_text())
    file_bytes = sum(t.numel() * t.element_size() for t in stored.values())
    assert sum(layer["bytes"] for layer in report["layers"]) == file_bytes == describe_adapter(out)["bytes"]
    assert report["overall"][method]["bytes"] == file_bytes
    # At a values budget (PEFT's meaning) every layer keeps its own permutations, as before.
    by_values = wavecompress.compress(sharing_deltas(), budget=100, method=method)
    assert not any("shared_tensors" in layer.meta for layer in by_values.layers)
    assert all("reorder_cols" in layer.written_tensors() for layer in by_values.layers)
    # reconstruct equals the in-memory result exactly; PEFT forward equals the dense reference.
    memory = result.to_deltas()
    rebuilt = wavecompress.reconstruct(out)
    assert all(torch.equal(rebuilt[name], memory[name]) for name in memory)
    from wavecompress.export import export_lora

    export_lora(out, tmp_path / f"{method}-lora", max_error=0)  # lossless LoRA of what the file holds
    exported = wavecompress.reconstruct(tmp_path / f"{method}-lora")
    assert all(torch.allclose(exported[name], memory[name], atol=1e-5) for name in memory)
    model = wavecompress.load_adapter(tiny_bert(), out).eval()
    reference = tiny_bert_with_deltas(memory)
    with torch.no_grad():
        got, expected = model(input_ids=TOKENS).last_hidden_state, reference(input_ids=TOKENS).last_hidden_state
        plain = tiny_bert()(input_ids=TOKENS).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5) and float((got - plain).abs().max()) > 1e-3
    merged = model.merge_and_unload()
    for name in memory:
        assert torch.allclose(merged.get_submodule(name).weight, reference.get_submodule(name).weight, atol=1e-6)
    # Fine-tune reads every member's permutation, trains, and writes it once again.
    from wavecompress.formats.adapter_writer import state_dict

    source = read_compressed(out)
    query = next(layer for layer in source.layers if layer.name == ATTENTION.format(0, "query"))
    owner = next(layer for layer in source.layers if layer.name == ATTENTION.format(0, "key"))
    assert torch.equal(query.tensors["reorder_cols"], owner.tensors["reorder_cols"])
    assert fused_eligible(query) == (method == "waveft")
    student = StudentDeltas(source.layers, kernels="off")
    assert all(torch.equal(delta.detach(), memory[name]) for name, delta in student.materialize().items())
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.mul_(1.5)
    layers = [trained.to_layer(template) for trained, template in zip(student.layers, source.layers)]
    assert sorted(state_dict(layers, {})) == sorted(stored)


def test_a_borrowed_tensor_without_its_owner_is_refused(tmp_path: Path) -> None:
    out = wavecompress.compress(sharing_deltas(), max_size="9kB", allocate="global", method="waveft").save(tmp_path / "out")
    weights = out / "adapter_model.safetensors"
    tensors = load_file(weights)
    del tensors["base_model.model." + ATTENTION.format(0, "key") + ".reorder_cols"]
    save_file(tensors, weights)
    with pytest.raises(InputError, match=r"layer encoder.layer.0.attention.self.query borrows reorder_cols from "
                                         r"encoder.layer.0.attention.self.key, which does not store it"):
        wavecompress.reconstruct(out)


def test_fixture_keeps_per_layer_permutations_where_sharing_loses() -> None:
    """MiniLM's query/value read one input, but their LoRA input sides differ: one shared order
    costs error (layer 0: 0.4637 → 0.4888 over query+value at 3000, default ordering), so the output is unchanged."""
    from wavecompress.methods import MethodOptions
    from wavecompress.methods.precision import stored_layer
    from wavecompress.methods.shared_permutations import PermutationChoice

    source = wavecompress.load_deltas(FIXTURE)
    by_name = {layer.name: layer for layer in source.layers}
    options = MethodOptions(reorder="auto")
    choice = PermutationChoice("wara", options, {n: l.shape for n, l in by_name.items()}, fetch=by_name.__getitem__,
                               budget_of=lambda name: 3000, finish=lambda layer, delta: stored_layer(layer, delta, "auto"))
    assert len(choice.group_of) == 12  # query + value of 6 blocks
    group = next(g for name, g in choice.group_of.items() if ".layer.0." in name)
    deltas = {name: by_name[name] for name in group.members}
    own = {name: choice._own(deltas[name], 3000) for name in group.members}
    shared = choice._shared(group, deltas, {name: 3000 for name in group.members})
    energy = sum(d.energy() for d in deltas.values())
    assert round((sum(l.error_sq for l in own.values()) / energy) ** 0.5, 4) == 0.4637
    assert round((sum(l.error_sq for l in shared.values()) / energy) ** 0.5, 4) == 0.4888
    result = wavecompress.compress(FIXTURE, budget=3000, method="wara", baselines=())
    assert round(result.report.relative_error, 4) == 0.3103
    assert not any("shared_tensors" in layer.meta for layer in result.layers)


def blocky_deltas() -> dict[str, torch.Tensor]:
    """24 constant 2×2 blocks (24 Haar coefficients in the model's order: exact without a
    permutation) and a rank-2 layer in random order (where reordering pays)."""
    generator = torch.Generator().manual_seed(1)
    blocks = torch.zeros(32, 32)
    for row, col in torch.randint(0, 16, (24, 2), generator=generator).tolist():
        blocks[2 * row:2 * row + 2, 2 * col:2 * col + 2] = torch.randn((), generator=generator)
    rough = torch.randn(64, 2, generator=generator) @ torch.randn(2, 64, generator=generator)
    return {"blocks.dense": blocks, "rough.dense": rough}


def test_a_permutation_that_does_not_pay_is_left_out_under_a_size_limit() -> None:
    # By values (PEFT's budget: permutations are fixed, cost no values) both layers stay permuted, as before
    # (auto: the lower error of greedy and snake per layer; greedy alone gave 0.7683 on the rough layer).
    by_values = wavecompress.compress(blocky_deltas(), budget=20, method="waveft", baselines=())
    assert [(l.meta.get("reorder"), round(l.relative_error, 4)) for l in by_values.layers] == [("greedy", 0.5592), ("snake", 0.7348)]
    # By bytes: the block layer's 128 bytes of permutations buy it exactness as plain values instead.
    by_bytes = wavecompress.compress(blocky_deltas(), max_size="2kB", method="waveft", baselines=(), allocate="global")
    layers = {layer.name: layer for layer in by_bytes.layers}
    assert "reorder_rows" not in layers["blocks.dense"].tensors and "reorder" not in layers["blocks.dense"].meta
    assert layers["blocks.dense"].relative_error == 0.0 and layers["blocks.dense"].stored_values == 21
    assert layers["rough.dense"].meta.get("reorder") == "greedy" and round(layers["rough.dense"].relative_error, 4) == 0.4219
    assert "1 layers stored unpermuted" in " ".join(by_bytes.report.notes)


def test_a_size_below_the_permutations_is_met_by_layers_paying_for_them_from_their_values(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(2)
    deltas = {f"block.{i}.dense": torch.randn(256, 2, generator=generator) @ torch.randn(2, 256, generator=generator)
              for i in range(4)}
    # 6 kB: the header and all four permutations would not fit (this was refused); now each layer pays
    # its permutations out of its own share or is stored plain.
    result = wavecompress.compress(deltas, max_size="6kB", method="waveft", baselines=(), allocate="global")
    out = result.save(tmp_path / "out")
    assert (out / "adapter_model.safetensors").stat().st_size <= 6000
    assert round(result.report.relative_error, 4) == 0.8324  # greedy alone: 0.894
    assert [layer.meta.get("reorder") for layer in result.layers] == [None, "snake", "snake", "snake"]
    rebuilt = wavecompress.reconstruct(out)
    assert all(torch.equal(rebuilt[name], delta) for name, delta in result.to_deltas().items())
    # 8 kB holds the permutations (4 × 1024 bytes of int16): every layer keeps them, as before.
    result = wavecompress.compress(deltas, max_size="8kB", method="waveft", baselines=(), allocate="global")
    assert [layer.meta.get("reorder") for layer in result.layers] == ["greedy", "greedy", "snake", "snake"]
    assert round(result.report.relative_error, 4) == 0.6741  # greedy alone: 0.6790


def test_a_writer_refuses_a_borrowed_tensor_whose_owner_is_missing_or_stores_another() -> None:
    from wavecompress.deltas.shared_tensors import check_lenders

    perm = torch.arange(4, dtype=torch.int16)
    owner = ("a.key", {"reorder_cols": perm}, {"shared_tensors": {"reorder_cols": "a.key"}})
    borrower = ("a.query", {"reorder_cols": perm.clone()}, {"shared_tensors": {"reorder_cols": "a.key"}})
    check_lenders([owner, borrower])  # the same permutation: written once, under a.key
    with pytest.raises(ValueError, match="a.query borrows reorder_cols from a.key, which is not written with it"):
        check_lenders([borrower])
    with pytest.raises(ValueError, match="a.query: its reorder_cols differs from the one a.key stores for it"):
        check_lenders([owner, ("a.query", {"reorder_cols": perm.flip(0)}, borrower[2])])
