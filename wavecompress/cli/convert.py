"""``wavecompress convert``: one adapter in, a budgeted adapter and its report out."""

from __future__ import annotations

from pathlib import Path

import click

from ..compress import compress
from ..deltas import AdapterDeltas, load_deltas, read_full_finetune
from ..errors import InputError
from ..finetune import defaults as FINETUNE_DEFAULTS
from ..formats.atomic import atomic_write_bytes
from ..hardware import cuda_fallback_note
from ..hub import check_push_target, push_after_save
from ..methods.options import DEFAULT_REORDER, REORDER_CHOICES
from .common import (INPUT_PATH, InterruptedAfterWrite, MethodChoice, allow_nonfinite_option, debug_option, default_output,
                     friendly_errors, levels_help, method_help)
from .finetune import STEPS as FINETUNE_STEPS
from .guards import check_method_options, check_outputs


@click.command()
@click.argument("input_path", metavar="INPUT", type=INPUT_PATH, required=False)
@click.option("--budget", type=int, default=None, help="Stored trainable values per layer (PEFT's n_frequency meaning).")
@click.option("--budget-total", "budget_total", type=int, default=None, help="Or: stored values for the whole adapter.")
@click.option("--budget-ratio", "budget_ratio", type=float, default=None,
              help="Or: a fraction of the input adapter's stored values (0.25 = a quarter).")
@click.option("--max-size", "max_size", default=None, metavar="SIZE",
              help="Or: adapter_model.safetensors at most this big (2MB, 500kB, 1MiB), indices included.")
@click.option("--rank", type=int, default=None,
              help="Or: every layer gets what a rank-R LoRA of its shape stores, R·(d_out+d_in) values "
              "(with --method lora: truncated SVD at rank R, like kohya's --network_dim).")
@click.option("--target-error", "target_error", type=float, default=None, metavar="E",
              help="Or: the smallest adapter whose overall relative error is at most E (0.05 = 5%), sized by global "
              "allocation; the report gives the budget it needed.")
@click.option("--allocate", type=click.Choice(["uniform", "global"]), default="uniform", show_default=True,
              help="uniform: the same budget in every layer; global: split the total by error removed per stored value "
              "(exact greedy over each layer's rate-distortion curve).")
@click.option("--method", type=MethodChoice(), default="waveft", show_default=True, help=method_help())
@click.option("--wavelet", default="db1", show_default=True,
              help="Orthogonal wavelet family (db1 = Haar, dbN, symN, coifN), or auto (try those that fit the shapes).")
@click.option("--levels", type=int, default=None, help=levels_help())
@click.option("--reorder/--no-reorder", default=True, show_default=True,
              help="Permute rows and columns into a smooth order (from the delta) before the wavelet transform "
              "(waveft, wara; stored as int16/int32 permutations). The other ordering is always reported beside it.")
@click.option("--order-by", type=click.Choice(REORDER_CHOICES), default=DEFAULT_REORDER, show_default=True,
              help="How to reorder: svd (leading singular vectors), fiedler (spectral), greedy (nearest neighbour), "
              "best (try each per layer, keep the lowest error).")
@click.option("--baselines", "baselines", default="default", show_default=True, metavar="LIST",
              help="Report columns computed beside the method at the same budget: comma-separated methods (lora, sparse), "
              "none, or default (every baseline). The sparse column forms each dense ΔW: leave it out to save time on big layers.")
@click.option("--optimise", "optimise", type=click.Choice(["values", "bytes"]), default=None,
              help="--method auto: compare the candidates at equal trainable values or at equal file size "
              "[default: bytes with --max-size, else values].")
@click.option("--dtype", "dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Precision of the stored values: auto keeps each layer's input dtype (a bf16 LoRA "
              "gives bf16 files). Errors are measured from the rounded values; byte budgets count them.")
@click.option("--scaling", type=float, default=None,
              help="waveft-seeded: PEFT WaveFT's scaling; values are fitted to ΔW/scaling [default: 25.0, PEFT's].")
@click.option("--seed", type=int, default=None,
              help="waveft-seeded: PEFT WaveFT's random_loc_seed, which fixes the coefficient locations [default: 777].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: ./<input>-<method>-b<budget>].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON here.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", is_flag=True, help="Print only the overall line.")
@click.option("--wide", is_flag=True, help="Per-layer table with every column (values and errors of each baseline, "
              "raw bytes, energy kept); the default fits 100 columns.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Print the layers, their budgets and the estimated file size, then stop (nothing computed or written).")
@click.option("--push-to", "push_to", metavar="REPO_ID", default=None,
              help="Then upload the output folder to this Hub repo (owner/name) in one commit; see `wavecompress push`.")
