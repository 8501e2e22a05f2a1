"""WaveFT with stock PEFT's seeded support: values fitted by least squares, loadable by plain PEFT.

PEFT regenerates the coefficient locations from ``random_loc_seed`` (see transforms/peft_geometry),
so only the values are ours to choose: the least-squares fit of ΔW/scaling on that support.
For db1 on even sizes the synthesis is orthonormal and the fit is the Haar analysis coefficients at
the support (closed form); otherwise LSQR on the linear synthesis operator (matrix-free).

A random support keeps about k/N of the energy, so the expected relative error is about
√(1 − k/N): near 1 at useful budgets. This method exists for compatibility with unmodified PEFT,
not for accuracy; the report says so.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..deltas.layer_delta import LayerDelta
from ..errors import InputError
from ..transforms.peft_geometry import PeftWaveGeometry, check_peft_wavelet
from .compressed_layer import CompressedLayer
from .options import MethodOptions
from .registry import Method, register_method

NAME = "waveft-seeded"
SPECTRUM_KEY = "waveft_spectrum"
DEFAULT_SCALING = 25.0  # PEFT WaveFTConfig defaults
DEFAULT_SEED = 777
_LSQR_TOL = 1e-10
_LSQR_MAX_ITER = 500


def expected_relative_error(k: int, n: int) -> float:
    """√(1 − k/N): the relative error a random support of k out of N coefficients leaves on average."""
    return math.sqrt(max(0.0, 1.0 - k / n)) if n else 0.0


def expected_loss_note(k: int, n: int) -> str:
    """One plain sentence on what a seeded (random) support costs."""
    return (
        f"waveft-seeded uses stock PEFT's random (seeded) locations: k={k} of N={n} coefficients keep about k/N of "
        f"the energy, expected relative error ≈ √(1 − k/N) = {expected_relative_error(k, n):.4f}; "
        "use --method waveft or wara (loaded through wavecompress) for accuracy"
    )


def _options(options: MethodOptions) -> tuple[float, int]:
    scaling = getattr(options, "scaling", None)
    scaling = DEFAULT_SCALING if scaling is None else float(scaling)  # 0 is refused, never replaced by the default
    if not math.isfinite(scaling) or scaling == 0:
        raise InputError(f"scaling {scaling!r}: must be a finite, non-zero number")
    seed = getattr(options, "seed", None)
    return scaling, DEFAULT_SEED if seed is None else int(seed)


def fit_values(target: torch.Tensor, geometry: PeftWaveGeometry, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Least-squares spectrum values s minimising ‖synthesis(scatter(s)) − target‖_F (float64)."""
    target = target.double()
    if geometry.orthonormal:
        return geometry.adjoint(target)[rows, cols]
    from scipy.sparse.linalg import LinearOperator, lsqr

    n = rows.numel()
    size = target.numel()

    def matvec(values: np.ndarray) -> np.ndarray:
        spectrum = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).reshape(-1))
        return geometry.synthesis(geometry.scatter(spectrum, rows, cols)).reshape(-1).numpy()

    def rmatvec(residual: np.ndarray) -> np.ndarray:
        matrix = torch.from_numpy(np.ascontiguousarray(residual, dtype=np.float64).reshape(geometry.shape))
        return geometry.adjoint(matrix)[rows, cols].numpy()

    operator = LinearOperator((size, n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
    solution = lsqr(operator, target.reshape(-1).numpy(), atol=_LSQR_TOL, btol=_LSQR_TOL, iter_lim=_LSQR_MAX_ITER)[0]
    return torch.from_numpy(solution)


def compress(delta: LayerDelta, budget: int, options: MethodOptions) -> CompressedLayer:
    """Fit ``budget`` values (clamped to d_out·d_in) at PEFT's seeded locations for this layer's shape."""
    scaling, seed = _options(options)
    family = check_peft_wavelet(options.wavelet)
    geometry = PeftWaveGeometry.of(delta.shape, family)
    capacity = delta.shape[0] * delta.shape[1]
    n = min(budget, capacity)
    rows, cols = geometry.seeded_positions(n, seed)
    target = delta.to_dense().double() / scaling
    energy = delta.energy()
    if geometry.orthonormal:
        coeffs = geometry.adjoint(target)
        values = coeffs[rows, cols].clone()
        coeffs[rows, cols] = 0
        error_sq = float(coeffs.square().sum()) * scaling**2
    else:
        values = fit_values(target, geometry, rows, cols)
        residual = geometry.synthesis(geometry.scatter(values, rows, cols)) - target
        error_sq = float(residual.square().sum()) * scaling**2
    return CompressedLayer(
        name=delta.name,
        shape=delta.shape,
        method=NAME,
        tensors={SPECTRUM_KEY: values.float().contiguous()},
        meta={"wavelet": family, "scaling": scaling, "seed": seed, "use_idwt": True},
        stored_values=n,
        index_values=0,
        error_sq=error_sq,
        energy=energy,
        budget=budget,
        budget_clamped=budget > capacity,
        notes=[expected_loss_note(n, capacity)],
    )


def reconstruct(tensors: dict[str, torch.Tensor], meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    """ΔŴ exactly as PEFT's ``WaveFTLayer.get_delta_weight`` computes it (float32, same locations)."""
    spectrum = tensors[SPECTRUM_KEY].float()
    scaling = float(meta.get("scaling", DEFAULT_SCALING))
    seed = int(meta.get("seed", DEFAULT_SEED))
    d_out, d_in = shape
    if not meta.get("use_idwt", True):
        flat = _seeded_flat(d_out * d_in, spectrum.numel(), seed, spectrum.device)
        dense = spectrum.new_zeros(d_out * d_in)
        dense[flat] = spectrum
        return dense.reshape(shape) * scaling
    geometry = PeftWaveGeometry.of(tuple(int(v) for v in shape), meta.get("wavelet", "db1"))
    rows, cols = _seeded_positions(geometry, spectrum.numel(), seed, spectrum.device)
    return geometry.synthesis(geometry.scatter(spectrum, rows, cols)) * scaling


@functools.lru_cache(maxsize=64)
def _seeded_flat(numel: int, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """PEFT's ``randperm(d_out*d_in)[:n]`` for ``seed`` on ``device`` (computed once, not per step)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=generator)[:n].to(device)


@functools.lru_cache(maxsize=64)
def _seeded_positions(geometry: PeftWaveGeometry, n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded (rows, cols) of the seeded support on ``device`` (computed once per layer shape)."""
    rows, cols = geometry.seeded_positions(n, seed)
    return rows.to(device), cols.to(device)


# Stock PEFT's own WaveFT: values only, at locations PEFT regenerates from the seed and shape.
METHOD = register_method(Method(
    name=NAME,
    peft_type="WAVEFT",
    stock_peft=True,
    compress=compress,
    reconstruct=reconstruct,
    tensor_keys=(SPECTRUM_KEY,),
    values_key=SPECTRUM_KEY,
    card_snippet="""Stock PEFT WaveFT loads it, no wavecompress needed:

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "{repo}")
```""",
    description="stock PEFT WaveFT (seeded locations, fitted values)",
))
