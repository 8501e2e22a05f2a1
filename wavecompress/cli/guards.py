"""Checks a command runs on its output paths before any heavy work: nothing it writes may replace an input."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from ..formats.atomic import remove_stale_staging
from ..output_guard import check_file_output, check_folder_output, resolve_output


def check_outputs(inputs: Iterable[Path | None], out_dir: Path | None = None, files: Iterable[tuple[str, Path | None]] = (),
                  force: bool = False) -> None:
    """Refuse, before anything is read or written, an output that would replace or overwrite an input.

    Every path goes through the output guard (wavecompress/output_guard.py), resolved: ``out_dir`` (a
    folder replaced whole with --force, and only if it is an earlier output) must not be, hold or lie
    inside an input; each of ``files`` ((option, path) pairs, e.g. ("--report", report.json)) must not
    overwrite an input or a file of an input's folder, lie inside ``out_dir``, be a folder, symlink or
    device, or be in an unwritable place; an existing file is replaced only if wavecompress wrote it.
    """
    sources = [Path(p) for p in inputs if p is not None]
    if out_dir is not None:
        if resolve_output(out_dir).parent.is_dir():
            remove_stale_staging(resolve_output(out_dir))  # a killed run's old output is put back before it is judged
        check_folder_output(out_dir, sources, force, hint="use --force to replace it", option="--out")
    for option, path in files:
        if path is None:
            continue
        if out_dir is not None and resolve_output(out_dir) in [resolve_output(path), *resolve_output(path).parents]:
            raise InputError(f"{option} {path}: is inside the output folder {out_dir}; choose a path outside it")
        check_file_output(path, sources, force, option=option)


MAX_SEED = 2**63 - 1


def check_method_options(scaling: float | None, seed: int | None) -> None:
    """Refuse --scaling that is zero or not finite and --seed outside 0..2^63-1 (torch's generator range)."""
    if scaling is not None and (not math.isfinite(scaling) or scaling == 0):
        raise InputError(f"--scaling {scaling!r}: must be a finite, non-zero number (PEFT WaveFT's default is 25)")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed {seed}: must be between 0 and {MAX_SEED}")