@click.option("--private", is_flag=True, help="With --push-to: create the Hub repo as private.")
@click.option("--base", "base", type=click.Path(path_type=Path), default=None,
              help="Base model weights (safetensors file, sharded folder or model folder): needed for DoRA inputs, "
              "and with --tuned (or a model checkpoint as INPUT) for a full fine-tune ΔW = W_tuned − W_base.")
@click.option("--tuned", "tuned", type=click.Path(path_type=Path), default=None,
              help="Fine-tuned model weights (same forms as --base); use instead of INPUT for a full fine-tune.")
@click.option("--include", "include", multiple=True, metavar="REGEX",
              help="Convert only layers whose name matches this regex (repeatable); the others are kept exactly as they "
              "came (listed in the report), unless --drop-unselected.")
@click.option("--exclude", "exclude", multiple=True, metavar="REGEX",
              help="Do not convert layers whose name matches this regex (repeatable); they are kept exactly, unless "
              "--drop-unselected.")
@click.option("--drop-unselected", "drop_unselected", is_flag=True,
              help="Drop the layers --include/--exclude leave out instead of keeping them (their updates are lost; "
              "listed as skipped). Required for full fine-tunes and --method waveft-seeded.")
@click.option("--calibration", "calibration", type=click.Path(path_type=Path), default=None,
              help="Activation-aware mode: a text file (with --base-model) or a saved activations .safetensors file; "
              "minimises the error on the layers' inputs and reports both error measures.")
@click.option("--base-model", "base_model", type=click.Path(path_type=Path), default=None,
              help="Local transformers model folder to run on the --calibration text.")
@click.option("--calibration-tokens", "calibration_tokens", type=int, default=512, show_default=True,
              help="Tokens of calibration text to run.")
@click.option("--save-calibration", "save_calibration", type=click.Path(path_type=Path), default=None,
              help="Also save the collected second moments here (reuse with --calibration FILE.safetensors).")
