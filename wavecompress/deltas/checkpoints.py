"""Model checkpoints read tensor by tensor: one safetensors file, a sharded folder, or a model folder.

Only the headers are read when a checkpoint is opened; tensors are loaded one at a time with
``safetensors.safe_open`` (row blocks for large ones), so peak memory stays near one tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import InputError
from .safetensors_reader import check_finite, check_readable_file, read_json

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Rows are read in blocks of at most this many elements when a tensor is converted to float32.
BLOCK_ELEMENTS = 1 << 22
_EMBEDDING_NAME = re.compile(r"(^|\.)(embed[^.]*|[a-z_]*embeddings?|wte|wpe|shared|word_embeddings|position_embeddings)(\.|$)")


class Checkpoint:
    """A checkpoint's tensor names, shapes and dtypes from its headers; tensors loaded on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files = self._locate(self.path)
        self.location: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.metadata: dict[str, str] = {}
        for file in self.files:
            try:
                with safe_open(str(file), framework="pt") as reader:
                    if not self.metadata:
                        self.metadata = dict(reader.metadata() or {})
                    for key in reader.keys():
                        view = reader.get_slice(key)
                        self.location[key] = file
                        self.shapes[key] = tuple(int(n) for n in view.get_shape())
                        self.dtypes[key] = str(view.get_dtype())
            except SafetensorError as exc:
                raise InputError(f"{file}: not a valid safetensors file ({exc})") from None
            except (OSError, RuntimeError, ValueError) as exc:
                raise InputError(f"{file}: cannot read safetensors header ({exc})") from None
        if not self.location:
            raise InputError(f"{self.path}: the checkpoint holds no tensors")

    @staticmethod
    def _locate(path: Path) -> list[Path]:
        """The safetensors files of a checkpoint path (file, sharded folder or model folder)."""
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_file():
            if path.name.endswith(".index.json"):
                return Checkpoint._from_index(path)
            check_readable_file(path)
            return [path]
        index = path / INDEX_NAME
        if index.exists():
            return Checkpoint._from_index(index)
        single = path / SINGLE_NAME
        if single.exists():
            return [single]
        files = sorted(path.glob("*.safetensors"))
        if len(files) == 1:
            return files
        if (path / "pytorch_model.bin").exists():
            raise InputError(f"{path / 'pytorch_model.bin'}: pickled .bin checkpoints are not read; re-save with safe_serialization=True")
        if files:
            raise InputError(f"{path}: {len(files)} safetensors files but no {INDEX_NAME} to say which tensors they hold")
        raise InputError(f"{path}: no {SINGLE_NAME}, {INDEX_NAME} or other safetensors file in this folder")

    @staticmethod
    def _from_index(index: Path) -> list[Path]:
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{index}: no 'weight_map' in the index")
        files = sorted({index.parent / name for name in weight_map.values()})
        for file in files:
            if not file.exists():
                raise InputError(f"{index}: shard {file.name} is listed but missing")
        return files

    @cached_property
    def config(self) -> dict[str, Any]:
        """The transformers ``config.json`` beside the weights, or {} when there is none."""
        folder = self.path if self.path.is_dir() else self.path.parent
        config = folder / "config.json"
        return read_json(config) if config.exists() else {}

    @property
    def name(self) -> str:
        """What an adapter's ``base_model_name_or_path`` should say about this checkpoint."""
        named = self.config.get("_name_or_path")
        if named and not Path(str(named)).is_absolute() and named != ".":
            return str(named)
        return str(self.path if self.path.is_dir() else self.path.parent if self.path.name in (SINGLE_NAME, INDEX_NAME) else self.path)

    def keys(self) -> list[str]:
        return sorted(self.location)

    def __contains__(self, key: str) -> bool:
        return key in self.location

    def numel(self, key: str) -> int:
        total = 1
        for n in self.shapes[key]:
            total *= n
        return total

    def get(self, key: str) -> torch.Tensor:
        """One tensor in its stored dtype."""
        try:
            with safe_open(str(self.location[key]), framework="pt") as reader:
                return reader.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"{self.location[key]}: cannot read tensor {key} ({exc})") from None

    def iter_rows(self, key: str, block_elements: int = BLOCK_ELEMENTS) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, block) pairs covering a tensor in row blocks of about ``block_elements``."""
        shape = self.shapes[key]
        rows = shape[0] if shape else 1
        per_row = max(1, self.numel(key) // max(rows, 1))
        step = max(1, block_elements // per_row)
        try:
            with safe_open(str(self.location[key]), framework="pt") as reader:
                if len(shape) == 0:
                    yield 0, reader.get_tensor(key)
                    return
                view = reader.get_slice(key)
                for start in range(0, rows, step):
                    yield start, view[start : start + step]
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"{self.location[key]}: cannot read tensor {key} ({exc})") from None

    def get_float32(self, key: str, transpose: bool = False) -> torch.Tensor:
        """A tensor as float32, read in row blocks so no full-size temporary of another dtype exists."""
        out = torch.empty(self.shapes[key], dtype=torch.float32)
        for start, block in self.iter_rows(key):
            out[start : start + block.shape[0]] = block
        check_finite(self.location[key], key, out)
        return out.T.contiguous() if transpose else out

    def subtract_into(self, out: torch.Tensor, key: str) -> torch.Tensor:
        """``out -= tensor[key]`` block by block (float32 accumulation), returning ``out``."""
        for start, block in self.iter_rows(key):
            out[start : start + block.shape[0]] -= block.to(torch.float32)
        return out

    def module_weight_key(self, module: str) -> str:
        """The key of ``<module>.weight``, allowing one checkpoint/adapter prefix difference."""
        exact = f"{module}.weight"
        if exact in self.location:
            return exact
        longer = [key for key in self.location if key.endswith("." + exact)]
        if len(longer) == 1:
            return longer[0]
        shorter = [key for key in self.location if key.endswith(".weight") and exact.endswith("." + key)]
        if len(shorter) == 1:
            return shorter[0]
        where = f"{len(longer)} keys end with it" if longer else "no key matches"
        raise InputError(f"{self.path}: no base weight {exact} ({where})")

    @cached_property
    def module_kinds(self) -> dict[str, str]:
        """{module path: 'linear' | 'conv1d' | 'embedding' | other class name} from config.json's
        architecture built on the meta device; {} when there is no usable config."""
        architectures = self.config.get("architectures") or []
        if not architectures:
            return {}
        try:
            import transformers
            from transformers import AutoConfig

            cls = getattr(transformers, architectures[0], None)
            if cls is None:
                return {}
            folder = self.path if self.path.is_dir() else self.path.parent
            config = AutoConfig.from_pretrained(str(folder))
            with torch.device("meta"):
                model = cls(config)
        except Exception:  # noqa: BLE001 - an unknown architecture just falls back to name rules
            return {}
        from transformers.pytorch_utils import Conv1D

        kinds = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                kinds[name] = "linear"
            elif isinstance(module, Conv1D):
                kinds[name] = "conv1d"
            elif isinstance(module, torch.nn.Embedding):
                kinds[name] = "embedding"
            else:
                kinds[name] = type(module).__name__
        return kinds


def looks_like_embedding(module: str) -> bool:
    """Name rule for checkpoints without a config: embedding tables are not linear layers."""
    return bool(_EMBEDDING_NAME.search(module))


def write_index(folder: Path, weight_map: dict[str, str]) -> None:
    """A ``model.safetensors.index.json`` for shards written by hand (benchmarks, tests)."""
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
