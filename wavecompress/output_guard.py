"""The one output guard every writer goes through (CLI commands, convert-many, ``CompressedAdapter.save``,
reconstruct, export, reports): an output never reaches an input or its files, never replaces a
symlink, a device node or a folder of the user's own files, and is judged again at the moment it
is swapped in. Paths are judged resolved: the deepest existing parent through ``realpath``, the
missing rest with ``..`` collapsed, so no spelling of a path slips past a check."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import InputError, OutputExistsError
from .layout import CARD_NAME, CONFIG_NAME, REPORT_NAME, WEIGHTS_NAME

# Files a wavecompress output folder may hold (adapter folders, kohya/diffusers folders, analyze's plots);
# a folder with anything else is the user's and is never deleted, not even when forced.
OUTPUT_FOLDER_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, REPORT_NAME, CARD_NAME, "pytorch_lora_weights.safetensors",
                                 "rate_distortion.png", "rate_distortion.csv", "rate_distortion.json"})
# One of these marks a folder as written by wavecompress (every folder writer adds one).
OUTPUT_FOLDER_MARKERS = (REPORT_NAME, "rate_distortion.json")
_MAX_RESOLVE_ROUNDS = 40

PathLike = str | os.PathLike[str]


def resolve_output(path: PathLike) -> Path:
    """``path`` as the filesystem will see it: the deepest existing part through realpath, the
    missing rest appended with ``..`` collapsed (repeated until nothing changes)."""
    current = os.path.abspath(os.fspath(path)) if not os.fspath(path).startswith("/") else os.fspath(path)
    for _ in range(_MAX_RESOLVE_ROUNDS):
        head, rest = current, []
        while not os.path.lexists(head) and os.path.dirname(head) != head:
            head, name = os.path.split(head)
            rest.insert(0, name)
        resolved = os.path.normpath(os.path.join(os.path.realpath(head), *rest)) if rest else os.path.realpath(head)
        if resolved == current:
            break
        current = resolved
    return Path(current)


def _inside(path: Path, folder: Path) -> bool:
    """Whether resolved ``path`` is resolved ``folder`` or lies under it."""
    return path == folder or folder in path.parents


def earlier_output_file(path: Path) -> bool:
    """Whether ``path`` is a file wavecompress wrote: a report (of convert or convert-many), or a
    safetensors file whose header carries a ``wavecompress.*`` entry or our kohya comment."""
    from .deltas.safetensors_file import open_safetensors
    from .deltas.safetensors_reader import read_json

    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        if path.suffix == ".safetensors":
            with open_safetensors(path) as reader:
                metadata = reader.metadata()
            return any(key.startswith("wavecompress.") for key in metadata) or \
                str(metadata.get("ss_training_comment", "")).startswith("converted by wavecompress")
        if path.stat().st_size > 64 << 20:
            return False
        data = read_json(path)
        if isinstance(data, dict):
            return "overall" in data and "method" in data
        return isinstance(data, list) and all(isinstance(row, dict) and {"source", "target", "status"} <= set(row) for row in data)
    except (InputError, OSError, ValueError):
        return False


def protected_inputs(inputs: Iterable[PathLike | None]) -> list[Path]:
    """Resolved paths nothing may write to or over: each existing input, and for an input given as a
    file, every file of its folder (its config and card, its shards) except earlier wavecompress outputs."""
    found: list[Path] = []
    for given in inputs:
        if given is None or not os.path.lexists(given):
            continue
        real = Path(os.path.realpath(given))
        found.append(real)
        if real.is_file():
            with os.scandir(real.parent) as entries:
                siblings = [Path(entry.path) for entry in entries if entry.is_file(follow_symlinks=False)]
            found += [s for s in siblings if s != real and not earlier_output_file(s)]
    return found


def _deepest_existing(path: Path) -> Path:
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    return parent


def _check_parent(given: PathLike, real: Path, probe: bool) -> None:
    """The deepest existing parent must be a folder we may write in (``README.md/x`` and ``/proc/x`` refused at once)."""
    import tempfile

    parent = _deepest_existing(real)
    if not parent.is_dir():
        raise InputError(f"{given}: {parent} is not a folder")
    if probe:
        try:  # create and remove a probe: permissions, read-only mounts, /proc and root all answer truthfully
            handle, name = tempfile.mkstemp(prefix=".wavecompress.probe-", dir=parent)
        except OSError as exc:
            raise InputError(f"{given}: cannot write in {parent} ({exc.strerror or exc})") from None
        os.close(handle)
        os.unlink(name)


def check_folder_output(target: PathLike, inputs: Iterable[PathLike | None] = (), force: bool = False,
                        hint: str = "pass force=True, e.g. result.save(path, force=True), to replace it",
                        option: str = "output", probe: bool = True) -> Path:
    """Refuse an output folder that is, holds or lies inside an input, is a symlink or not a folder,
    exists without ``force``, or holds files wavecompress did not write; return its resolved path."""
    given = os.fspath(target)
    if os.path.islink(given):
        if not os.path.exists(given):
            raise InputError(f"{given}: is a symlink to a missing path ({os.readlink(given)}); remove it or choose another {option}")
        raise InputError(f"{given}: is a symlink; an output never replaces one (choose another {option})")
    real = resolve_output(given)
    _check_parent(given, real, probe=False)
    for source in protected_inputs(inputs):
        if _inside(source, real):
            what = "is" if real == source else "holds"
            raise InputError(f"{option} {given}: {what} the input {source}; replacing it would destroy the input "
                             f"(choose another {option})")
        if source.is_dir() and _inside(real, source):
            raise InputError(f"{option} {given}: is inside the input {source}; choose a place outside it")
    if os.path.lexists(real):
        mode = os.lstat(real).st_mode
        if not stat.S_ISDIR(mode):
            raise InputError(f"{given}: exists and is not a folder")
        if not force:
            raise OutputExistsError(f"{given}: output already exists ({hint})")
        check_earlier_output_folder(real, given)
    _check_parent(given, real, probe)
    return real


def check_earlier_output_folder(real: Path, given: PathLike) -> None:
    """Refuse to delete a folder unless it is empty or an earlier wavecompress output holding only our files."""
    entries = sorted(os.listdir(real))
    if not entries:
        return
    ours = set(OUTPUT_FOLDER_FILES) | {f"{Path(given).name}.safetensors", f"{real.name}.safetensors"}
    foreign = [name for name in entries if name not in ours or not stat.S_ISREG(os.lstat(real / name).st_mode)]
    if foreign:
        raise InputError(f"{given}: holds files wavecompress did not write ({', '.join(escape_names(foreign[:3]))}"
                         f"{', ...' if len(foreign) > 3 else ''}); refusing to delete it, even when forced (choose another path)")
    if not any(name in entries for name in OUTPUT_FOLDER_MARKERS):
        raise InputError(f"{given}: is not an earlier wavecompress output (no {REPORT_NAME}); refusing to delete it, "
                         "even when forced (choose another path)")


def check_file_output(target: PathLike, inputs: Iterable[PathLike | None] = (), force: bool = False,
                      option: str = "output", replace_earlier: bool = True, probe: bool = True) -> Path:
    """Refuse an output file that is an input or one of its files, a folder, a symlink or a device,
    or an existing file wavecompress did not write; return its resolved path.

    An earlier wavecompress output of the same kind is replaced when ``replace_earlier`` or ``force``."""
    given = os.fspath(target)
    if os.path.islink(given):
        raise InputError(f"{option} {given}: is a symlink; an output never replaces one (choose another {option} path)")
    real = resolve_output(given)
    _check_parent(given, real, probe=False)
    for source in protected_inputs(inputs):
        if _inside(real, source):
            inside = real != source
            raise InputError(f"{option} {given}: is {'inside ' if inside else ''}the input {source}; "
                             f"writing it would overwrite the input (choose another {option} path)")
    if os.path.lexists(real):
        mode = os.lstat(real).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{given}: is a folder; give a file name")
        if not stat.S_ISREG(mode):
            raise InputError(f"{option} {given}: is not a regular file (a device, FIFO or socket); an output never replaces one")
        if not earlier_output_file(real):
            raise InputError(f"{option} {given}: already exists and is not an earlier wavecompress output; refusing to "
                             f"replace it, even when forced (remove it yourself or choose another {option} path)")
        if not (force or replace_earlier):
            raise OutputExistsError(f"{given}: output already exists (replacing it needs force)")
    _check_parent(given, real, probe)
    return real


def check_swap_file(real: Path, given: PathLike) -> None:
    """At the moment of the rename: the path must still be missing or a regular file (never a symlink,
    folder or device that appeared meanwhile)."""
    if os.path.lexists(real) and not stat.S_ISREG(os.lstat(real).st_mode):
        raise InputError(f"{given}: became a symlink, folder or device while writing; nothing was replaced")


def escape_names(names: Iterable[str]) -> list[str]:
    """Each name with control and bidi characters escaped (text_safety.escape_controls)."""
    from .text_safety import escape_controls

    return [escape_controls(name) for name in names]
