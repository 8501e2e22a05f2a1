"""LyCORIS LoHa and LoKr modules: their closed-form deltas as LayerDeltas.

LoHa: ΔW = s · (W1a W1b) ⊙ (W2a W2b). A Hadamard product of rank-r₁ and rank-r₂ products is
the product of row-wise and column-wise Khatri–Rao factors, so it stays factored with rank
r₁·r₂ (dense when that is not smaller than the layer). LoKr: ΔW = s · W1 ⊗ W2, each side full or
a product of two factors; built dense. s = alpha / dim when the file stores alpha (dim = the
low-rank dimension), else 1 — the convention of LyCORIS, kohya and ComfyUI loaders.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .adapter_deltas import AdapterDeltas
from .conv import KEY as WEIGHT_SHAPE, matrix_shape, tucker_delta
from .layer_delta import LayerDelta
from .memory_budget import check_layer_size
from .peft_lora import match_pattern_key, strip_prefix
from .safetensors_reader import check_finite, read_safetensors

LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
TUCKER_KEYS = ("hada_t1", "hada_t2", "lokr_t2")
PEFT_LYCORIS_TYPES = {"LOHA": "loha", "LOKR": "lokr"}


def _scale(alpha: float | None, dim: int | None) -> float:
    return alpha / dim if alpha is not None and dim else 1.0


def _need(parts: Mapping[str, torch.Tensor], name: str, keys: tuple[str, ...]) -> list[torch.Tensor]:
    missing = [key for key in keys if key not in parts]
    if missing:
        raise InputError(f"module {name}: missing {', '.join(missing)}")
    return [parts[key].to(torch.float32) for key in keys]


def loha_delta(name: str, parts: Mapping[str, torch.Tensor], alpha: float | None, scale: float | None = None) -> LayerDelta:
    """ΔW of a LoHa module from hada_w{1,2}_{a,b}: linear, convolution over 2-D factors (c_in·kh·kw
    columns), or Tucker (``hada_t1``/``hada_t2`` cores: a conv of known kernel shape)."""
    w1a, w1b, w2a, w2b = _need(parts, name, LOHA_KEYS)
    if "hada_t1" in parts or "hada_t2" in parts:
        return _loha_tucker(name, parts, (w1a, w1b, w2a, w2b), alpha, scale)
    if any(t.dim() != 2 for t in (w1a, w1b, w2a, w2b)):
        raise InputError(f"module {name}: LoHa factors {[list(t.shape) for t in (w1a, w1b, w2a, w2b)]} are not 2-D "
                         "and there is no Tucker core (hada_t1/hada_t2)")
    d_out, d_in = w1a.shape[0], w1b.shape[1]
    if w1a.shape[1] != w1b.shape[0] or w2a.shape[1] != w2b.shape[0] or w2a.shape[0] != d_out or w2b.shape[1] != d_in:
        raise InputError(f"module {name}: LoHa factor shapes {[list(t.shape) for t in (w1a, w1b, w2a, w2b)]} do not fit together")
    check_layer_size(None, name, (d_out, d_in))
    s = _scale(alpha, w1b.shape[0]) if scale is None else scale
    r1, r2 = w1a.shape[1], w2a.shape[1]
    stored = sum(t.numel() for t in (w1a, w1b, w2a, w2b))
    info = {"rank": r1 * r2, "scaling": s, "stored_values": stored, "lycoris": "loha"}
    if r1 * r2 >= min(d_out, d_in):
        return LayerDelta.from_dense(name, s * (w1a @ w1b) * (w2a @ w2b), **info)
    left = (w1a[:, :, None] * w2a[:, None, :]).reshape(d_out, r1 * r2) * s
    right = (w1b[:, None, :] * w2b[None, :, :]).reshape(r1 * r2, d_in)
    return LayerDelta.from_factors(name, left, right, **info)


def _loha_tucker(name: str, parts: Mapping[str, torch.Tensor], factors: tuple[torch.Tensor, ...], alpha: float | None,
                 scale: float | None) -> LayerDelta:
    """Tucker LoHa (LyCORIS ``use_tucker``): ΔW = s · tucker(t1, w1a, w1b) ⊙ tucker(t2, w2a, w2b), with
    t (r, r, kh, kw), w_a (r, c_out), w_b (r, c_in) — dense, as its (c_out, c_in·kh·kw) matrix."""
    t1, t2 = _need(parts, name, ("hada_t1", "hada_t2"))
    w1a, w1b, w2a, w2b = factors
    shapes = [list(t.shape) for t in (t1, w1a, w1b, t2, w2a, w2b)]
    fits = all(t.dim() == 2 for t in factors) and t1.dim() >= 3 and t1.shape == t2.shape and w1a.shape == w2a.shape \
        and w1b.shape == w2b.shape and t1.shape[:2] == (w1a.shape[0], w1b.shape[0]) and w1a.shape[0] == w2a.shape[0]
    if not fits:
        raise InputError(f"module {name}: Tucker LoHa shapes {shapes} (t1, w1a, w1b, t2, w2a, w2b) do not fit together")
    weight_shape = (w1a.shape[1], w1b.shape[1], *t1.shape[2:])
    check_layer_size(None, name, matrix_shape(weight_shape))
    s = _scale(alpha, w1b.shape[0]) if scale is None else scale
    delta = tucker_delta(t1, w1a, w1b) * tucker_delta(t2, w2a, w2b) * s
    stored = sum(t.numel() for t in (t1, t2, *factors))
    return LayerDelta.from_dense(name, delta.reshape(weight_shape[0], -1), rank=w1a.shape[0] ** 2, scaling=s,
                                 stored_values=stored, lycoris="loha", **{WEIGHT_SHAPE: weight_shape})


def lokr_delta(name: str, parts: Mapping[str, torch.Tensor], alpha: float | None, scale: float | None = None) -> LayerDelta:
    """ΔW of a LoKr module: s · kron(W1, W2), each W full or ``_a @ _b`` (W2 also Tucker ``lokr_t2``);
    a 4-D W2 (a conv's kernel) makes ΔW a conv delta, kept as its flattened matrix."""
    sides, dim, stored = [], None, 0
    for side in ("lokr_w1", "lokr_w2"):
        if side in parts:
            matrix = parts[side].to(torch.float32)
            stored += matrix.numel()
        elif f"{side}_a" in parts and f"{side}_b" in parts:
            a, b = _need(parts, name, (f"{side}_a", f"{side}_b"))
            if side == "lokr_w2" and "lokr_t2" in parts:
                (core,) = _need(parts, name, ("lokr_t2",))
                if a.dim() != 2 or b.dim() != 2 or core.dim() < 3 or core.shape[:2] != (a.shape[0], b.shape[0]):
                    raise InputError(f"module {name}: lokr_t2 {list(core.shape)}, lokr_w2_a {list(a.shape)} and "
                                     f"lokr_w2_b {list(b.shape)} do not fit together")
                matrix, dim, stored = tucker_delta(core, a, b), a.shape[0], stored + a.numel() + b.numel() + core.numel()
            else:
                if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
                    raise InputError(f"module {name}: {side}_a {list(a.shape)} and {side}_b {list(b.shape)} do not multiply")
                matrix, dim, stored = a @ b, b.shape[0], stored + a.numel() + b.numel()
        else:
            raise InputError(f"module {name}: missing {side} (or {side}_a and {side}_b)")
        if matrix.dim() != 2 and not (side == "lokr_w2" and matrix.dim() >= 3):
            raise InputError(f"module {name}: {side} is {matrix.dim()}-D; only lokr_w2 may hold a convolution kernel")
        sides.append(matrix)
    s = _scale(alpha, dim) if scale is None else scale
    w1, w2 = sides
    weight_shape = (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], *w2.shape[2:])
    check_layer_size(None, name, matrix_shape(weight_shape))
    if w2.dim() > 2:
        w1 = w1.reshape(*w1.shape, *([1] * (w2.dim() - 2)))
    delta = torch.kron(w1, w2) * s
    info = {WEIGHT_SHAPE: weight_shape} if w2.dim() > 2 else {}
    return LayerDelta.from_dense(name, delta.reshape(weight_shape[0], -1), scaling=s, stored_values=stored, lycoris="lokr", **info)


