"""Activation-aware compression: minimise ‖(ΔW − ΔŴ) C^{1/2}‖ for the layer's input second moment C.

The error a model feels is on its inputs: ‖(ΔW − ΔŴ)Xᵀ‖² = n·tr(E C Eᵀ) with C = XᵀX/n. C from a
few hundred tokens is rank-deficient, so the optimisation uses C + λ·mean(diag C)·I (λ = 1%, as
GPTQ does) and the report measures the undamped C.

- ``lora`` (methods/lora_svd.py): whitened SVD. With S = C_λ^{1/2}, the best rank-r fit of ΔW S is a truncated SVD
  U_r Σ_r V_rᵀ, so ΔŴ = U_r Σ_r V_rᵀ S⁻¹: stored as a plain LoRA, B = U_r Σ_r^{1/2},
  A = Σ_r^{1/2} V_rᵀ S⁻¹.
- top-k (``waveft``, ``sparse``): in coefficient space ΔW = W_rᵀ K W_c with orthonormal W_r, W_c, so
  the weighted error is Σ_rows e_i G e_iᵀ with G = W_c C W_cᵀ: rows decouple. Coefficients are
  selected by K_ij²·G_jj (the weighted cost of dropping each alone), then each row's kept values
  are refitted by least squares: x_J = K_J + G_JJ⁻¹ G_J,J̄ K_J̄.
- other methods (WaRA): compressed as usual; both error measures are still reported.

Each method names its variant in its registration (``Method.activation_aware``); this module
holds the shared maths and never branches on a method's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from ..deltas.layer_delta import LayerDelta
from ..errors import InputError
from .compressed_layer import CompressedLayer
from ..transforms.lowrank import factored_svd
from .index_codec import index_tensor
from .options import MethodOptions
from .registry import ActivationAware, Compress, get_method

DAMPING = 0.01
# (ΔW reordered, C_λ reordered, layer meta) → (coefficients K, metric G) in the method's basis.
WeightedSpace = Callable[[torch.Tensor, torch.Tensor, dict], tuple[torch.Tensor, torch.Tensor]]


def damped(gram: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """C + damping·mean(diag C)·I in float64 (positive definite for any C ≠ 0)."""
    gram = gram.double()
    scale = float(gram.diagonal().mean()) or 1.0
    return gram + damping * scale * torch.eye(gram.shape[0], dtype=gram.dtype)


def weighted_error_sq(error: torch.Tensor, gram: torch.Tensor) -> float:
    """tr(E C Eᵀ) = ‖E C^{1/2}‖²_F in float64."""
    error = error.double()
    return float(((error @ gram.double()) * error).sum())


def dense_error_sq(delta: LayerDelta, rebuilt: torch.Tensor) -> float:
    """‖ΔW − ΔŴ‖²_F in float64, from the dense matrices."""
    return float((delta.to_dense().double() - rebuilt.double()).square().sum())


def whitened_svd(delta: LayerDelta, gram: torch.Tensor):
    """(U, S, Vh, x ↦ x C_λ^{-1/2}) with U S Vh the SVD of ΔW C_λ^{1/2} (from the factors when factored)."""
    values, vectors = torch.linalg.eigh(damped(gram))
    values = values.clamp_min(values.max() * 1e-12)

    def root(x: torch.Tensor) -> torch.Tensor:  # x C_λ^{1/2} without forming the d_in × d_in root
        return ((x @ vectors) * values.sqrt()) @ vectors.T

    def inv_root(x: torch.Tensor) -> torch.Tensor:
        return ((x @ vectors) * values.rsqrt()) @ vectors.T

    if delta.is_factored:
        u, s, vh = factored_svd(delta.left, root(delta.right.double()))
    else:
        u, s, vh = torch.linalg.svd(root(delta.dense.double()), full_matrices=False)
    return u, s, vh, inv_root


def refit_rows(coeffs: torch.Tensor, keep: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """Kept values per row minimising Σ_i (k_i − x_i) G (k_i − x_i)ᵀ with x_i supported on ``keep``."""
    out = torch.zeros_like(coeffs)
    for i in torch.nonzero(keep.any(dim=1)).flatten().tolist():
        cols = torch.nonzero(keep[i]).flatten()
        rhs = metric[cols] @ coeffs[i]
        out[i, cols] = torch.linalg.solve(metric[cols][:, cols], rhs)
    return out


def weighted_layout(delta: LayerDelta, budget: int, options: MethodOptions, gram: torch.Tensor, plain: Compress,
                    space: WeightedSpace) -> tuple[CompressedLayer, torch.Tensor, torch.Tensor]:
    """(plain layer, coefficients K, metric G = W_c C_λ W_cᵀ) in the plain method's layout."""
    layer = plain(delta, budget, options)
    rows = layer.tensors.get("reorder_rows")
    cols = layer.tensors.get("reorder_cols")
    dense = delta.to_dense().double()
    metric = damped(gram)
    if rows is not None:
        dense = dense[rows.long()]
    if cols is not None:
        dense = dense[:, cols.long()]
        metric = metric[cols.long()][:, cols.long()]
    coeffs, metric = space(dense, metric, layer.meta)
    return layer, coeffs, metric


