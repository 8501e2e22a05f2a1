"""``wavecompress convert``: one adapter in, a budgeted adapter and its report out."""

from __future__ import annotations

from pathlib import Path

import click

from ..compress import compress
from ..errors import InputError
from ..formats.atomic import atomic_write_bytes
from ..methods.options import DEFAULT_LEVELS, DEFAULT_LEVELS_REORDERED, DEFAULT_REORDER, REORDER_CHOICES
from .common import debug_option, default_output, friendly_errors

OUTPUT_METHODS = ["waveft", "wara", "lora"]


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--budget", type=int, required=True, help="Stored trainable values per layer (PEFT's n_frequency meaning).")
@click.option("--method", type=click.Choice(OUTPUT_METHODS), default="waveft", show_default=True,
              help="waveft: top-k wavelet coefficients; wara: low-rank wavelet subbands; lora: truncated SVD.")
@click.option("--wavelet", default="db1", show_default=True, help="Orthogonal wavelet family (db1 = Haar, dbN, symN, coifN).")
@click.option("--levels", type=int, default=None,
              help=f"Decomposition depth per axis (default: {DEFAULT_LEVELS['waveft']} for waveft, {DEFAULT_LEVELS['wara']} for wara; "
              f"{DEFAULT_LEVELS_REORDERED['waveft']} and {DEFAULT_LEVELS_REORDERED['wara']} when reordered); "
              "reduced per axis until the size divides by 2^levels.")
@click.option("--reorder/--no-reorder", default=True, show_default=True,
              help="Permute rows and columns into a smooth order (from the delta) before the wavelet transform "
              "(waveft, wara; stored as int16/int32 permutations). The other ordering is always reported beside it.")
@click.option("--order-by", type=click.Choice(REORDER_CHOICES), default=DEFAULT_REORDER, show_default=True,
              help="How to reorder: svd (leading singular vectors), fiedler (spectral), greedy (nearest neighbour), "
              "best (try each per layer, keep the lowest error).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: ./<input>-<method>-b<budget>].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON here.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", is_flag=True, help="Print only the overall line.")
@debug_option
@friendly_errors
def convert(input_path: Path, budget: int, method: str, wavelet: str, levels: int | None, out_dir: Path | None,
            report_path: Path | None, force: bool, quiet: bool, debug: bool, reorder: bool = True,
            order_by: str = DEFAULT_REORDER) -> None:
    """Convert an adapter into a budgeted wavelet (or LoRA) adapter and report the error.

    INPUT is a PEFT LoRA folder, or its adapter_model.safetensors with adapter_config.json beside
    it, or a folder written by wavecompress.

    \b
    Examples:
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000
      wavecompress convert fixtures/minilm-bbc-lora --budget 3000 --method wara --out out/wara
      wavecompress convert path/to/adapter_model.safetensors --budget 768 --report report.json
    """
    target = out_dir or default_output(input_path, method, budget)
    if target.exists() and not force:
        raise InputError(f"{target}: output already exists (use --force to replace it)")
    result = compress(input_path, budget=budget, method=method, wavelet=wavelet, levels=levels, progress=None,
                      reorder=order_by if reorder else False)
    report = result.report
    if not quiet:
        click.echo(report.format_table())
    totals = report.overall()
    chosen = totals[method]
    line = f"{method}: {chosen.stored_values} values, relative error {chosen.relative_error:.4f}"
    line += "".join(f"; {name}: {s.relative_error:.4f}" for name, s in totals.items() if name != method)
    click.echo(line)
    result.save(target, force=force)
    if report_path is not None:
        atomic_write_bytes(report_path, report.dumps().encode("utf-8"))
    click.echo(f"wrote {target}" + (f" and {report_path}" if report_path else ""))
