"""``wavecompress reconstruct``: dense ΔW of every layer of any adapter wavecompress reads."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..formats.atomic import atomic_write_bytes
from ..formats.safetensors_writer import deterministic_bytes

# Marks the file as reconstruct's own output, so --force may replace it (and nothing else) on a rerun.
RECONSTRUCT_MARKER = "wavecompress.reconstruct"
from .common import INPUT_PATH, debug_option, friendly_errors


@click.command()
@click.argument("adapter", type=INPUT_PATH)
@click.option("--out", "out_file", type=click.Path(path_type=Path), required=True, help="safetensors file for the dense deltas.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@debug_option
@friendly_errors
def reconstruct(adapter: Path, out_file: Path, force: bool, debug: bool) -> None:
    """Write the dense ΔW of every layer of ADAPTER (one tensor per module name).

    \b
    Example:
      wavecompress reconstruct out/wara --out wara_deltas.safetensors
    """
    from .. import reconstruct as rebuild

    from .guards import check_outputs

    if out_file.exists() and not force:
        raise InputError(f"{out_file}: output already exists (use --force to replace it)")
    check_outputs([adapter], files=[("--out", out_file)], force=True)  # never the input, a folder or an unwritable place
    deltas = rebuild(adapter)
    atomic_write_bytes(out_file, deterministic_bytes(deltas, {RECONSTRUCT_MARKER: "dense_deltas"}), inputs=[adapter], force=force)
    click.echo(f"wrote {len(deltas)} dense deltas to {out_file}")
