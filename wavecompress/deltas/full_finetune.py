"""Full fine-tunes as input: ΔW = W_tuned − W_base per 2-D linear weight, streamed tensor by tensor.

Each side is a safetensors file, a sharded folder or a transformers model folder. Layers are
computed lazily (one ΔW alive at a time, read in row blocks); everything that is not a linear
weight (biases, norms, embeddings, buffers, tensors on one side only) is reported as skipped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import InputError
from .adapter_deltas import AdapterDeltas, LazyLayers, SkippedLayer
from .conv import KEY as WEIGHT_SHAPE, matrix_shape
from .checkpoints import Checkpoint, float32_difference, looks_like_embedding
from .layer_delta import LayerDelta
from .memory_budget import check_layer_size
from .safetensors_reader import check_finite

KIND = "full-finetune"


def compile_patterns(patterns: Sequence[str] | None, option: str) -> list[re.Pattern]:
    """Regexes from --include/--exclude, with an InputError naming the bad one."""
    out = []
    for pattern in patterns or ():
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise InputError(f"{option} {pattern!r}: not a valid regular expression ({exc})") from None
    return out


def selected(name: str, include: list[re.Pattern], exclude: list[re.Pattern]) -> bool:
    """True when ``name`` matches some include pattern (or there are none) and no exclude pattern."""
    if include and not any(p.search(name) for p in include):
        return False
    return not any(p.search(name) for p in exclude)


DROPPED = "not selected by --include/--exclude; dropped (--drop-unselected): its update is not in the output"


def filter_layers(deltas: AdapterDeltas, include: Sequence[str] | None, exclude: Sequence[str] | None,
                  drop_unselected: bool = False) -> AdapterDeltas:
    """``deltas`` converting only the layers whose names pass --include/--exclude; the others are kept
    exactly (``deltas.kept``), or with ``drop_unselected`` dropped and listed as skipped."""
    includes, excludes = compile_patterns(include, "--include"), compile_patterns(exclude, "--exclude")
    if isinstance(deltas.layers, LazyLayers):
        keep = [entry for entry in deltas.layers.entries if selected(entry[0], includes, excludes)]
        other = [entry for entry in deltas.layers.entries if not selected(entry[0], includes, excludes)]
        lazy = deltas.layers
        deltas.layers = LazyLayers(keep, lazy.skipped, lazy.none_reason)
        unselected: Sequence = LazyLayers(other, lazy.skipped, lazy.none_reason)
        names = [entry[0] for entry in other]
    else:
        unselected = [layer for layer in deltas.layers if not selected(layer.name, includes, excludes)]
        deltas.layers = [layer for layer in deltas.layers if selected(layer.name, includes, excludes)]
        names = [layer.name for layer in unselected]
    if drop_unselected:
        deltas.skipped.extend(SkippedLayer(name, DROPPED) for name in names)
    else:
        deltas.kept = unselected
    if not len(deltas.layers):
        raise InputError(f"{deltas.source}: --include/--exclude left no layer to convert")
    return deltas


def _module_kind(module: str, kinds: dict[str, str]) -> str:
    if kinds:
        return kinds.get(module, "unknown")
    return "embedding" if looks_like_embedding(module) else "linear"


def _one_d_reason(base: Checkpoint, tuned: Checkpoint, key: str) -> str:
    """Why a 1-D tensor is skipped, and whether fine-tuning changed it (1-D tensors are small)."""
    change = float((tuned.get(key).float() - base.get(key).float()).abs().max()) if tuned.numel(key) else 0.0
    state = f"changed, max |Δ| {change:.3g}" if change > 0 else "unchanged"
    return f"1-D tensor, not a layer ({state}; not carried into the adapter)"


def _factory(base: Checkpoint, tuned: Checkpoint, key: str, module: str, transpose: bool) -> Callable[[], LayerDelta | None]:
    def build() -> LayerDelta | None:
        delta = float32_difference(tuned, base, key)
        norm = float(torch.linalg.vector_norm(delta))  # also catches NaN/Inf on either side
        if not math.isfinite(norm):
            check_finite(tuned.path, f"{key} (tuned − base)", delta)
        if norm == 0:
            return None
        if transpose:
            delta = delta.T.contiguous()
        info = {WEIGHT_SHAPE: tuple(delta.shape)} if delta.dim() > 2 else {}
        return LayerDelta.from_dense(module, delta.reshape(delta.shape[0], -1), stored_values=delta.numel(),
                                     dtype=tuned.dtypes[key].lower(), **info)

    return build


def read_full_finetune(
    base: str | Path,
    tuned: str | Path,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    drop_unselected: bool = False,
) -> AdapterDeltas:
    """Lazy layer deltas W_tuned − W_base for every selected 2-D linear weight of a checkpoint pair.

    Linear weights that --include/--exclude leave out are refused unless ``drop_unselected`` (their
    updates would be lost; keeping them would store their dense ΔW, defeating the conversion)."""
    base_ck, tuned_ck = Checkpoint(base), Checkpoint(tuned)
    if [f.resolve() for f in base_ck.files] == [f.resolve() for f in tuned_ck.files]:
        raise InputError(f"--base {base} and --tuned {tuned} are the same checkpoint files; the delta would be zero")
    includes, excludes = compile_patterns(include, "--include"), compile_patterns(exclude, "--exclude")
    kinds = tuned_ck.module_kinds or base_ck.module_kinds
    skipped: list[SkippedLayer] = []
    candidates: list[tuple[str, str, str]] = []  # (key, module, kind)
    unselected: list[str] = []
    for key in tuned_ck.keys():
        module = key[: -len(".weight")] if key.endswith(".weight") else key
        shape, ndim = tuned_ck.shapes[key], len(tuned_ck.shapes[key])
        if key not in base_ck:
            skipped.append(SkippedLayer(key, "only in the tuned checkpoint"))
        elif not tuned_ck.dtypes[key].startswith(("F", "BF")) or not base_ck.dtypes[key].startswith(("F", "BF")):
            skipped.append(SkippedLayer(key, f"non-float tensor ({tuned_ck.dtypes[key]})"))
        elif base_ck.shapes[key] != shape:
            skipped.append(SkippedLayer(key, f"shape {list(shape)} differs from the base's {list(base_ck.shapes[key])}"))
        elif ndim == 1:
            skipped.append(SkippedLayer(key, _one_d_reason(base_ck, tuned_ck, key)))
        elif ndim not in (2, 3, 4, 5):
            skipped.append(SkippedLayer(key, f"{ndim}-D tensor (only 2-D weights and convolution kernels become layers)"))
        elif not key.endswith(".weight"):
            skipped.append(SkippedLayer(key, "not a module weight"))
        elif not selected(module, includes, excludes):
            linear = ndim > 2 or _module_kind(module, kinds) in ("linear", "conv1d")
            skipped.append(SkippedLayer(key, DROPPED if linear else "not selected by --include/--exclude"))
            if linear:
                unselected.append(module)
        else:
            kind = "conv" if ndim > 2 else _module_kind(module, kinds)
            if kind in ("linear", "conv1d", "conv"):
                candidates.append((key, module, kind))
            elif kind == "embedding":
                skipped.append(SkippedLayer(key, "embedding table, not a linear layer"))
            else:
                skipped.append(SkippedLayer(key, f"{kind} module, not a linear layer"))
    for key in base_ck.keys():
        if key not in tuned_ck:
            skipped.append(SkippedLayer(key, "only in the base checkpoint"))
    if unselected and not drop_unselected:
        raise InputError(f"{tuned_ck.path}: --include/--exclude leave {len(unselected)} linear weights of this full fine-tune "
                         f"unselected (first: {unselected[0]}); their updates would be lost. Pass --drop-unselected to "
                         "convert only the selected ones")

    linear = [c for c in candidates if c[2] == "linear"]
    conv1d = [c for c in candidates if c[2] == "conv1d"]
    fan_in_fan_out = len(conv1d) > len(linear)
    keep, drop = (conv1d, linear) if fan_in_fan_out else (linear, conv1d)
    keep = keep + [c for c in candidates if c[2] == "conv"]  # kernels: (c_out, c_in·kh·kw) matrices (deltas/conv.py)
    for key, _, kind in drop:
        skipped.append(SkippedLayer(key, f"{kind} layer in a model whose other layers need fan_in_fan_out={fan_in_fan_out}; "
                                         "convert it separately with --include"))
    if not keep:
        raise InputError(f"{tuned_ck.path}: no 2-D linear weight to convert ({len(skipped)} tensors skipped)")
    entries = []
    for key, module, kind in keep:
        d0, d1 = matrix_shape(tuned_ck.shapes[key])
        shape = (d1, d0) if kind == "conv1d" else (d0, d1)
        check_layer_size(tuned_ck.path, module, shape)
        entries.append((module, shape, d0 * d1, _factory(base_ck, tuned_ck, key, module, kind == "conv1d")))
    config = {"base_model_name_or_path": base_ck.name, "fan_in_fan_out": fan_in_fan_out, "bias": "none"}
    return AdapterDeltas(
        source=str(tuned_ck.path),
        kind=KIND,
        layers=LazyLayers(entries, skipped, "unchanged by fine-tuning (ΔW = 0)"),
        config=config,
        skipped=skipped,
        metadata={},
        also_read=[str(base_ck.path)],
    )

