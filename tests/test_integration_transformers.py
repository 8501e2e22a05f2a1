"""CompressCallback with a real transformers Trainer on a tiny Llama with a PEFT LoRA."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from peft import get_peft_model  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

import wavecompress  # noqa: E402
from wavecompress.integrations.transformers import CompressCallback  # noqa: E402
from test_library_models import lora_config, tiny_llama  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(0, 64, (8, 10), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_callback_compresses_at_each_save_and_at_the_end(tmp_path):
    model = get_peft_model(tiny_llama(), lora_config())
    callback = CompressCallback(budget=100, method="wara", baselines=("lora",))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, save_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="steps", logging_steps=100)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback])
    trainer.train()
    written = [path for path, _ in callback.results]
    assert written == [tmp_path / "checkpoint-2" / "wavecompress", tmp_path / "checkpoint-4" / "wavecompress",
                       tmp_path / "wavecompress"]
    # the last output is the trained adapter's compression, exactly as compress(model) gives it
    final = wavecompress.compress(model, budget=100, method="wara", baselines=("lora",))
    saved = wavecompress.CompressedAdapter.load(tmp_path / "wavecompress")
    for mine, theirs in zip(saved.layers, final.layers):
        assert all(torch.equal(mine.tensors[k], theirs.tensors[k]) for k in theirs.tensors)
    logged = [entry for entry in trainer.state.log_history if "wavecompress/relative_error" in entry]
    assert len(logged) == 3
    assert logged[-1]["wavecompress/relative_error"] == pytest.approx(final.report.relative_error)
    assert logged[-1]["wavecompress/lora/relative_error"] == pytest.approx(final.report.overall()["lora"].relative_error)
    assert logged[-1]["wavecompress/stored_values"] == final.report.overall()["wara"].stored_values
    # the checkpoint's compression is the model at that step (it differs from the final one: training moved it)
    first = wavecompress.CompressedAdapter.load(tmp_path / "checkpoint-2" / "wavecompress")
    assert not torch.equal(first.layers[0].tensors["wara_factors"], saved.layers[0].tensors["wara_factors"])


def test_callback_validates_before_training():
    with pytest.raises(wavecompress.InputError, match="unknown method"):
        CompressCallback(budget=100, method="nope")
    with pytest.raises(wavecompress.InputError, match="never compress"):
        CompressCallback(budget=100, on_save=False, on_train_end=False)