def module_type(parts: Mapping[str, object]) -> str | None:
    """'loha', 'lokr' or None from a module's tensor names (Tucker forms count as convolution)."""
    if any(key in parts for key in LOHA_KEYS):
        return "loha"
    if any(key in parts for key in LOKR_KEYS):
        return "lokr"
    return None


def peft_scaling(config: dict[str, Any], module: str) -> float:
    """PEFT's LoHa/LoKr scaling alpha / r with ``rank_pattern``/``alpha_pattern`` overrides."""
    rank_key = match_pattern_key(config.get("rank_pattern") or {}, module)
    alpha_key = match_pattern_key(config.get("alpha_pattern") or {}, module)
    rank = config["rank_pattern"][rank_key] if rank_key is not None else config.get("r", 8)
    alpha = config["alpha_pattern"][alpha_key] if alpha_key is not None else config.get("alpha", 8)
    return float(alpha) / float(rank)


def read_peft_lycoris(config: dict[str, Any], weights_path: Path) -> AdapterDeltas:
    """Layer deltas of a PEFT LoHa or LoKr adapter folder (keys ``base_model.model.<module>.hada_*``/``lokr_*``)."""
    from .peft_lora import check_lora_config

    check_lora_config(config, weights_path.parent / "adapter_config.json")
    kind = PEFT_LYCORIS_TYPES[config["peft_type"]]
    tensors, metadata = read_safetensors(weights_path)
    modules: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    passthrough: dict[str, torch.Tensor] = {}
    names = LOHA_KEYS + LOKR_KEYS + TUCKER_KEYS
    for key, value in tensors.items():
        module, _, last = key.rpartition(".")
        if last in names:
            check_finite(weights_path, key, value)
            modules[strip_prefix(module)][last] = value
        else:
            passthrough[key] = value
    layers, skipped = [], []
    for module in sorted(modules):
        parts = modules[module]
        build = loha_delta if kind == "loha" else lokr_delta
        try:
            layers.append(build(module, parts, None, scale=peft_scaling(config, module)))
        except InputError as exc:
            raise InputError(f"{weights_path}: {exc}") from None
    if not layers:
        raise InputError(f"{weights_path}: no convertible {config['peft_type']} layers")
    return AdapterDeltas(source=str(weights_path), kind=f"peft-{kind}", layers=layers, config=config,
                         passthrough=passthrough, skipped=skipped, metadata=metadata)
