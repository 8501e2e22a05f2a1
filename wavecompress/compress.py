"""The public entry point: validate a conversion once, then hand it to the pipeline.

:func:`compress` turns its arguments into a :class:`~wavecompress.pipeline.Job` (the budget as a
:class:`~wavecompress.methods.budget.Budget`, the method options, baselines, calibration, device),
reads the input, and runs the job: :func:`wavecompress.pipeline.convert`, or
:func:`wavecompress.auto_select.choose` for ``method="auto"`` / ``wavelet="auto"``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch

from .auto_select import choose
from .compressed_adapter import CompressedAdapter
from .deltas.in_memory import DeltaSource, as_adapter_deltas
from .errors import InputError
from .methods import BASELINES, MethodOptions, get_method, method_names
from .methods.budget import Budget
from .methods.options import reorder_choice
from .methods.precision import validate_dtype
from .pipeline import Job, convert
from .transforms import validate_wavelet

AUTO = "auto"

__all__ = ["AUTO", "CompressedAdapter", "DeltaSource", "as_adapter_deltas", "compress", "make_job", "reorder_choice"]


def compress(
    source: DeltaSource,
    budget: int | Budget | None = None,
    method: str = "waveft",
    wavelet: str = "db1",
    levels: int | None = None,
    baselines: tuple[str, ...] = BASELINES,
    progress: bool | None = False,
    reorder: bool | str | None = True,
    *,
    budget_total: int | None = None,
    budget_ratio: float | None = None,
    max_size: str | int | None = None,
    allocate: str = "uniform",
    calibration: Any = None,
    scaling: float | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    dtype: str = "auto",
    rank: int | None = None,
    target_error: float | None = None,
    optimise: str | None = None,
    drop_unconvertible: bool = False,
    adapter_name: str | None = None,
    config: Any = None,
    compare_orders: bool | None = None,
) -> CompressedAdapter:
    """Compress every layer of ``source`` to ``budget`` stored values with ``method``.

    Each baseline is computed at the same budget for the report. ``progress=None`` shows a bar
    only on a terminal. ``reorder`` permutes rows and columns before the wavelet transform
    (waveft and wara; True = the default ordering (auto), or one of svd/fiedler/greedy/snake/best,
    False = the model's order); the other ordering is reported beside it as a baseline.

    Budget forms (exactly one): ``budget`` per layer, ``budget_total``, ``budget_ratio`` of the
    input's stored values, ``max_size`` bytes on disk ("2MB"), ``rank`` (each layer the values of a
    rank-``rank`` LoRA of its shape), or ``target_error`` (the smallest globally allocated total whose
    overall relative error is at most it); ``allocate="global"`` splits the
    total across layers by the exact greedy over rate-distortion curves (methods/allocation.py),
    every baseline on its own curves at the same total. ``budget`` may instead be a ready
    :class:`~wavecompress.methods.budget.Budget` (form and allocation together). ``method="auto"`` /
    ``wavelet="auto"`` try the candidates and keep the lowest error. ``calibration`` (a Calibration
    or a saved activations file) switches to activation-aware selection and reports both error
    measures. ``device="cuda"`` runs each layer's arithmetic on the GPU (results come back to the
    CPU; without CUDA it warns and stays on the CPU). ``dtype`` is the stored float precision: auto
    (each layer's input dtype), float32, bfloat16 or float16; errors and bytes are those of the
    rounded tensors. ``optimise`` (auto only): compare candidates at equal ``values`` or equal
    ``bytes`` (default: bytes with ``max_size``, else values; see auto_select.py). Modules whose delta
    cannot be formed from the input (a DoRA module without base weights, a bias difference, an unknown
    tensor) are carried into the output verbatim, or left out with ``drop_unconvertible=True``; the
    report names them either way.
    """
    try:
        job = make_job(budget, method, wavelet, levels, baselines, progress, reorder, budget_total=budget_total,
                       budget_ratio=budget_ratio, max_size=max_size, allocate=allocate, scaling=scaling, seed=seed,
                       device=device, dtype=dtype, rank=rank, target_error=target_error)
    except InputError as exc:  # validation shared with the CLI names flags; a library caller reads keywords
        raise InputError(library_words(str(exc))) from None
    if job.budget.target_error is not None and (method == AUTO or wavelet == AUTO):
        raise InputError("target_error= needs one method= and wavelet= (auto compares methods at one budget)")
    if job.budget.target_error is not None and calibration is not None:
        raise InputError("target_error= sizes by the Frobenius error; it cannot be combined with calibration=")
    job = replace(job, order_variant=bool(baselines) if compare_orders is None else compare_orders)
    deltas = as_adapter_deltas(source, adapter_name=adapter_name, config=config)
    if drop_unconvertible:
        deltas.drop_unconvertible()
    job = replace(job, calibration=load_calibration(calibration))
    if method == AUTO or wavelet == AUTO:
        candidates = method_names(auto=True) if method == AUTO else (method,)
        return choose(deltas, job, candidates, wavelet_auto=wavelet == AUTO, optimise=optimise)
    return convert(deltas, job)


# Options whose shared validation messages name CLI flags (methods/budget.py, methods/precision.py):
# compress() speaks the keyword, the CLI speaks the flag (cli_words turns a library message back).
OPTION_WORDS = ("budget_total", "budget_ratio", "max_size", "target_error", "calibration", "budget", "method", "wavelet",
                "levels", "rank", "dtype", "allocate", "reorder", "baselines")
_FLAG = re.compile(r"--(" + "|".join(w.replace("_", "-") for w in OPTION_WORDS) + r")\b(?: (?=[A-Z]))?")
_KEYWORD = re.compile(r"\b(" + "|".join(OPTION_WORDS) + r")=((?=[A-Z]))?")


def library_words(message: str) -> str:
    """``message`` with CLI flags as keyword arguments: "--budget-total N" → "budget_total=N"."""
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_") + "=", message)


def cli_words(message: str) -> str:
    """The inverse of :func:`library_words`, for the CLI: "budget_total=N" → "--budget-total N"."""
    return _KEYWORD.sub(lambda m: "--" + m.group(1).replace("_", "-") + (" " if m.group(2) is not None else ""), message)


def make_job(budget: int | Budget | None, method: str, wavelet: str = "db1", levels: int | None = None,
             baselines: tuple[str, ...] = BASELINES, progress: bool | None = False, reorder: bool | str | None = True,
             *, budget_total: int | None = None, budget_ratio: float | None = None, max_size: str | int | None = None,
             allocate: str = "uniform", scaling: float | None = None, seed: int | None = None,
             device: str | torch.device | None = None, dtype: str = "auto", rank: int | None = None,
             target_error: float | None = None) -> Job:
    """A validated :class:`Job` (no calibration yet): every option error is raised here, before any work."""
    dtype = validate_dtype(dtype)
    if isinstance(budget, Budget):
        extra = [name for name, value in (("budget_total", budget_total), ("budget_ratio", budget_ratio),
                                          ("max_size", max_size), ("rank", rank), ("target_error", target_error))
                 if value is not None]
        if extra:
            raise InputError(f"give either a Budget or {', '.join(extra)}, not both")
        spec = budget
    else:
        spec = Budget.of(budget, budget_total, budget_ratio, max_size, allocate, rank=rank, target_error=target_error)
    # The name is resolved here, once; for "auto" choose() (auto_select.py) sets each candidate in turn.
    found = get_method(method if method != AUTO else method_names(auto=True)[0])
    for name in baselines:
        get_method(name)
    options = MethodOptions(wavelet=wavelet if wavelet == AUTO else validate_wavelet(wavelet), levels=levels,
                            reorder=reorder_choice(reorder), scaling=scaling, seed=seed, dtype=dtype)
    if levels is not None and levels < 0:
        raise InputError(f"levels must be >= 0, got {levels}")
    return Job(method=found, budget=spec, options=options, baselines=tuple(baselines), device=device, progress=progress)


def load_calibration(calibration: Any) -> Any:
    """None, a Calibration, or a path to a saved activations file (read lazily, one Gram at a time)."""
    if calibration is None:
        return None
    from .calibration import Calibration

    return calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)
