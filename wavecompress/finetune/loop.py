"""The distillation loop: train a compressed adapter's stored values to match the original adapter.

Teacher = base model + original adapter (forward hooks adding the factored update), student = the
same base model run with W + ΔŴ through ``torch.func.functional_call`` (hooks instead under
gradient checkpointing, which re-runs the forward in backward): one copy of the base model, whose
weights never change. Only the student's float stored values train (AdamW, linear warm-up then
linear decay); supports, indices and permutations stay fixed. Objective: KL(teacher ‖ student) on logits, or hidden-state MSE for a
bare encoder, plus an optional supervised cross-entropy when the data has class labels.
Before and after, the teacher-student loss on held-out texts and the Frobenius error against the
original ΔW are measured the same way.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..compress import CompressedAdapter
from ..deltas import AdapterDeltas, LayerDelta, load_deltas
from ..errors import InputError
from .compressed_source import CompressedSource, as_compressed_source
from .data import Example, as_examples, make_batches, split_examples
from .injection import DeltaInjector, dense_update, layer_update
from .losses import distillation_terms, model_output, supervised_terms
from .model_loading import apply_passthrough
from .result import Figures, FinetuneResult, build_report, layer_error_sq
from .trainable import StudentDeltas

_TEACHER_CACHE_ELEMENTS = 50_000_000


@dataclass
class FinetuneConfig:
    """Fine-tuning settings. ``mixed_precision=None`` means on for CUDA, off elsewhere (CPU is fp32)."""

    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 16
    max_length: int = 128
    temperature: float = 1.0
    supervised_weight: float = 0.0
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    eval_size: int = 64
    device: str = "auto"
    mixed_precision: bool | None = None
    gradient_checkpointing: bool = False
    kernels: str = "auto"
    seed: int = 0
    progress: bool | None = None

    def validate(self) -> None:
        if self.steps < 0:
            raise InputError(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise InputError(f"learning rate must be a positive number, got {self.lr}")
        if self.batch_size < 1 or self.max_length < 1:
            raise InputError("batch size and max length must be positive")
        if not self.temperature > 0:
            raise InputError(f"temperature must be positive, got {self.temperature}")
        if self.supervised_weight < 0:
            raise InputError(f"supervised weight must be >= 0, got {self.supervised_weight}")


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; otherwise the named device (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device}: CUDA is not available on this machine (use --device cpu)")
    return chosen


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _resolve_teacher(source: CompressedSource, teacher: AdapterDeltas | str | Path | None) -> AdapterDeltas:
    if teacher is None:
        if source.teacher is None:
            raise InputError(f"{source.origin}: give the original adapter as the teacher")
        return source.teacher
    return teacher if isinstance(teacher, AdapterDeltas) else load_deltas(teacher)


class _Session:
    """The model with hooks, the student, the data and the teacher; runs forward passes of either."""

    def __init__(self, model: nn.Module, student: StudentDeltas, teacher: dict[str, LayerDelta], device: torch.device,
                 shapes: dict[str, tuple[int, int]], config: FinetuneConfig, amp: bool) -> None:
        self.model, self.student, self.device, self.config, self.amp = model, student, device, config, amp
        self.injector = DeltaInjector(model, shapes)
        self.teacher_updates = {name: layer_update(delta, device) for name, delta in teacher.items()}
        self.checkpointing = config.gradient_checkpointing and config.steps > 0
        self.cache: dict[int, tuple[str, torch.Tensor]] = {}
        self.cached_elements = 0

    def forward(self, updates, batch: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        with self.injector.use(updates), _autocast(self.device, self.amp):
            return model_output(self.model(**inputs))

    @torch.no_grad()
    def teacher(self, batch: dict[str, torch.Tensor], key: int | None = None) -> tuple[str, torch.Tensor]:
        if key is not None and key in self.cache:
            return self.cache[key]
        kind, out = self.forward(self.teacher_updates, batch)
        out = out.detach().float()
        if key is not None and self.cached_elements + out.numel() <= _TEACHER_CACHE_ELEMENTS:
            self.cache[key] = (kind, out)
            self.cached_elements += out.numel()
        return kind, out

    def student_context(self, deltas: dict[str, torch.Tensor]):
        """Hooks active through backward when checkpointing (it re-runs the forward there), else nothing."""
        if self.checkpointing:
            return self.injector.use({name: dense_update(delta) for name, delta in deltas.items()})
        return contextlib.nullcontext()

    def student_forward(self, deltas: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
        """The base model with W + ΔŴ (one matmul per layer); through the hooks when checkpointing."""
        if self.checkpointing:
            return self.forward({name: dense_update(delta) for name, delta in deltas.items()}, batch)
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        weights = self.injector.merged_weights(deltas)
        with _autocast(self.device, self.amp):
            return model_output(torch.func.functional_call(self.model, weights, args=(), kwargs=inputs, strict=False))

    def student_loss(self, batch: dict[str, torch.Tensor], teacher: tuple[str, torch.Tensor], deltas) -> torch.Tensor:
        kind, out = self.student_forward(deltas, batch)
        total, count = distillation_terms(kind, out, teacher[1], batch.get("attention_mask"), self.config.temperature)
        loss = total / max(count, 1)
        if self.config.supervised_weight > 0 and "labels" in batch and kind == "logits":
            terms = supervised_terms(out, batch["labels"])
            if terms is not None:
                loss = loss + self.config.supervised_weight * terms[0] / terms[1]
        return loss

    @torch.no_grad()
    def evaluate(self, batches: list[dict[str, torch.Tensor]], teacher: dict[str, LayerDelta]) -> Figures:
        deltas = {name: delta.detach() for name, delta in self.student.materialize().items()}
        total, count, agree, correct, teacher_correct, labelled = 0.0, 0, 0, 0, 0, 0
        kind, per_example = "logits", True
        for index, batch in enumerate(batches):
            kind, t_out = self.teacher(batch, key=-1 - index)
            per_example = per_example and kind == "logits" and t_out.dim() == 2
            _, s_out = self.student_forward(deltas, batch)
            terms = distillation_terms(kind, s_out, t_out, batch.get("attention_mask"), 1.0)
            total, count = total + float(terms[0]), count + terms[1]
            if per_example:
                s_pred, t_pred = s_out.argmax(-1).cpu(), t_out.argmax(-1).cpu()
                agree += int((s_pred == t_pred).sum())
                if "labels" in batch:
                    correct += int((s_pred == batch["labels"]).sum())
                    teacher_correct += int((t_pred == batch["labels"]).sum())
                    labelled += batch["labels"].numel()
        examples = sum(b["input_ids"].shape[0] for b in batches)
        num = den = 0.0
        for name in set(teacher) | set(deltas):
            shape = tuple(teacher[name].shape) if name in teacher else tuple(deltas[name].shape)
            e, n = layer_error_sq(teacher.get(name), deltas.get(name), shape)
            num, den = num + e, den + n
        return Figures(
            distill_loss=total / max(count, 1),
            distill_kind=kind,
            relative_error=(num / den) ** 0.5 if den > 0 else 0.0,
            agreement=agree / examples if per_example else None,
            accuracy=correct / labelled if labelled else None,
            teacher_accuracy=teacher_correct / labelled if labelled else None,
        )


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, int(round(warmup_fraction * steps))) if steps else 1

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextlib.contextmanager
def _training_mode(model: nn.Module, checkpointing: bool):
    """Eval mode (no dropout) by default; with checkpointing, train mode with dropout set to 0."""
    was_training = model.training
    dropouts = {m: m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    enabled = False
    try:
        if checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise InputError(f"{type(model).__name__} does not support gradient checkpointing")
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            enabled = True
            for module in dropouts:
                module.p = 0.0
            model.train()
        else:
            model.eval()
        yield
    finally:
        if enabled:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        for module, p in dropouts.items():
            module.p = p
        model.train(was_training)


def finetune(
    compressed: CompressedAdapter | CompressedSource | str | Path,
    model: nn.Module,
    tokenizer: Any,
    examples: list[Example] | list[str] | list[tuple[str, Any]],
    teacher: AdapterDeltas | str | Path | None = None,
    config: FinetuneConfig | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """Distil the original adapter into the compressed one's stored values; return the updated layers.

    ``compressed``: a wavecompress output folder or :func:`wavecompress.compress`'s result (whose
    source is then the default teacher). ``model``: the base model (its weights are never changed;
    the adapter's saved modules, such as a classifier head, are loaded into it). ``examples``:
    texts, (text, label) pairs or :class:`Example`. Settings: :class:`FinetuneConfig` or keywords.
    """
    config = config or FinetuneConfig()
    if overrides:
        config = FinetuneConfig(**{**asdict(config), **overrides})
    config.validate()
    source = as_compressed_source(compressed)
    teacher_deltas = _resolve_teacher(source, teacher)
    teacher_layers = {layer.name: layer for layer in teacher_deltas.layers}
    unknown = sorted(layer.name for layer in source.layers if layer.name not in teacher_layers)
    if unknown:
        raise InputError(f"{source.origin}: layer {unknown[0]} is not in the teacher adapter {teacher_deltas.source}")
    for layer in source.layers:
        if tuple(teacher_layers[layer.name].shape) != tuple(layer.shape):
            raise InputError(f"{source.origin}: layer {layer.name} is {tuple(layer.shape)} but the teacher's is {tuple(teacher_layers[layer.name].shape)}")

    device = resolve_device(config.device)
    amp = bool(config.mixed_precision) if config.mixed_precision is not None else device.type == "cuda"
    if amp and device.type != "cuda":
        raise InputError("mixed precision is for CUDA devices; on CPU fine-tuning runs in float32")
    torch.manual_seed(config.seed)
    model.to(device)
    for param in model.parameters():
        param.requires_grad_(False)
    apply_passthrough(model, source.passthrough, source.origin)
    student = StudentDeltas(source.layers, config.kernels).to(device)
    shapes = {name: tuple(delta.shape) for name, delta in teacher_layers.items()}
    session = _Session(model, student, teacher_layers, device, shapes, config, amp)

    examples = as_examples(list(examples))
    if len(examples) < 2:
        raise InputError(f"fine-tuning needs at least 2 texts, got {len(examples)}")
    train_examples, eval_examples = split_examples(examples, config.eval_size, config.seed)
    label2id = getattr(getattr(model, "config", None), "label2id", None)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    train_batches = make_batches(tokenizer, train_examples, config.batch_size, config.max_length, label2id, num_labels)
    eval_batches = make_batches(tokenizer, eval_examples, config.batch_size, config.max_length, label2id, num_labels)

    losses: list[float] = []
    try:
        with _training_mode(model, config.gradient_checkpointing and config.steps > 0):
            before = session.evaluate(eval_batches, teacher_layers)
            if config.steps and student.trainable_values:
                losses = _train(session, train_batches, config, device, amp)
            after = session.evaluate(eval_batches, teacher_layers)
    finally:
        session.injector.remove()

    deltas = {layer.name: layer().detach() for layer in student.layers}
    by_name = {layer.name: layer for layer in student.layers}
    layers = []
    for template in source.layers:
        updated = by_name[template.name].to_layer(template) if template.name in by_name else template
        error_sq, energy = layer_error_sq(teacher_layers[template.name], deltas.get(template.name), tuple(template.shape))
        updated.error_sq, updated.energy = error_sq, energy
        layers.append(updated)
    held = "held-out" if eval_examples is not train_examples else "training"
    name = "KL" if before.distill_kind == "logits" else "hidden MSE"
    notes = [
        f"finetune: {len(losses)} steps, lr {config.lr:g}, batch {config.batch_size}, on {device.type}; "
        f"teacher-student {name} on {len(eval_examples)} {held} texts {before.distill_loss:.5g} -> {after.distill_loss:.5g}; "
        f"relative error vs original ΔW {before.relative_error:.4f} -> {after.relative_error:.4f}"
    ]
    report = build_report(source, teacher_layers, layers, notes)
    settings = {**asdict(config), "device": str(device), "mixed_precision": amp, "train_texts": len(train_examples),
                "eval_texts": len(eval_examples), "eval_split": held}
    return FinetuneResult(source=source, teacher=teacher_deltas, layers=layers, report=report, before=before, after=after,
                          losses=losses, settings=settings)


def _train(session: _Session, batches: list[dict[str, torch.Tensor]], config: FinetuneConfig, device: torch.device,
           amp: bool) -> list[float]:
    student = session.student
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config.steps, config.warmup_fraction)
    scaler = torch.amp.GradScaler("cuda") if amp and not torch.cuda.is_bf16_supported() else None
    order_rng = random.Random(config.seed)
    order: list[int] = []
    losses = []
    bar = tqdm(range(config.steps), desc="finetune", unit="step", disable=None if config.progress is None else not config.progress)
    for step in bar:
        if not order:
            order = list(range(len(batches)))
            order_rng.shuffle(order)
        index = order.pop()
        batch = batches[index]
        teacher_out = session.teacher(batch, key=index)
        deltas = student.materialize()
        if step == 0:
            _check_differentiable(student, deltas)
        with session.student_context(deltas):
            loss = session.student_loss(batch, teacher_out, deltas)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise InputError(f"fine-tuning diverged at step {step + 1} (loss {value}); lower the learning rate (now {config.lr:g})")
        losses.append(value)
        bar.set_postfix(loss=f"{value:.4g}")
    return losses


def _check_differentiable(student: StudentDeltas, deltas: dict[str, torch.Tensor]) -> None:
    for layer in student.layers:
        if any(p.requires_grad for p in layer.parameters()) and not deltas[layer.name].requires_grad:
            wavelet = layer.meta.get("wavelet", "?")
            raise InputError(
                f"layer {layer.name}: its {layer.method} reconstruction with wavelet {wavelet} is not differentiable "
                "(only the Haar/db1 path is computed with torch ops); compress with --wavelet db1 to fine-tune"
            )
