"""``wavecompress convert-many``: every adapter of a folder (or glob) in one command, resumable."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from ..batch import (BACKENDS, InputOptions, ItemResult, available_cores, check_batch_outputs, exit_code, find_inputs, format_summary,
                     plan, run_batch)
from ..formats.atomic import atomic_write_bytes
from ..hardware import cuda_fallback_note
from .common import debug_option, friendly_errors
from .guards import check_method_options
from .options import budget_of, budget_options, calibration_options, input_options, method_kwargs, method_options, run_options


def _progress(result: ItemResult) -> None:
    name = Path(result.source).name
    if result.status == "failed":
        click.echo(f"failed {name} (reason below)", err=True)
    elif result.status == "converted":
        click.echo(f"converted {name} -> {result.target} ({result.seconds:.1f} s)")


@click.command("convert-many")
@click.argument("inputs", metavar="INPUT_DIR_OR_GLOB")
@budget_options
@method_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for the outputs: one folder per input, named as convert names it (<input>-<method>-<budget label>).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="Also write the batch results (per input: status, output, errors, seconds) as JSON here.")
@click.option("--force", is_flag=True, help="Convert again even where a complete output exists (replacing it).")
@input_options
@calibration_options
@run_options
@click.option("--jobs", type=int, default=None, help=f"Adapters converted at once [default: the cores, here {available_cores()}].")
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True,
              help="local: a process pool on this machine; ray: one Ray task per adapter (RAY_ADDRESS joins a "
              "cluster, otherwise a local Ray instance; the outputs folder must be shared by the nodes).")
@debug_option
@friendly_errors
def convert_many(inputs: str, out_dir: Path, report_path: Path | None, force: bool, jobs: int | None, backend: str,
                 debug: bool, **options: Any) -> None:
    """Convert every adapter in INPUT_DIR_OR_GLOB into OUT_DIR, skipping those already done.

    INPUT_DIR_OR_GLOB is a folder of adapter folders (and/or .safetensors files), or a quoted glob.
    Every option means what it means for `wavecompress convert`, applied to each input. A rerun after
    a crash converts only what is missing. Each failed input is named in one line; the exit code is
    0 if all converted, 2 if any input was bad, 1 on an internal error.

    \b
    Examples:
      wavecompress convert-many adapters/ --out converted/ --budget 3000
      wavecompress convert-many 'runs/*/final' --out converted/ --budget 3000 --method wara --jobs 4
      wavecompress convert-many doras/ --out converted/ --budget 3000 --base path/to/base-model --include 'attn'
      RAY_ADDRESS=auto wavecompress convert-many /shared/adapters --out /shared/out --budget 3000 --backend ray
    """
    spec = budget_of(options)
    kwargs = method_kwargs(options)
    check_method_options(kwargs["scaling"], kwargs["seed"])
    quiet, device = options.pop("quiet"), options.pop("device")
    read = InputOptions(base=options.pop("base"), include=tuple(options.pop("include")), exclude=tuple(options.pop("exclude")),
                        drop_unselected=options.pop("drop_unselected"), drop_unconvertible=options.pop("drop_unconvertible"),
                        allow_nonfinite=options.pop("allow_nonfinite"), calibration=options.pop("calibration"),
                        base_model=options.pop("base_model"), calibration_tokens=options.pop("calibration_tokens"))
    if options:  # an option added to a shared group (cli/options.py) but not handed on here would be ignored silently
        raise RuntimeError(f"convert-many does not pass on {', '.join(sorted(options))}")
    if read.base_model is not None and read.calibration is None:
        from ..errors import InputError

        raise InputError("--base-model needs --calibration (a text file)")
    items = plan(find_inputs(inputs), out_dir, kwargs["method"], spec)
    read_paths = [read.base, read.calibration, read.base_model]
    check_batch_outputs(items, read_paths, out_dir, report_path, force)  # before any conversion
    if (note := cuda_fallback_note(device)) is not None:
        click.echo(note, err=True)
        device = "cpu"
    results = run_batch(items, {"budget": spec, "device": device, **kwargs}, jobs=jobs, backend=backend, force=force,
                        report=(lambda result: None) if quiet else _progress, inputs=read)
    click.echo(format_summary(results, kwargs["method"]))
    if report_path is not None:
        atomic_write_bytes(report_path, (json.dumps([asdict(r) for r in results], indent=1) + "\n").encode("utf-8"),
                           inputs=[item.source for item in items] + read_paths, force=force, option="--report")
        click.echo(f"wrote {report_path}")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        click.echo(f"failed: {Path(r.source).name}: {r.message}", err=True)
    if failed:
        sys.exit(exit_code(results))
