"""Recovery fine-tune on real tiny transformers models with real LoRAs trained in the test.

The headline check is independent of the fine-tune code: teacher = PEFT's own LoRA model,
student = the base model with the written adapter's ΔŴ merged into its weights; their KL on
held-out texts must drop after fine-tuning.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors import safe_open

import wavecompress as wc
from conftest import make_peft_lora, peft_delta_weights, tiny_gpt2
from wavecompress.cli import main
from wavecompress.errors import InputError
from wavecompress.finetune import FinetuneConfig, defaults, finetune
from wavecompress.finetune.data import Example, split_examples
from wavecompress.finetune.injection import DeltaInjector, layer_update
from wavecompress.finetune.trainable import TrainableDelta

WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest, and avoids spinning on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def word_tokenizer():
    """A word-level fast tokenizer over WORDS, built in memory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def texts(n: int, seed: int) -> list[tuple[str, int]]:
    """Random word sequences, labelled by whether most words are in the first half of WORDS."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        out.append((" ".join(words), int(2 * sum(int(w[1:]) < 20 for w in words) > len(words))))
    return out


def tiny_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config).eval()


def train_lora(out_dir: Path, tokenizer, data: list[tuple[str, int]], steps: int = 20) -> Path:
    """A real PEFT LoRA (+ classifier head) trained with AdamW on ``data``, saved to ``out_dir``."""
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_classifier(), LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                                         target_modules=["query", "value", "dense"], modules_to_save=["classifier"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(steps):
        batch = [data[(step * 16 + i) % len(data)] for i in range(16)]
        inputs = tokenizer([t for t, _ in batch], return_tensors="pt", padding=True)
        loss = model(**inputs, labels=torch.tensor([y for _, y in batch])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(str(out_dir))
    return out_dir


@torch.no_grad()
def teacher_student_logits(lora_dir: Path, deltas: dict[str, torch.Tensor], tokenizer, texts: list[str]):
    """Logits of PEFT's teacher and of the base with ΔŴ merged (and the trained head), without wavecompress.finetune."""
    from peft import PeftModel

    teacher = PeftModel.from_pretrained(tiny_classifier(), str(lora_dir)).eval()
    student = tiny_classifier()
    head = {k.split("base_model.model.")[1]: v for k, v in _tensors(lora_dir / "adapter_model.safetensors").items() if "lora_" not in k}
    student.load_state_dict(head, strict=False)
    for name, delta in deltas.items():
        student.get_submodule(name).weight += delta
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    return teacher(**inputs).logits, student(**inputs).logits