def topk_variant(plain: Compress, values_key: str, indices_key: str, space: WeightedSpace) -> ActivationAware:
    """The activation-aware variant of a top-k method in an orthonormal basis (``space``).

    The plain method fixes the layout (wavelet, levels, row/column permutations); selection and
    values are then redone in that same coefficient space, so the stored format is unchanged.
    """

    def compress(delta: LayerDelta, budget: int, options: MethodOptions, gram: torch.Tensor) -> CompressedLayer:
        layer, coeffs, metric = weighted_layout(delta, budget, options, gram, plain, space)
        k = layer.tensors[values_key].numel()
        score = coeffs.square() * metric.diagonal()[None, :]
        picked = torch.sort(torch.topk(score.reshape(-1), k, sorted=False).indices).values if k else torch.zeros(0, dtype=torch.long)
        keep = torch.zeros(coeffs.numel(), dtype=torch.bool)
        keep[picked] = True
        fitted = refit_rows(coeffs, keep.reshape(coeffs.shape), metric)
        tensors = dict(layer.tensors)
        tensors[values_key] = fitted.reshape(-1)[picked].float()
        tensors[indices_key] = index_tensor(indices_key, picked)
        error_sq = float((coeffs - fitted).square().sum())  # orthonormal: coefficient error = weight error
        return replace(layer, tensors=tensors, error_sq=error_sq, notes=layer.notes + ["activation-aware (weighted top-k, refit)"])

    def gains(delta: LayerDelta, options: MethodOptions, gram: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """K_ij²·G_jj sorted: the weighted cost of dropping each coefficient alone (the refit only
        lowers the error further), the allocation's estimate; one stored value per step."""
        _, coeffs, metric = weighted_layout(delta, delta.shape[0] * delta.shape[1], options, gram, plain, space)
        ordered = torch.sort((coeffs.square() * metric.diagonal()[None, :]).reshape(-1), descending=True).values
        return ordered, 1, ordered.numel()

    return ActivationAware(compress=compress, gains=gains)


def weighted_gains(delta: LayerDelta, method: str, options: MethodOptions, gram: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(weighted error removed per step in the order ``method``'s aware variant takes them, cost per step, useful steps)."""
    return get_method(method).activation_aware.gains(delta, options, gram)


def aware_compress(method: str, delta: LayerDelta, budget: int, options: MethodOptions,
                   gram: torch.Tensor | None = None) -> CompressedLayer:
    """``method`` on ``delta``; activation-aware when ``gram`` (C = XᵀX/n) is given and the method has a variant."""
    variant = get_method(method).activation_aware
    if gram is None or variant is None:
        return get_method(method).compress(delta, budget, options)
    if gram.shape != (delta.shape[1], delta.shape[1]):
        raise InputError(f"calibration for layer {delta.name}: second moment is {tuple(gram.shape)}, "
                         f"the layer has {delta.shape[1]} inputs")
    tensor = delta.dense if delta.dense is not None else delta.left
    if tensor.device.type != "cpu":  # the weighted fits are small solves: run them on the CPU
        from ..hardware import layer_to_device

        delta = layer_to_device(delta, torch.device("cpu"))
    return variant.compress(delta, budget, options, gram)


def activation_errors(delta: LayerDelta, layer: CompressedLayer, gram: torch.Tensor) -> tuple[float, float]:
    """(tr(E C Eᵀ), tr(ΔW C ΔWᵀ)) of a compressed layer, from what it stores."""
    rebuilt = get_method(layer.method).reconstruct(layer.tensors, layer.meta, layer.shape).cpu()
    dense = delta.to_dense().double().cpu()
    return weighted_error_sq(dense - rebuilt.double(), gram), weighted_error_sq(dense, gram)


def with_activation_error(summary, delta: LayerDelta, layer: CompressedLayer, gram: torch.Tensor | None):
    """``summary`` (a report MethodSummary) with the activation-weighted error filled in when ``gram`` is given."""
    if gram is None:
        return summary
    summary.act_error_sq, summary.act_energy = activation_errors(delta, layer, gram)
    return summary
