"""``--method auto`` and ``--wavelet auto``: compress with each candidate, keep the lowest error, say why.

The criterion is the overall relative error of the output method (the activation-weighted one
when calibration data is given), each candidate at the same budget form and allocation. Wavelet
candidates are the orthogonal families PEFT also knows whose filters fit the layers' coarsest
bands (a filter longer than the band it splits only wraps around).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pywt

from .compressed_adapter import CompressedAdapter
from .deltas import AdapterDeltas
from .errors import InputError
from .methods.allocation import layer_shapes
from .methods.budget import Budget
from .methods.options import MethodOptions
from .methods.registry import get_method
from .pipeline import Job, convert
from .transforms import axis_levels

WAVELET_FAMILIES = ("db1", "db2", "db3", "db4", "sym4", "coif1", "coif2")
OPTIMISE_CHOICES = ("values", "bytes")


def fitting_wavelets(shapes: list[tuple[int, int]], levels: int | None, method: str) -> list[str]:
    """Families whose decomposition filter is no longer than the shortest band they split."""
    depth = MethodOptions(levels=levels).levels_for(method)
    shortest = None
    for shape in shapes:
        for n in shape:
            level = axis_levels(n, depth)
            if level:
                band = n >> (level - 1)
                shortest = band if shortest is None else min(shortest, band)
    if shortest is None:
        return ["db1"]
    return [w for w in WAVELET_FAMILIES if pywt.Wavelet(w).dec_len <= shortest]


def score(result: Any) -> float:
    """Overall error of the output method: activation-weighted when present, else Frobenius."""
    totals = result.report.overall()[result.report.method]
    weighted = totals.activation_relative_error
    return weighted if weighted is not None else totals.relative_error


def file_size(result: Any, deltas: Any) -> int:
    """Bytes of the adapter_model.safetensors ``result`` would write."""
    from .formats.adapter_writer import serialized_weights

    return len(serialized_weights(result.layers, deltas, result.report.method, result.report.budget))


def choose(deltas: AdapterDeltas, job: Job, methods: tuple[str, ...], wavelet_auto: bool,
           optimise: str | None = None) -> CompressedAdapter:
    """Convert with every (method, wavelet) candidate, return the best full result with a note on the choice.

    ``methods``: the candidate methods (every ``auto`` method for ``--method auto``); ``wavelet_auto``:
    try each fitting family for wavelet methods (``job.options.wavelet`` otherwise). ``optimise="values"``
    compares the candidates at the job's value budget; ``"bytes"`` at equal file size: the job's
    ``max_bytes`` when given, else the smallest file any candidate that stores something writes at the
    value budget (every candidate then refitted to that size). Default: bytes with a size budget, else values.
    """
    by_size = job.budget.max_bytes is not None
    optimise = optimise or ("bytes" if by_size else "values")
    if optimise not in OPTIMISE_CHOICES:
        raise InputError(f"unknown --optimise {optimise!r}; choose one of {', '.join(OPTIMISE_CHOICES)}")
    if optimise == "values" and by_size:
        raise InputError("--optimise values compares at a value budget; --max-size is a byte budget (use --optimise bytes "
                         "or --budget/--budget-total/--budget-ratio)")
    shapes = list(layer_shapes(deltas.layers).values())
    levels = job.options.levels
    trials: list[tuple[float, str, str]] = []
    trial_sizes: dict[tuple[str, str], int] = {}
    empty: set[tuple[str, str]] = set()  # candidates that store nothing at the value budget (LoRA below rank 1)
    for name in methods:
        families = fitting_wavelets(shapes, levels, name) if wavelet_auto and get_method(name).wavelet else [
            "db1" if wavelet_auto else job.options.wavelet]
        for family in families:
            trial = convert(deltas, _candidate(job, name, family, baselines=(), progress=False))
            trials.append((score(trial), name, family))
            trial_sizes[(name, family)] = file_size(trial, deltas)
            if not trial.report.overall()[name].stored_values:
                empty.add((name, family))
    where = "at this budget" if optimise == "values" or by_size else ""
    jobs = {(name, family): job for _, name, family in trials}
    if optimise == "bytes" and not by_size:
        size = min(v for k, v in trial_sizes.items() if k not in empty or len(empty) == len(trial_sizes))
        sized = replace(job, budget=Budget(max_bytes=size, allocate=job.budget.allocate))
        refitted = []
        for error, name, family in trials:
            try:
                refitted.append((score(convert(deltas, _candidate(sized, name, family, baselines=(), progress=False))),
                                 name, family))
                jobs[name, family] = sized
            except InputError:  # the size estimate leaves no room for it (permutations, header)
                fits = trial_sizes[(name, family)] <= size  # e.g. the smallest candidate: its own file is that size
                refitted.append((error if fits else float("inf"), name, family))
        trials = refitted
        where = f"at equal bytes ({size} B, the smallest candidate file at the value budget)"
    best_error, best_method, best_wavelet = min(trials)
    job = jobs[best_method, best_wavelet]
    result = convert(deltas, _candidate(job, best_method, best_wavelet))
    measure = "activation-weighted" if result.report.overall()[best_method].activation_relative_error is not None else "relative"
    several = len({t[2] for t in trials}) > 1
    tried = ", ".join((f"{m}/{w}" if several and get_method(m).wavelet else m) + (f" {e:.4f}" if e != float("inf") else " does not fit")
                      for e, m, w in sorted(trials))
    choice = best_method + (f" with {best_wavelet}" if get_method(best_method).wavelet else "")
    if optimise == "bytes" and not where.startswith("at equal"):
        where = f"at equal bytes ({job.budget.size_text or job.budget.max_bytes})"
    result.report.notes.append(f"auto: chose {choice}, the lowest overall {measure} error {where} (optimised {optimise}: {tried})")
    return result


def _candidate(job: Job, method: str, wavelet: str, **changes: Any) -> Job:
    """``job`` with ``method`` and ``wavelet`` (and any other field in ``changes``)."""
    return replace(job, method=get_method(method), options=replace(job.options, wavelet=wavelet), **changes)
