"""--include/--exclude: unselected layers are kept exactly (stored as they came) on every path, or dropped only on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import wavecompress as wc
from conftest import make_peft_lora, peft_delta_weights, tiny_bert, tiny_bert_with_deltas
from wavecompress.cli import main
from wavecompress.export import export_lora

TOKENS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(7))
TARGETS = ["query", "value", "intermediate.dense"]


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def hidden(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=TOKENS).last_hidden_state


@pytest.fixture
def lora(tmp_path: Path):
    folder, model = make_peft_lora(tmp_path / "lora", r=4, target_modules=TARGETS)
    return folder, peft_delta_weights(model), hidden(model.eval())


@pytest.mark.parametrize("method", ["wara", "waveft", "lora"])
def test_unselected_layers_are_kept_exactly_and_load_in_peft(tmp_path: Path, lora, method: str) -> None:
    folder, original, original_hidden = lora
    out, report_path = tmp_path / "out", tmp_path / "r.json"
    result = run("convert", folder, "--budget", 100, "--method", method, "--include", r"self\.query", "--out", out,
                 "--report", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    converted = [row["name"] for row in report["layers"]]
    kept = [entry["name"] for entry in report["kept"]]
    assert converted == [n for n in sorted(original) if n.endswith("self.query")]
    assert sorted(kept) == sorted(n for n in original if not n.endswith("self.query")) and len(kept) == 4
    assert all(entry["stored_as"] == "factors, rank 4" for entry in report["kept"])
    assert "kept encoder.layer.0.attention.self.value: factors, rank 4" in result.output
    assert report["skipped"] == []
    # PEFT: kept layers' ΔW equal the original's; the whole model equals W + original ΔW (kept) + ΔŴ (converted).
    model = wc.load_adapter(tiny_bert(), out).eval()
    rebuilt = wc.reconstruct(out)
    for name in kept:
        torch.testing.assert_close(rebuilt[name], original[name], rtol=0, atol=1e-6)
        peft_layer = model.base_model.model.get_submodule(name)
        delta = peft_layer.get_delta_weight("default")
        torch.testing.assert_close(delta.float(), original[name], rtol=0, atol=1e-6)
    expected = hidden(tiny_bert_with_deltas({**original, **{n: rebuilt[n] for n in converted}}))
    torch.testing.assert_close(hidden(model), expected, rtol=0, atol=1e-5)
    assert float((hidden(model) - original_hidden).abs().max()) > 1e-3  # the converted layers are lossy
    # Exports keep them too.
    export_lora(out, tmp_path / "exported")
    exported = wc.reconstruct(tmp_path / "exported")
    for name in kept:
        torch.testing.assert_close(exported[name], original[name], rtol=0, atol=1e-5)


def test_with_lossless_converted_layers_the_logits_equal_the_originals(tmp_path: Path, lora) -> None:
    folder, original, original_hidden = lora
    out = wc.compress(wc.load_deltas(folder, include=[r"self\.query"]), budget=10**6, method="wara").save(tmp_path / "o")
    torch.testing.assert_close(hidden(wc.load_adapter(tiny_bert(), out).eval()), original_hidden, rtol=0, atol=1e-5)
    dropped = wc.compress(wc.load_deltas(folder, include=[r"self\.query"], drop_unselected=True), budget=10**6,
                          method="wara").save(tmp_path / "dropped")
    assert float((hidden(wc.load_adapter(tiny_bert(), dropped).eval()) - original_hidden).abs().max()) > 1e-2


def test_drop_unselected_lists_the_dropped_layers_and_seeded_needs_it(tmp_path: Path, lora) -> None:
    folder, original, _ = lora
    refused = run("convert", folder, "--budget", 100, "--method", "waveft-seeded", "--include", "query", "--out", tmp_path / "s")
    assert refused.exit_code == 2 and "--drop-unselected" in refused.output and not (tmp_path / "s").exists()
    result = run("convert", folder, "--budget", 100, "--method", "waveft-seeded", "--include", "query", "--drop-unselected",
                 "--out", tmp_path / "s", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["kept"] == []
    assert sorted(s["name"] for s in report["skipped"]) == sorted(n for n in original if not n.endswith("query"))
    assert all("dropped (--drop-unselected)" in s["reason"] for s in report["skipped"])
    assert sorted(wc.reconstruct(tmp_path / "s")) == sorted(n for n in original if n.endswith("query"))


def test_finetune_keeps_the_kept_layers_and_rebudgeting_keeps_them_factored(tmp_path: Path, lora) -> None:
    from test_finetune import texts, word_tokenizer  # noqa: PLC0415 - shared tiny-data helpers
    from wavecompress.finetune import finetune

    folder, original, _ = lora
    result = wc.compress(wc.load_deltas(folder, exclude=["value"]), budget=100, method="waveft")
    tuned = finetune(result, tiny_bert(), word_tokenizer(), [t for t, _ in texts(12, 0)], steps=2, lr=1e-2)
    out = tuned.save(tmp_path / "ft")
    rebuilt = wc.reconstruct(out)
    for name in (n for n in original if n.endswith("value")):
        torch.testing.assert_close(rebuilt[name], original[name], rtol=0, atol=1e-6)
    report = json.loads((out / "wavecompress_report.json").read_text())
    assert sorted(e["name"] for e in report["kept"]) == sorted(n for n in original if n.endswith("value"))
    assert all(not row["name"].endswith("value") for row in report["layers"])
    again = wc.load_deltas(out)
    kept = [layer for layer in again.layers if layer.name.endswith("value")]
    assert kept and all(layer.is_factored and layer.left.shape[1] == 4 for layer in kept)


def test_convert_many_keeps_or_drops_unselected_layers_like_convert(tmp_path: Path, lora) -> None:
    folder, original, _ = lora
    (tmp_path / "in").mkdir()
    import shutil

    shutil.copytree(folder, tmp_path / "in" / "a")
    for flag, out in (([], "kept"), (["--drop-unselected"], "dropped")):
        result = run("convert-many", tmp_path / "in", "--out", tmp_path / out, "--budget", 100, "--include", "query", *flag)
        assert result.exit_code == 0, result.output
    [kept_dir] = [p for p in (tmp_path / "kept").iterdir() if p.is_dir()]
    [dropped_dir] = [p for p in (tmp_path / "dropped").iterdir() if p.is_dir()]
    assert sorted(wc.reconstruct(kept_dir)) == sorted(original)
    assert sorted(wc.reconstruct(dropped_dir)) == sorted(n for n in original if n.endswith("query"))
    for name in (n for n in original if not n.endswith("query")):
        torch.testing.assert_close(wc.reconstruct(kept_dir)[name], original[name], rtol=0, atol=1e-6)
