"""Reader for PEFT LoRA adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

ΔW = s · B @ A with s = alpha / r (alpha / √r with ``use_rslora``); ``rank_pattern`` and
``alpha_pattern`` override per module with PEFT's key matching. Non-LoRA tensors (for example a
classifier head from ``modules_to_save``) are kept as passthrough.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..layout import PREFIX, strip_prefix  # noqa: F401 - PREFIX re-exported (it lives in layout.py)
from .adapter_deltas import AdapterDeltas, SkippedLayer
from .conv import KEY as WEIGHT_SHAPE, conv_factors, is_lora_pair
from .layer_delta import LayerDelta
from .memory_budget import check_layer_size
from .safetensors_file import printable
from .safetensors_reader import NonFiniteError, check_finite, nonfinite_layers_skipped, read_safetensors

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>A|B|embedding_A|embedding_B|magnitude_vector)(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_lora_config(config: dict[str, Any], where: Path) -> None:
    """Refuse config values PEFT would misread: non-integer or non-positive ranks, non-finite alphas,
    non-boolean flags, ``*_pattern`` entries that are not regex → number (one line naming the key)."""
    def bad(key: str, value: Any, expected: str) -> InputError:
        return InputError(f"{where}: {key} is {json.dumps(value)[:60]}; expected {expected}")

    def rank_ok(value: Any) -> bool:
        return _number(value) and math.isfinite(value) and float(value).is_integer() and value > 0

    def alpha_ok(value: Any) -> bool:
        return _number(value) and math.isfinite(value) and abs(value) < 1e30

    if "r" in config and not rank_ok(config["r"]):
        raise bad("r", config["r"], "a positive integer")
    for key in ("lora_alpha", "alpha"):
        if key in config and not alpha_ok(config[key]):
            raise bad(key, config[key], "a finite number")
    for key in ("use_dora", "use_rslora", "fan_in_fan_out"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise bad(key, config[key], "true or false")
    for key, ok, expected in (("rank_pattern", rank_ok, "positive integers"), ("alpha_pattern", alpha_ok, "finite numbers")):
        patterns = config.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise bad(key, patterns, "an object {module regex: value}")
        for pattern, value in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InputError(f"{where}: {key} key {pattern[:60]!r} is not a valid regular expression ({exc})") from None
            except RecursionError:
                raise InputError(f"{where}: {key} key {pattern[:60]!r} is not a usable regular expression (nested too deeply)") from None
            if (reason := unsafe_pattern(pattern)) is not None:
                raise InputError(f"{where}: {key} key {printable(pattern[:60])!r} {reason}; use plain module names or a simple regex")
            if not ok(value):
                raise bad(f"{key}[{pattern[:40]!r}]", value, expected)


MAX_PATTERN_LENGTH = 1000
MAX_OPEN_REPEATS = 3
MAX_MODULE_NAME = 4096


def _backtracks(parsed: Any, inside_repeat: bool = False) -> bool:
    """Whether a parsed regex nests a repetition (or an alternation) inside another repetition: the
    shapes (``(a+)+``, ``(a|aa)*``) whose matching time can grow exponentially with the name."""
    from re import _constants as c  # type: ignore[attr-defined]

    for op, arg in parsed:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, high, sub = arg
            if inside_repeat and high != 1:
                return True
            if _backtracks(sub, inside_repeat or high != 1):
                return True
        elif op == c.BRANCH:
            if inside_repeat:
                return True
            if any(_backtracks(branch, inside_repeat) for branch in arg[1]):
                return True
        elif op == c.SUBPATTERN:
            if _backtracks(arg[-1], inside_repeat):
                return True
        elif op in (c.ASSERT, c.ASSERT_NOT):
            if _backtracks(arg[1], inside_repeat):
                return True
        elif op == c.GROUPREF or (op == c.GROUPREF_EXISTS):
            return True  # backreferences: no bound on matching time
    return False


def unsafe_pattern(pattern: str) -> str | None:
    """Why a ``rank_pattern``/``alpha_pattern`` key cannot be matched in bounded time (None when it can):
    plain names, dotted paths and simple regexes are fine; nested repetition and backreferences are not."""
    from re import _parser  # type: ignore[attr-defined]

    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"is longer than {MAX_PATTERN_LENGTH} characters"
    try:
        parsed = _parser.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return "is not a valid regular expression"
    if _backtracks(parsed):
        return "nests repetitions or alternatives inside a repetition, or uses a backreference (matching could take exponential time)"
    if pattern.count("*") + pattern.count("+") + pattern.count("{") > MAX_OPEN_REPEATS:
        return f"has more than {MAX_OPEN_REPEATS} repetitions (matching time grows as a power of the name length)"
    return None


def match_pattern_key(patterns: dict[str, Any], module_name: str) -> str | None:
    """The first key of a PEFT ``*_pattern`` dict that matches ``module_name`` (PEFT's rule
    ``(.*\\.)?(key)$``); a key that could backtrack catastrophically is refused, never run."""
    if patterns and len(module_name) > MAX_MODULE_NAME:
        raise InputError(f"module name {printable(module_name[:60])!r}... is longer than {MAX_MODULE_NAME} characters; refusing it")
    for key in patterns:
        reason = unsafe_pattern(key)
        if reason is not None:
            raise InputError(f"pattern key {printable(key[:60])!r} {reason}; use plain module names or a simple regex")
        if re.match(rf"(.*\.)?({key})$", module_name):
            return key
    return None


def lora_scaling(config: dict[str, Any], module_name: str, rank: int) -> float:
    """PEFT's per-module LoRA scaling for a module whose stored rank is ``rank``."""
    alpha_pattern = config.get("alpha_pattern") or {}
    key = match_pattern_key(alpha_pattern, module_name)
    alpha = float(alpha_pattern[key]) if key is not None else float(config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank


def _expected_rank(config: dict[str, Any], module_name: str) -> int | None:
    rank_pattern = config.get("rank_pattern") or {}
    key = match_pattern_key(rank_pattern, module_name)
    if key is not None:
        return int(rank_pattern[key])
    return int(config["r"]) if "r" in config else None


def read_peft_lora(config: dict[str, Any], weights_path: Path, base: str | Path | None = None,
                   tensors: dict[str, torch.Tensor] | None = None) -> AdapterDeltas:
    """Build layer deltas from a PEFT LoRA state dict and its (already parsed) config.

    DoRA adapters (``use_dora``) go to :mod:`.dora`, which needs the base weights ``base``.
    ``tensors``: the state dict in memory (``weights_path`` then only names it in messages).
    """
    check_lora_config(config, weights_path.parent / "adapter_config.json")
    if config.get("use_dora"):
        from .dora import base_required_error, read_dora

        if base is None:
            raise base_required_error(weights_path)
        return read_dora(read_peft_lora({**config, "use_dora": False}, weights_path), weights_path, base)
    tensors, metadata = read_safetensors(weights_path) if tensors is None else (dict(sorted(tensors.items())), {})
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    passthrough: dict[str, torch.Tensor] = {}
    adapters: dict[str, str] = {}
    for key in tensors:
        match = _LORA_KEY.match(key)
        if match is None:
            passthrough[key] = tensors[key]
            continue
        module, kind = strip_prefix(match["module"]), match["kind"]
        if kind in groups[module]:  # `base_model.model.x.lora_A.weight` beside `x.lora_A.weight`: never drop one silently
            raise InputError(f"{weights_path}: tensors {printable(groups[module][kind])} and {printable(key)} are the same "
                             f"module's lora_{kind}; refusing to pick one")
        adapters.setdefault("" if match["adapter"] in (None, "weight") else match["adapter"], key)
        if len(adapters) > 1:
            first, second = sorted(adapters)[:2]
            raise InputError(f"{weights_path}: holds two adapters ({printable(adapters[first])} and {printable(adapters[second])}); "
                             "save one adapter per file")
        groups[module][kind] = key
    if not groups:
        raise InputError(f"{weights_path}: no LoRA tensors (*.lora_A.weight / *.lora_B.weight) found")

    layers: list[LayerDelta] = []
    skipped: list[SkippedLayer] = []
    for module in sorted(groups):
        kinds = groups[module]
        if "embedding_A" in kinds or "embedding_B" in kinds:
            skipped.append(SkippedLayer(module, "embedding LoRA is not converted"))
            continue
        if "A" not in kinds or "B" not in kinds:
            present = next(iter(kinds.values()))
            missing = "lora_B" if "A" in kinds else "lora_A"
            raise InputError(f"{weights_path}: tensor {present} has no matching {missing} tensor")
        a_key, b_key = kinds["A"], kinds["B"]
        lora_a, lora_b = tensors[a_key], tensors[b_key]
        if not is_lora_pair(lora_a, lora_b):
            raise InputError(f"{weights_path}: tensors {a_key} {list(lora_a.shape)} and {b_key} {list(lora_b.shape)} "
                             "are neither linear (2-D) nor convolution LoRA factors (lora_B (d_out, r, 1, 1))")
        lora_b, lora_a, weight_shape = conv_factors(lora_a, lora_b)
        for key, tensor in ((a_key, lora_a), (b_key, lora_b)):
            if not tensor.is_floating_point():
                raise InputError(f"{weights_path}: tensor {key} has non-float dtype {str(tensor.dtype).replace('torch.', '')}")
        rank = lora_a.shape[0]
        if rank == 0 or lora_b.shape[1] == 0:
            raise InputError(f"{weights_path}: tensor {a_key} has rank 0")
        if 0 in lora_b.shape or 0 in lora_a.shape:
            raise InputError(f"{weights_path}: tensors {a_key} {list(lora_a.shape)} and {b_key} {list(lora_b.shape)} "
                             "make an empty layer")
        if lora_b.shape[1] != rank:
            raise InputError(
                f"{weights_path}: shape mismatch: {a_key} is {tuple(lora_a.shape)} but {b_key} is "
                f"{tuple(lora_b.shape)} (lora_B must be d_out × {rank})"
            )
        expected = _expected_rank(config, module)
        if expected is not None and expected != rank:
            raise InputError(
                f"{weights_path}: tensor {a_key} has rank {rank} but adapter_config.json says r={expected} for {module}"
            )
        check_layer_size(weights_path, module, (lora_b.shape[0], lora_a.shape[1]))
        scale = lora_scaling(config, module, rank)
        left, right = lora_b.to(torch.float32) * scale, lora_a.to(torch.float32)  # float8 has few kernels: check in float32
        try:
            check_finite(weights_path, a_key, right)
            check_finite(weights_path, b_key, lora_b.to(torch.float32))
            check_finite(weights_path, f"{b_key} × scaling {scale:g} (lora_alpha / r)", left)
        except NonFiniteError as exc:
            if not nonfinite_layers_skipped():
                raise
            warnings.warn(f"skipping {module}: {exc}", stacklevel=2)
            skipped.append(SkippedLayer(module, "non-finite values (NaN/Inf) in its LoRA factors"))
            continue
        layers.append(
            LayerDelta.from_factors(
                module,
                left,
                right,
                rank=rank,
                scaling=scale,
                dtype=str(lora_a.dtype).replace("torch.", ""),
                stored_values=lora_a.numel() + lora_b.numel(),
                **({WEIGHT_SHAPE: weight_shape} if weight_shape is not None else {}),
            )
        )
    if not layers:
        raise InputError(f"{weights_path}: no convertible LoRA layers (skipped: {', '.join(s.name for s in skipped)})")
    return AdapterDeltas(
        source=str(weights_path),
        kind="peft-lora",
        layers=layers,
        config=config,
        passthrough=passthrough,
        skipped=skipped,
        metadata=metadata,
    )
