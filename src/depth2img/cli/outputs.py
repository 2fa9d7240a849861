"""Where output images go: a folder (numbered like A1111: ``00012-1234.png``) or a file-name pattern.

``-o out/`` (or any existing folder, or a path without ``.png``) names files ``NNNNN-SEED.png`` in that
folder, numbering on from the highest number already there, so earlier results are never overwritten.
``-o result.png`` or ``-o "out/{stem}-{seed}.png"`` is a pattern with the fields {index} (0-based, in the
run), {seed}, {stem} (the input image's name) and {prompt} (the prompt, shortened to a safe file name); a
pattern without {index} or {seed} gets ``-{index}`` appended when the run makes more than one image.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ..utils.files import remove_stale_temp_files
from .errors import CliError

__all__ = ["OutputNamer", "ensure_writable_folder", "missing_folders", "remove_empty_folders"]

PATTERN_FIELDS = ("index", "seed", "stem", "prompt")
_NUMBERED = re.compile(r"^(\d{5,})-")


class OutputNamer:
    """Turns ``-o`` into one path per image of the run; validates the argument when built."""

    def __init__(self, output: str, total: int) -> None:
        path = Path(output).expanduser()
        self.is_pattern = not (path.is_dir() or output.endswith(("/", os.sep)) or path.suffix == "")
        if self.is_pattern:
            if path.suffix.lower() != ".png":
                raise CliError(f"--output: {output!r} must end in .png (the PNG carries the generation parameters)")
            self._check_fields(output)
            if total > 1 and "{index" not in output and "{seed" not in output:
                path = path.with_name(path.stem + "-{index}" + path.suffix)
            self.folder = path.parent
            self.pattern = path.name
        else:
            self.folder = path
            self.pattern = ""
        self._first_number = 0

    @staticmethod
    def _check_fields(output: str) -> None:
        try:
            Path(output).name.format(index=0, seed=0, stem="x", prompt="x")
        except (KeyError, IndexError, ValueError) as error:
            allowed = ", ".join("{" + field + "}" for field in PATTERN_FIELDS)
            raise CliError(f"--output: bad field {error} in {output!r}; the fields are {allowed}") from None
        if "{" in str(Path(output).parent):
            raise CliError(f"--output: fields like {{seed}} belong in the file name, not the folder: {output!r}")

    def prepare(self) -> None:
        """Create the folder, check it is writable, remove our stale temporary files from it (see
        ``depth2img.utils.files.remove_stale_temp_files``), and find the first free number (folder mode)."""
        self._created = missing_folders(self.folder)
        ensure_writable_folder(self.folder)
        if not self.is_pattern:
            numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _NUMBERED.match(p.name))]
            self._first_number = max(numbers, default=-1) + 1

    def discard_if_unused(self) -> None:
        """Remove the folders ``prepare`` created if they are still empty: a run that failed before writing
        anything (a model that could not be downloaded) leaves no empty output folder behind."""
        remove_empty_folders(getattr(self, "_created", []))

    def path_for(self, index: int, seed: int, image: Path, prompt: str) -> Path:
        """The file for image ``index`` of the run."""
        if not self.is_pattern:
            return self.folder / f"{self._first_number + index:05d}-{seed}.png"
        return self.folder / self.pattern.format(index=index, seed=seed, stem=image.stem, prompt=_slug(prompt))


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, outermost first (what creating it will add)."""
    missing = []
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            break
        missing.append(candidate)
    return missing[::-1]


def remove_empty_folders(created: list[Path]) -> None:
    """Remove ``created`` folders (outermost first, as ``missing_folders`` lists them) that are still empty."""
    for folder in reversed(created):  # deepest first
        try:
            folder.rmdir()  # only succeeds on an empty folder
        except OSError:
            return


def _slug(text: str, limit: int = 48) -> str:
    """A prompt shortened to letters, digits, '-' and '_' so it is safe in a file name on any system."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit].rstrip("_")
    return slug or "untitled"


def ensure_writable_folder(folder: Path, flag: str = "--output") -> None:
    """Create ``folder`` if needed and prove we can write there, before any model is loaded; remove the stale
    temporary files of ours that a killed run left there."""
    if folder.exists() and not folder.is_dir():
        raise CliError(f"{flag}: {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".depth2img-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise CliError(f"{flag}: cannot write to folder {folder} ({error.strerror or error})") from None
    remove_stale_temp_files(folder)  # what a killed earlier run left (see depth2img.utils.files)
