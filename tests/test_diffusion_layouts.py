"""LoRA files in the layouts diffusion tools read (kohya / sd-scripts, diffusers), written by export and convert.

Checks are independent of the code under test: sd-scripts' hash algorithm copied here from its source, the files
loaded by diffusers' own ``pipe.load_lora_weights``, and pipeline outputs compared with W + ΔŴ added by hand.
"""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers")

import wavecompress as wc  # noqa: E402
from wavecompress.cli import main  # noqa: E402

from diffusion_checks import kohya_places, merged, no_grad, relative, text_output, unet_output  # noqa: E402,F401
from diffusion_models import LOCON_TARGETS, TEXT_TARGETS, kohya_lora, kohya_modules, tiny_pipeline  # noqa: E402



# --- sd-scripts library/train_util.py (kohya-ss/sd-scripts HEAD), copied verbatim in substance -------------------
def addnet_hash_legacy(b: BytesIO) -> str:
    m = hashlib.sha256()
    b.seek(0x100000)
    m.update(b.read(0x10000))
    return m.hexdigest()[0:8]


def addnet_hash_safetensors(b: BytesIO) -> str:
    hash_sha256 = hashlib.sha256()
    blksize = 1024 * 1024
    b.seek(0)
    n = int.from_bytes(b.read(8), "little")
    b.seek(n + 8)
    for chunk in iter(lambda: b.read(blksize), b""):
        hash_sha256.update(chunk)
    return hash_sha256.hexdigest()


def precalculate_safetensors_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    metadata = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    b = BytesIO(safetensors.torch.save(tensors, metadata))
    return addnet_hash_safetensors(b), addnet_hash_legacy(b)
# -------------------------------------------------------------------------------------------------------------------


