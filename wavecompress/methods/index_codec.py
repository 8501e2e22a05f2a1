"""Compact coding of sorted top-k flat indices: uint16 gaps with an escape (2 bytes an index).

A top-k support is a strictly increasing list of flat indices i_0 < i_1 < …. We store the gaps
d_j = i_j − i_{j−1} (i_{−1} = −1, so every d_j ≥ 1) as d_j − 1 in uint16. A gap too large for
one symbol is written as ``(d_j − 1) // ESCAPE`` copies of ``ESCAPE`` (each meaning "add 65535
and read on") followed by the remainder. Decoding is one cumulative sum.

The alternative, row-compressed storage (a uint16 count per row plus a uint16 column per index),
costs 2·d_out more bytes a layer; on the fixture the gaps were smaller at every budget measured
(``python benchmarks/index_coding.py``), so gaps are what files hold. Row coding stays here for
that measurement. Pure tensor code: every loader, ``reconstruct``, the PEFT layer, the fine-tune
and the kernels decode through :func:`decode_gaps` / :func:`stored_indices`.
"""

from __future__ import annotations

import torch

ESCAPE = 65535
GAPS_SUFFIX = "_index_gaps"  # compact key: "<prefix>_index_gaps" (uint16)
PLAIN_SUFFIX = "_indices"  # earlier files: "<prefix>_indices" (int32/int64 flat indices)


def encode_gaps(indices: torch.Tensor) -> torch.Tensor:
    """uint16 gap codes of strictly increasing non-negative flat ``indices`` (1-D)."""
    flat = indices.reshape(-1).to(torch.int64)
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.uint16, device=indices.device)
    gaps = torch.diff(flat, prepend=flat.new_full((1,), -1)) - 1
    if bool((gaps < 0).any()):
        raise ValueError("indices must be non-negative and strictly increasing to be gap-coded")
    escapes = gaps // ESCAPE
    counts = escapes + 1
    codes = torch.full((int(counts.sum()),), ESCAPE, dtype=torch.int64, device=flat.device)
    codes[torch.cumsum(counts, 0) - 1] = gaps % ESCAPE
    return codes.to(torch.uint16)


def decode_gaps(codes: torch.Tensor) -> torch.Tensor:
    """int64 flat indices from :func:`encode_gaps` codes (any integer dtype holding them)."""
    wide = codes.reshape(-1).to(torch.int64) & 0xFFFF  # int16-viewed codes decode the same
    final = wide != ESCAPE
    return torch.cumsum(wide + final.to(torch.int64), 0)[final] - 1


def encode_rows(indices: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-compressed form of sorted flat ``indices`` in a ``shape`` matrix: (per-row counts, columns), uint16."""
    rows, cols = int(shape[0]), int(shape[1])
    if cols > ESCAPE + 1:
        raise ValueError(f"row coding needs at most {ESCAPE + 1} columns, got {cols}")
    flat = indices.reshape(-1).to(torch.int64)
    counts = torch.bincount(flat // cols, minlength=rows)
    return counts.to(torch.uint16), (flat % cols).to(torch.uint16)


def decode_rows(counts: torch.Tensor, columns: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """int64 flat indices from :func:`encode_rows` output."""
    rows = torch.repeat_interleave(torch.arange(int(shape[0]), device=counts.device), counts.to(torch.int64))
    return rows * int(shape[1]) + columns.to(torch.int64)


def stored_indices(tensors: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The flat indices a layer stores under ``prefix`` (gap-coded, or plain in earlier files), int64."""
    if prefix + GAPS_SUFFIX in tensors:
        return decode_gaps(tensors[prefix + GAPS_SUFFIX])
    return tensors[prefix + PLAIN_SUFFIX].to(torch.int64)


def index_tensor(key: str, indices: torch.Tensor) -> torch.Tensor:
    """The tensor to store under ``key`` for sorted flat ``indices``: gap codes for a ``*_index_gaps`` key."""
    if key.endswith(GAPS_SUFFIX):
        return encode_gaps(indices)
    return indices.to(torch.int32 if indices.numel() == 0 or int(indices.max()) < 2**31 else torch.int64)


def index_bytes(indices: torch.Tensor, shape: tuple[int, int]) -> dict[str, int]:
    """Bytes of each candidate index coding of sorted ``indices`` (for the measurement that chose gaps)."""
    counts, columns = encode_rows(indices, shape) if shape[1] <= ESCAPE + 1 else (None, None)
    return {
        "int32": 4 * indices.numel(),
        "gaps": 2 * encode_gaps(indices).numel(),
        "rows": 2 * (counts.numel() + columns.numel()) if counts is not None else -1,
    }
