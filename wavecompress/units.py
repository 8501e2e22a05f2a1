"""Size units, one table for every option and variable that takes a size (``2MB``, ``512MiB``)."""

from __future__ import annotations

import re

# Lower-case unit → bytes: decimal (kB = 10^3) and binary (KiB = 2^10).
SIZE_UNITS: dict[str, int] = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_size_text(text: str) -> int | None:
    """Bytes of ``text`` (a number with an optional unit of SIZE_UNITS, any case), or None if it is not one."""
    match = _SIZE.fullmatch(text)
    if match is None or match.group(2).lower() not in SIZE_UNITS:
        return None
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])
