"""kohya / sd-scripts and diffusers single-file LoRAs, written in their key layouts from real PEFT LoRAs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

import wavecompress as wc
from wavecompress.cli import main
from conftest import make_peft_lora, peft_delta_weights

METADATA = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "8.0",
    "ss_output_name": "tiny",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.title": "tiny test lora",
    "unrelated": "not carried",
}


def kohya_name(module: str) -> str:
    return "lora_te_" + module.replace(".", "_")


def peft_factors(peft_model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (lora_A, lora_B)} of a PEFT LoRA model."""
    from peft.tuners.lora import LoraLayer

    return {name: (m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach())
            for name, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)}


@pytest.fixture
def kohya_file(tmp_path: Path):
    """A kohya-layout file (fp16 factors, alpha tensors, ss_*/modelspec.* header) of a PEFT LoRA."""
    _, peft_model = make_peft_lora(tmp_path / "peft", r=4, lora_alpha=8)
    reference = peft_delta_weights(peft_model)
    tensors = {}
    for module, (lora_a, lora_b) in peft_factors(peft_model).items():
        name = kohya_name(module)
        tensors[f"{name}.lora_down.weight"] = lora_a.half()
        tensors[f"{name}.lora_up.weight"] = lora_b.half()
        if "layer.1" in module:  # no alpha tensor: kohya's rule is alpha = r, scale 1
            reference[module] = lora_b.half().float() @ lora_a.half().float()
        else:
            tensors[f"{name}.alpha"] = torch.tensor(8.0, dtype=torch.float16)
            reference[module] = 2.0 * lora_b.half().float() @ lora_a.half().float()
    down, up = torch.randn(4, 3, 3, 3).half(), torch.randn(8, 4, 1, 1).half()  # a 3×3 LoCon conv, alpha 2 of rank 4
    tensors["lora_unet_conv_in.lora_down.weight"], tensors["lora_unet_conv_in.lora_up.weight"] = down, up
    tensors["lora_unet_conv_in.alpha"] = torch.tensor(2.0)
    path = tmp_path / "tiny_lora.safetensors"
    save_file(tensors, str(path), metadata=METADATA)
    conv = 0.5 * torch.einsum("or,rihw->oihw", up.float()[:, :, 0, 0], down.float())  # sd-scripts' merge of a conv LoRA
    return path, {kohya_name(m): d for m, d in reference.items()} | {"lora_unet_conv_in": conv.reshape(8, 27)}


def test_kohya_file_converts_with_its_deltas_and_keeps_its_metadata(kohya_file, tmp_path: Path) -> None:
    path, reference = kohya_file
    deltas = wc.load_deltas(path)
    assert deltas.kind == "kohya-lora"
    layers = {layer.name: layer for layer in deltas.layers}
    assert sorted(layers) == sorted(reference) and all(layer.is_factored for layer in layers.values())
    for name, layer in layers.items():
        torch.testing.assert_close(layer.to_dense(), reference[name], rtol=1e-5, atol=1e-6)
    assert layers["lora_unet_conv_in"].info["weight_shape"] == (8, 3, 3, 3)
    assert deltas.skipped == [] and deltas.carried == []

    out, report_path = tmp_path / "out", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["convert", str(path), "--budget", "200", "--out", str(out), "--report", str(report_path), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    rebuilt = wc.reconstruct(out)
    for row in report["layers"]:
        true, approx = reference[row["name"]].double(), rebuilt[row["name"]].double()
        assert row["relative_error"] == pytest.approx(float((true - approx).norm() / true.norm()), rel=1e-5, abs=1e-6)
    assert report["skipped"] == [] and "carried" not in report
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["layers"]["lora_unet_conv_in"]["weight_shape"] == [8, 3, 3, 3]
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as reader:
        header = reader.metadata()
    for key, value in METADATA.items():
        assert header.get(key) == (None if key == "unrelated" else value)


def test_diffusers_key_layouts(tmp_path: Path) -> None:
    _, peft_model = make_peft_lora(tmp_path / "peft", r=4, lora_alpha=4)
    factors = peft_factors(peft_model)
    tensors, reference = {}, {}
    for i, (module, (lora_a, lora_b)) in enumerate(sorted(factors.items())):
        style = i % 3
        if style == 0:
            name = f"text_encoder.{module}"
            tensors[f"{name}.lora_linear_layer.down.weight"], tensors[f"{name}.lora_linear_layer.up.weight"] = lora_a, lora_b
        elif style == 1:
            name = f"unet.{module}"
            tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = lora_a, lora_b
        else:
            name = f"unet.{module}"
            tensors[f"{name}_lora.down.weight"], tensors[f"{name}_lora.up.weight"] = lora_a, lora_b
        reference[name] = lora_b @ lora_a  # diffusers files without alpha: scale 1
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "pytorch_lora_weights.safetensors"))
    layers = {layer.name: layer.to_dense() for layer in wc.load_deltas(tmp_path / "pytorch_lora_weights.safetensors").layers}
    assert sorted(layers) == sorted(reference)
    for name, delta in layers.items():
        torch.testing.assert_close(delta, reference[name], rtol=1e-5, atol=1e-6)


def test_broken_kohya_files_name_the_module(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"lora_te_x.lora_down.weight": torch.randn(4, 8), "lora_te_x.lora_up.weight": torch.randn(8, 3)}, str(path))
    with pytest.raises(wc.InputError, match="module lora_te_x: down is \\[4, 8\\] but up is \\[8, 3\\]"):
        wc.load_deltas(path)
    save_file({"lora_te_y.lora_down.weight": torch.randn(4, 8)}, str(path))
    result = CliRunner().invoke(main, ["convert", str(path), "--budget", "10", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "module lora_te_y has no lora_up tensor" in result.output
