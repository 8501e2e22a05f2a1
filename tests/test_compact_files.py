"""Lean files: gap-coded indices survive save → load → reconstruct → PEFT forward exactly; earlier files still load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import wavecompress
from conftest import make_peft_lora, tiny_bert
from wavecompress.methods import MethodOptions, get_method
from wavecompress.methods.index_codec import decode_gaps
from wavecompress.methods.topk import select_topk
from wavecompress.methods.wavelet_domain import coefficients, layer_levels

TOKENS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4]])
PREFIX = "base_model.model."


def _peft_hidden(out: Path) -> tuple[torch.Tensor, torch.nn.Module]:
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_bert(), str(out)).eval()
    with torch.no_grad():
        return model(input_ids=TOKENS).last_hidden_state, model


def _dense_hidden(deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    model = tiny_bert().eval()
    with torch.no_grad():
        for name, delta in deltas.items():
            model.get_submodule(name).weight += delta
        return model(input_ids=TOKENS).last_hidden_state


def test_gap_coded_indices_round_trip_through_file_reconstruct_and_peft(tmp_path: Path) -> None:
    lora_dir, _ = make_peft_lora(tmp_path / "lora", target_modules=["query", "value", "intermediate.dense"])
    result = wavecompress.compress(lora_dir, budget=300, method="waveft", reorder=False)
    out = result.save(tmp_path / "waveft")
    saved = load_file(str(out / "adapter_model.safetensors"))
    source = wavecompress.load_deltas(lora_dir)
    for layer, delta in zip(result.layers, source.layers):
        codes = saved[f"{PREFIX}{layer.name}.waveft_index_gaps"]
        assert codes.dtype == torch.uint16 and f"{PREFIX}{layer.name}.waveft_indices" not in saved
        # the decoded indices are exactly the top-k support chosen from the coefficients
        levels = layer_levels(delta.shape, MethodOptions().levels_for("waveft"))
        expected, values, _ = select_topk(coefficients(delta, "db1", levels), 300)
        assert torch.equal(decode_gaps(codes), expected.long())
        assert torch.equal(saved[f"{PREFIX}{layer.name}.waveft_spectrum"], values)
    in_memory = result.to_deltas()
    from_file = wavecompress.reconstruct(out)
    assert set(from_file) == set(in_memory)
    for name in in_memory:
        assert torch.equal(from_file[name], in_memory[name]), name
    hidden, model = _peft_hidden(out)
    for name in in_memory:
        layer = model.base_model.model.get_submodule(name)
        assert torch.equal(layer.get_delta_weight("default"), in_memory[name]), name
    assert torch.allclose(hidden, _dense_hidden(in_memory), atol=1e-6)


def test_a_file_with_earlier_int32_indices_still_loads_the_same(tmp_path: Path) -> None:
    lora_dir, _ = make_peft_lora(tmp_path / "lora", target_modules=["query", "value"])
    out = wavecompress.compress(lora_dir, budget=200, method="waveft").save(tmp_path / "new")
    weights = out / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    old = {}
    for key, value in tensors.items():
        if key.endswith(".waveft_index_gaps"):
            old[key.replace("_index_gaps", "_indices")] = decode_gaps(value).to(torch.int32)
        else:
            old[key] = value
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    config = json.loads((out / "adapter_config.json").read_text())
    for layer in config["layers"].values():  # an earlier file's config lists int32 indices
        specs = layer["stored_tensors"]
        specs["waveft_indices"] = dict(specs.pop("waveft_index_gaps"), dtype="int32")
    (legacy / "adapter_config.json").write_text(json.dumps(config))
    save_file(old, str(legacy / "adapter_model.safetensors"))
    new_deltas, old_deltas = wavecompress.reconstruct(out), wavecompress.reconstruct(legacy)
    for name in new_deltas:
        assert torch.equal(new_deltas[name], old_deltas[name]), name
    assert torch.equal(_peft_hidden(out)[0], _peft_hidden(legacy)[0])
    assert get_method("waveft").indices_key == "waveft_index_gaps"
