"""The distillation loop: train a compressed adapter's stored values to match the original adapter.

Teacher = base model + original adapter (forward hooks adding the factored update), student = the
same base model run with W + ΔŴ through ``torch.func.functional_call`` (hooks instead under
gradient checkpointing, which re-runs the forward in backward): one copy of the base model, whose
weights never change. Only the student's float stored values train (AdamW, linear warm-up then
linear decay); supports, indices and permutations stay fixed. Objective: KL(teacher ‖ student) on logits, or hidden-state MSE for a
bare encoder, plus an optional supervised cross-entropy when the data has class labels.
A held-out slice of the texts is scored before training, every ``eval_every`` steps and at the end;
the values with the lowest held-out loss are kept (the input's own when no step beats them), so the
result is never worse than the input there. Optional early stop (``patience``, ``steps="auto"``).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..compressed_adapter import CompressedAdapter
from ..deltas import AdapterDeltas, LayerDelta, load_deltas
from ..errors import InputError
from ..hardware import resolve_device
from .compressed_source import CompressedSource, as_compressed_source
from . import defaults
from .data import Example, as_examples, make_batches, split_examples
from .injection import DeltaInjector, dense_update, layer_update
from .keep_best import KeepBest
from .losses import distillation_terms, model_output, supervised_terms
from .model_loading import apply_passthrough
from .result import Figures, FinetuneResult, build_report, layer_error_sq
from .trainable import StudentDeltas

_TEACHER_CACHE_ELEMENTS = 50_000_000


@dataclass
class FinetuneConfig:
    """Fine-tuning settings (defaults in :mod:`wavecompress.finetune.defaults`).

    ``steps``: optimizer steps (None: ``defaults.STEPS`` on CUDA, ``defaults.CPU_STEPS`` on CPU), or ``"auto"`` (up to ``defaults.AUTO_MAX_STEPS``, early stop after
    ``defaults.AUTO_PATIENCE`` evaluations without a new lowest held-out loss). ``eval_every``: steps
    between held-out evaluations (None: about ten per run). ``patience``: evaluations without a new
    lowest before stopping (None: never, unless ``steps="auto"``). ``mixed_precision=None`` means
    autocast (bf16 where supported) for the student on CUDA, off elsewhere; held-out scoring is float32.
    ``keep_best=False`` returns the last step's values even when worse (for experiments and tests).
    """

    steps: int | str | None = None
    lr: float = defaults.LR
    batch_size: int = defaults.BATCH_SIZE
    max_length: int = defaults.MAX_LENGTH
    temperature: float = 1.0
    supervised_weight: float = 0.0
    warmup_fraction: float = defaults.WARMUP_FRACTION
    weight_decay: float = 0.0
    eval_fraction: float = defaults.EVAL_FRACTION
    eval_every: int | None = None
    patience: int | None = None
    device: str = "auto"
    mixed_precision: bool | None = None
    gradient_checkpointing: bool = False
    kernels: str = "auto"
    seed: int = 0
    progress: bool | None = None
    keep_best: bool = True

    def validate(self) -> None:
        if self.steps not in ("auto", None) and (not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0):
            raise InputError(f"steps must be a whole number >= 0 or 'auto', got {self.steps!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise InputError(f"learning rate must be a positive number, got {self.lr}")
        if self.batch_size < 1 or self.max_length < 1:
            raise InputError("batch size and max length must be positive")
        if not self.temperature > 0:
            raise InputError(f"temperature must be positive, got {self.temperature}")
        if self.supervised_weight < 0:
            raise InputError(f"supervised weight must be >= 0, got {self.supervised_weight}")
        if not 0 <= self.warmup_fraction < 1:
            raise InputError(f"warm-up fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 < self.eval_fraction < 1:
            raise InputError(f"held-out fraction must be in (0, 1), got {self.eval_fraction}")
        if self.eval_every is not None and self.eval_every < 1:
            raise InputError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"patience must be >= 1 evaluation, got {self.patience}")

    def plan(self, device_type: str) -> tuple[int, int, int | None]:
        """(steps to run at most, steps between held-out evaluations, patience in evaluations or None) on a device type."""
        if self.steps == "auto":
            return (defaults.AUTO_MAX_STEPS, self.eval_every or defaults.AUTO_EVAL_EVERY,
                    self.patience or defaults.AUTO_PATIENCE)
        steps = defaults.default_steps(device_type) if self.steps is None else self.steps
        return steps, self.eval_every or defaults.default_eval_every(steps), self.patience


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
                 shapes: dict[str, tuple[int, int]], config: FinetuneConfig, amp: bool, steps: int) -> None:
        self.model, self.student, self.device, self.config, self.amp = model, student, device, config, amp
        self.injector = DeltaInjector(model, shapes)
        self.teacher_updates = {name: layer_update(delta, device) for name, delta in teacher.items()}
        self.checkpointing = config.gradient_checkpointing and steps > 0
        self.cache: dict[int, tuple[str, torch.Tensor]] = {}
        self.cached_elements = 0

    def forward(self, updates, batch: dict[str, torch.Tensor], amp: bool) -> tuple[str, torch.Tensor]:
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        with self.injector.use(updates), _autocast(self.device, amp):
            return model_output(self.model(**inputs))

    @torch.no_grad()
    def teacher(self, batch: dict[str, torch.Tensor], key: int | None = None) -> tuple[str, torch.Tensor]:
        """The teacher's outputs (no autocast: exact targets), cached by ``key`` while they fit."""
        if key is not None and key in self.cache:
            return self.cache[key]
        kind, out = self.forward(self.teacher_updates, batch, amp=False)
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

    def student_forward(self, deltas: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                        amp: bool | None = None) -> tuple[str, torch.Tensor]:
        """The base model with W + ΔŴ (one matmul per layer); through the hooks when checkpointing."""
        amp = self.amp if amp is None else amp
        if self.checkpointing:
            return self.forward({name: dense_update(delta) for name, delta in deltas.items()}, batch, amp)
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        weights = self.injector.merged_weights(deltas)
        with _autocast(self.device, amp):
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
    def held_out_loss(self, batches: list[dict[str, torch.Tensor]]) -> float:
        """The mean teacher-student loss on ``batches`` at the current values (float32, no autocast)."""
        deltas = {name: delta.detach() for name, delta in self.student.materialize().items()}
        total, count = 0.0, 0
        for index, batch in enumerate(batches):
            kind, t_out = self.teacher(batch, key=-1 - index)
            _, s_out = self.student_forward(deltas, batch, amp=False)
            terms = distillation_terms(kind, s_out, t_out, batch.get("attention_mask"), 1.0)
            total, count = total + float(terms[0]), count + terms[1]
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, batches: list[dict[str, torch.Tensor]], teacher: dict[str, LayerDelta]) -> Figures:
        """Held-out loss, agreement and accuracy (float32), and the relative error against the original ΔW."""
        deltas = {name: delta.detach() for name, delta in self.student.materialize().items()}
        total, count, agree, correct, teacher_correct, labelled = 0.0, 0, 0, 0, 0, 0
        kind, per_example = "logits", True
        for index, batch in enumerate(batches):
            kind, t_out = self.teacher(batch, key=-1 - index)
            per_example = per_example and kind == "logits" and t_out.dim() == 2
            _, s_out = self.student_forward(deltas, batch, amp=False)
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
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """Distil the original adapter into the compressed one's stored values; return the kept layers.

    ``compressed``: a wavecompress output folder or :func:`wavecompress.compress`'s result (whose
    source is then the default teacher). ``model``: the base model (its weights are never changed;
    the adapter's saved modules, such as a classifier head, are loaded into it). ``examples``:
    texts, (text, label) pairs or :class:`Example`. Settings: :class:`FinetuneConfig` or keywords.
    ``log``: receives progress lines (seconds per step and the estimate); the kept step is in the result's summary.

    The caller's model comes back as it was given: each parameter's ``requires_grad``, its device and its
    train/eval mode are restored (the loaded head stays). A PeftModel, or a model holding PEFT adapter
    layers, is refused in one line that says what to pass (the bare base model).
    """
    check_bare_base(model)
    target = model
    grads = {name: param.requires_grad for name, param in target.named_parameters()}
    devices = {param.device for param in target.parameters()}
    training = model.training
    try:
        return _finetune(compressed, target, tokenizer, examples, teacher, config, log, **overrides)
    finally:
        for name, param in target.named_parameters():
            param.requires_grad_(grads.get(name, param.requires_grad))
        if len(devices) == 1:
            target.to(next(iter(devices)))
        model.train(training)


