"""Read safetensors files with plain reads, never a memory map, refusing anything but a regular file.

``safetensors.safe_open`` maps the file: if the file shrinks while it is mapped (another process
truncates it, a network share drops it) the next touch of a vanished page kills the process with
SIGBUS, which no Python code can catch; and opening a FIFO blocks in C where SIGINT/SIGTERM never
arrive. Here the header is parsed and validated in Python against the file size (the same rules
safetensors enforces), tensors are read with ``os.pread`` into fresh buffers, and a short read is a
one-line InputError naming the file and the tensor.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..text_safety import escape_controls
from ..errors import InputError

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# Tensors one file may declare: counted in the raw header before it is parsed (1.5 M empty entries took 2.75 GB);
# real adapters and checkpoint shards hold a few thousand at most.
MAX_TENSORS_PER_FILE = 300_000
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"),
                     ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
ITEMSIZE = {name: torch.empty(0, dtype=dtype).element_size() for name, dtype in DTYPES.items()}


def torch_dtype_name(safetensors_dtype: str) -> str:
    """torch's name of a safetensors dtype (``BF16`` → ``bfloat16``); unknown ones lower-cased."""
    dtype = DTYPES.get(safetensors_dtype)
    return str(dtype).replace("torch.", "") if dtype is not None else safetensors_dtype.lower()

# Computation dtypes: float8 factors are stored values, but torch has few kernels for them.
LOW_PRECISION_FLOATS = tuple(DTYPES[n] for n in ("F8_E4M3", "F8_E5M2") if n in DTYPES)


def printable(name: str) -> str:
    """``name`` safe to print on one terminal line: control and bidi characters escaped (text_safety)."""
    return escape_controls(name)


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, refusing FIFOs, devices and folders without blocking on them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise InputError(f"{path}: is {kind}; expected a regular file")
    os.set_blocking(fd, True)
    return fd


def read_regular_bytes(path: Path, limit: int | None = None) -> bytes:
    """The whole content of a regular file (refused if larger than ``limit`` bytes)."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise InputError(f"{path}: {size} bytes, more than the {limit} allowed for this kind of file")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise InputError(f"{path}: more than the {limit} bytes allowed for this kind of file")
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {printable(key)!r}")
        out[key] = value
    return out


class TensorSlice:
    """What ``safe_open(...).get_slice`` offers that wavecompress uses: the shape and dtype."""

    def __init__(self, shape: list[int], dtype: str) -> None:
        self._shape, self._dtype = shape, dtype

    def get_shape(self) -> list[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype


class SafetensorsFile:
    """An open safetensors file: validated header, tensors read on demand with ``os.pread``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = open_regular(self.path)
        try:
            self._parse_header()
        except BaseException:
            os.close(self._fd)
            raise

    def _fail(self, why: str) -> InputError:
        return InputError(f"{self.path}: not a valid safetensors file ({why})")

    def _parse_header(self) -> None:
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        if len(head) < 8:
            raise self._fail(f"only {len(head)} bytes")
        length = int.from_bytes(head, "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise self._fail(f"the header claims {length} bytes but the file has {size}")
        raw = os.pread(self._fd, length, 8)
        if len(raw) != length:
            raise InputError(f"{self.path}: the file shrank while it was read")
        if (declared := raw.count(b'"data_offsets"')) > MAX_TENSORS_PER_FILE:
            raise self._fail(f"the header declares {declared} tensors, more than the {MAX_TENSORS_PER_FILE} wavecompress reads")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self._fail(f"header is not JSON: {str(exc)[:120]}") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._fail("__metadata__ must map strings to strings")
        self._metadata: dict[str, str] = dict(metadata)
        self._entries: dict[str, tuple[str, list[int], int, int]] = {}
        spans = []
        for key, entry in header.items():
            if printable(key) != key:
                raise InputError(f"{self.path}: tensor name {printable(key)!r} holds control characters (newline, escape, ...); refusing it")
            self._entries[key] = self._entry(key, entry)
            spans.append((self._entries[key][2], self._entries[key][3], key))
        self._data_start = 8 + length
        position = 0
        for begin, end, key in sorted(spans):
            if begin != position:
                raise self._fail(f"tensor {printable(key)} does not start where the previous one ends")
            position = end
        if self._data_start + position != size:
            what = "is truncated" if self._data_start + position > size else "has bytes after the last tensor"
            raise self._fail(f"the data section {what}: the header covers {self._data_start + position} bytes, the file has {size}")

    def _entry(self, key: str, entry: Any) -> tuple[str, list[int], int, int]:
        name = printable(key)
        if not isinstance(entry, dict):
            raise self._fail(f"entry {name} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise self._fail(f"tensor {name} has unsupported dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise self._fail(f"tensor {name} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int and n >= 0 for n in offsets)):
            raise self._fail(f"tensor {name} has invalid data_offsets")
        numel = 1
        for n in shape:
            numel *= n
        if offsets[1] - offsets[0] != numel * ITEMSIZE[dtype]:
            raise self._fail(f"tensor {name}: shape {shape} × {dtype} does not match its {offsets[1] - offsets[0]} bytes")
        return dtype, shape, offsets[0], offsets[1]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def keys(self) -> list[str]:
        return list(self._entries)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def get_slice(self, key: str) -> TensorSlice:
        dtype, shape, _, _ = self._entries[key]
        return TensorSlice(shape, dtype)

    def nbytes(self, key: str) -> int:
        _, _, begin, end = self._entries[key]
        return end - begin

    def get_tensor(self, key: str) -> torch.Tensor:
        """The tensor ``key`` in its stored dtype, read with plain reads (a shrunk file is an InputError)."""
        dtype, shape, begin, end = self._entries[key]
        buffer = bytearray(end - begin)
        view, done = memoryview(buffer), 0
        try:
            while done < len(buffer):
                got = os.preadv(self._fd, [view[done:]], self._data_start + begin + done)
                if got == 0:
                    raise InputError(f"{self.path}: tensor {printable(key)} is truncated (the file shrank while it was read)")
                done += got
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read tensor {printable(key)} ({exc.strerror})") from None
        if not buffer:
            return torch.empty(shape, dtype=DTYPES[dtype])
        flat = torch.frombuffer(buffer, dtype=torch.uint8)
        return flat.view(DTYPES[dtype]).reshape(shape)

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def open_safetensors(path: str | Path) -> Iterator[SafetensorsFile]:
    """``safe_open(path, framework="pt")`` without a memory map; errors are one-line InputErrors."""
    handle = SafetensorsFile(path)
    try:
        yield handle
    finally:
        handle.close()