def header_of(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as reader:
        return reader.metadata()


@pytest.fixture(scope="module")
def locon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    pipe = tiny_pipeline(folder / "tokenizer")
    modules = {**kohya_modules(pipe.unet, "lora_unet", LOCON_TARGETS, True), **kohya_modules(pipe.text_encoder, "lora_te", TEXT_TARGETS, False)}
    path = folder / "locon.safetensors"
    true = kohya_lora(path, modules, metadata={"ss_training_comment": "digits", "modelspec.title": "tiny"})
    return path, true, pipe


def test_convert_method_lora_layout_auto_writes_kohya_that_diffusers_loads(locon, tmp_path: Path) -> None:
    """kohya in, kohya out: convert --method lora --layout auto writes sd-scripts' file; load_lora_weights applies
    exactly its ΔŴ to the UNet and the text encoder."""
    path, true, pipe = locon
    out = tmp_path / "small.safetensors"
    result = CliRunner().invoke(main, ["convert", str(path), "--method", "lora", "--budget", "400", "--layout", "auto",
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and not (tmp_path / "small").exists()
    tensors, header = load_file(str(out)), header_of(out)
    written = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}
    assert written and written <= set(true) and all(k.rsplit(".", 2)[0] in written for k in tensors)
    for name in written:
        down, up, alpha = (tensors[f"{name}.{s}"] for s in ("lora_down.weight", "lora_up.weight", "alpha"))
        assert alpha.dim() == 0 and down.shape[0] == up.shape[1]
        if true[name].dim() == 4:  # conv factors: down (r, c_in, kh, kw), up (c_out, r, 1, 1)
            assert down.shape[1:] == true[name].shape[1:] and up.shape == (true[name].shape[0], down.shape[0], 1, 1)
    assert any(tensors[f"{n}.lora_down.weight"].shape[2:] == (3, 3) for n in written if true[n].dim() == 4)
    assert header["modelspec.title"] == "tiny" and header["ss_training_comment"].endswith("; digits")
    assert "converted by wavecompress (lora" in header["ss_training_comment"] and " vs locon)" in header["ss_training_comment"]

    places = kohya_places(pipe)
    # ΔŴ of the written file, merged as sd-scripts merges (alpha / r · up @ down), added by hand
    file_deltas = {n: float(tensors[f"{n}.alpha"]) / tensors[f"{n}.lora_down.weight"].shape[0]
                   * (tensors[f"{n}.lora_up.weight"].float().flatten(1) @ tensors[f"{n}.lora_down.weight"].float().flatten(1))
                   for n in written}
    base_state = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder")}
    base_unet, base_text = unet_output(pipe.unet), text_output(pipe.text_encoder)
    merged(pipe, file_deltas, places)
    ref_unet, ref_text = unet_output(pipe.unet), text_output(pipe.text_encoder)
    for component, state in base_state.items():
        getattr(pipe, component).load_state_dict(state)
    pipe.load_lora_weights(str(out))
    got_unet, got_text = unet_output(pipe.unet), text_output(pipe.text_encoder)
    pipe.unload_lora_weights()
    assert relative(got_unet - base_unet, ref_unet - base_unet) < 1e-3  # the UNet's LoRA loaded, convs included
    assert relative(got_text - base_text, ref_text - base_text) < 1e-3  # and the text encoder's
    # the file's ΔŴ is the conversion's own ΔŴ (what the report measured)
    rebuilt = wc.load_deltas(out)
    for layer in rebuilt.layers:
        torch.testing.assert_close(layer.to_dense(), file_deltas[layer.name].flatten(1), rtol=1e-4, atol=1e-4)


def test_kohya_hashes_are_sd_scripts_own(tmp_path: Path) -> None:
    """sshs_model_hash / sshs_legacy_hash equal sd-scripts' precalculate_safetensors_hashes of the written tensors and
    ss_* metadata, and the model hash is the hash A1111's additional-networks computes from the file itself. The file
    is over 1 MiB + 64 KiB so the legacy hash reads real bytes."""
    generator = torch.Generator().manual_seed(0)
    tensors = {"lora_unet_big.lora_down.weight": torch.randn(160, 1024, generator=generator),
               "lora_unet_big.lora_up.weight": torch.randn(1024, 160, generator=generator),
               "lora_unet_big.alpha": torch.tensor(80.0),
               "lora_unet_small.lora_down.weight": torch.randn(4, 64, generator=generator),
               "lora_unet_small.lora_up.weight": torch.randn(64, 4, generator=generator)}
    save_file(tensors, str(tmp_path / "in.safetensors"), metadata={"ss_network_dim": "160", "ss_network_alpha": "80",
                                                                   "sshs_model_hash": "old", "sshs_legacy_hash": "old",
                                                                   "modelspec.architecture": "stable-diffusion-v1/lora"})
    out = tmp_path / "exported.safetensors"
    result = CliRunner().invoke(main, ["export", str(tmp_path / "in.safetensors"), "--to", "lora", "--max-error", "0",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    data, header = out.read_bytes(), header_of(out)
    assert len(data) > 0x110000
    written = load_file(str(out))
    assert (header["sshs_model_hash"], header["sshs_legacy_hash"]) == precalculate_safetensors_hashes(written, header)
    assert header["sshs_model_hash"] == addnet_hash_safetensors(BytesIO(data))  # the file's own bytes
    assert header["sshs_legacy_hash"] != "old" and header["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert header["ss_network_dim"] == "Dynamic"  # ranks 160 and 4, as resize_lora.py writes it
    assert float(header["ss_network_alpha"]) == float(written["lora_unet_big.alpha"])
    # one rank everywhere: ss_network_dim is that rank
    same = tmp_path / "r2.safetensors"
    assert CliRunner().invoke(main, ["export", str(tmp_path / "in.safetensors"), "--to", "lora", "--rank", "2",
                                     "--out", str(same)]).exit_code == 0
    assert header_of(same)["ss_network_dim"] == "2"


def test_diffusers_layout_loads_with_load_lora_weights(tmp_path: Path) -> None:
    """A diffusers LoRA (save_lora_weights, lora_alpha 8, r 4, a 1×1 and a 3×3 conv target) → WaRA → export
    --layout auto writes pytorch_lora_weights.safetensors with lora_adapter_metadata; diffusers loads it with the
    ranks of rank_pattern and the UNet / text encoder reproduce W + ΔŴ of the WaRA output."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    trained = tiny_pipeline(tmp_path / "tokenizer")
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v", "proj_in", "conv1"], init_lora_weights=False)
    text_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trained.unet.add_adapter(unet_config)
    trained.text_encoder.add_adapter(text_config)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(trained.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(trained.text_encoder),
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict())
    runner = CliRunner()
    out, exported = tmp_path / "wara", tmp_path / "exported"
    assert runner.invoke(main, ["convert", str(tmp_path / "lora"), "--method", "wara", "--budget", "300", "--out", str(out),
                                "--quiet"]).exit_code == 0
    result = runner.invoke(main, ["export", str(out), "--to", "lora", "--out", str(exported), "--dtype", "bfloat16"])
    assert result.exit_code == 0 and "layout diffusers" in result.output, result.output
    weights = exported / "pytorch_lora_weights.safetensors"
    tensors, header = load_file(str(weights)), header_of(weights)
    assert header["format"] == "pt" and all(t.dtype == torch.bfloat16 for t in tensors.values())
    metadata = json.loads(header["lora_adapter_metadata"])
    assert {"unet.r", "unet.lora_alpha", "text_encoder.r", "unet.rank_pattern"} <= set(metadata)
    ranks = {int(t.shape[0]) for k, t in tensors.items() if k.startswith("unet.") and k.endswith("lora_A.weight")}
    assert len(ranks) > 1 and metadata["unet.r"] == max(ranks) and metadata["unet.rank_pattern"]  # PEFT gets each rank
    conv = tensors["unet.down_blocks.0.resnets.0.conv1.lora_A.weight"]
    assert conv.dim() == 4 and conv.shape[2:] == (3, 3)

    rebuilt = wc.reconstruct(out)
    pipe = tiny_pipeline(tmp_path / "tokenizer")
    base_unet, base_text = unet_output(pipe.unet), text_output(pipe.text_encoder)
    state = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder")}
    merged(pipe, rebuilt, {name: tuple(name.split(".", 1)) for name in rebuilt})
    ref_unet, ref_text = unet_output(pipe.unet), text_output(pipe.text_encoder)
    for component, weights_of in state.items():
        getattr(pipe, component).load_state_dict(weights_of)
    pipe.load_lora_weights(str(exported))
    got_unet, got_text = unet_output(pipe.unet), text_output(pipe.text_encoder)
    # export's ≤ 1% error vs the WaRA output, then bfloat16 factors
    assert relative(got_unet - base_unet, ref_unet - base_unet) < 0.03
    assert relative(got_text - base_text, ref_text - base_text) < 0.03


def test_layouts_are_refused_before_any_work(locon, tmp_path: Path) -> None:
    path, _, _ = locon
    runner = CliRunner()
    wara = runner.invoke(main, ["convert", str(path), "--method", "wara", "--budget", "300", "--layout", "kohya", "--out", str(tmp_path / "a")])
    assert wara.exit_code == 2 and "--layout kohya writes LoRA files: use it with --method lora" in wara.output
    diffusers = runner.invoke(main, ["convert", str(path), "--method", "lora", "--budget", "300", "--layout", "diffusers",
                                     "--out", str(tmp_path / "b")])
    assert diffusers.exit_code == 2 and "kohya names cannot be turned back into module paths" in diffusers.output
    assert "OVERALL" not in diffusers.output and not (tmp_path / "b").exists()  # refused before converting
    export = runner.invoke(main, ["export", str(path), "--to", "lora", "--layout", "diffusers", "--out", str(tmp_path / "c")])
    assert export.exit_code == 2 and "lora_" in export.output and not (tmp_path / "c").exists()


def test_convert_layout_peft_writes_the_peft_folder(locon, tmp_path: Path) -> None:
    """--layout peft keeps the PEFT folder (kohya names under base_model.model.); the default (auto) writes the same
    bytes as --layout kohya."""
    path, _, _ = locon
    runner = CliRunner()
    for name, extra in (("peft", ["--layout", "peft"]), ("auto.safetensors", []), ("kohya.safetensors", ["--layout", "kohya"])):
        result = runner.invoke(main, ["convert", str(path), "--method", "lora", "--budget", "300", "--out", str(tmp_path / name),
                                      "--quiet", *extra])
        assert result.exit_code == 0, result.output
    keys = list(load_file(str(tmp_path / "peft" / "adapter_model.safetensors")))
    assert keys and all(k.startswith("base_model.model.lora_") and ".lora_A." in k or ".lora_B." in k for k in keys)
    assert (tmp_path / "auto.safetensors").read_bytes() == (tmp_path / "kohya.safetensors").read_bytes()


def test_gpt2_style_transformer_names_keep_the_peft_card(tmp_path: Path) -> None:
    """An output of a GPT-2 LoRA (modules transformer.h.N...) is not a diffusion output: its card keeps PEFT loading."""
    from wavecompress.formats.model_card import is_diffusion_output

    assert not is_diffusion_output(["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"])
    assert is_diffusion_output(["unet.down_blocks.0.attentions.0.proj_in", "text_encoder.encoder.layers.0.self_attn.q_proj"])
    assert is_diffusion_output(["lora_unet_down_blocks_0_attentions_0_proj_in"])
    assert not is_diffusion_output(["bert.encoder.layer.0.attention.self.query"])
