"""Write an output folder all-or-nothing: build it in a temporary sibling, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InputError, OutputExistsError
from ..output_guard import check_file_output, check_folder_output, check_swap_file

# Test-only: seconds to wait after the staging folder is complete and before it is renamed, so a
# test can deliver a signal while the staging folder provably exists (tests/test_robustness.py).
# Never set it in normal use: it only slows the final rename.
HOLD_STAGING_ENV = "WAVECOMPRESS_TEST_HOLD_STAGING"


def staging_prefix(target: Path) -> str:
    """Hidden sibling name used while ``target`` is being written: ``.<name>.tmp-<pid>-``."""
    return f".{Path(target).name}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retired_prefix(target: Path) -> str:
    """Hidden sibling name an old output is moved to while ``--force`` replaces it: ``.<name>.old-<pid>-``."""
    return f".{Path(target).name}.old-"


def _dead_runs(target: Path, prefix: str) -> list[Path]:
    """Siblings ``<prefix><pid>-*`` of ``target`` whose process is gone."""
    found = []
    for candidate in Path(target).parent.glob(prefix + "*"):
        pid_text = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            found.append(candidate)
    return found


def remove_stale_staging(target: Path) -> None:
    """Clean up after a run that was killed (SIGKILL cannot be cleaned up at once): delete its staging
    folders, and put back an old output it had moved aside but not yet replaced (else delete that)."""
    target = Path(target)
    for candidate in _dead_runs(target, staging_prefix(target)):
        shutil.rmtree(candidate, ignore_errors=True)
    for candidate in _dead_runs(target, retired_prefix(target)):
        old = candidate / "old"
        if not os.path.lexists(target) and old.is_dir():
            os.replace(old, target)
        shutil.rmtree(candidate, ignore_errors=True)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h


def _renameat2(first: Path, second: Path, flags: int) -> bool:
    """Linux renameat2(first, second, flags); False where the system or filesystem cannot do it."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), flags)
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: the filesystem cannot do it
        return False
    raise OSError(errno, os.strerror(errno), str(second))


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    return _renameat2(first, second, _RENAME_EXCHANGE)


def rename_new(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` only if ``target`` does not exist (never over a folder that
    appeared meanwhile: plain rename replaces an empty one); EEXIST otherwise."""
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    if os.path.lexists(target):
        raise FileExistsError(17, "File exists", str(target))
    os.replace(source, target)


def replace_directory(staging: Path, target: Path) -> None:
    """Make ``staging`` the folder ``target`` with no moment where ``target`` is missing when the
    filesystem can exchange atomically; otherwise the old folder waits in ``.<name>.old-<pid>-*``
    (put back by the next run if this one is killed before the new folder is in place)."""
    if exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old output; a kill here leaves a stale staging folder
        return
    retired = Path(tempfile.mkdtemp(prefix=f"{retired_prefix(target)}{os.getpid()}-", dir=target.parent))
    os.replace(target, retired / "old")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired / "old", target)
        shutil.rmtree(retired, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _test_hold_before_rename() -> None:
    """Sleep ``$WAVECOMPRESS_TEST_HOLD_STAGING`` seconds (test-only; unset means no wait)."""
    seconds = os.environ.get(HOLD_STAGING_ENV)
    if seconds:
        try:
            time.sleep(min(max(float(seconds), 0.0), 3600.0))
        except ValueError:  # a malformed test-only value is ignored, never an internal error after the conversion
            pass


@contextlib.contextmanager
def atomic_directory(target: Path, force: bool = False, inputs: Iterable[Path | str | None] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``target``; on success it becomes ``target``.

    ``target`` goes through the output guard (never an input in ``inputs``, a symlink, a file, or a
    folder of the user's own files) before anything is written and again at the moment of the swap.
    On any exception (Ctrl-C included) the temporary folder is removed and ``target`` is left as
    it was. An existing ``target`` is refused unless ``force``; with ``force`` the old folder is
    moved aside and deleted only after the new one is in place. A folder that appears at ``target``
    while writing is never replaced without ``force``.
    """
    given = Path(target)
    inputs = tuple(inputs)
    target = check_folder_output(given, inputs, force)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(target)
        check_folder_output(given, inputs, force)  # a stranded old output may just have been put back
        staging = Path(tempfile.mkdtemp(prefix=f"{staging_prefix(target)}{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise InputError(f"{given}: cannot create output folder ({exc.strerror})") from None
    try:
        yield staging
        _test_hold_before_rename()
        os.chmod(staging, 0o755)
        if not force and os.path.lexists(target):
            raise FileExistsError(17, "File exists", str(target))
        check_folder_output(given, inputs, force, probe=False)  # judged again at the swap: what is there now
        if os.path.lexists(target):
            replace_directory(staging, target)
        else:
            rename_new(staging, target)
    except FileExistsError:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputExistsError(f"{given}: appeared while writing; it was left as it is and nothing was written") from None
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"{given}: cannot write the output ({exc.strerror or exc}); nothing was changed") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_output_folder(target: Path, force: bool, hint: str = "pass force=True, e.g. result.save(path, force=True), to replace it") -> None:
    """Refuse an output path that exists without ``force``, is not a folder, is a symlink, or holds the user's files."""
    check_folder_output(target, (), force, hint=hint, probe=False)


def default_file_mode() -> int:
    """0666 less the process umask (0644 under the usual 022): what open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(target: Path, data: bytes, inputs: Iterable[Path | str | None] = (), force: bool = False,
                       option: str = "output") -> None:
    """Write a single file via a temporary sibling and rename; it gets the mode a plain open() would give.

    ``target`` goes through the output guard (never an input or its folder's files, a symlink, a
    device, or a file wavecompress did not write) before writing and again at the rename."""
    given = Path(target)
    target = check_file_output(given, tuple(inputs), force, option=option)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    except OSError as exc:
        raise InputError(f"{given}: cannot write here ({exc.strerror or exc})") from None
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; outputs are meant to be shared like folders' files
        check_swap_file(target, given)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise InputError(f"{given}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_file(target: Path) -> None:
    """Refuse a file output that is a folder or whose folder cannot be written (before any heavy work)."""
    target = Path(target)
    if target.is_dir():
        raise InputError(f"{target}: is a folder; give a file name")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{target}: {parent} is not a folder")
    try:  # create and remove a probe: permissions, read-only mounts and root all answer truthfully
        handle, probe = tempfile.mkstemp(prefix=f".{target.name}.probe-", dir=parent)
    except OSError as exc:
        raise InputError(f"{target}: cannot write in {parent} ({exc.strerror or exc})") from None
    os.close(handle)
    os.unlink(probe)
