"""LoHa and LoKr made by PEFT, read as PEFT folders and as LyCORIS/kohya single files; ΔW vs PEFT's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import wavecompress as wc
from wavecompress.cli import main
from conftest import tiny_bert


def make_lycoris(out_dir: Path, kind: str, seed: int = 2, **kwargs):
    """A saved PEFT LoHa/LoKr of tiny_bert() with every factor random (PEFT zeroes one side)."""
    from peft import LoHaConfig, LoKrConfig, get_peft_model

    config = (LoHaConfig if kind == "loha" else LoKrConfig)(target_modules=["query", "value", "dense"], **kwargs)
    peft_model = get_peft_model(tiny_bert(), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "hada_" in name or "lokr_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(out_dir))
    return out_dir, peft_model


def peft_deltas(peft_model) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """{module: (PEFT's get_delta_weight, its factor tensors)}."""
    from peft.tuners.lycoris_utils import LycorisLayer

    out = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LycorisLayer) and "default" in module.scaling:
            parts = {attr: getattr(module, attr)["default"].detach() for attr in module.adapter_layer_names
                     if "default" in getattr(module, attr)}
            out[name] = (module.get_delta_weight("default").detach().float(), parts)
    return out


def write_lycoris_file(path: Path, reference: dict, alpha: float) -> dict[str, torch.Tensor]:
    """The factors in LyCORIS' single-file layout: lora_te_<module>.<factor> plus .alpha."""
    tensors = {}
    for module, (_, parts) in reference.items():
        name = "lora_te_" + module.replace(".", "_")
        tensors.update({f"{name}.{key}": value.contiguous() for key, value in parts.items()})
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), metadata={"ss_network_module": "lycoris.kohya"})
    return {"lora_te_" + m.replace(".", "_"): d for m, (d, _) in reference.items()}


@pytest.mark.parametrize("kind, kwargs", [("loha", {"r": 4, "alpha": 8}), ("lokr", {"r": 2, "alpha": 6})])
def test_lycoris_single_file_and_peft_folder_match_peft(tmp_path: Path, kind: str, kwargs: dict) -> None:
    folder, peft_model = make_lycoris(tmp_path / kind, kind, **kwargs)
    reference = peft_deltas(peft_model)
    assert len(reference) == 11

    deltas = wc.load_deltas(folder)
    assert deltas.kind == f"peft-{kind}"
    for layer in deltas.layers:
        torch.testing.assert_close(layer.to_dense(), reference[layer.name][0], rtol=1e-5, atol=1e-6)

    # LyCORIS files store alpha; the scale is alpha / (low-rank dim), PEFT's alpha / r here.
    single = write_lycoris_file(tmp_path / f"{kind}.safetensors", reference, float(kwargs["alpha"]))
    deltas = wc.load_deltas(tmp_path / f"{kind}.safetensors")
    layers = {layer.name: layer for layer in deltas.layers}
    assert sorted(layers) == sorted(single) and deltas.kind == "lycoris"
    for name, layer in layers.items():
        torch.testing.assert_close(layer.to_dense(), single[name], rtol=1e-5, atol=1e-6)
    if kind == "loha":  # rank 4·4 = 16 < 32: kept factored, so every method uses the cheap factored maths
        assert all(layer.is_factored and layer.rank_bound == 16 for name, layer in layers.items() if "intermediate" not in name)


def test_peft_lokr_with_full_factors_uses_the_config_scale(tmp_path: Path) -> None:
    folder, peft_model = make_lycoris(tmp_path / "lokr", "lokr", r=8, alpha=4)  # w1 and w2 stored whole
    reference = peft_deltas(peft_model)
    assert all("lokr_w2" in parts for _, parts in reference.values())
    out, report_path = tmp_path / "out", tmp_path / "r.json"
    result = CliRunner().invoke(main, ["convert", str(folder), "--budget", "300", "--method", "lora",
                                       "--out", str(out), "--report", str(report_path), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    rebuilt = wc.reconstruct(out)
    for row in report["layers"]:
        true = reference[row["name"]][0].double()
        approx = rebuilt.get(row["name"], torch.zeros_like(true)).double()
        assert row["relative_error"] == pytest.approx(float((true - approx).norm() / true.norm()), rel=1e-5, abs=1e-6)
