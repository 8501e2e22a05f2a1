"""wavecompress.load_adapter into diffusers pipelines and single components, for every kind of output.

References are independent: W + ΔŴ added by hand from reconstruct's ΔŴ (the names mapped with sd-scripts' own walk),
and diffusers' ``pipe.load_lora_weights`` of the same file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("diffusers")

import wavecompress as wc  # noqa: E402
from wavecompress.cli import main  # noqa: E402
from wavecompress.diffusion.loading import unload  # noqa: E402

from diffusion_checks import kohya_places, merged, no_grad, relative, text_output, unet_output  # noqa: E402,F401
from diffusion_models import LOCON_TARGETS, TEXT_TARGETS, kohya_lora, kohya_modules, tiny_pipeline, tiny_unet  # noqa: E402


@pytest.fixture(scope="module")
def locon(tmp_path_factory):
    """A kohya LoCon (UNet 1×1 and 3×3 convs, Linear layers, text encoder) and its WaveFT, WaRA and LoRA outputs."""
    folder = tmp_path_factory.mktemp("loading")
    pipe = tiny_pipeline(folder / "tokenizer")
    modules = {**kohya_modules(pipe.unet, "lora_unet", LOCON_TARGETS, True), **kohya_modules(pipe.text_encoder, "lora_te", TEXT_TARGETS, False)}
    path = folder / "locon.safetensors"
    kohya_lora(path, modules)
    outputs = {}
    for method in ("waveft", "wara", "lora"):
        out = folder / method
        result = CliRunner().invoke(main, ["convert", str(path), "--method", method, "--budget", "300", "--layout", "peft",
                                           "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        outputs[method] = out
    return pipe, outputs


def reference(pipe, deltas: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(UNet, text encoder) outputs with ΔŴ added to the weights by hand, the weights restored afterwards."""
    state = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder")}
    merged(pipe, deltas, kohya_places(pipe))
    outputs = unet_output(pipe.unet), text_output(pipe.text_encoder)
    for component, weights in state.items():
        getattr(pipe, component).load_state_dict(weights)
    return outputs


@pytest.mark.parametrize("method", ["waveft", "wara", "lora"])
def test_load_adapter_applies_every_output_to_a_pipeline(locon, method: str) -> None:
    pipe, outputs = locon
    rebuilt = wc.reconstruct(outputs[method])
    ref_unet, ref_text = reference(pipe, rebuilt)
    base_unet = unet_output(pipe.unet)
    assert wc.load_adapter(pipe, outputs[method]) is pipe
    try:
        assert relative(unet_output(pipe.unet), ref_unet) < 1e-3 and relative(text_output(pipe.text_encoder), ref_text) < 1e-3
        assert relative(ref_unet, base_unet) > 1e-2  # the adapter does change the output
    finally:
        assert unload(pipe) == len(rebuilt)
    torch.testing.assert_close(unet_output(pipe.unet), base_unet)


def test_load_adapter_into_a_text_encoder_alone(locon) -> None:
    """A transformers CLIPTextModel given an output with kohya names: applied in place to its own modules only."""
    pipe, outputs = locon
    rebuilt = wc.reconstruct(outputs["wara"])
    _, ref_text = reference(pipe, {n: d for n, d in rebuilt.items() if n.startswith("lora_te_")})
    base_unet = unet_output(pipe.unet)
    state = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    assert wc.load_adapter(pipe.text_encoder, outputs["wara"], merge=True) is pipe.text_encoder
    try:
        assert relative(text_output(pipe.text_encoder), ref_text) < 1e-3
        torch.testing.assert_close(unet_output(pipe.unet), base_unet)  # the UNet's modules were not touched
    finally:
        pipe.text_encoder.load_state_dict(state)  # merge=True changed the weights


def test_merge_true_folds_exactly_the_reconstructed_delta(locon) -> None:
    pipe, outputs = locon
    unet = tiny_unet(0)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    rebuilt = wc.reconstruct(outputs["waveft"])
    wc.load_adapter(unet, outputs["waveft"], merge=True)
    places = kohya_places(pipe)
    changed = set()
    for name, delta in rebuilt.items():
        component, path = places[name]
        if component == "unet":
            key = f"{path}.weight"
            torch.testing.assert_close(unet.state_dict()[key], before[key] + delta.reshape(before[key].shape), rtol=0, atol=1e-6)
            changed.add(key)
    assert changed and all(torch.equal(unet.state_dict()[k], v) for k, v in before.items() if k not in changed)


def test_load_adapter_and_load_lora_weights_agree_on_a_kohya_export(locon, tmp_path: Path) -> None:
    """The kohya export of the WaRA output, loaded by diffusers and by wavecompress: the same UNet output, and both
    within 5% of the LoRA's effect of base + ΔŴ of the WaRA output (the issue's check)."""
    pipe, outputs = locon
    exported = tmp_path / "wara-kohya.safetensors"
    result = CliRunner().invoke(main, ["export", str(outputs["wara"]), "--to", "lora", "--layout", "kohya", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    base = unet_output(pipe.unet)
    ref_unet, _ = reference(pipe, wc.reconstruct(outputs["wara"]))
    pipe.load_lora_weights(str(exported))
    by_diffusers = unet_output(pipe.unet)
    pipe.unload_lora_weights()
    torch.testing.assert_close(unet_output(pipe.unet), base)
    wc.load_adapter(pipe, exported)
    by_wavecompress = unet_output(pipe.unet)
    unload(pipe)
    assert relative(by_wavecompress - base, by_diffusers - base) < 1e-3
    assert float((by_diffusers - ref_unet).norm()) < 0.05 * float((ref_unet - base).norm())


def test_adapters_for_another_model_are_one_clear_error(locon, tmp_path: Path) -> None:
    pipe, outputs = locon
    wrong = tmp_path / "wrong.safetensors"
    kohya_lora(wrong, {f"lora_unet_missing_{i}": torch.nn.Linear(4, 4) for i in range(5)})
    with pytest.raises(wc.InputError, match=r"5 of 5 adapter modules match no Linear or convolution of text_encoder, unet: "
                                            r"lora_unet_missing_0, lora_unet_missing_1, lora_unet_missing_2 and 2 more"):
        wc.load_adapter(pipe, wrong)
    shaped = tmp_path / "shaped.safetensors"  # the right name, the wrong width (another model's UNet)
    kohya_lora(shaped, {"lora_unet_down_blocks_0_attentions_0_proj_in": torch.nn.Conv2d(8, 8, 1)})
    with pytest.raises(wc.InputError, match=r"proj_in has ΔW \[8, 8\] but unet.down_blocks.0.attentions.0.proj_in .*wrong base model"):
        wc.load_adapter(pipe, shaped)
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(tiny_unet(0)))  # nothing applied on refusal
