"""Compress to an error target instead of a budget: ``convert --target-error 0.05``.

The target is a budget form (``Budget(target_error=...)``, methods/budget.py); the search lives in
the pipeline (wavecompress/pipeline.py ``fit_to_error``): the smallest total (global allocation)
whose predicted overall relative error is at most the target is found on the rate-distortion curves
(methods/target.py), then checked on the conversion and grown where the prediction was optimistic.
"""

from __future__ import annotations

from typing import Any

from .compress import CompressedAdapter, compress


def compress_to_error(source: Any, target_error: float, method: str = "waveft", *, wavelet: str = "db1",
                      levels: int | None = None, reorder: bool | str | None = True, progress: bool | None = False,
                      **kwargs: Any) -> CompressedAdapter:
    """The smallest ``method`` adapter of ``source`` whose overall relative error is ≤ ``target_error``.

    Other keyword arguments go to :func:`wavecompress.compress` (baselines, scaling, seed, device, dtype);
    the baselines are reported at the same total, each allocated globally on its own curves.
    """
    return compress(source, method=method, wavelet=wavelet, levels=levels, reorder=reorder, progress=progress,
                    target_error=target_error, **kwargs)
