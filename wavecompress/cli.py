"""The ``wavecompress`` command line: parse options, call the library, print the report."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .compress import compress
from .errors import InputError, WavecompressError
from .formats.atomic import atomic_write_bytes
from .methods.options import DEFAULT_LEVELS

OUTPUT_METHODS = ["waveft", "wara", "lora"]


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """One-line errors: exit 2 for bad input, 1 for internal errors, a traceback only with --debug."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except WavecompressError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if debug:
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)

    return wrapper


def default_output(input_path: Path, method: str, budget: int) -> Path:
    """./<input name>-<method>-b<budget>, named after the adapter folder (not its weights file)."""
    stem = input_path.parent.name if input_path.suffix == ".safetensors" else input_path.name
    return Path(f"{stem or 'adapter'}-{method}-b{budget}")


debug_option = click.option("--debug", is_flag=True, help="Show the full traceback on errors.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="wavecompress")
def main() -> None:
    """Compress fine-tuning deltas (LoRA, ...) into wavelet-domain adapters.

    Every conversion reports the truncated-SVD LoRA and weight-domain top-k baselines at the
    same budget, so you can see which representation really wins on your delta.
    """


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--budget", type=int, required=True, help="Stored trainable values per layer (PEFT's n_frequency meaning).")
@click.option("--method", type=click.Choice(OUTPUT_METHODS), default="waveft", show_default=True,
              help="waveft: top-k wavelet coefficients; wara: low-rank wavelet subbands; lora: truncated SVD.")
@click.option("--wavelet", default="db1", show_default=True, help="Orthogonal wavelet family (db1 = Haar, dbN, symN, coifN).")
@click.option("--levels", type=int, default=None,
              help=f"Decomposition depth per axis (default: {DEFAULT_LEVELS['waveft']} for waveft, {DEFAULT_LEVELS['wara']} for wara); "
              "reduced per axis until the size divides by 2^levels.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: ./<input>-<method>-b<budget>].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON here.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", is_flag=True, help="Print only the overall line.")
@debug_option
@friendly_errors
def convert(input_path: Path, budget: int, method: str, wavelet: str, levels: int | None, out_dir: Path | None,
            report_path: Path | None, force: bool, quiet: bool, debug: bool) -> None:
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
    result = compress(input_path, budget=budget, method=method, wavelet=wavelet, levels=levels, progress=None)
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


@main.command()
@click.argument("adapter", type=click.Path(path_type=Path))
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
    from safetensors.torch import save as save_bytes

    from . import reconstruct as rebuild

    if out_file.exists() and not force:
        raise InputError(f"{out_file}: output already exists (use --force to replace it)")
    deltas = rebuild(adapter)
    atomic_write_bytes(out_file, save_bytes({k: v.contiguous() for k, v in sorted(deltas.items())}))
    click.echo(f"wrote {len(deltas)} dense deltas to {out_file}")


if __name__ == "__main__":
    main()
