"""Diffusion LoRAs: kohya LoRA/LoCon files of a tiny SD1.5-shaped pipeline, converted, exported and loaded.

Every check compares against an independent merge: the true ΔW computed here from the file's factors (as
sd-scripts merges them), or W + ΔŴ added to the weights by this test, never through the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers")

import wavecompress as wc  # noqa: E402
from wavecompress.cli import main  # noqa: E402
from wavecompress.formats.kohya_writer import sd_scripts_hashes  # noqa: E402

from diffusion_checks import no_grad, relative, unet_output  # noqa: E402,F401 - no_grad: autouse fixture
from diffusion_models import (  # noqa: E402
    LOCON_TARGETS, LORA_TARGETS, TEXT_TARGETS, kohya_lora, kohya_modules, tiny_pipeline, tiny_unet)



def merged_unet(deltas: dict[str, torch.Tensor], seed: int = 0):
    """A fresh UNet with W + ΔW added by hand for each kohya module name (the independent reference)."""
    unet = tiny_unet(seed)
    fresh = kohya_modules(unet, "lora_unet", LOCON_TARGETS, True)
    for name, delta in deltas.items():
        if name in fresh:
            fresh[name].weight += delta.reshape(fresh[name].weight.shape)
    return unet


@pytest.fixture(scope="module")
def locon(tmp_path_factory):
    """A kohya LoCon of the tiny UNet (1×1 proj_in/proj_out, 3×3 ResNet and sampler convs) plus text-encoder LoRA."""
    folder = tmp_path_factory.mktemp("locon")
    pipe = tiny_pipeline(folder / "tokenizer")
    unet_modules = kohya_modules(pipe.unet, "lora_unet", LOCON_TARGETS, True)
    text_modules = kohya_modules(pipe.text_encoder, "lora_te", TEXT_TARGETS, False)
    path = folder / "locon.safetensors"
    deltas = kohya_lora(path, {**unet_modules, **text_modules}, metadata={"ss_training_comment": "trained on digits"})
    return path, deltas, unet_modules, pipe


def test_every_module_converts_and_the_overall_error_covers_them_all(locon, tmp_path: Path) -> None:
    path, true, unet_modules, _ = locon
    convs = [n for n, d in true.items() if d.dim() == 4]
    assert any(true[n].shape[2:] == (3, 3) for n in convs) and any(n.endswith("proj_in") for n in convs)
    out, report_path = tmp_path / "wara", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["convert", str(path), "--budget", "300", "--method", "wara", "--out", str(out),
                                       "--report", str(report_path), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert sorted(row["name"] for row in report["layers"]) == sorted(true)  # every input module is in the output
    assert report["skipped"] == [] and "carried" not in report
    rebuilt = wc.reconstruct(out)
    error_sq = sum(float((true[n].double().flatten(1) - rebuilt[n].double()).square().sum()) for n in true)
    energy = sum(float(true[n].double().square().sum()) for n in true)
    assert report["overall"]["wara"]["relative_error"] == pytest.approx(math.sqrt(error_sq / energy), rel=1e-4)
    config = json.loads((out / "adapter_config.json").read_text())
    for name in convs:
        assert config["layers"][name]["weight_shape"] == list(true[name].shape)


def test_kohya_export_loads_with_load_lora_weights_and_reproduces_the_merge(locon, tmp_path: Path) -> None:
    path, true, unet_modules, pipe = locon
    out, exported = tmp_path / "wara", tmp_path / "exported.safetensors"
    runner = CliRunner()
    assert runner.invoke(main, ["convert", str(path), "--budget", "600", "--method", "wara", "--out", str(out), "--quiet"]).exit_code == 0
    result = runner.invoke(main, ["export", str(out), "--to", "lora", "--layout", "kohya", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    tensors = load_file(str(exported))
    with safe_open(str(exported), framework="pt") as reader:
        header = reader.metadata()
    assert {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")} == set(true)
    conv = next(n for n in true if true[n].dim() == 4 and true[n].shape[2:] == (3, 3))
    assert tensors[f"{conv}.lora_down.weight"].dim() == 4 and tensors[f"{conv}.lora_up.weight"].shape[2:] == (1, 1)
    assert tensors[f"{conv}.lora_down.weight"].dtype == torch.float16  # the input's dtype
    assert header["modelspec.architecture"] == "stable-diffusion-v1/lora" and "wavecompress" in header["ss_training_comment"]
    assert "trained on digits" in header["ss_training_comment"]
    ranks = {int(t.shape[0]) for k, t in tensors.items() if k.endswith(".lora_down.weight")}
    assert header["ss_network_dim"] == ("Dynamic" if len(ranks) > 1 else str(ranks.pop()))
    assert (header["sshs_model_hash"], header["sshs_legacy_hash"]) == sd_scripts_hashes(tensors, header)

    # The exported file's own ΔŴ (sd-scripts' merge of its factors), added to a fresh UNet by hand.
    exported_deltas = {n: (float(tensors[f"{n}.alpha"]) / tensors[f"{n}.lora_down.weight"].shape[0]
                           * tensors[f"{n}.lora_up.weight"].float().flatten(1) @ tensors[f"{n}.lora_down.weight"].float().flatten(1))
                       for n in unet_modules}
    reference = unet_output(merged_unet(exported_deltas))
    base = unet_output(tiny_unet(0))
    pipe.unet.load_state_dict(tiny_unet(0).state_dict())
    pipe.load_lora_weights(str(exported))
    loaded = unet_output(pipe.unet)
    pipe.unload_lora_weights()
    original_effect = unet_output(merged_unet(true)) - base
    converted = unet_output(merged_unet(wc.reconstruct(out)))  # base + ΔŴ of the WaRA output
    assert relative(loaded - base, reference - base) < 1e-2  # diffusers applies exactly what the file holds
    # ... which is the WaRA output's base + ΔŴ to within 5% of the LoRA's effect (the export's own ≤ 1% error, fp16)
    assert float((loaded - converted).norm()) < 0.05 * float(original_effect.norm())


def test_load_adapter_applies_a_wara_output_to_a_pipeline(locon, tmp_path: Path) -> None:
    path, true, unet_modules, pipe = locon
    out = tmp_path / "wara"
    assert CliRunner().invoke(main, ["convert", str(path), "--budget", "300", "--method", "wara", "--out", str(out), "--quiet"]).exit_code == 0
    rebuilt = wc.reconstruct(out)
    reference = unet_output(merged_unet(rebuilt))
    pipe.unet.load_state_dict(tiny_unet(0).state_dict())
    assert wc.load_adapter(pipe, out) is pipe
    loaded = unet_output(pipe.unet)
    assert relative(loaded, reference) < 1e-3
    # the text encoder got its modules too
    text_names = [n for n in rebuilt if n.startswith("lora_te_")]
    q_name = next(n for n in text_names if n.endswith("q_proj"))
    ids = torch.tensor([[0, 3, 4, 1]])
    from wavecompress.diffusion.loading import unload

    assert unload(pipe) == len(rebuilt)
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(tiny_unet(0)))
    text_plain = pipe.text_encoder(ids).last_hidden_state
    wc.load_adapter(pipe.unet, out, merge=True)  # one component, merged: only its own modules
    assert relative(unet_output(pipe.unet), reference) < 1e-3
    torch.testing.assert_close(pipe.text_encoder(ids).last_hidden_state, text_plain)
    assert q_name.startswith("lora_te_text_model_")


def test_names_matching_no_module_are_one_clear_error(tmp_path: Path) -> None:
    unet = tiny_unet(0)
    path = tmp_path / "other.safetensors"
    kohya_lora(path, {"lora_unet_not_a_module": torch.nn.Linear(8, 8)})
    with pytest.raises(wc.InputError, match="1 of 1 adapter modules match no Linear or convolution of unet: lora_unet_not_a_module"):
        wc.load_adapter(unet, path)


def test_diffusers_file_with_adapter_metadata_is_read_with_its_alpha(tmp_path: Path) -> None:
    """A folder as diffusers' save_lora_weights writes it, lora_alpha 8 and r 4 in lora_adapter_metadata."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_unet(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v", "proj_in"], init_lora_weights=False)
    unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet),
                                              unet_lora_adapter_metadata=config.to_dict())
    true = {}
    for name, module in unet.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            true[f"unet.{name}"] = 2.0 * (b.flatten(1) @ a.flatten(1))
    assert any(true[n].shape[1] == 16 for n in true if n.endswith("proj_in"))
    deltas = wc.load_deltas(tmp_path / "lora")  # the folder, as diffusers writes it
    assert sorted(layer.name for layer in deltas.layers) == sorted(true)
    for layer in deltas.layers:
        torch.testing.assert_close(layer.to_dense(), true[layer.name], rtol=1e-5, atol=1e-6)
    result = wc.compress(tmp_path / "lora", budget=200, method="lora", baselines=())
    rebuilt = result.to_deltas()
    error = math.sqrt(sum(float((true[n] - rebuilt[n]).double().square().sum()) for n in true)
                      / sum(float(true[n].double().square().sum()) for n in true))
    assert result.report.relative_error == pytest.approx(error, rel=1e-4)