@click.option("--device", default="cpu", show_default=True,
              help="Where to compute: cpu, or cuda / cuda:N (falls back to the CPU with a note when CUDA is missing).")
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
@allow_nonfinite_option
@debug_option
@friendly_errors
def convert(input_path: Path, budget: int, method: str, wavelet: str, levels: int | None, out_dir: Path | None,
            report_path: Path | None, force: bool, quiet: bool, debug: bool, scaling: float | None = None,
            seed: int | None = None, reorder: bool = True,
            order_by: str = DEFAULT_REORDER, push_to: str | None = None, private: bool = False,
            base: Path | None = None, tuned: Path | None = None, include: tuple[str, ...] = (),
            exclude: tuple[str, ...] = (), budget_total: int | None = None, budget_ratio: float | None = None,
            max_size: str | None = None, allocate: str = "uniform", calibration: Path | None = None,
            base_model: Path | None = None, calibration_tokens: int = 512, save_calibration: Path | None = None,
            device: str = "cpu", finetune_steps: int | str | None = None, finetune_data: Path | None = None,
            finetune_lr: float = FINETUNE_DEFAULTS.LR, finetune_device: str = "auto",
            drop_unselected: bool = False, dtype: str = "auto", rank: int | None = None, optimise: str | None = None,
            target_error: float | None = None, wide: bool = False, dry_run: bool = False,
            baselines: str = "default") -> None:
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
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000 --method waveft-seeded --scaling 25 --seed 777
      wavecompress convert path/to/adapter_model.safetensors --budget 768 --report report.json
      wavecompress convert someone/their-lora --budget 3000 --push-to me/their-lora-waveft-b3000
      wavecompress convert my-dora --base path/to/base-model --budget 3000
      wavecompress convert lora_kohya.safetensors --budget 3000
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000 --include query   # other layers kept exactly
      wavecompress convert --base meta-llama-2-7b/ --tuned my-finetune/ --budget 8192 --include 'self_attn' --drop-unselected
      wavecompress convert fixtures/minilm-bbc-lora --budget-ratio 0.1 --allocate global --method auto
      wavecompress convert my-lora --max-size 2MB --calibration calib.txt --base-model path/to/base
      wavecompress convert fixtures/minilm-bbc-lora --method lora --rank 4
      wavecompress convert fixtures/minilm-bbc-lora --method wara --target-error 0.05
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000 --dry-run
    """
    from ..methods.allocation import budget_spec

    baseline_names(baselines)  # a bad name fails before any work
    if target_error is not None:
        from ..methods.target import validate_target

        given = [o for o, v in (("--budget", budget), ("--budget-total", budget_total), ("--budget-ratio", budget_ratio),
                                ("--max-size", max_size), ("--rank", rank)) if v is not None]
        if given:
            raise InputError(f"give exactly one budget: --target-error or {given[0]}, not both")
        validate_target(target_error)
        spec = None
    else:
        spec = budget_spec(budget, budget_total, budget_ratio, max_size, rank)
    label = budget if budget is not None else spec.label() if spec is not None else f"e{target_error:g}"
    check_method_options(scaling, seed)
    named = tuned if tuned is not None else input_path
    target = out_dir or (default_output(named, method, label) if named else None)
    check_outputs([input_path, base, tuned, calibration, base_model, finetune_data], target,
                  [("--report", report_path), ("--save-calibration", save_calibration)], force)
    input_path, source = resolve_source(input_path, base, tuned, include, exclude, drop_unselected)
    if dry_run:
        from ..plan import describe_plan

        click.echo(describe_plan(source, spec, target_error, method, wavelet, levels, order_by if reorder else False,
                                 allocate, target))
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
    if target_error is not None:
        from ..targets import compress_to_error

        result = compress_to_error(source, target_error, method, wavelet=wavelet, levels=levels, progress=None,
                                   reorder=order_by if reorder else False, calibration=calib, scaling=scaling, seed=seed,
                                   device=device, dtype=dtype, baselines=baseline_names(baselines))
    else:
        result = compress(source, budget=budget, method=method, wavelet=wavelet, levels=levels, progress=None,
                          reorder=order_by if reorder else False, budget_total=budget_total, budget_ratio=budget_ratio,
                          max_size=max_size, allocate=allocate, calibration=calib, scaling=scaling, seed=seed,
                          device=device, dtype=dtype, rank=rank, baselines=baseline_names(baselines), optimise=optimise)
    report = result.report
    method = report.method
    if not quiet:
        click.echo(report.format_table(wide=wide))
    click.echo(report.verdict())
    if quiet:
        for note in report.notes:
            if note.startswith(("auto:", "target error")):
                click.echo(note)  # why auto chose this method/wavelet; the budget an error target needed
    if finetune_data is not None:
        from .finetune import finetune_converted

        result = finetune_converted(result, finetune_steps, finetune_data, base_model, finetune_lr, finetune_device)
        report = result.report
        click.echo(result.summary())
    result.save(target, force=force)
    if report_path is not None:
        try:
            atomic_write_bytes(report_path, report.dumps().encode("utf-8"))
        except KeyboardInterrupt:
            raise InterruptedAfterWrite(f"{target} was written, --report {report_path} was not") from None
    click.echo(f"wrote {target}" + (f" and {report_path}" if report_path else ""))
    if push_to is not None:
        try:
            click.echo(push_after_save(target, push_to, private=private).describe(target, push_to))
        except KeyboardInterrupt:
            raise InterruptedAfterWrite(f"the push to {push_to} was stopped (nothing is committed until the single "
                                        f"commit lands); the converted adapter is intact at {target}") from None


def resolve_source(input_path: Path | None, base: Path | None, tuned: Path | None, include: tuple[str, ...],
                   exclude: tuple[str, ...], drop_unselected: bool = False) -> tuple[Path, Path | AdapterDeltas]:
    """(the path that names the output, what to compress) from INPUT / --base / --tuned / --include / --exclude."""
    if tuned is not None:
        if input_path is not None:
            raise InputError(f"give either INPUT ({input_path}) or --tuned ({tuned}), not both")
        if base is None:
            raise InputError(f"--tuned {tuned} needs --base: a full fine-tune's delta is W_tuned − W_base")
        return tuned, read_full_finetune(base, tuned, list(include), list(exclude), drop_unselected)
    if input_path is None:
        raise InputError("missing INPUT (an adapter) or --base BASE --tuned TUNED (a full fine-tune)")
    if base is None and not include and not exclude:
        return input_path, input_path
    return input_path, load_deltas(input_path, base=base, include=list(include), exclude=list(exclude),
                                   drop_unselected=drop_unselected)


def calibration_for(source: Path | AdapterDeltas, calibration: Path | None, base_model: Path | None, tokens: int,
                    save_to: Path | None):
    """None, a saved activations file, or second moments collected by running --base-model on a text file."""
    from ..calibration import Calibration, calibrate
    from ..compress import as_adapter_deltas

    if calibration is None:
        if base_model is not None or save_to is not None:
            raise InputError("--base-model and --save-calibration need --calibration (a text file)")
        return None
    if base_model is None:
        return Calibration.load(calibration)
    deltas = as_adapter_deltas(source)
    names = getattr(deltas.layers, "names", None) or [layer.name for layer in deltas.layers]
    collected = calibrate(base_model, calibration, names, max_tokens=tokens)
    if save_to is not None:
        collected.save(save_to)
    return collected


def baseline_names(text: str) -> tuple[str, ...]:
    """``--baselines``: 'default' → every baseline, 'none' → no column, else comma-separated method names."""
    from ..methods import BASELINES, get_method

    text = text.strip().lower()
    if text == "default":
        return BASELINES
    if text in ("none", ""):
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    for name in names:
        get_method(name)  # InputError naming the known methods
    return names
