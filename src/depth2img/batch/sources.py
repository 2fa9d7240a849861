"""From ``INPUT...`` to rows: images, folders (``--recursive``), globs, manifests and videos.

Nothing is decoded here; inputs that do not exist become ``Failure`` entries (recorded in the journal, the rest
of the batch goes on). Hidden files and folders, and OUTDIR itself, are never taken from a folder.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from ..cli.inputs import IMAGE_SUFFIXES
from .jobs import Failure
from .manifest import MANIFEST_SUFFIXES, Row, read_manifest
from .video import VIDEO_SUFFIXES

__all__ = ["expand_inputs", "is_video"]

_GLOB_CHARACTERS = set("*?[")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(inputs: Iterable[str], recursive: bool, outdir: Path | None) -> list[Row | Failure]:
    """Every input as rows, in the order given (a folder's or glob's files in name order)."""
    rows: list[Row | Failure] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found = _folder_files(path, recursive, outdir)
            if not found:
                wanted = ", ".join((*IMAGE_SUFFIXES, *VIDEO_SUFFIXES))
                rows.append(Failure(text, f"folder {path} has no images or videos (looked for {wanted})"))
            rows.extend(Row(file, str(file)) for file in found)
        elif path.is_file():
            rows.extend(_file_rows(path))
        elif _GLOB_CHARACTERS & set(text):
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=recursive)) if Path(m).is_file()]
            if not matches:
                rows.append(Failure(text, f"no file matches {text}"))
            for match in matches:
                rows.extend(_file_rows(match))
        else:
            rows.append(Failure(text, f"input not found: {path}"))
    return rows


def _file_rows(path: Path) -> list[Row | Failure]:
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(path)
    return [Row(path, str(path))]


def _folder_files(folder: Path, recursive: bool, outdir: Path | None) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    suffixes = (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)
    found = []
    for path in candidates:
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if outdir is not None and (path == outdir or outdir in path.parents):
            continue
        if path.suffix.lower() in suffixes and path.is_file():
            found.append(path)
    return sorted(found)
