"""``wavecompress finetune``: distil the original adapter into a compressed adapter's stored values."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..finetune import defaults
from ..formats.atomic import atomic_write_bytes
from .common import INPUT_PATH, debug_option, friendly_errors


class StepsType(click.ParamType):
    """A whole number of steps >= 0, or ``auto`` (early stop when the held-out loss stops improving)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            return int(text)
        self.fail(f"{value!r} is neither a whole number of steps nor 'auto'", param, ctx)


STEPS = StepsType()


def log_line(message: str) -> None:
    """Progress lines (seconds per step, the estimate, the kept step) go to stderr."""
    click.echo(message, err=True)


def finetune_config(steps: int | str | None, lr: float, batch_size: int, max_length: int, supervised_weight: float, device: str,
                    mixed_precision: bool | None, gradient_checkpointing: bool, kernels: str, seed: int,
                    warmup: float = defaults.WARMUP_FRACTION, eval_every: int | None = None, patience: int | None = None):
    """A FinetuneConfig from the CLI options (progress bar on a terminal)."""
    from ..finetune import FinetuneConfig

    return FinetuneConfig(steps=steps, lr=lr, batch_size=batch_size, max_length=max_length, supervised_weight=supervised_weight,
                          device=device, mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
                          kernels=kernels, seed=seed, progress=None, warmup_fraction=warmup, eval_every=eval_every,
                          patience=patience)


@click.command()
@click.argument("compressed", type=INPUT_PATH)
@click.option("--teacher", type=str, required=True, help="The original adapter the compressed one was made from.")
@click.option("--base-model", type=str, default=None, help="Base model folder or Hub id [default: the adapter's base_model_name_or_path].")
@click.option("--data", "data", type=click.Path(path_type=Path), required=True,
              help="Texts: .txt (one per line), .jsonl/.json (text, optional label), .csv/.tsv (text column).")
@click.option("--steps", type=STEPS, default=None,
              help=f"Optimizer steps, or auto (up to {defaults.AUTO_MAX_STEPS}, stopping when the held-out loss stops improving) "
              f"[default: {defaults.STEPS} on CUDA, {defaults.CPU_STEPS} on CPU].")
@click.option("--lr", type=float, default=defaults.LR, show_default=True,
              help="AdamW learning rate for the stored values (linear warm-up, then linear decay).")
@click.option("--warmup", type=float, default=defaults.WARMUP_FRACTION, show_default=True,
              help="Fraction of the steps spent warming the learning rate up.")
@click.option("--batch-size", type=int, default=defaults.BATCH_SIZE, show_default=True, help="Texts per step.")
@click.option("--max-length", type=int, default=defaults.MAX_LENGTH, show_default=True,
              help="Tokens per text (longer texts are truncated).")
@click.option("--eval-every", type=int, default=None,
              help=f"Steps between held-out evaluations [default: steps/{defaults.EVALUATIONS}, at least {defaults.EVAL_EVERY_MIN}].")
@click.option("--patience", type=int, default=None,
              help=f"Stop after this many held-out evaluations without a lower loss [default: never; {defaults.AUTO_PATIENCE} with --steps auto].")
@click.option("--supervised-weight", type=float, default=0.0, show_default=True,
              help="Weight of a cross-entropy loss on the data's labels (labelled data, classification heads).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda, cuda:N.")
@click.option("--mixed-precision/--no-mixed-precision", default=None,
              help="bf16 (fp16 without bf16) autocast of the student on CUDA [default: on for CUDA]; the teacher and the "
              "held-out scoring stay float32; CPU runs in float32.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in backward (saves GPU memory).")
@click.option("--kernels", type=click.Choice(["auto", "triton", "torch", "off"]), default="auto", show_default=True,
              help="ΔŴ synthesis for Haar top-k layers: auto = Triton on CUDA, the method's torch code elsewhere.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the data order and the held-out split.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Output folder [default: ./<compressed>-ft].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON here.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@debug_option
@friendly_errors
def finetune(compressed: Path, teacher: str, base_model: str | None, data: Path, steps: int | str | None, lr: float, warmup: float,
             batch_size: int, max_length: int, eval_every: int | None, patience: int | None, supervised_weight: float,
             device: str, mixed_precision: bool | None, gradient_checkpointing: bool, kernels: str, seed: int,
             out_dir: Path | None, report_path: Path | None, force: bool, debug: bool) -> None:
    """Train a compressed adapter's stored values to behave like the original adapter.

    Distillation on DATA: teacher = base model + original adapter, student = base model +
    COMPRESSED; KL on the output logits (hidden-state MSE for a bare encoder). Only the stored
    values train (top-k values, WaRA or LoRA factors); indices and permutations stay fixed, so
    the output has the same format and size. A held-out 10% of DATA is scored before training,
    every --eval-every steps and at the end; the values with the lowest held-out loss are kept, so
    the output is never worse than COMPRESSED there (its own values when no step beats them).
    Prints seconds per step and an estimate after the first steps, then the loss and the error vs
    the original ΔW before and after, and which step was kept.

    \b
    Example:
      wavecompress finetune out/wara --teacher fixtures/minilm-bbc-lora \\
          --base-model path/to/all-MiniLM-L6-v2 --data texts.txt --out out/wara-ft
    """
    from ..finetune.files import finetune_from_files

    from .guards import check_outputs

    target = out_dir or Path(f"{compressed.name or 'adapter'}-ft")
    check_outputs([compressed, Path(teacher), Path(base_model) if base_model else None, data], target,
                  [("--report", report_path)], force)
    config = finetune_config(steps, lr, batch_size, max_length, supervised_weight, device, mixed_precision,
                             gradient_checkpointing, kernels, seed, warmup, eval_every, patience)
    config.validate()  # before loading any model
    result = finetune_from_files(compressed, data, teacher=teacher, base_model=base_model, config=config, log=log_line)
    click.echo(result.summary())
    result.save(target, force=force)
    if report_path is not None:
        atomic_write_bytes(report_path, result.report.dumps().encode("utf-8"), inputs=[compressed, data], force=force,
                           option="--report")
    click.echo(f"wrote {target}" + (f" and {report_path}" if report_path else ""))


def finetune_converted(result, steps: int | str | None, data: Path | None, base_model: Path | str | None, lr: float, device: str):
    """``convert --finetune-steps/--finetune-data``: fine-tune the in-memory conversion against its own input.

    The settings not given on convert's command line are the ``finetune`` command's defaults.
    """
    from ..finetune import FinetuneConfig
    from ..finetune.files import finetune_from_files

    if data is None:
        raise InputError("--finetune-steps needs --finetune-data (a text file to distil on)")
    config = FinetuneConfig(steps=steps, lr=lr, device=device, progress=None)
    return finetune_from_files(result, data, base_model=str(base_model) if base_model is not None else None, config=config,
                               log=log_line)
