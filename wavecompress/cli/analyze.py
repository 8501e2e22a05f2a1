"""``wavecompress analyze``: error vs budget for every method and layer group, as a PNG, CSV and JSON."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..methods.options import DEFAULT_REORDER, REORDER_CHOICES
from .common import INPUT_PATH, debug_option, fit_lines, friendly_errors


@click.command()
@click.argument("input_path", metavar="INPUT", type=INPUT_PATH)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for rate_distortion.png, rate_distortion.csv and rate_distortion.json.")
@click.option("--methods", default="waveft,wara,lora,sparse", show_default=True, help="Comma-separated methods to compare.")
@click.option("--wavelet", default="db1", show_default=True, help="Orthogonal wavelet family for waveft and wara.")
@click.option("--levels", type=int, default=None, help="Decomposition depth per axis (default: each method's own).")
@click.option("--reorder/--no-reorder", default=True, show_default=True,
              help="Reorder rows/columns before the transform (waveft, wara); the plain order is plotted beside it.")
@click.option("--order-by", type=click.Choice(REORDER_CHOICES), default=DEFAULT_REORDER, show_default=True,
              help="How to reorder (as in convert): auto, svd, fiedler, greedy, snake or best.")
@click.option("--max-budget", type=int, default=None, help="Largest per-layer budget to evaluate [default: the largest layer's size].")
@click.option("--x", "x_axis", type=click.Choice(["values", "bytes"]), default="values", show_default=True,
              help="x axis: stored values per layer, or stored bytes (each point's size as convert's report counts it: "
              "tensors, indices and permutations, in --dtype).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True,
              help="With --x bytes: the stored precision the sizes (and errors) are measured in, as in convert.")
@click.option("--budget", type=int, default=None, help="Mark this budget (values per layer) on the plot; with --x bytes "
              "each method's marker sits at its own size, and a line under the table prints each method's bytes there.")
@click.option("--max-size", "max_size", default=None, metavar="SIZE",
              help="With --x bytes: mark this adapter size (300kB, 1MB) on the all-layers panel and add it to the table.")
@click.option("--title", default=None, help="Plot title.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@debug_option
@friendly_errors
def analyze(input_path: Path, out_dir: Path, methods: str, wavelet: str, levels: int | None, reorder: bool, order_by: str,
            max_budget: int | None, x_axis: str, dtype: str, budget: int | None, max_size: str | None,
            title: str | None, force: bool, debug: bool) -> None:
    """Plot relative error vs budget (stored values per layer, or --x bytes) for every method and layer group.

    Prints the error of each method at a few budgets and the budget at which each reaches 10%,
    5% and 1% error over all layers; the folder gets the plot, every point as CSV, and JSON.

    \b
    Example:
      wavecompress analyze fixtures/minilm-bbc-lora --out analysis/
      wavecompress analyze fixtures/minilm-bbc-lora --out analysis-svd/ --order-by svd
      wavecompress analyze fixtures/minilm-bbc-lora --out analysis-bytes/ --x bytes \\
          --dtype bfloat16 --budget 3000
      wavecompress analyze fixtures/minilm-bbc-lora --out analysis-300k/ --x bytes --max-size 300kB
    """
    from ..analyze import PNG_NAME, analyze as run_analysis, check_axis, write_analysis
    from ..methods.budget import Budget

    from .guards import check_outputs

    mark = Budget.of(budget, None, None, max_size) if budget is not None or max_size is not None else None
    check_axis(x_axis, dtype, mark)
    check_outputs([input_path], out_dir, force=force)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    if not chosen:
        raise InputError("--methods is empty")
    result = run_analysis(input_path, chosen, wavelet=wavelet, levels=levels, reorder=order_by if reorder else False,
                          max_budget=max_budget, progress=None,  # a bar on a terminal: one step per layer
                          x=x_axis, dtype=dtype, mark=mark)
    layers = len(result.groups["all"])
    if result.bytes is None:
        click.echo(f"relative error over all {layers} layers (budget = stored values per layer):")
    else:
        click.echo(f"relative error over all {layers} layers at a stored size (uniform budgets per layer, {result.dtype}):")
    click.echo(result.format_table())
    if result.bytes is not None and budget is not None:
        sizes = ", ".join(f"{m} {size} B" for m, size in result.sizes_at(budget).items())
        click.echo(fit_lines(f"--budget {budget}: {sizes}"))
    for note in result.notes:
        click.echo(fit_lines(note))
    write_analysis(result, out_dir, force=force, title=title)
    click.echo(f"wrote {out_dir / PNG_NAME} and its CSV/JSON")
