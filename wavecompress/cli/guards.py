"""Checks a command runs on its output paths before any heavy work: nothing it writes may replace an input."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from ..formats.atomic import check_output_file, check_output_folder, remove_stale_staging


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _contains(folder: Path, path: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved through symlinks)."""
    folder, path = _real(folder), _real(path)
    return path == folder or folder in path.parents


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return _real(first) == _real(second)


def check_outputs(inputs: Iterable[Path | None], out_dir: Path | None = None, files: Iterable[tuple[str, Path | None]] = (),
                  force: bool = False) -> None:
    """Refuse, before anything is read or written, an output that would replace or overwrite an input.

    ``out_dir`` (a folder replaced whole with --force) must not be an input or hold one; each of
    ``files`` ((option, path) pairs, e.g. ("--report", report.json)) must not overwrite an input or
    a file of an input folder (not even with --force), lie inside ``out_dir``, be a folder, or be in
    an unwritable place; replacing an existing file that is not an earlier report/calibration needs --force.
    """
    sources = [Path(p) for p in inputs if p is not None and os.path.lexists(p)]
    for source in list(sources):  # a weights file's config and card beside it are inputs too
        if not source.is_dir():
            sources += [s for name in ("adapter_config.json", "README.md") if (s := source.parent / name).is_file()]
    if out_dir is not None:
        if Path(out_dir).parent.is_dir():
            remove_stale_staging(out_dir)  # a killed run's old output is put back before it is judged
        check_output_folder(out_dir, force, hint="use --force to replace it")
        for source in sources:
            if _contains(out_dir, source):
                what = "is" if _real(out_dir) == _real(source) else "holds"
                raise InputError(f"--out {out_dir}: {what} the input {source}; replacing it would destroy the input "
                                 "(choose another --out)")
    for option, path in files:
        if path is None:
            continue
        path = Path(path)
        for source in sources:
            if not path.exists():
                break
            inside = source.is_dir() and _contains(source, path)
            if _same_file(path, source) or inside:
                raise InputError(f"{option} {path}: is {'inside ' if inside else ''}the input {source}; "
                                 f"writing it would overwrite the input (choose another {option} path)")
        if out_dir is not None and _contains(out_dir, path):
            raise InputError(f"{option} {path}: is inside the output folder {out_dir}; choose a path outside it")
        check_output_file(path)
        if path.exists() and not force and not _earlier_output(path):
            raise InputError(f"{option} {path}: already exists and is not an earlier wavecompress report or "
                             "calibration file (use --force to replace it)")


def _earlier_output(path: Path) -> bool:
    """Whether ``path`` is a report or calibration file wavecompress wrote (replaced without --force, as before)."""
    from ..deltas.safetensors_file import open_safetensors
    from ..deltas.safetensors_reader import read_json

    try:
        if path.suffix == ".safetensors":
            with open_safetensors(path) as reader:
                return "wavecompress.calibration" in reader.metadata()
        data = read_json(path)
        return "overall" in data and "method" in data
    except InputError:
        return False


MAX_SEED = 2**63 - 1


def check_method_options(scaling: float | None, seed: int | None) -> None:
    """Refuse --scaling that is zero or not finite and --seed outside 0..2^63-1 (torch's generator range)."""
    if scaling is not None and (not math.isfinite(scaling) or scaling == 0):
        raise InputError(f"--scaling {scaling!r}: must be a finite, non-zero number (PEFT WaveFT's default is 25)")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed {seed}: must be between 0 and {MAX_SEED}")
