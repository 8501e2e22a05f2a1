"""``wavecompress convert``: one adapter in, a budgeted adapter and its report out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..calibration import calibration_for
from ..compress import cli_words, compress
from ..deltas import AdapterDeltas, read_input
from ..errors import InputError
from ..finetune import defaults as FINETUNE_DEFAULTS
from ..formats.atomic import atomic_write_bytes
from ..formats.kohya_writer import LAYOUTS, layout_of, write_lora_layout
from ..hardware import cuda_fallback_note
from ..hub import check_push_target, push_after_save
from ..layout import output_name
from .common import INPUT_PATH, InterruptedAfterWrite, debug_option, fit_lines, friendly_errors
from .finetune import STEPS as FINETUNE_STEPS
from .guards import check_method_options, check_outputs
from .options import budget_of, budget_options, calibration_options, input_options, method_kwargs, method_options, run_options


@click.command()
@click.argument("input_path", metavar="INPUT", type=INPUT_PATH, required=False)
@budget_options
@method_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: ./<input>-<method>-<budget label>, e.g. x-waveft-b3000, x-wara-t90000].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON here.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
              help="With --method lora: peft (a PEFT folder), kohya (sd-scripts' single file: ComfyUI, A1111, diffusers), "
              "diffusers (pytorch_lora_weights.safetensors); auto: the input's layout (kohya in, kohya out). Other "
              "methods write their own PEFT-style folder.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--wide", is_flag=True, help="Per-layer table with every column (values and errors of each baseline, "
              "raw bytes, energy kept); the default fits 100 columns.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Print the layers, their budgets and the estimated file size, then stop (nothing computed or written).")
@click.option("--push-to", "push_to", metavar="REPO_ID", default=None,
              help="Then upload the output folder to this Hub repo (owner/name) in one commit; see `wavecompress push`.")
@click.option("--private", is_flag=True, help="With --push-to: create the Hub repo as private.")
@input_options
@click.option("--tuned", "tuned", type=click.Path(path_type=Path), default=None,
              help="Fine-tuned model weights (same forms as --base); use instead of INPUT for a full fine-tune.")
@calibration_options
@click.option("--save-calibration", "save_calibration", type=click.Path(path_type=Path), default=None,
              help="Also save the collected second moments here (reuse with --calibration FILE.safetensors).")
@run_options
@click.option("--finetune-steps", "finetune_steps", type=FINETUNE_STEPS, default=None,
              help="Then fine-tune the stored values for this many steps (or auto) by distillation from INPUT, keeping the "
              "best on held-out texts (needs --finetune-data; 0 = off) [default with --finetune-data: the finetune command's, "
              f"{FINETUNE_DEFAULTS.STEPS} on CUDA, {FINETUNE_DEFAULTS.CPU_STEPS} on CPU]; "
              "base model: --base-model or the adapter's base_model_name_or_path.")
@click.option("--finetune-data", "finetune_data", type=click.Path(path_type=Path), default=None,
              help="Texts to fine-tune on after converting (.txt one per line, .jsonl/.json, .csv/.tsv); other settings "
              "are the finetune command's defaults.")
@click.option("--finetune-lr", "finetune_lr", type=float, default=FINETUNE_DEFAULTS.LR, show_default=True,
              help="Learning rate for the fine-tune.")
@click.option("--finetune-device", "finetune_device", default="auto", show_default=True,
              help="Device for --finetune-steps: auto (CUDA when available), cpu, cuda, cuda:N.")
@debug_option
@friendly_errors
def convert(input_path: Path | None, out_dir: Path | None, report_path: Path | None, force: bool, wide: bool,
            dry_run: bool, push_to: str | None, private: bool, tuned: Path | None, save_calibration: Path | None, finetune_steps: int | str | None,
            finetune_data: Path | None, finetune_lr: float, finetune_device: str, debug: bool, **options: Any) -> None:
    """Convert an adapter into a budgeted wavelet (or LoRA) adapter and report the error.

    INPUT is a PEFT LoRA folder, or its adapter_model.safetensors with adapter_config.json beside
    it, or a folder written by wavecompress, or a Hub repo id owner/name[@revision] (downloaded
    through the huggingface_hub cache; HF_HUB_OFFLINE=1 reads the cache only). Also: a PEFT DoRA
    folder (with --base), a PEFT LoHa/LoKr folder, a single-file kohya / LyCORIS / diffusers LoRA
    (.safetensors; ss_*/modelspec.* metadata is kept), or a full fine-tune: --base BASE --tuned TUNED.

    \b
    Examples:
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000 --method wara --out out/wara
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000 --method waveft-seeded \\
          --scaling 25 --seed 777
      wavecompress convert path/to/adapter_model.safetensors --budget 768 --report report.json
      wavecompress convert someone/their-lora --budget 3000 --push-to me/their-lora-waveft-b3000
      wavecompress convert my-dora --base path/to/base-model --budget 3000
      wavecompress convert lora_kohya.safetensors --budget 3000
      wavecompress convert sd15_locon.safetensors --method lora --rank 4 --out small.safetensors
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000 --include query  # rest kept as is
      wavecompress convert --base meta-llama-2-7b/ --tuned my-finetune/ --budget 8192 \\
          --include 'self_attn' --drop-unselected
      wavecompress convert fixtures/minilm-bbc-lora --budget-ratio 0.1 --allocate global --method auto
      wavecompress convert my-lora --max-size 2MB --calibration calib.txt --base-model path/to/base
      wavecompress convert fixtures/minilm-bbc-lora --method lora --rank 4
      wavecompress convert fixtures/minilm-bbc-lora --method wara --target-error 0.05
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000 --dry-run
    """
    from ..deltas.safetensors_reader import skip_nonfinite_layers

    with skip_nonfinite_layers(options.pop("allow_nonfinite")):
        _convert(input_path, out_dir, report_path, force, wide, dry_run, push_to, private, tuned, save_calibration,
                 finetune_steps, finetune_data, finetune_lr, finetune_device, options)


def _convert(input_path: Path | None, out_dir: Path | None, report_path: Path | None, force: bool, wide: bool,
             dry_run: bool, push_to: str | None, private: bool, tuned: Path | None, save_calibration: Path | None, finetune_steps: int | str | None,
             finetune_data: Path | None, finetune_lr: float, finetune_device: str, options: dict[str, Any]) -> None:
    spec = budget_of(options)
    kwargs = method_kwargs(options)
    check_method_options(kwargs["scaling"], kwargs["seed"])
    method, quiet, device = kwargs["method"], options.pop("quiet"), options.pop("device")
    calibration, base_model, calibration_tokens = options.pop("calibration"), options.pop("base_model"), options.pop("calibration_tokens")
    base, include, exclude, drop_unselected = options.pop("base"), options.pop("include"), options.pop("exclude"), options.pop("drop_unselected")
    drop_unconvertible, layout = options.pop("drop_unconvertible"), options.pop("layout")
    if layout in ("kohya", "diffusers") and (method != "lora" or push_to is not None):
        raise InputError(f"--layout {layout} writes LoRA files: use it with --method lora and without --push-to "
                         f"(other methods: wavecompress export OUT --to lora --layout {layout})")
    named = tuned if tuned is not None else input_path
    target = out_dir or (Path(output_name(named, method, spec)) if named else None)
    check_outputs([input_path, base, tuned, calibration, base_model, finetune_data], target,
                  [("--report", report_path), ("--save-calibration", save_calibration)], force)
    input_path, source = read_input(input_path, base, tuned, include, exclude, drop_unselected)
    if layout in ("kohya", "diffusers"):
        source = check_layout_names(source, layout)  # names the layout cannot spell: refused before converting
    if dry_run:
        from ..plan import describe_plan

        by_target = spec.target_error is not None
        click.echo(fit_lines(describe_plan(source, None if by_target else spec, spec.target_error, method, kwargs["wavelet"],
                                           kwargs["levels"], kwargs["reorder"], spec.allocate, target,
                                           drop_unconvertible=drop_unconvertible), wide))
        return
    if push_to is not None:
        check_push_target(push_to)  # before converting: a missing token should not cost a conversion
    if finetune_steps not in (None, 0) and finetune_data is None:
        raise InputError("--finetune-steps needs --finetune-data (a text file to distil on)")
    if finetune_steps == 0:
        finetune_data = None
    if finetune_data is not None:
        from ..finetune import FinetuneConfig

        FinetuneConfig(steps=finetune_steps, lr=finetune_lr).validate()
    calib_model = None if finetune_data is not None and calibration is None else base_model  # --base-model may serve the fine-tune only
    calib = calibration_for(source, calibration, calib_model, calibration_tokens, save_calibration)
    if (note := cuda_fallback_note(device)) is not None:
        click.echo(note, err=True)
        device = "cpu"
    try:
        result = compress(source, spec, progress=None, calibration=calib, device=device,
                          drop_unconvertible=drop_unconvertible, compare_orders=True, **kwargs)
    except InputError as exc:  # the library names keywords (budget=, method=); the CLI names its flags
        raise InputError(cli_words(str(exc))) from None
    report = result.report
    method = report.method
    if not quiet:
        click.echo(report.format_table(wide=wide))
    first, *currencies = report.verdict_parts()  # one currency per line: the table's 100 columns hold them
    click.echo("\n  ".join([first, *currencies]))
    if quiet:
        for line in report.carried_lines():
            click.echo(fit_lines(line, wide))  # modules carried verbatim or dropped: never silent
        for note in report.notes:
            if note.startswith(("auto:", "target error")):
                click.echo(fit_lines(note, wide))  # why auto chose this method/wavelet; the budget an error target needed
    if finetune_data is not None:
        from .finetune import finetune_converted

        result = finetune_converted(result, finetune_steps, finetune_data, base_model, finetune_lr, finetune_device)
        report = result.report
        click.echo(result.summary())
    chosen = "peft" if method != "lora" or push_to is not None or layout == "peft" else \
        layout_of([layer.name for layer in result.layers], result.source.kind) if layout == "auto" else layout
    if chosen == "peft":
        result.save(target, force=force)
    else:
        target = write_lora_layout(target, chosen, result.layers, result.source, report, force=force)
    if report_path is not None:
        try:
            atomic_write_bytes(report_path, report.dumps().encode("utf-8"), inputs=[input_path, base, tuned, calibration],
                               force=force, option="--report")
        except KeyboardInterrupt:
            raise InterruptedAfterWrite(f"{target} was written, --report {report_path} was not") from None
    from ..report import size_note, weight_bytes

    if (note := size_note(weight_bytes(target), weight_bytes(tuned if tuned is not None else input_path))) is not None:
        click.echo(note)
    click.echo(f"wrote {target}" + (f" and {report_path}" if report_path else ""))  # the last line names the output
    if push_to is not None:
        try:
            click.echo(push_after_save(target, push_to, private=private).describe(target, push_to))
        except KeyboardInterrupt:
            raise InterruptedAfterWrite(f"the push to {push_to} was stopped (nothing is committed until the single "
                                        f"commit lands); the converted adapter is intact at {target}") from None


def check_layout_names(source: Path | AdapterDeltas, layout: str) -> AdapterDeltas:
    """The input read, its module names checked for ``layout`` (formats/kohya_writer.check_layout_names)."""
    from ..deltas import load_deltas
    from ..formats.kohya_writer import check_layout_names as check_names
    from ..methods.allocation import layer_names

    deltas = source if isinstance(source, AdapterDeltas) else load_deltas(source)
    check_names(layer_names(deltas.layers), layout)
    return deltas
