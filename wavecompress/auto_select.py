"""``--method auto`` and ``--wavelet auto``: compress with each candidate, keep the lowest error, say why.

The criterion is the overall relative error of the output method (the activation-weighted one
when calibration data is given), each candidate at the same budget form and allocation. Wavelet
candidates are the orthogonal families PEFT also knows whose filters fit the layers' coarsest
bands (a filter longer than the band it splits only wraps around).
"""

from __future__ import annotations

from typing import Any

import pywt

from .methods.options import MethodOptions
from .methods.registry import get_method, method_names
from .transforms import axis_levels

WAVELET_FAMILIES = ("db1", "db2", "db3", "db4", "sym4", "coif1", "coif2")


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


OPTIMISE_CHOICES = ("values", "bytes")


def file_size(result: Any, deltas: Any) -> int:
    """Bytes of the adapter_model.safetensors ``result`` would write."""
    from .formats.adapter_writer import serialized_weights

    return len(serialized_weights(result.layers, deltas, result.report.method, result.report.budget))


def score(result: Any) -> float:
    """Overall error of the output method: activation-weighted when present, else Frobenius."""
    totals = result.report.overall()[result.report.method]
    weighted = totals.activation_relative_error
    return weighted if weighted is not None else totals.relative_error


def compress_auto(source: Any, budget: int | None, method: str, wavelet: str, levels: int | None, baselines: tuple[str, ...],
                  progress: bool | None, reorder: Any, **budget_kwargs: Any) -> Any:
    """Try every (method, wavelet) candidate, return the best full result with a note on the choice.

    ``optimise="values"`` compares the candidates at the given value budget; ``"bytes"`` at equal
    file size: ``max_size`` when given, else the smallest file any candidate writes at the value
    budget (every candidate then refitted to that size). Default: bytes with ``max_size``, else values.
    """
    from .compress import as_adapter_deltas, compress
    from .errors import InputError

    optimise = budget_kwargs.pop("optimise", None) or ("bytes" if budget_kwargs.get("max_size") is not None else "values")
    if optimise not in OPTIMISE_CHOICES:
        raise InputError(f"unknown --optimise {optimise!r}; choose one of {', '.join(OPTIMISE_CHOICES)}")
    if optimise == "values" and budget_kwargs.get("max_size") is not None:
        raise InputError("--optimise values compares at a value budget; --max-size is a byte budget (use --optimise bytes "
                         "or --budget/--budget-total/--budget-ratio)")
    deltas = as_adapter_deltas(source)
    methods = method_names(auto=True) if method == "auto" else (method,)
    shapes = [tuple(shape) for shape in getattr(deltas.layers, "shapes", {}).values()] or [layer.shape for layer in deltas.layers]
    trials: list[tuple[float, str, str]] = []
    trial_sizes: dict[tuple[str, str], int] = {}
    for name in methods:
        families = fitting_wavelets(shapes, levels, name) if wavelet == "auto" and get_method(name).wavelet else [
            "db1" if wavelet == "auto" else wavelet]
        for family in families:
            trial = compress(deltas, budget, name, family, levels, (), False, reorder, **budget_kwargs)
            trials.append((score(trial), name, family))
            trial_sizes[(name, family)] = file_size(trial, deltas)
    where = "at this budget" if optimise == "values" or budget_kwargs.get("max_size") is not None else ""
    if optimise == "bytes" and budget_kwargs.get("max_size") is None:
        size = min(trial_sizes.values())
        budget_kwargs = dict(budget_kwargs, max_size=size, budget_total=None, budget_ratio=None, rank=None)
        budget = None
        refitted = []
        for _, name, family in trials:
            try:
                refitted.append((score(compress(deltas, None, name, family, levels, (), False, reorder, **budget_kwargs)),
                                 name, family))
            except InputError:  # its fixed bytes (permutations, header) alone exceed the size
                refitted.append((float("inf"), name, family))
        trials = refitted
        where = f"at equal bytes ({size} B, the smallest candidate file at the value budget)"
    best_error, best_method, best_wavelet = min(trials)
    result = compress(deltas, budget, best_method, best_wavelet, levels, baselines, progress, reorder, **budget_kwargs)
    measure = "activation-weighted" if result.report.overall()[best_method].activation_relative_error is not None else "relative"
    several = len({t[2] for t in trials}) > 1
    tried = ", ".join((f"{m}/{w}" if several and get_method(m).wavelet else m) + (f" {e:.4f}" if e != float("inf") else " does not fit")
                      for e, m, w in sorted(trials))
    choice = best_method + (f" with {best_wavelet}" if get_method(best_method).wavelet else "")
    if optimise == "bytes" and not where.startswith("at equal"):
        where = f"at equal bytes ({budget_kwargs['max_size']})"
    result.report.notes.append(f"auto: chose {choice}, the lowest overall {measure} error {where} (optimised {optimise}: {tried})")
    return result
