"""Calibration data: each target layer's input second moment C = XᵀX/n, from a base model and text.

Forward pre-hooks on the target modules add XᵀX of every batch into one fp32 Gram per layer
(activations are never kept), over a few hundred tokens of a text file. The result is saved as
safetensors (one d_in×d_in tensor per layer name, token count in the metadata) and read back
lazily, one layer's Gram at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any
from pathlib import Path

import torch

from .errors import InputError

DEFAULT_TOKENS = 512
DEFAULT_SEQUENCE = 128


class Calibration:
    """{layer name: C = XᵀX/n} held in memory or read lazily from a saved safetensors file."""

    def __init__(self, grams: dict[str, torch.Tensor] | None = None, tokens: int = 0, source: str = "",
                 path: Path | None = None) -> None:
        self._grams = dict(grams or {})
        self.tokens = tokens
        self.source = source
        self.path = path

    @property
    def names(self) -> list[str]:
        if self.path is not None:
            from .deltas.safetensors_file import open_safetensors

            with open_safetensors(self.path) as handle:
                return sorted(handle.keys())
        return sorted(self._grams)

    def gram(self, name: str) -> torch.Tensor | None:
        """C for layer ``name`` (float32), or None when the calibration has no entry for it."""
        if name in self._grams:
            return self._grams[name]
        if self.path is None:
            return None
        from .deltas.safetensors_file import open_safetensors

        with open_safetensors(self.path) as handle:
            return handle.get_tensor(name).float() if name in handle.keys() else None

    def describe(self) -> str:
        return f"{self.tokens} tokens" + (f" from {self.source}" if self.source else "")

    def save(self, path: str | Path) -> Path:
        """Write every Gram to a safetensors file (atomically)."""
        from .formats.atomic import atomic_write_bytes
        from .formats.safetensors_writer import deterministic_bytes

        grams = {name: self.gram(name).contiguous() for name in self.names}
        metadata = {"wavecompress.calibration": "second_moment", "tokens": str(self.tokens), "source": self.source}
        atomic_write_bytes(Path(path), deterministic_bytes(grams, metadata))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """A saved activations file (safetensors of per-layer second moments)."""
        from .deltas.safetensors_file import open_safetensors

        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such calibration file")
        try:
            with open_safetensors(path) as handle:
                metadata = handle.metadata() or {}
                for name in handle.keys():
                    shape = handle.get_slice(name).get_shape()
                    if len(shape) != 2 or shape[0] != shape[1]:
                        raise InputError(f"{path}: tensor {name} is not a square second moment (shape {shape})")
        except InputError as exc:
            if "not a valid safetensors file" not in str(exc):
                raise
            raise InputError(f"{exc}; a text file as --calibration needs --base-model") from None
        return cls(tokens=int(metadata.get("tokens", 0)), source=metadata.get("source", path.name), path=path)


def match_modules(model: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.nn.Module]:
    """{layer name: module of ``model``}: exact names, else the unique module whose dotted name is a
    suffix of the layer name or the other way round (PEFT prefixes and task heads differ)."""
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if name in modules:
            found[name] = modules[name]
            continue
        hits = [m for m in modules if m and (name.endswith("." + m) or m.endswith("." + name))]
        if not hits:
            raise InputError(f"base model has no module matching layer {name}")
        best = max(hits, key=len)
        if sum(len(h) == len(best) for h in hits) > 1:
            raise InputError(f"layer {name} matches several base-model modules: {', '.join(sorted(hits)[:4])}")
        found[name] = modules[best]
    return found


@torch.no_grad()
def collect_second_moments(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], names: Sequence[str],
                           source: str = "") -> Calibration:
    """Run ``model`` on ``batches`` and accumulate C = XᵀX/n of each named module's input (fp32)."""
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            if name not in grams:
                grams[name] = torch.zeros(x.shape[1], x.shape[1])
                counts[name] = 0
            grams[name].addmm_(x.T, x)
            counts[name] += x.shape[0]

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in match_modules(model, names).items()]
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(**batch)
            tokens += int(batch["input_ids"].numel())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in names if name not in grams]
    if missing:
        raise InputError(f"calibration: the base model never called layer {missing[0]}")
    return Calibration({name: grams[name] / counts[name] for name in names}, tokens=tokens, source=source)


def token_batches(tokenizer, text: str, max_tokens: int = DEFAULT_TOKENS, seq_len: int = DEFAULT_SEQUENCE) -> list[dict]:
    """One unpadded sequence per line of ``text`` (long lines cut into pieces, each truncated to
    ``seq_len`` tokens with the model's special tokens), until ``max_tokens`` tokens."""
    piece = seq_len * 4  # characters: a few per token, cut on whitespace below
    batches, used = [], 0
    for line in text.splitlines():
        words, chunk = line.split(), []
        pieces = []
        for word in words:
            chunk.append(word)
            if sum(len(w) + 1 for w in chunk) >= piece:
                pieces.append(" ".join(chunk))
                chunk = []
        if chunk:
            pieces.append(" ".join(chunk))
        for part in pieces:
            ids = tokenizer(part, truncation=True, max_length=min(seq_len, max_tokens - used))["input_ids"]
            if not ids:
                continue
            batches.append({"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)})
            used += len(ids)
            if used >= max_tokens:
                return batches
    if not batches:
        raise InputError("calibration text holds no tokens")
    return batches


def calibrate(base_model: str | Path, text_file: str | Path, names: Sequence[str], max_tokens: int = DEFAULT_TOKENS,
              seq_len: int = DEFAULT_SEQUENCE) -> Calibration:
    """Second moments of ``names`` from a local transformers model folder run on a text file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    text_path, model_path = Path(text_file), Path(base_model)
    if not text_path.is_file():
        raise InputError(f"{text_path}: no such calibration text file")
    if not (model_path / "config.json").is_file():
        raise InputError(f"{model_path}: not a local transformers model folder (no config.json)")
    if not any(model_path.glob("*.safetensors")):
        pickled = sorted(p.name for p in model_path.glob("*.bin"))
        what = f"only pickled weights ({', '.join(pickled[:3])})" if pickled else "no .safetensors weights"
        raise InputError(f"{model_path}: {what}; pickled checkpoints are never loaded, re-save it with safe_serialization=True")
    try:
        text = text_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{text_path}: calibration text is not UTF-8 (or give a saved activations .safetensors file)") from None
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_path), local_files_only=True, dtype=torch.float32, use_safetensors=True)
    batches = token_batches(tokenizer, text, max_tokens, min(seq_len, getattr(model.config, "max_position_embeddings", seq_len)))
    return collect_second_moments(model, batches, names, source=text_path.name)


def calibration_for(source: Any, calibration: str | Path | None, base_model: str | Path | None = None,
                    tokens: int = DEFAULT_TOKENS, save_to: str | Path | None = None) -> Calibration | None:
    """None, a saved activations file, or second moments collected by running ``base_model`` on the
    ``calibration`` text for the layers of ``source`` (a path or AdapterDeltas)."""
    from .deltas.in_memory import as_adapter_deltas

    if calibration is None:
        if base_model is not None or save_to is not None:
            raise InputError("--base-model and --save-calibration need --calibration (a text file)")
        return None
    if base_model is None:
        return Calibration.load(calibration)
    deltas = as_adapter_deltas(source)
    names = getattr(deltas.layers, "names", None) or [layer.name for layer in deltas.layers]
    collected = calibrate(base_model, calibration, names, max_tokens=tokens)
    if save_to is not None:
        collected.save(save_to)
    return collected