def test_carried_modules_stay_byte_identical_or_are_dropped_by_name(tmp_path: Path) -> None:
    unet = tiny_unet(0)
    modules = kohya_modules(unet, "lora_unet", LORA_TARGETS, False)
    path = tmp_path / "with_dora.safetensors"
    kohya_lora(path, modules)
    tensors = load_file(str(path))
    name = next(iter(modules))
    scale = torch.rand(modules[name].weight.shape[0]).half()
    tensors[f"{name}.dora_scale"] = scale  # a DoRA module: its delta needs the base weights
    save_file(tensors, str(path))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(path), "--budget", "200", "--method", "lora", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "carried verbatim" in result.output and name in result.output
    written = load_file(str(out / "out.safetensors"))  # kohya in, kohya out (--layout auto)
    for suffix in ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale"):
        assert torch.equal(written[f"{name}.{suffix}"], tensors[f"{name}.{suffix}"])
    report = json.loads((out / "wavecompress_report.json").read_text())
    assert [m["name"] for m in report["carried"]] == [name]
    # the input's stored values count the carried module too (all its tensors) beside the converted factors
    assert report["input_stored_values"] == sum(v.numel() for k, v in tensors.items() if not k.endswith(".alpha") or k.startswith(name))
    dropped = CliRunner().invoke(main, ["convert", str(path), "--budget", "200", "--method", "lora", "--out", str(tmp_path / "d"),
                                        "--quiet", "--drop-unconvertible"])
    assert dropped.exit_code == 0 and "dropped by --drop-unconvertible: 1 modules" in dropped.output
    assert not any(k.startswith(name) for k in load_file(str(tmp_path / "d" / "d.safetensors")))
    converted = [row["name"] for row in report["layers"]]
    assert sorted(converted + [name]) == sorted(modules)  # the others converted (rank 0 where 200 values buy no rank)
    assert {k.rsplit(".", 2)[0] for k in written} <= set(modules)  # under their kohya names
    dry = CliRunner().invoke(main, ["convert", str(path), "--budget", "200", "--dry-run"])
    assert dry.exit_code == 0 and "carried verbatim (delta not formed from the input): 1 modules" in dry.output


