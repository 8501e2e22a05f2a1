"""Model checkpoints read tensor by tensor: one safetensors file, a sharded folder, or a model folder.

Only the headers are read when a checkpoint is opened; tensors are loaded one at a time with
``safetensors.safe_open`` for their headers and plain block reads for the data of 2-D float
tensors, so peak memory stays near one float32 tensor (no mapped file pages, no full-size copies).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from ..errors import InputError
from .safetensors_file import DTYPES, open_regular, open_safetensors, printable
from .safetensors_reader import check_finite, check_readable_file, read_json

INDEX_NAME = "model.safetensors.index.json"
# Rows are read in blocks of about this many values into one reused buffer. At torch's grain
# size (32768) each elementwise op stays on one thread and in cache: measured on 2 busy cores,
# larger blocks made the threaded ops 10-100× slower, smaller ones pay Python overhead.
BLOCK_ELEMENTS = 1 << 15
_DTYPES = {name: dtype for name, dtype in DTYPES.items() if dtype.is_floating_point}  # float8 included
SINGLE_NAME = "model.safetensors"
# The module's own name, not a parent's: ``time_embedding.linear_1`` (a diffusers UNet) is a Linear layer.
_EMBEDDING_NAME = re.compile(r"(^|\.)(embed[^.]*|[a-z_]*embeddings?|wte|wpe|shared|word_embeddings|position_embeddings)$")


class Checkpoint:
    """A checkpoint's tensor names, shapes and dtypes from its headers; tensors loaded on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files = self._locate(self.path)
        self.location: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.metadata: dict[str, str] = {}
        self._headers: dict[Path, tuple[int, dict[str, Any]]] = {}
        weight_map = self._weight_map(self.path)
        for file in self.files:
            with open_safetensors(file) as reader:
                if not self.metadata:
                    self.metadata = reader.metadata()
                for key in reader.keys():
                    owner = weight_map.get(key)
                    if isinstance(owner, str) and owner != file.name:
                        continue  # a stale copy: the index's weight_map says which shard holds the tensor
                    if key in self.location:
                        raise InputError(f"{self.path}: tensor {printable(key)} is in two shards ({self.location[key].name} and "
                                         f"{file.name}) and the index does not say which one holds it; refusing to pick one")
                    view = reader.get_slice(key)
                    self.location[key] = file
                    self.shapes[key] = tuple(int(n) for n in view.get_shape())
                    self.dtypes[key] = str(view.get_dtype())
        if not self.location:
            raise InputError(f"{self.path}: the checkpoint holds no tensors")

    @staticmethod
    def _weight_map(path: Path) -> dict[str, Any]:
        """The index's {tensor: shard} map when ``path`` is (or holds) a sharded checkpoint's index, else {}."""
        index = path if path.name.endswith(".index.json") else path / INDEX_NAME
        if not index.is_file():
            return {}
        weight_map = read_json(index).get("weight_map")
        return weight_map if isinstance(weight_map, dict) else {}

    @staticmethod
    def _locate(path: Path) -> list[Path]:
        """The safetensors files of a checkpoint path (file, sharded folder or model folder)."""
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if not path.is_dir():
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
        names = set()
        for name in weight_map.values():
            if not isinstance(name, str) or not name:
                raise InputError(f"{index}: weight_map values must be shard file names, got {str(name)[:40]!r}")
            # A shard is a file name in the index's folder: no folders, no '..', no absolute paths
            # (symlinked shards, as in the huggingface_hub cache, are fine).
            if "/" in name or "\\" in name or name in (".", ".."):
                raise InputError(f"{index}: shard {name[:80]!r} is not a file name in the checkpoint folder; refusing it")
            names.add(name)
        files = sorted(index.parent / name for name in names)
        for file in files:
            if not file.exists():
                raise InputError(f"{index}: shard {file.name} is listed but missing")
            os.close(open_regular(file))  # a FIFO or folder is refused here, never opened for reading
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
        with open_safetensors(self.location[key]) as reader:
            return reader.get_tensor(key)

    def _data_start(self, file: Path) -> tuple[int, dict[str, Any]]:
        """(offset of the data section, parsed header) of one safetensors file."""
        if file not in self._headers:
            with open(file, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                self._headers[file] = (8 + size, json.loads(handle.read(size)))
        return self._headers[file]

    def row_blocks(self, key: str, block_elements: int = BLOCK_ELEMENTS) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, block) over a 2-D float tensor, read with plain file reads into one reused
        buffer: no mapping, so neither the file's pages nor a full-size copy count in the RSS."""
        dtype = _DTYPES.get(self.dtypes[key])
        shape = self.shapes[key]
        if dtype is None or len(shape) != 2:
            yield 0, self.get(key)
            return
        file = self.location[key]
        data_start, header = self._data_start(file)
        begin = data_start + int(header[key]["data_offsets"][0])
        rows, cols = shape
        step = max(1, block_elements // max(cols, 1))
        buffer = torch.empty((min(step, rows), cols), dtype=dtype)
        row_bytes = cols * buffer.element_size()
        try:
            with open(file, "rb", buffering=0) as handle:
                handle.seek(begin)
                for first in range(0, rows, step):
                    block = buffer[: min(step, rows - first)]
                    view = memoryview(block.view(torch.uint8).numpy()).cast("B")
                    if handle.readinto(view) != block.shape[0] * row_bytes:
                        raise InputError(f"{file}: tensor {key} is truncated")
                    yield first, block
        except OSError as exc:
            raise InputError(f"{file}: cannot read tensor {key} ({exc})") from None

    def get_float32(self, key: str, transpose: bool = False, check: bool = True) -> torch.Tensor:
        """A tensor as float32, read block by block: only the float32 result is allocated in full.

        ``check=False`` skips the finiteness pass for callers that check what they compute from it."""
        out = torch.empty(self.shapes[key], dtype=torch.float32)
        for first, block in self.row_blocks(key):
            out[first : first + block.shape[0]].copy_(block)
        if check:
            check_finite_fast(self.location[key], key, out)
        return out.T.contiguous() if transpose else out

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


def float32_difference(tuned: Checkpoint, base: Checkpoint, key: str) -> torch.Tensor:
    """tuned[key] − base[key] in float32, both read block by block in lockstep: the result is the
    only full-size allocation, and each block is converted and subtracted while it is in cache."""
    out = torch.empty(tuned.shapes[key], dtype=torch.float32)
    scratch: torch.Tensor | None = None
    for (first, mine), (_, theirs) in zip(tuned.row_blocks(key), base.row_blocks(key)):
        rows = out[first : first + mine.shape[0]]
        rows.copy_(mine)
        if theirs.dtype != torch.float32:
            if scratch is None:
                scratch = torch.empty(theirs.shape, dtype=torch.float32)
            theirs = scratch[: theirs.shape[0]].copy_(theirs)
        rows.sub_(theirs)
    return out


def check_finite_fast(path: Path, key: str, tensor: torch.Tensor) -> None:
    """check_finite at the cost of one reduction: only a non-finite norm triggers the exact count."""
    if not math.isfinite(float(torch.linalg.vector_norm(tensor))):
        check_finite(path, key, tensor)


def looks_like_embedding(module: str) -> bool:
    """Name rule for checkpoints without a config: embedding tables are not linear layers."""
    return bool(_EMBEDDING_NAME.search(module))


def write_index(folder: Path, weight_map: dict[str, str]) -> None:
    """A ``model.safetensors.index.json`` for shards written by hand (benchmarks, tests)."""
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
