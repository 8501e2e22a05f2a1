"""``wavecompress convert-many``: every adapter of a folder (or glob) in one command, resumable."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..batch import BACKENDS, ItemResult, available_cores, exit_code, find_inputs, format_summary, plan, run_batch
from ..hardware import cuda_fallback_note
from ..methods.options import DEFAULT_REORDER, REORDER_CHOICES
from .common import MethodChoice, debug_option, friendly_errors, method_help
from .guards import check_method_options


def _progress(result: ItemResult) -> None:
    name = Path(result.source).name
    if result.status == "failed":
        click.echo(f"failed {name} (reason below)", err=True)
    elif result.status == "converted":
        click.echo(f"converted {name} -> {result.target} ({result.seconds:.1f} s)")


@click.command("convert-many")
@click.argument("inputs", metavar="INPUT_DIR_OR_GLOB")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for the outputs: one <input>-<method>-<budget> folder per input.")
@click.option("--budget", type=int, default=None, help="Stored trainable values per layer (PEFT's n_frequency meaning).")
@click.option("--budget-total", "budget_total", type=int, default=None, help="Or: stored values for each whole adapter.")
@click.option("--budget-ratio", "budget_ratio", type=float, default=None,
              help="Or: a fraction of each input adapter's stored values (0.25 = a quarter).")
@click.option("--max-size", "max_size", default=None, metavar="SIZE",
              help="Or: each adapter_model.safetensors at most this big (2MB, 500kB, 1MiB), indices included.")
@click.option("--allocate", type=click.Choice(["uniform", "global"]), default="uniform", show_default=True,
              help="uniform: the same budget in every layer; global: split the total by error removed per stored value.")
@click.option("--method", type=MethodChoice(), default="waveft", show_default=True,
              help=method_help())
@click.option("--wavelet", default="db1", show_default=True, help="Orthogonal wavelet family (db1 = Haar, dbN, symN, coifN) or auto.")
@click.option("--levels", type=int, default=None, help="Decomposition depth per axis (as in convert).")
@click.option("--reorder/--no-reorder", default=True, show_default=True,
              help="Permute rows and columns into a smooth order before the wavelet transform (as in convert).")
@click.option("--order-by", type=click.Choice(REORDER_CHOICES), default=DEFAULT_REORDER, show_default=True,
              help="How to reorder (as in convert).")
@click.option("--scaling", type=float, default=None, help="waveft-seeded: PEFT WaveFT's scaling.")
@click.option("--seed", type=int, default=None, help="waveft-seeded: PEFT WaveFT's random_loc_seed.")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda / cuda:N (CPU fallback with a note).")
@click.option("--jobs", type=int, default=None, help=f"Adapters converted at once [default: the cores, here {available_cores()}].")
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True,
              help="local: a process pool on this machine; ray: one Ray task per adapter (RAY_ADDRESS joins a "
              "cluster, otherwise a local Ray instance; the outputs folder must be shared by the nodes).")
@click.option("--force", is_flag=True, help="Convert again even where a complete output exists (replacing it).")
@debug_option
@friendly_errors
def convert_many(inputs: str, out_dir: Path, budget: int | None, budget_total: int | None, budget_ratio: float | None,
                 max_size: str | None, allocate: str, method: str, wavelet: str, levels: int | None, reorder: bool,
                 order_by: str, scaling: float | None, seed: int | None, device: str, jobs: int | None, backend: str,
                 force: bool, debug: bool) -> None:
    """Convert every adapter in INPUT_DIR_OR_GLOB into OUT_DIR, skipping those already done.

    INPUT_DIR_OR_GLOB is a folder of adapter folders (and/or .safetensors files), or a quoted glob.
    A rerun after a crash converts only what is missing. Each failed input is named in one line;
    the exit code is 0 if all converted, 2 if any input was bad, 1 on an internal error.

    \b
    Examples:
      wavecompress convert-many adapters/ --out converted/ --budget 3000
      wavecompress convert-many 'runs/*/final' --out converted/ --budget 3000 --method wara --jobs 4
      RAY_ADDRESS=auto wavecompress convert-many /shared/adapters --out /shared/out --budget 3000 --backend ray
    """
    from ..methods.allocation import budget_spec

    spec = budget_spec(budget, budget_total, budget_ratio, max_size)
    check_method_options(scaling, seed)
    items = plan(find_inputs(inputs), out_dir, method, spec.label())
    if (note := cuda_fallback_note(device)) is not None:
        click.echo(note, err=True)
        device = "cpu"
    options = dict(budget=budget, budget_total=budget_total, budget_ratio=budget_ratio, max_size=max_size,
                   allocate=allocate, method=method, wavelet=wavelet, levels=levels,
                   reorder=order_by if reorder else False, scaling=scaling, seed=seed, device=device)
    results = run_batch(items, options, jobs=jobs, backend=backend, force=force, report=_progress)
    click.echo(format_summary(results, method))
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        click.echo(f"failed: {Path(r.source).name}: {r.message}", err=True)
    if failed:
        sys.exit(exit_code(results))
