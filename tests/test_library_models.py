"""compress() of models in memory: a PeftModel, its tuner, a transformers model with an adapter, injected LoRA
layers, DoRA, and PEFT / kohya state dicts — the same tensors and errors as compressing the saved folder."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import LoraConfig, get_peft_model, inject_adapter_in_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import wavecompress  # noqa: E402
from wavecompress import InputError  # noqa: E402

TARGETS = ["q_proj", "v_proj", "up_proj"]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def lora_config(**kwargs) -> LoraConfig:
    settings = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "task_type": "CAUSAL_LM", "init_lora_weights": False}
    return LoraConfig(**{**settings, **kwargs})


def same_result(a, b) -> None:
    assert a.report.relative_error == b.report.relative_error
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    for left, right in zip(a.layers, b.layers):
        assert left.tensors.keys() == right.tensors.keys()
        for key in left.tensors:
            assert torch.equal(left.tensors[key], right.tensors[key]), (left.name, key)


@pytest.fixture(scope="module")
def peft_model():
    return get_peft_model(tiny_llama(), lora_config())


@pytest.fixture(scope="module")
def saved(peft_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(folder)
    return folder


def test_peft_model_equals_saved_folder(peft_model, saved):
    in_memory = wavecompress.compress(peft_model, budget=100, method="wara")
    from_folder = wavecompress.compress(saved, budget=100, method="wara")
    same_result(in_memory, from_folder)
    assert in_memory.report.relative_error > 0.01  # a real approximation, not a trivial one
    assert in_memory.source.config["task_type"] == "CAUSAL_LM"
    assert sorted(in_memory.source.config["target_modules"]) == sorted(TARGETS)
    # the dense deltas are PEFT's own merge: W_merged − W for every adapted module
    deltas = wavecompress.compress(peft_model, budget=10**6, method="waveft", baselines=()).source
    for layer in deltas.layers:
        module = peft_model.base_model.model.get_submodule(layer.name)
        torch.testing.assert_close(layer.to_dense(), module.get_delta_weight("default"), rtol=1e-5, atol=1e-6)


def test_tuner_and_state_dict_read_as_the_lora(peft_model, saved):
    reference = wavecompress.compress(saved, budget=100, method="wara")
    same_result(wavecompress.compress(peft_model.base_model, budget=100, method="wara"), reference)
    state = get_peft_model_state_dict(peft_model)
    same_result(wavecompress.compress(state, budget=100, method="wara", config=peft_model.peft_config["default"]), reference)
    with pytest.raises(InputError, match=r"needs its config for lora_alpha and r: call compress\(state_dict, config="):
        wavecompress.compress(state, budget=100)


def test_injected_layers_without_config(saved):
    model = tiny_llama()
    injected = inject_adapter_in_model(lora_config(), model)
    reference = get_peft_model(tiny_llama(), lora_config())  # same seeds: same base and same LoRA init
    result = wavecompress.compress(injected, budget=100, method="wara")
    expected = wavecompress.compress(reference, budget=100, method="wara")
    assert result.report.relative_error == pytest.approx(expected.report.relative_error, rel=1e-12)


def test_named_adapter_and_unknown_name():
    model = get_peft_model(tiny_llama(), lora_config())
    model.add_adapter("second", lora_config(r=2))
    second = wavecompress.compress(model, budget=50, adapter_name="second", baselines=())
    assert {layer.shape for layer in second.source.layers} and all(
        layer.info["rank"] == 2 for layer in second.source.layers)
    with pytest.raises(InputError, match="no adapter named 'third'"):
        wavecompress.compress(model, budget=50, adapter_name="third")


def test_dora_in_memory_equals_folder_with_base(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, lora_config(use_dora=True))
    with torch.no_grad():  # a magnitude that is not the initial norm, so the DoRA part matters
        for module in model.modules():
            if hasattr(module, "lora_magnitude_vector") and "default" in module.lora_magnitude_vector:
                module.lora_magnitude_vector["default"].weight.mul_(1.1)
    model.save_pretrained(tmp_path / "dora")
    in_memory = wavecompress.compress(model, budget=100, method="wara")
    folder = wavecompress.compress(wavecompress.load_deltas(tmp_path / "dora", base=tmp_path / "base"), budget=100,
                                   method="wara")
    assert in_memory.source.kind == "peft-dora"
    same_result(in_memory, folder)
    with pytest.raises(InputError, match="DoRA state dict needs the base weights"):
        wavecompress.compress(get_peft_model_state_dict(model), config=model.peft_config["default"], budget=10)


def test_kohya_state_dict_and_refusals():
    torch.manual_seed(1)
    up, down = torch.randn(8, 2), torch.randn(2, 6)
    state = {"lora_unet_a.lora_up.weight": up, "lora_unet_a.lora_down.weight": down, "lora_unet_a.alpha": torch.tensor(1.0)}
    result = wavecompress.compress(state, budget=10**4, method="waveft", baselines=())
    torch.testing.assert_close(result.source.layers[0].to_dense(), 0.5 * up @ down)
    with pytest.raises(InputError, match="holds no PEFT LoRA or DoRA layers"):
        wavecompress.compress(torch.nn.Linear(3, 3), budget=10)
    with pytest.raises(InputError, match="expected a tensor, a"):
        wavecompress.compress({"x": "not a tensor"}, budget=10)
    with pytest.raises(InputError, match="apply to an adapter state dict"):
        wavecompress.compress({"x": torch.ones(3, 3)}, budget=10, config={"r": 4})
