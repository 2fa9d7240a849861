"""Atomic file writes: a crash never leaves a half-written output behind.

A write goes to a hidden temporary file beside the target, ``.NAME.<pid>-XXXXXXXX.tmp`` (the writer's process
id, then mkstemp's random part), renamed over the target when complete. A process killed mid-write (SIGKILL,
power loss) cannot delete its temporary file; :func:`remove_stale_temp_files` does, on the next run into that
folder. A temporary file is stale when its writer's process no longer exists on this machine, or, when that
cannot be told (a name without a pid, a pid of another user's process), when it is older than
``STALE_TEMP_SECONDS`` (one hour, longer than any single write takes). Only names of exactly our pattern are
touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputWriteError

__all__ = [
    "STALE_TEMP_SECONDS",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_stale_temp_files",
    "temp_file_target",
    "temp_name",
]

STALE_TEMP_SECONDS = 3600
# .NAME.<pid>-XXXXXXXX.tmp, and the older .NAME.XXXXXXXX.tmp; mkstemp's random part is 8 of [a-z0-9_].
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$")
_FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask); mkstemp's own 0o600 would make every
    output private to its owner. The umask can only be read by setting it, so it is restored at once."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()  # read once, at import, rather than racing other threads on every write


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    Writers that need a filename (safetensors, PIL) write to the yielded path; the rename is atomic on the
    same filesystem, so readers see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _NEW_FILE_MODE)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(error, OSError) and error.errno in _FULL_DISK:
            failure = OutputWriteError(
                f"cannot write {path}: no space left on the device (nothing was written); free some space or "
                "write elsewhere"
            )
            failure.errno = error.errno
            raise failure from None
        raise


def temp_name(name: str, random_part: str) -> str:
    """The temporary name :func:`atomic_path` gives a write to ``name`` (``random_part``: 8 of [a-z0-9_]), for
    writers that cannot use it (a file moved into place on a remote filesystem)."""
    return f".{name}.{os.getpid()}-{random_part}.tmp"


def temp_file_target(name: str) -> str | None:
    """The name of the file whose temporary file ``name`` is (see :func:`temp_name`), or None for other names."""
    match = _TEMP_NAME.match(name)
    return match["name"] if match else None


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the stale temporary files :func:`atomic_path` left in ``folder`` (see the module's docstring);
    returns what was removed. Files of other programs, and temporary files still being written, stay."""
    removed = []
    now = time.time()
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or not entry.is_file() or entry.is_symlink():
            continue
        pid = int(match["pid"]) if match["pid"] else None
        try:
            old = now - entry.stat().st_mtime > STALE_TEMP_SECONDS
            if _process_gone(pid) or old:
                entry.unlink()
                removed.append(entry)
        except OSError:
            continue  # gone already, or not ours to delete
    return removed


def _process_gone(pid: int | None) -> bool:
    """True only when we know no process ``pid`` exists here (signal 0 probes without signalling)."""
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False  # exists but is another user's, or cannot be told: fall back to the age rule
    return False


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