def kl_teacher_student(lora_dir: Path, deltas: dict[str, torch.Tensor], tokenizer, held_out: list[str]) -> float:
    """Mean KL(PEFT teacher ‖ base with ΔŴ merged) over ``held_out``, computed without wavecompress.finetune."""
    teacher, student = teacher_student_logits(lora_dir, deltas, tokenizer, held_out)
    t, s = F.log_softmax(teacher, -1), F.log_softmax(student, -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def tiny_setup(root: Path):
    """(lora dir, base model dir, data file, tokenizer, held-out texts) of the tiny-BERT case under ``root``
    (also used by benchmarks/finetune_tiny_bert.py)."""
    tokenizer = word_tokenizer()
    data = texts(160, seed=0)
    lora_dir = train_lora(root / "lora", tokenizer, data)
    base_dir = root / "base"
    tiny_classifier().save_pretrained(str(base_dir))
    tokenizer.save_pretrained(str(base_dir))
    data_file = root / "data.jsonl"
    data_file.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in data))
    held_out = [t for t, _ in texts(64, seed=1)]
    return lora_dir, base_dir, data_file, tokenizer, held_out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The tiny-BERT case (see tiny_setup), shared by the tests here."""
    return tiny_setup(tmp_path_factory.mktemp("ft"))


def convert_and_finetune(trained, tmp_path: Path, steps: str, lr: str):
    """waveft --budget 48 of the tiny LoRA, then `finetune` it: (compressed dir, tuned dir, CLI result)."""
    lora_dir, base_dir, data_file, _, _ = trained
    compressed = tmp_path / "waveft"
    assert CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "48", "--out", str(compressed), "--quiet"]).exit_code == 0
    out = tmp_path / "ft"
    result = CliRunner().invoke(main, ["finetune", str(compressed), "--teacher", str(lora_dir), "--base-model", str(base_dir),
                                       "--data", str(data_file), "--steps", steps, "--lr", lr, "--out", str(out)],
                                catch_exceptions=False)
    return compressed, out, result


def test_cli_finetune_lowers_teacher_student_kl_and_keeps_the_format(trained, tmp_path: Path) -> None:
    lora_dir, _, _, tokenizer, held_out = trained
    compressed, out, result = convert_and_finetune(trained, tmp_path, "40", "2e-3")
    assert result.exit_code == 0, result.output
    assert "before: teacher-student KL" in result.output and "after:" in result.output

    kl_before = kl_teacher_student(lora_dir, wc.reconstruct(compressed), tokenizer, held_out)
    kl_after = kl_teacher_student(lora_dir, wc.reconstruct(out), tokenizer, held_out)
    print(f"held-out KL(PEFT teacher || student): before {kl_before:.3g}, after {kl_after:.3g}")
    assert kl_before > 1e-4
    assert kl_after < 0.5 * kl_before, (kl_before, kl_after)

    old, new = _tensors(compressed / "adapter_model.safetensors"), _tensors(out / "adapter_model.safetensors")
    assert sorted(old) == sorted(new)
    for key in old:
        assert old[key].dtype == new[key].dtype and old[key].shape == new[key].shape
        if old[key].is_floating_point() and "lora_" not in key and "classifier" not in key:
            assert not torch.equal(old[key], new[key]), key  # trained values
        else:
            assert torch.equal(old[key], new[key]), key  # indices, permutations and the head stay fixed
    config_old = json.loads((compressed / "adapter_config.json").read_text())
    config_new = json.loads((out / "adapter_config.json").read_text())
    assert config_new["peft_type"] == config_old["peft_type"] and config_new["layers"] == config_old["layers"]
    report = json.loads((out / "wavecompress_report.json").read_text())
    reference = {name: d.double() for name, d in wc.reconstruct(out).items()}
    teacher = wc.load_deltas(lora_dir)
    for row in report["layers"]:
        true = next(layer for layer in teacher.layers if layer.name == row["name"]).to_dense().double()
        assert row["relative_error"] == pytest.approx(float((true - reference[row["name"]]).norm() / true.norm()), rel=1e-4)
    assert any(note.startswith("finetune: 40 steps") for note in report["notes"])


def test_library_finetune_of_wara_in_memory_with_labels(trained) -> None:
    lora_dir, _, data_file, tokenizer, held_out = trained
    compressed = wc.compress(lora_dir, budget=60, method="wara")
    data = [json.loads(line) for line in data_file.read_text().splitlines()]
    labelled = [(d["text"], d["label"]) for d in data]
    result = finetune(compressed, tiny_classifier(), tokenizer, labelled, steps=25, lr=2e-3, progress=False)
    assert result.after.distill_loss < 0.7 * result.before.distill_loss
    # accuracies on the held-out split, recomputed with PEFT's teacher and the merged student
    assert result.settings["eval_texts"] == defaults.eval_count(len(labelled)) == 32
    _, held = split_examples([Example(t, y) for t, y in labelled], result.settings["eval_texts"], FinetuneConfig().seed)
    labels = torch.tensor([example.label for example in held])
    rebuilt = {layer.name: wc.methods.get_method("wara").reconstruct(layer.tensors, layer.meta, layer.shape) for layer in result.layers}
    for figures, deltas in ((result.before, compressed.to_deltas()), (result.after, rebuilt)):
        teacher, student = teacher_student_logits(lora_dir, deltas, tokenizer, [example.text for example in held])
        assert figures.teacher_accuracy == pytest.approx(float((teacher.argmax(-1) == labels).float().mean()), abs=1e-9)
        assert figures.accuracy == pytest.approx(float((student.argmax(-1) == labels).float().mean()), abs=1e-9)
    assert len(result.losses) == 25
    kl_before = kl_teacher_student(lora_dir, compressed.to_deltas(), tokenizer, held_out)
    kl_after = kl_teacher_student(lora_dir, rebuilt, tokenizer, held_out)
    assert kl_after < kl_before, (kl_before, kl_after)

    # The optional supervised loss adds the cross-entropy of the first batch to the first step's loss.
    plain = finetune(compressed, tiny_classifier(), tokenizer, labelled, steps=1, progress=False)
    mixed = finetune(compressed, tiny_classifier(), tokenizer, labelled, steps=1, supervised_weight=1.0, progress=False)
    assert mixed.losses[0] - plain.losses[0] > 0.3  # CE of a 2-class head is about log 2 here, KL is ~1e-4


def test_hooks_reproduce_peft_outputs_for_linear_and_conv1d(tmp_path: Path) -> None:
    for base in ("bert", "gpt2"):
        lora_dir, peft_model = make_peft_lora(tmp_path / base, base=base)
        model = (tiny_gpt2() if base == "gpt2" else __import__("conftest").tiny_bert())
        deltas = wc.load_deltas(lora_dir)
        injector = DeltaInjector(model, {layer.name: layer.shape for layer in deltas.layers})
        ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            plain = model(input_ids=ids).last_hidden_state
            with injector.use({layer.name: layer_update(layer, torch.device("cpu")) for layer in deltas.layers}):
                hooked = model(input_ids=ids).last_hidden_state
            expected = peft_model.eval()(input_ids=ids).last_hidden_state
        injector.remove()
        assert torch.allclose(hooked, expected, atol=1e-5), base
        assert not torch.allclose(plain, expected, atol=1e-3)
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).last_hidden_state, plain)  # hooks removed


def test_fused_synthesis_gives_the_same_delta_and_gradient_as_the_method(tmp_path: Path) -> None:
    lora_dir, _ = make_peft_lora(tmp_path / "lora", r=4, target_modules=["query", "dense"])
    compressed = wc.compress(lora_dir, budget=200, method="waveft")
    for layer in compressed.layers:
        generic, fused = TrainableDelta(layer, kernels="off"), TrainableDelta(layer, kernels="torch")
        assert fused.fused and not generic.fused
        weight = torch.randn(layer.shape)
        out_generic, out_fused = generic(), fused()
        assert torch.allclose(out_generic, out_fused, atol=1e-6)
        (out_generic * weight).sum().backward()
        (out_fused * weight).sum().backward()
        assert torch.allclose(generic.values[0].grad, fused.values[0].grad, atol=1e-5)


def test_hidden_state_distillation_for_a_bare_encoder(tmp_path: Path) -> None:
    lora_dir, _ = make_peft_lora(tmp_path / "lora", r=4)
    tokenizer = word_tokenizer()
    compressed = wc.compress(lora_dir, budget=40, method="waveft")
    from conftest import tiny_bert

    result = finetune(compressed, tiny_bert(), tokenizer, [t for t, _ in texts(60, 3)], steps=15, lr=3e-3, progress=False)
    assert result.before.distill_kind == "hidden" and result.before.agreement is None
    assert result.after.distill_loss < result.before.distill_loss


def test_bad_inputs_are_one_line_errors(trained, tmp_path: Path) -> None:
    lora_dir, base_dir, data_file, tokenizer, _ = trained
    compressed = wc.compress(lora_dir, budget=48, method="waveft", wavelet="db2", reorder=False)
    with pytest.raises(InputError, match="not differentiable"):
        finetune(compressed, tiny_classifier(), tokenizer, ["w1 w2", "w3 w4", "w5 w6"], steps=1, progress=False)
    with pytest.raises(InputError, match="steps must be"):
        finetune(compressed, tiny_classifier(), tokenizer, ["w1", "w2"], config=FinetuneConfig(steps=-1))
    out = tmp_path / "c"
    wc.compress(lora_dir, budget=48).save(out)
    missing = CliRunner().invoke(main, ["finetune", str(out), "--teacher", str(lora_dir), "--base-model", str(base_dir),
                                        "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such data file" in missing.output
    other_lora, _ = make_peft_lora(tmp_path / "other", r=4, target_modules=["key"])
    wrong = CliRunner().invoke(main, ["finetune", str(out), "--teacher", str(other_lora), "--base-model", str(base_dir),
                                      "--data", str(data_file), "--out", str(tmp_path / "o")])
    assert wrong.exit_code == 2 and "not in the teacher adapter" in wrong.output


def test_convert_with_finetune_steps_in_one_go(trained, tmp_path: Path) -> None:
    lora_dir, base_dir, data_file, _, _ = trained
    out = tmp_path / "one-go"
    result = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "48", "--method", "wara", "--quiet", "--out", str(out),
                                       "--finetune-steps", "15", "--finetune-data", str(data_file), "--base-model", str(base_dir),
                                       "--finetune-lr", "2e-3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    note = next(n for n in json.loads((out / "wavecompress_report.json").read_text())["notes"] if n.startswith("finetune: 15 steps"))
    before, after = (float(v) for v in note.split("texts ")[1].split(";")[0].split(" -> "))
    assert after < before
    refused = CliRunner().invoke(main, ["convert", str(lora_dir), "--budget", "48", "--out", str(tmp_path / "x"), "--finetune-steps", "5"])
    assert refused.exit_code == 2 and "--finetune-data" in refused.output


def test_gradient_checkpointing_path_trains_exactly_like_the_merged_weight_path(trained) -> None:
    lora_dir, _, _, tokenizer, held_out = trained
    compressed = wc.compress(lora_dir, budget=48, method="waveft")
    # fp32 on every device: CUDA's default bf16 autocast rounds the two paths differently (~1% in the loss).
    runs = [finetune(compressed, tiny_classifier(), tokenizer, held_out, steps=3, lr=2e-3, progress=False, gradient_checkpointing=flag,
                     mixed_precision=False, keep_best=False)
            for flag in (False, True)]
    assert runs[0].losses == pytest.approx(runs[1].losses, rel=1e-4)
    for merged, hooked, start in zip(runs[0].layers, runs[1].layers, compressed.layers):
        a, b, s0 = merged.tensors["waveft_spectrum"], hooked.tensors["waveft_spectrum"], start.tensors["waveft_spectrum"]
        # Adam moves every value by about lr per step, so tiny gradient differences show only far below that.
        assert float((a - b).abs().max()) < 5e-4
        assert float((a - s0).abs().median()) > 2e-3


def test_a_lora_output_fine_tunes_and_stays_a_plain_peft_lora(trained, tmp_path: Path) -> None:
    lora_dir, _, _, tokenizer, held_out = trained
    compressed = tmp_path / "svd"
    wc.compress(lora_dir, budget=200, method="lora").save(compressed)
    result = finetune(compressed, tiny_classifier(), tokenizer, held_out, teacher=lora_dir, steps=10, lr=2e-3, progress=False)
    assert result.after.distill_loss < result.before.distill_loss
    out = result.save(tmp_path / "svd-ft")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    rebuilt = wc.reconstruct(out)  # read back through the PEFT LoRA reader: scaling 1, same ranks
    for layer in result.layers:
        expected = layer.tensors["lora_B.weight"] @ layer.tensors["lora_A.weight"]
        assert torch.allclose(rebuilt[layer.name], expected, atol=1e-6)
    assert kl_teacher_student(lora_dir, rebuilt, tokenizer, held_out) < kl_teacher_student(lora_dir, wc.reconstruct(compressed), tokenizer, held_out)


def test_a_harmful_learning_rate_returns_the_input_unchanged_and_says_so(trained, tmp_path: Path) -> None:
    lora_dir, _, data_file, tokenizer, _ = trained
    compressed, out, result = convert_and_finetune(trained, tmp_path, "20", "30")
    assert result.exit_code == 0, result.output
    assert "kept the input's values unchanged: no step lowered the held-out KL" in result.output
    old, new = _tensors(compressed / "adapter_model.safetensors"), _tensors(out / "adapter_model.safetensors")
    assert sorted(old) == sorted(new)
    for key in old:
        assert torch.equal(old[key], new[key]), key
    report = json.loads((out / "wavecompress_report.json").read_text())
    assert any("kept the input's values unchanged" in note for note in report["notes"])
    # The same run without keep-best's guard would have been worse: the last evaluation says so.
    ran = finetune(compressed, tiny_classifier(), tokenizer, [json.loads(x)["text"] for x in data_file.read_text().splitlines()],
                   teacher=lora_dir, steps=20, lr=30.0, progress=False)
    assert ran.kept_input and ran.history[0][0] == 0 and len(ran.history) >= 2
    assert not ran.history[-1][1] < ran.history[0][1]  # nan or higher
    assert ran.after.distill_loss == ran.before.distill_loss


def test_default_settings_lower_the_held_out_kl_and_print_an_estimate(trained) -> None:
    lora_dir, _, data_file, tokenizer, held_out = trained
    compressed = wc.compress(lora_dir, budget=48, method="waveft")
    lines: list[str] = []
    result = finetune(compressed, tiny_classifier(), tokenizer, [json.loads(x)["text"] for x in data_file.read_text().splitlines()],
                      progress=False, log=lines.append)
    assert len(result.losses) == result.settings["max_steps"] == defaults.CPU_STEPS and result.settings["lr"] == defaults.LR
    assert result.settings["eval_texts"] == 32 and result.settings["train_texts"] == 128  # 10% of 160, at least 32
    assert any("s/step on cpu" in line and "≈" in line for line in lines), lines
    rebuilt = {layer.name: wc.methods.get_method("waveft").reconstruct(layer.tensors, layer.meta, layer.shape) for layer in result.layers}
    kl_before = kl_teacher_student(lora_dir, compressed.to_deltas(), tokenizer, held_out)
    kl_after = kl_teacher_student(lora_dir, rebuilt, tokenizer, held_out)
    print(f"defaults: held-out KL {kl_before:.3g} -> {kl_after:.3g}; {result.kept}")
    assert kl_after < 0.7 * kl_before, (kl_before, kl_after)
    # The kept step is the evaluation with the lowest held-out loss, and the reported "after" is its loss.
    best_step, best_loss = min(result.history, key=lambda item: item[1])
    assert result.kept_step == best_step > 0 and result.after.distill_loss == pytest.approx(best_loss, rel=1e-6)
    assert f"kept step {best_step} of {len(result.losses)}" in result.summary()


def test_steps_auto_stops_when_the_held_out_loss_stops_improving(trained) -> None:
    lora_dir, _, _, tokenizer, held_out = trained
    compressed = wc.compress(lora_dir, budget=48, method="waveft")
    result = finetune(compressed, tiny_classifier(), tokenizer, held_out, steps="auto", lr=3e-2, eval_every=5, patience=2,
                      progress=False)
    steps = [step for step, _ in result.history]
    assert steps[0] == 0 and steps[1:] == list(range(5, 5 * len(steps), 5))
    assert len(result.losses) < 1000 and "stopped early: 2 evaluations without a lower held-out loss" in result.kept
    best = min(range(len(result.history)), key=lambda i: result.history[i][1])
    assert len(result.history) - 1 - best == 2 and result.kept_step == result.history[best][0]


def test_held_out_slice_sizes_and_shared_cli_defaults() -> None:
    assert [defaults.eval_count(n) for n in (2, 4, 10, 40, 160, 1500, 10_000)] == [0, 1, 2, 10, 32, 150, 512]
    finetune_options = {p.name: p.default for p in main.commands["finetune"].params}
    convert_options = {p.name: p.default for p in main.commands["convert"].params}
    config = FinetuneConfig()
    assert finetune_options["steps"] is config.steps is convert_options["finetune_steps"] is None  # by device, in defaults
    assert config.plan("cpu")[0] == defaults.CPU_STEPS and config.plan("cuda")[0] == defaults.STEPS
    assert (finetune_options["lr"], finetune_options["batch_size"]) == (config.lr, config.batch_size)
    assert (finetune_options["warmup"], finetune_options["max_length"]) == (config.warmup_fraction, config.max_length)
    assert convert_options["finetune_lr"] == config.lr == defaults.LR
    with pytest.raises(InputError, match="patience"):
        FinetuneConfig(patience=0).validate()
    with pytest.raises(InputError, match="steps must be"):
        FinetuneConfig(steps="forever").validate()
