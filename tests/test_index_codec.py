"""Compact top-k index coding: exact round trips, escapes at the uint16 boundary, bytes as claimed."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wavecompress.methods.index_codec import (
    ESCAPE, decode_gaps, decode_rows, encode_gaps, encode_rows, index_bytes, stored_indices,
)


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=2**40), max_size=300))
def test_gaps_round_trip_any_sorted_set(values):
    indices = torch.tensor(sorted(values), dtype=torch.int64)
    codes = encode_gaps(indices)
    assert codes.dtype == torch.uint16
    assert torch.equal(decode_gaps(codes), indices)


def test_gap_escape_boundaries_are_exact():
    # a gap d (first index i: d = i + 1) is stored as d - 1, with (d - 1) // 65535 escapes first
    indices = torch.tensor([0, 65535, 65536, 131072, 131072 + 2 * 65535 + 1], dtype=torch.int64)
    codes = encode_gaps(indices)
    assert codes.tolist() == [0, 65534, 0, ESCAPE, 0, ESCAPE, ESCAPE, 0]
    assert decode_gaps(codes).tolist() == indices.tolist()
    assert decode_gaps(codes.view(torch.int16)).tolist() == indices.tolist()  # sign-viewed codes decode alike


def test_gaps_refuse_unsorted_or_repeated_indices():
    with pytest.raises(ValueError, match="strictly increasing"):
        encode_gaps(torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="strictly increasing"):
        encode_gaps(torch.tensor([5, 2]))
    assert encode_gaps(torch.zeros(0, dtype=torch.int64)).numel() == 0
    assert decode_gaps(torch.zeros(0, dtype=torch.uint16)).numel() == 0


def test_rows_round_trip_and_bytes():
    gen = torch.Generator().manual_seed(0)
    shape = (300, 700)
    indices = torch.sort(torch.randperm(shape[0] * shape[1], generator=gen)[:2000]).values
    counts, columns = encode_rows(indices, shape)
    assert torch.equal(decode_rows(counts, columns, shape), indices)
    sizes = index_bytes(indices, shape)
    assert sizes["int32"] == 8000 and sizes["rows"] == 2 * 300 + 2 * 2000
    assert sizes["gaps"] == 2 * 2000  # mean gap 105: no escapes


def test_stored_indices_reads_compact_and_earlier_plain_keys():
    indices = torch.tensor([1, 7, 70000], dtype=torch.int64)
    assert stored_indices({"waveft_index_gaps": encode_gaps(indices)}, "waveft").tolist() == [1, 7, 70000]
    assert stored_indices({"sparse_indices": indices.to(torch.int32)}, "sparse").tolist() == [1, 7, 70000]
