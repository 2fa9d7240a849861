"""OUTDIR: a local (or shared) folder, or an fsspec URL such as ``s3://bucket/run``.

Every file we write there appears whole or not at all. Locally the writers are atomic themselves (they write a
temporary ``.NAME.<pid>-XXXXXXXX.tmp`` beside the target and rename it, see depth2img.utils.files); for a URL the
file is written locally, put under such a temporary name and moved into place. A run that was killed can leave
those temporary files behind: ``remove_stale_temps`` deletes them in the folders this batch writes to, locally by
depth2img.utils.files' own rule (the writer's process is gone, or the file is over an hour old), at a URL the
ones whose target is a file this batch writes (no other process can be writing them while this batch holds
OUTDIR).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from ..cli.errors import CliError
from ..cli.outputs import ensure_writable_folder
from ..utils.files import remove_stale_temp_files, temp_file_target, temp_name

__all__ = ["FsspecStore", "LocalStore", "Store", "open_store"]


class Store:
    """Files under OUTDIR by relative POSIX name."""

    root: str

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def location(self, name: str) -> str:
        """The path or URL of ``name``, for readers (workers opening cached video frames)."""
        raise NotImplementedError

    def output_file(self, name: str) -> contextlib.AbstractContextManager[Path]:
        """A local path to write ``name`` to with an atomic writer; it is in OUTDIR when the block ends."""
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def remove_stale_temps(self, names: Iterable[str]) -> int:
        """Delete temporary files left by killed runs beside ``names`` (see the module's docstring); return how
        many."""
        raise NotImplementedError

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold OUTDIR for this run (two runs writing one OUTDIR would delete each other's temporary files)."""
        return contextlib.nullcontext()


class LocalStore(Store):
    def __init__(self, root: str) -> None:
        self.root = str(Path(root).expanduser().resolve())
        ensure_writable_folder(Path(self.root), flag="--output")

    def _path(self, name: str) -> Path:
        return Path(self.root, *PurePosixPath(name).parts)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def location(self, name: str) -> str:
        return str(self._path(name))

    @contextlib.contextmanager
    def output_file(self, name: str) -> Iterator[Path]:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path

    def read_bytes(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def remove_stale_temps(self, names: Iterable[str]) -> int:
        folders = {self._path(name).parent for name in names}
        return sum(len(remove_stale_temp_files(folder)) for folder in folders)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        import fcntl

        with open(Path(self.root, ".batch.lock"), "a") as handle:
            try:  # released by the kernel when this process ends, even by SIGKILL
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CliError(f"--output: another depth2img batch is writing to {self.root}; wait for it") from None
            yield


class FsspecStore(Store):
    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError:
            raise CliError(f"--output: {url} is a URL; install fsspec (pip install fsspec) to write to it") from None
        try:
            self.fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as error:
            raise CliError(f"--output: cannot open {url} ({error}); install the filesystem's package") from None
        self.root = url.rstrip("/")
        self._root_path = path.rstrip("/")
        self.fs.makedirs(self._root_path, exist_ok=True)

    def _path(self, name: str) -> str:
        return f"{self._root_path}/{name}"

    def exists(self, name: str) -> bool:
        return bool(self.fs.isfile(self._path(name)))

    def location(self, name: str) -> str:
        return f"{self.root}/{name}"

    @contextlib.contextmanager
    def output_file(self, name: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="depth2img-") as folder:
            local = Path(folder) / PurePosixPath(name).name
            yield local
            target = PurePosixPath(self._path(name))
            temp = str(target.with_name(temp_name(target.name, secrets.token_hex(4))))
            self.fs.makedirs(str(target.parent), exist_ok=True)
            self.fs.put_file(str(local), temp)
            self.fs.mv(temp, str(target))

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self._path(name))

    def remove_stale_temps(self, names: Iterable[str]) -> int:
        by_folder: dict[str, set[str]] = {}
        for name in names:
            target = PurePosixPath(self._path(name))
            by_folder.setdefault(str(target.parent), set()).add(target.name)
        removed = 0
        for folder, targets in by_folder.items():
            if not self.fs.isdir(folder):
                continue
            for entry in self.fs.ls(folder, detail=False):
                if temp_file_target(PurePosixPath(entry).name) in targets:
                    self.fs.rm_file(entry)
                    removed += 1
        return removed


def open_store(outdir: str) -> Store:
    """The store for ``-o OUTDIR``: a URL with a scheme (``s3://``, ``gs://``, ``file://``) goes through fsspec."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", outdir):
        return FsspecStore(outdir)
    return LocalStore(os.fspath(outdir))
