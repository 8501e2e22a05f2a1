"""Click option groups shared by ``convert`` and ``convert-many``, so both accept the same options
with the same meaning, and the helpers that turn them into library objects (a Budget, compress
keyword arguments).

A command takes a group with ``@budget_options`` etc.; a new option that makes sense per input
goes into a group here, and ``tests/test_convert_many.py`` checks the two commands still agree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..methods.budget import ALLOCATIONS, Budget
from ..methods.options import DEFAULT_REORDER, REORDER_CHOICES
from .common import MethodChoice, levels_help, method_help

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def group(*options: Decorator) -> Decorator:
    """Several click options as one decorator (listed in ``--help`` in the order given)."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


budget_options = group(
    click.option("--budget", type=int, default=None, help="Stored trainable values per layer (PEFT's n_frequency meaning)."),
    click.option("--budget-total", "budget_total", type=int, default=None, help="Or: stored values for the whole adapter."),
    click.option("--budget-ratio", "budget_ratio", type=float, default=None,
                 help="Or: a fraction of the input adapter's stored values (0.25 = a quarter)."),
    click.option("--max-size", "max_size", default=None, metavar="SIZE",
                 help="Or: adapter_model.safetensors at most this big (2MB, 500kB, 1MiB), indices included."),
    click.option("--rank", type=int, default=None,
                 help="Or: every layer gets what a rank-R LoRA of its shape stores, R·(d_out+d_in) values "
                 "(with --method lora: truncated SVD at rank R, like kohya's --network_dim)."),
    click.option("--target-error", "target_error", type=float, default=None, metavar="E",
                 help="Or: the smallest adapter whose overall relative error is at most E (0.05 = 5%), sized by global "
                 "allocation; the report gives the budget it needed."),
    click.option("--allocate", type=click.Choice(ALLOCATIONS), default="uniform", show_default=True,
                 help="uniform: the same budget in every layer; global: split the total by error removed per stored value "
                 "(exact greedy over each layer's rate-distortion curve)."),
)

method_options = group(
    click.option("--method", type=MethodChoice(), default="waveft", show_default=True, help=method_help()),
    click.option("--wavelet", default="db1", show_default=True,
                 help="Orthogonal wavelet family (db1 = Haar, dbN, symN, coifN), or auto (try those that fit the shapes)."),
    click.option("--levels", type=int, default=None, help=levels_help()),
    click.option("--reorder/--no-reorder", default=True, show_default=True,
                 help="Permute rows and columns into a smooth order (from the delta) before the wavelet transform "
                 "(waveft, wara; stored as int16/int32 permutations). The other ordering is always reported beside it."),
    click.option("--order-by", type=click.Choice(REORDER_CHOICES), default=DEFAULT_REORDER, show_default=True,
                 help="How to reorder: auto (greedy and snake, the lower error per layer; snake alone when a side is above "
                 "2048), snake (boustrophedon through 3 feature axes), svd (leading singular vectors), fiedler (spectral), "
                 "greedy (nearest-neighbour chain, O(n²): sides above 8192 use snake), best (try each, keep the lowest error)."),
    click.option("--baselines", "baselines", default="default", show_default=True, metavar="LIST",
                 help="Report columns computed beside the method at the same budget: comma-separated methods (lora, sparse), "
                 "none, or default (every baseline). The sparse column forms each dense ΔW: leave it out to save time on big layers."),
    click.option("--optimise", "optimise", type=click.Choice(["values", "bytes"]), default=None,
                 help="--method auto: compare the candidates at equal trainable values or at equal file size "
                 "[default: bytes with --max-size, else values]."),
    click.option("--dtype", "dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                 show_default=True, help="Precision of the stored values: auto keeps each layer's input dtype (a bf16 LoRA "
                 "gives bf16 files). Errors are measured from the rounded values; byte budgets count them."),
    click.option("--scaling", type=float, default=None,
                 help="waveft-seeded: PEFT WaveFT's scaling; values are fitted to ΔW/scaling [default: 25.0, PEFT's]."),
    click.option("--seed", type=int, default=None,
                 help="waveft-seeded: PEFT WaveFT's random_loc_seed, which fixes the coefficient locations [default: 777]."),
)

input_options = group(
    click.option("--base", "base", type=click.Path(path_type=Path), default=None,
                 help="Base model weights (safetensors file, sharded folder or model folder): needed for DoRA inputs, "
                 "and with --tuned (or a model checkpoint as INPUT) for a full fine-tune ΔW = W_tuned − W_base."),
    click.option("--include", "include", multiple=True, metavar="REGEX",
                 help="Convert only layers whose name matches this regex (repeatable); the others are kept exactly as they "
                 "came (listed in the report), unless --drop-unselected."),
    click.option("--exclude", "exclude", multiple=True, metavar="REGEX",
                 help="Do not convert layers whose name matches this regex (repeatable); they are kept exactly, unless "
                 "--drop-unselected."),
    click.option("--drop-unselected", "drop_unselected", is_flag=True,
                 help="Drop the layers --include/--exclude leave out instead of keeping them (their updates are lost; "
                 "listed as skipped). Required for full fine-tunes and --method waveft-seeded."),
    click.option("--drop-unconvertible", "drop_unconvertible", is_flag=True,
                 help="Leave out modules whose delta cannot be formed from the input (a DoRA module without base weights, "
                 "a bias difference, an unknown tensor) instead of carrying them into the output verbatim; the report "
                 "names them either way."),
    click.option("--allow-nonfinite", "allow_nonfinite", is_flag=True,
                 help="Skip LoRA layers whose factors hold NaN/Inf (listed as skipped) instead of refusing the input."),
)

calibration_options = group(
    click.option("--calibration", "calibration", type=click.Path(path_type=Path), default=None,
                 help="Activation-aware mode: a text file (with --base-model) or a saved activations .safetensors file; "
                 "minimises the error on the layers' inputs and reports both error measures."),
    click.option("--base-model", "base_model", type=click.Path(path_type=Path), default=None,
                 help="Local transformers model folder to run on the --calibration text."),
    click.option("--calibration-tokens", "calibration_tokens", type=int, default=512, show_default=True,
                 help="Tokens of calibration text to run."),
)

run_options = group(
    click.option("--device", default="cpu", show_default=True,
                 help="Where to compute: cpu, or cuda / cuda:N (falls back to the CPU with a note when CUDA is missing)."),
    click.option("--quiet", is_flag=True, help="Print only the overall line(s)."),
)


def budget_of(kwargs: dict[str, Any]) -> Budget:
    """The Budget of a command's budget options (removed from ``kwargs``), validated once."""
    return Budget.of(kwargs.pop("budget"), kwargs.pop("budget_total"), kwargs.pop("budget_ratio"), kwargs.pop("max_size"),
                     kwargs.pop("allocate"), rank=kwargs.pop("rank"), target_error=kwargs.pop("target_error"))


def method_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """:func:`wavecompress.compress` keyword arguments of a command's method options (removed from ``kwargs``)."""
    reorder, order_by = kwargs.pop("reorder"), kwargs.pop("order_by")
    return {"method": kwargs.pop("method"), "wavelet": kwargs.pop("wavelet"), "levels": kwargs.pop("levels"),
            "reorder": order_by if reorder else False, "scaling": kwargs.pop("scaling"), "seed": kwargs.pop("seed"),
            "dtype": kwargs.pop("dtype"), "baselines": baseline_names(kwargs.pop("baselines")),
            "optimise": kwargs.pop("optimise")}


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
