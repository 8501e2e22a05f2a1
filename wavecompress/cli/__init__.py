"""The ``wavecompress`` command line. One module per command; this file only assembles the group.

Commands are imported under an alias (``convert_command``) so ``wavecompress.cli.convert`` stays
the module. Commands parse options, call the library and print; they never choose coefficients or write
files themselves beyond what the library's writers do.
"""

from __future__ import annotations

import signal
import sys

import click

from ..version import __version__
from .analyze import analyze as analyze_command
from .convert import convert as convert_command
from .export import export as export_command
from .inspect import inspect as inspect_command
from .convert_many import convert_many as convert_many_command
from .finetune import finetune as finetune_command
from .push import push as push_command
from .reconstruct import reconstruct as reconstruct_command


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so atomic writers remove their staging folders."""

    def handler(signum: int, frame: object) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    if getattr(signal.getsignal(signal.SIGINT), "__name__", "") == "_wavecompress_startup_interrupt":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # start-up is over: Ctrl-C cleans up as usual


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="wavecompress")
def main() -> None:
    """Compress fine-tuning deltas (LoRA, ...) into wavelet-domain adapters.

    Every conversion reports the truncated-SVD LoRA and weight-domain top-k baselines at the
    same budget, so you can see which representation really wins on your delta.
    """
    exit_cleanly_on_sigterm()


main.add_command(convert_command)
main.add_command(analyze_command)
main.add_command(inspect_command)
main.add_command(export_command)
main.add_command(convert_many_command)
main.add_command(reconstruct_command)
main.add_command(finetune_command)
main.add_command(push_command)

__all__ = ["main"]
