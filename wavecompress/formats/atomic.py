"""Write an output folder all-or-nothing: build it in a temporary sibling, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError, OutputExistsError

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


def remove_stale_staging(target: Path) -> None:
    """Delete staging folders left by a run that was killed (SIGKILL cannot be cleaned up at once)."""
    prefix = staging_prefix(target)
    for candidate in Path(target).parent.glob(prefix + "*"):
        pid_text = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _test_hold_before_rename() -> None:
    """Sleep ``$WAVECOMPRESS_TEST_HOLD_STAGING`` seconds (test-only; unset means no wait)."""
    seconds = os.environ.get(HOLD_STAGING_ENV)
    if seconds:
        time.sleep(float(seconds))


@contextlib.contextmanager
def atomic_directory(target: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``target``; on success it becomes ``target``.

    On any exception (Ctrl-C included) the temporary folder is removed and ``target`` is left as
    it was. An existing ``target`` is refused unless ``force``; with ``force`` the old folder is
    moved aside and deleted only after the new one is in place.
    """
    target = Path(target)
    if target.exists() and not force:
        raise OutputExistsError(f"{target}: output already exists (pass force=True, e.g. result.save(path, force=True), to replace it)")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: exists and is not a folder")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=f"{staging_prefix(target)}{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise InputError(f"{target}: cannot create output folder ({exc.strerror})") from None
    try:
        yield staging
        _test_hold_before_rename()
        os.chmod(staging, 0o755)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, retired / "old")
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def default_file_mode() -> int:
    """0666 less the process umask (0644 under the usual 022): what open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write a single file via a temporary sibling and rename; it gets the mode a plain open() would give."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; outputs are meant to be shared like folders' files
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
