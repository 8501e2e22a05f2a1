"""``wavecompress export``: any adapter wavecompress reads, back to a plain PEFT LoRA."""

from __future__ import annotations

from pathlib import Path

import click

from ..report import format_bytes
from .common import INPUT_PATH, debug_option, fit_lines, friendly_errors


@click.command()
@click.argument("adapter", type=INPUT_PATH)
@click.option("--to", "target_format", type=click.Choice(["lora"]), default="lora", show_default=True,
              help="Output format (plain PEFT LoRA, loadable without wavecompress).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder (with --layout kohya, a path ending in .safetensors is written as that one file).")
@click.option("--layout", type=click.Choice(["auto", "peft", "kohya", "diffusers"]), default="auto", show_default=True,
              help="peft: a PEFT folder; kohya: sd-scripts' single file (lora_unet_*, ComfyUI, A1111, diffusers' "
              "load_lora_weights); diffusers: pytorch_lora_weights.safetensors; auto: the input's own layout.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True,
              help="Stored precision of the factors (auto: the input's).")
@click.option("--max-error", "max_error", type=float, default=0.01, show_default=True,
              help="Smallest ranks whose overall relative error vs ADAPTER is at most this (global allocation of singular "
              "values, so no rank is bigger than the error needs); 0 = each layer's numerical rank (lossless).")
@click.option("--rank", type=int, default=None,
              help="Instead: cap every layer's rank at this (error reported).")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Base model weights, for inputs that need them (DoRA, stock PEFT WaveFT without stored shapes).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@debug_option
@friendly_errors
def export(adapter: Path, target_format: str, out_dir: Path, rank: int | None, base: Path | None, force: bool,
           debug: bool, max_error: float = 0.01, layout: str = "auto", dtype: str = "auto") -> None:
    """Export ADAPTER (a wavecompress output or any adapter it reads) as a plain PEFT LoRA.

    \b
    Examples:
      wavecompress export out/wara --to lora --out out/wara-as-lora      # error ≤ 1% vs out/wara
      wavecompress export out/wara --to lora --max-error 0 --out out/wara-lossless   # numerical ranks
      wavecompress export out/waveft --to lora --rank 16 --out out/waveft-r16
      wavecompress export out/sd-wara --to lora --layout kohya --out sd-wara-lora.safetensors
    """
    from ..deltas import load_deltas
    from ..export import export_lora

    from .guards import check_outputs

    check_outputs([adapter, base], out_dir, force=force)
    deltas = load_deltas(adapter, base=base) if base is not None else load_deltas(adapter)
    report = export_lora(deltas, out_dir, rank=rank, force=force, max_error=max_error, layout=layout, dtype=dtype)
    overall = report.overall()["lora"]
    ranks = [row.result.detail.get("rank", 0) for row in report.layers]
    size = sum(f.stat().st_size for f in ([out_dir] if out_dir.is_file() else out_dir.glob("*.safetensors")))
    input_size = _weights_size(adapter)
    click.echo(fit_lines(f"lora: {len(ranks)} layers, ranks {min(ranks)}–{max(ranks)}, {overall.stored_values} values, "
                         f"{format_bytes(size)} on disk" + (f" (input {format_bytes(input_size)})" if input_size else "")
                         + f", relative error {overall.relative_error:.2e} vs {adapter}"))
    for note in report.notes:
        click.echo(fit_lines(note))
    click.echo(f"wrote {out_dir}")


def _weights_size(adapter: Path) -> int | None:
    """Bytes of the input's weights file, when it is a local folder or file."""
    weights = adapter / "adapter_model.safetensors" if adapter.is_dir() else adapter
    return weights.stat().st_size if weights.is_file() else None