def check_bare_base(model: nn.Module) -> None:
    """Refuse a PeftModel or a model holding PEFT adapter layers: the fine-tune adds the compressed adapter
    to a bare base model, and an adapter already inside would be trained against on top of it."""
    try:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return
    if isinstance(model, PeftModel) or any(isinstance(module, BaseTunerLayer) for module in model.modules()):
        raise InputError(f"finetune takes the bare base model, but this {type(model).__name__} holds PEFT adapter layers: "
                         "pass the base model without adapters (load it again, or peft_model.unload() to strip them)")


def _finetune(
    compressed: CompressedAdapter | CompressedSource | str | Path,
    model: nn.Module,
    tokenizer: Any,
    examples: list[Example] | list[str] | list[tuple[str, Any]],
    teacher: AdapterDeltas | str | Path | None = None,
    config: FinetuneConfig | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """:func:`finetune` on a model whose state the caller's wrapper restores."""
    config = config or FinetuneConfig()
    if overrides:
        config = FinetuneConfig(**{**asdict(config), **overrides})
    config.validate()
    source = as_compressed_source(compressed)
    teacher_deltas = _resolve_teacher(source, teacher)
    teacher_layers = {layer.name: layer for layer in [*teacher_deltas.layers, *teacher_deltas.kept]}
    unknown = sorted(layer.name for layer in source.layers if layer.name not in teacher_layers)
    if unknown:
        raise InputError(f"{source.origin}: layer {unknown[0]} is not in the teacher adapter {teacher_deltas.source}")
    for layer in source.layers:
        if tuple(teacher_layers[layer.name].shape) != tuple(layer.shape):
            raise InputError(f"{source.origin}: layer {layer.name} is {tuple(layer.shape)} but the teacher's is {tuple(teacher_layers[layer.name].shape)}")
    examples = as_examples(list(examples))
    if len(examples) < 2:
        raise InputError(f"fine-tuning needs at least 2 texts, got {len(examples)}")

    device = resolve_device(config.device, fallback=False)  # training on the CPU by surprise could take hours
    amp = bool(config.mixed_precision) if config.mixed_precision is not None else device.type == "cuda"
    if amp and device.type != "cuda":
        raise InputError("mixed precision is for CUDA devices; on CPU fine-tuning runs in float32")
    max_steps, eval_every, patience = config.plan(device.type)
    torch.manual_seed(config.seed)
    model.to(device)
    for param in model.parameters():
        param.requires_grad_(False)
    apply_passthrough(model, source.passthrough, source.origin)
    student = StudentDeltas(source.layers, config.kernels).to(device)
    for layer in student.layers:
        if layer.name in source.kept_names:  # unselected layers stay exactly as they came
            layer.requires_grad_(False)
    shapes = {name: tuple(delta.shape) for name, delta in teacher_layers.items()}
    session = _Session(model, student, teacher_layers, device, shapes, config, amp, max_steps)

    held = defaults.eval_count(len(examples), config.eval_fraction)
    train_examples, eval_examples = split_examples(examples, held, config.seed)
    label2id = getattr(getattr(model, "config", None), "label2id", None)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    train_batches = make_batches(tokenizer, train_examples, config.batch_size, config.max_length, label2id, num_labels)
    eval_batches = make_batches(tokenizer, eval_examples, config.batch_size, config.max_length, label2id, num_labels)
    name = "KL"
    keeper = KeepBest(list(student.parameters()), patience)

    losses: list[float] = []
    started = time.perf_counter()
    try:
        with _training_mode(model, config.gradient_checkpointing and max_steps > 0):
            t0 = time.perf_counter()
            before = session.evaluate(eval_batches, teacher_layers)
            eval_seconds = time.perf_counter() - t0
            name = "KL" if before.distill_kind == "logits" else "hidden MSE"
            keeper.record(0, before.distill_loss)
            if max_steps and student.trainable_values:
                plan = _Plan(max_steps, eval_every, eval_seconds, len(eval_batches))
                losses = _train(session, train_batches, eval_batches, config, plan, keeper, log or (lambda _: None))
                if config.keep_best:
                    keeper.restore()
                else:
                    keeper.keep_last(len(losses))
            after = before if keeper.kept_input else session.evaluate(eval_batches, teacher_layers)
    finally:
        session.injector.remove()
    seconds = time.perf_counter() - started
    kept = keeper.explain(name, len(losses))

    deltas = {layer.name: layer().detach() for layer in student.layers}
    by_name = {layer.name: layer for layer in student.layers}
    layers = []
    for template in source.layers:
        if keeper.kept_input or template.name not in by_name:
            updated = replace(template, meta=dict(template.meta), notes=list(template.notes))  # the input's own values
        else:
            updated = by_name[template.name].to_layer(template)
        error_sq, energy = layer_error_sq(teacher_layers[template.name], deltas.get(template.name), tuple(template.shape))
        updated.error_sq, updated.energy = error_sq, energy
        layers.append(updated)
    where = "held-out" if eval_examples is not train_examples else "training"
    notes = [
        f"finetune: {len(losses)} steps, lr {config.lr:g}, batch {config.batch_size}, on {device.type}; "
        f"teacher-student {name} on {len(eval_examples)} {where} texts {before.distill_loss:.5g} -> {after.distill_loss:.5g}; "
        f"relative error vs original ΔW {before.relative_error:.4f} -> {after.relative_error:.4f}",
        f"finetune: {kept}",
    ]
    report = build_report(source, teacher_layers, layers, notes)
    settings = {**asdict(config), "steps": config.steps or max_steps, "device": str(device), "mixed_precision": amp, "train_texts": len(train_examples),
                "eval_texts": len(eval_examples), "eval_split": where, "eval_every": eval_every, "patience": patience,
                "max_steps": max_steps, "seconds": seconds}
    return FinetuneResult(source=source, teacher=teacher_deltas, layers=layers, report=report, before=before, after=after,
                          losses=losses, settings=settings, history=list(keeper.history), kept_step=keeper.best_step,
                          kept=kept)


@dataclass
class _Plan:
    """Steps to run, evaluation spacing, and what one evaluation cost (for the estimate)."""

    steps: int
    eval_every: int
    eval_seconds: float
    eval_batches: int


def _estimate_line(per_step: float, plan: _Plan, device: torch.device, timed: int) -> str:
    evaluations = plan.steps // plan.eval_every + (plan.steps % plan.eval_every != 0)
    total = per_step * plan.steps + plan.eval_seconds * evaluations
    return (f"finetune: {per_step:.3g} s/step on {device.type} (timed over {timed} step{'s' * (timed > 1)}); "
            f"{plan.steps} steps + {evaluations} held-out evaluations ({plan.eval_seconds:.2g} s each) ≈ {_duration(total)}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _train(session: _Session, batches: list[dict[str, torch.Tensor]], eval_batches: list[dict[str, torch.Tensor]],
           config: FinetuneConfig, plan: _Plan, keeper: KeepBest, log: Callable[[str], None]) -> list[float]:
    """Train up to ``plan.steps`` steps, scoring the held-out texts every ``plan.eval_every`` and at the end."""
    student, device, amp = session.student, session.device, session.amp
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, plan.steps, config.warmup_fraction)
    scaler = torch.amp.GradScaler("cuda") if amp and not torch.cuda.is_bf16_supported() else None
    order_rng = random.Random(config.seed)
    order: list[int] = []
    losses: list[float] = []
    timed: list[float] = []
    bar = tqdm(range(plan.steps), desc="finetune", unit="step", disable=None if config.progress is None else not config.progress)
    for step in bar:
        tick = time.perf_counter()
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
        losses.append(value)
        if not math.isfinite(value):
            keeper.stop_reason = f"training diverged at step {step + 1} (loss {value}; lr {config.lr:g} is too high)"
            break
        bar.set_postfix(loss=f"{value:.4g}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        # The first step pays one-time costs (kernel compilation, teacher cache); time the next two.
        if step in (1, 2) or (plan.steps <= 2 and step == 0):
            timed.append(time.perf_counter() - tick)
            if step == min(2, plan.steps - 1):
                log(_estimate_line(sum(timed) / len(timed), plan, device, len(timed)))
        done = step + 1
        if done % plan.eval_every == 0 or done == plan.steps:
            keeper.record(done, session.held_out_loss(eval_batches))
            if keeper.should_stop():
                break
    return losses


def _check_differentiable(student: StudentDeltas, deltas: dict[str, torch.Tensor]) -> None:
    for layer in student.layers:
        if any(p.requires_grad for p in layer.parameters()) and not deltas[layer.name].requires_grad:
            wavelet = layer.meta.get("wavelet", "?")
            raise InputError(
                f"layer {layer.name}: its {layer.method} reconstruction with wavelet {wavelet} is not differentiable "
                "(only the Haar/db1 path is computed with torch ops); compress with --wavelet db1 to fine-tune"
            )
