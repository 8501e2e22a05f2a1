"""Our torch Haar (``wavecompress/transforms/dwt.py``) against PyWavelets and ptwt on a float32 matrix.

Times the orthonormal periodized 2-D Haar analysis (rows then columns, the same levels per axis)
and its inverse, checks that the three agree to float32 round-off, and prints ours as a ratio of
each library's time (> 1 means ours is faster). Like for like: PyWavelets is single-threaded, so
torch (ours and ptwt) runs on the same number of threads (``--threads``, default 1); and each side
is timed producing its own natural output (our one array; PyWavelets' list of band arrays), so
no side is charged a layout copy. The layout conversion for the agreement check is untimed. ptwt is
optional (``pip install ptwt``); it is not a wavecompress dependency.

    python benchmarks/haar_transform.py --quick      # 4096 × 4096, level 1, 3 repeats, 1 thread
    python benchmarks/haar_transform.py --levels 3 --size 8192 --repeats 5
    python benchmarks/haar_transform.py --quick --threads 2   # torch on 2 threads (PyWavelets still 1)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pywt  # noqa: E402
import torch  # noqa: E402

from _common import machine_line  # noqa: E402
from wavecompress.transforms import analysis2d, synthesis2d  # noqa: E402


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` runs after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def pywt_analysis(matrix: np.ndarray, levels: int) -> list[list[np.ndarray]]:
    """Separable periodized Haar with PyWavelets (rows to L levels, then each row band's columns),
    returned as PyWavelets returns it: bands, not copied into one array."""
    return [pywt.wavedec(band, "haar", mode="periodization", level=levels, axis=1)
            for band in pywt.wavedec(matrix, "haar", mode="periodization", level=levels, axis=0)]


def pywt_synthesis(bands: list[list[np.ndarray]]) -> np.ndarray:
    """Inverse of ``pywt_analysis`` from the same band lists."""
    rows = [pywt.waverec(row_band, "haar", mode="periodization", axis=1) for row_band in bands]
    return pywt.waverec(rows, "haar", mode="periodization", axis=0)


def to_our_layout(bands: list[list[np.ndarray]]) -> np.ndarray:
    """Concatenate PyWavelets' bands into our one-array layout (for the agreement check; untimed)."""
    return np.concatenate([np.concatenate(row_band, axis=1) for row_band in bands], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats (the default size is already 4096)")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--levels", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for ours and ptwt (PyWavelets is single-threaded) [default: 1]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    print(machine_line(args.threads))
    print(f"input: {args.size} × {args.size} float32, periodized Haar, {args.levels} level(s) per axis, median of {repeats}; "
          f"torch on {args.threads} thread(s), PyWavelets single-threaded; no layout copies timed")

    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(args.size, args.size, generator=generator)
    levels = (args.levels, args.levels)
    rows = []
    t_ours, ours = timed(lambda: analysis2d(matrix, "db1", levels), repeats)
    t_ours_inv, back = timed(lambda: synthesis2d(ours, "db1", levels), repeats)
    assert torch.allclose(back, matrix, atol=1e-5), "our inverse does not reconstruct"
    rows.append(("wavecompress (torch)", t_ours, t_ours_inv, 0.0))

    array = matrix.numpy()
    t_pywt, theirs = timed(lambda: pywt_analysis(array, args.levels), repeats)
    t_pywt_inv, rebuilt = timed(lambda: pywt_synthesis(theirs), repeats)
    assert np.allclose(rebuilt, array, atol=1e-5), "PyWavelets inverse does not reconstruct"
    rows.append((f"PyWavelets {pywt.__version__}", t_pywt, t_pywt_inv, float(np.abs(to_our_layout(theirs) - ours.numpy()).max())))

    try:
        import ptwt
    except ImportError:
        ptwt = None
        print("ptwt: not installed (pip install ptwt) - skipped")
    if ptwt is not None:
        from importlib.metadata import version

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")

            def ptwt_analysis() -> list:
                return ptwt.wavedec2(matrix, "haar", mode="zero", level=args.levels)  # Haar on even sizes pads nothing

            t_ptwt, coeffs = timed(ptwt_analysis, repeats)
            t_ptwt_inv, rebuilt = timed(lambda: ptwt.waverec2(coeffs, "haar"), repeats)
        assert torch.allclose(rebuilt.reshape(matrix.shape), matrix, atol=1e-4), "ptwt inverse does not reconstruct"
        # ptwt's 2-D transform is the square (Mallat) one; its approximation band equals our top-left block.
        side = args.size >> args.levels
        check = float((coeffs[0].reshape(side, side) - ours[:side, :side]).abs().max())
        rows.append((f"ptwt {version('ptwt')}", t_ptwt, t_ptwt_inv, check))

    print()
    print("| implementation | analysis (ms) | synthesis (ms) | ours faster by (analysis) | ours faster by (synthesis) |")
    print("|---|---:|---:|---:|---:|")
    for label, t_a, t_s, _ in rows:
        print(f"| {label} | {1000 * t_a:.1f} | {1000 * t_s:.1f} | {t_a / t_ours:.2f}× | {t_s / t_ours_inv:.2f}× |")
    print()
    for label, t_a, t_s, diff in rows[1:]:
        print(f"ratio: {label} / ours: analysis {t_a / t_ours:.2f}×, synthesis {t_s / t_ours_inv:.2f}× "
              f"(> 1 means ours is faster)")
    print(f"agreement: PyWavelets (same layout) max |difference| {rows[1][3]:.1e}"
          + (f"; ptwt approximation band {rows[2][3]:.1e}" if len(rows) > 2 else ""))


if __name__ == "__main__":
    main()
