"""``wavecompress export``: any adapter wavecompress reads, back to a plain PEFT LoRA."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .common import debug_option, friendly_errors


@click.command()
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--to", "target_format", type=click.Choice(["lora"]), default="lora", show_default=True,
              help="Output format (plain PEFT LoRA, loadable without wavecompress).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--rank", type=int, default=None,
              help="Cap every layer's rank (smaller file, error reported); default: each layer's numerical rank (lossless).")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Base model weights, for inputs that need them (DoRA, stock PEFT WaveFT without stored shapes).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@debug_option
@friendly_errors
def export(adapter: Path, target_format: str, out_dir: Path, rank: int | None, base: Path | None, force: bool,
           debug: bool) -> None:
    """Export ADAPTER (a wavecompress output or any adapter it reads) as a plain PEFT LoRA.

    \b
    Examples:
      wavecompress export out/wara --to lora --out out/wara-as-lora
      wavecompress export out/waveft --to lora --rank 16 --out out/waveft-r16
    """
    from ..deltas import load_deltas
    from ..export import export_lora

    if out_dir.exists() and not force:
        raise InputError(f"{out_dir}: output already exists (use --force to replace it)")
    deltas = load_deltas(adapter, base=base) if base is not None else load_deltas(adapter)
    report = export_lora(deltas, out_dir, rank=rank, force=force)
    overall = report.overall()["lora"]
    ranks = [row.result.detail.get("rank", 0) for row in report.layers]
    click.echo(f"lora: {len(ranks)} layers, ranks {min(ranks)}–{max(ranks)}, {overall.stored_values} values, "
               f"relative error {overall.relative_error:.2e} to {adapter}")
    click.echo(f"wrote {out_dir}")