def test_cp_and_tucker_forms_are_converted_with_their_kernel(tmp_path: Path) -> None:
    """LoCon's CP form (lora_mid) and LyCORIS Tucker LoHa: ΔW as LyCORIS/A1111 rebuild them."""
    g = torch.Generator().manual_seed(3)
    up, mid, down = torch.randn(6, 2, 1, 1, generator=g), torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 5, 1, 1, generator=g)
    t1, t2 = torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 2, 3, 3, generator=g)
    w1a, w1b, w2a, w2b = (torch.randn(2, n, generator=g) for n in (6, 5, 6, 5))
    tensors = {"lora_unet_cp.lora_up.weight": up, "lora_unet_cp.lora_mid.weight": mid, "lora_unet_cp.lora_down.weight": down,
               "lora_unet_cp.alpha": torch.tensor(1.0),
               "lora_unet_tk.hada_t1": t1, "lora_unet_tk.hada_t2": t2, "lora_unet_tk.hada_w1_a": w1a,
               "lora_unet_tk.hada_w1_b": w1b, "lora_unet_tk.hada_w2_a": w2a, "lora_unet_tk.hada_w2_b": w2b,
               "lora_unet_tk.alpha": torch.tensor(4.0)}
    save_file(tensors, str(tmp_path / "forms.safetensors"))
    cp = 0.5 * torch.einsum("nmkl,in,mj->ijkl", mid, up.flatten(1), down.flatten(1))
    rebuild = lambda t, wa, wb: torch.einsum("ijkl,ip,jr->prkl", t, wa, wb)  # noqa: E731 - LyCORIS' rebuild_tucker
    tucker = 2.0 * rebuild(t1, w1a, w1b) * rebuild(t2, w2a, w2b)
    layers = {layer.name: layer for layer in wc.load_deltas(tmp_path / "forms.safetensors").layers}
    for name, true in (("lora_unet_cp", cp), ("lora_unet_tk", tucker)):
        assert layers[name].info["weight_shape"] == tuple(true.shape)
        torch.testing.assert_close(layers[name].to_dense(), true.reshape(6, 45), rtol=1e-5, atol=1e-5)


def test_peft_file_without_its_config_is_refused_not_misread(tmp_path: Path) -> None:
    save_file({"base_model.model.layer.lora_A.weight": torch.randn(2, 8), "base_model.model.layer.lora_B.weight": torch.randn(8, 2)},
              str(tmp_path / "adapter_model.safetensors"))
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "adapter_model.safetensors"), "--budget", "10", "--dry-run"])
    assert result.exit_code == 2 and "without the adapter_config.json" in result.output


def test_unet_full_finetune_converts_convs_and_time_embedding(tmp_path: Path) -> None:
    base, tuned = tiny_unet(0), tiny_unet(0)
    generator = torch.Generator().manual_seed(5)
    for parameter in tuned.parameters():
        parameter += 0.01 * torch.randn(parameter.shape, generator=generator)
    save_file(base.state_dict(), str(tmp_path / "base.safetensors"))
    save_file({k: v.contiguous() for k, v in tuned.state_dict().items()}, str(tmp_path / "tuned.safetensors"))
    deltas = wc.load_deltas(tmp_path / "tuned.safetensors", base=tmp_path / "base.safetensors")
    layers = {layer.name: layer for layer in deltas.layers}
    assert "time_embedding.linear_1" in layers and "time_embedding.linear_2" in layers
    assert layers["conv_in"].info["weight_shape"] == (16, 4, 3, 3)
    assert layers["down_blocks.0.attentions.0.proj_in"].info["weight_shape"] == (16, 16, 1, 1)
