"""Compress to an error target instead of a budget: ``convert --target-error 0.05``.

The smallest total (global allocation) whose predicted overall relative error is at most the target is
found on the rate-distortion curves (methods/target.py); the conversion then runs at that total and
is checked: where the prediction was optimistic (rank steps, rounding to the stored dtype) the total
grows until the written adapter meets the target. The report records the target, the total it needed
and every total tried.
"""

from __future__ import annotations

import math
from typing import Any

from .compress import CompressedAdapter, as_adapter_deltas, compress, reorder_choice
from .errors import InputError
from .methods import MethodOptions, get_method
from .methods.target import total_for_target, validate_target
from .transforms import validate_wavelet


def compress_to_error(source: Any, target_error: float, method: str = "waveft", *, wavelet: str = "db1",
                      levels: int | None = None, reorder: bool | str | None = True, progress: bool | None = False,
                      **kwargs: Any) -> CompressedAdapter:
    """The smallest ``method`` adapter of ``source`` whose overall relative error is ≤ ``target_error``.

    Other keyword arguments go to :func:`wavecompress.compress` (baselines, scaling, seed, device, dtype);
    the baselines are reported at the same total, each allocated globally on its own curves.
    """
    target = validate_target(target_error)
    if method == "auto" or wavelet == "auto":
        raise InputError("--target-error needs one --method and --wavelet (auto compares methods at one budget)")
    if kwargs.get("calibration") is not None:
        raise InputError("--target-error sizes by the Frobenius error; it cannot be combined with --calibration")
    get_method(method)
    deltas = as_adapter_deltas(source)
    options = MethodOptions(wavelet=validate_wavelet(wavelet), levels=levels, reorder=reorder_choice(reorder))
    from tqdm.auto import tqdm

    layers = list(deltas.layers)
    with tqdm(total=len(layers), desc=f"{method} curves for error ≤ {target:g}", unit="layer",
              disable=None if progress is None else not progress) as bar:
        search = total_for_target(layers, method, target, options, progress=lambda name: bar.update())
    total, checks = search.total, []
    for _ in range(8):
        result = compress(deltas, None, method, wavelet, levels, progress=progress, reorder=reorder, budget_total=total,
                          allocate="global", **kwargs)
        error = result.report.relative_error
        checks.append((total, error))
        if error <= target:
            break
        total = int(math.ceil(total * 1.02)) + 1
    else:
        raise InputError(f"--target-error {target:g}: {method} did not reach it (error {error:.4f} at {total} values)")
    report = result.report
    tried = sorted(set(search.tried) | {(t, e) for t, e in checks[:-1]})
    report.allocation = dict(report.allocation or {}, form="target_error", target_error=target, total=total,
                             budget=f"error ≤ {target:g} ({total} values in total)",
                             tried=[{"total": t, "relative_error": e} for t, e in tried])
    below = [t for t in tried if t[0] < total]
    report.notes.append(
        f"target error {target:g}: {method} needed {total} values in total ({total / max(len(report.layers), 1):.0f} per layer "
        f"on average), overall error {error:.5f}; found by binary search over {len(tried)} totals on the global allocation"
        + (f" ({below[-1][0]} values: {below[-1][1]:.5f})" if below else ""))
    return result
