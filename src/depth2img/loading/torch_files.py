"""Reading ``torch.save`` files (``.ckpt``, ``.pt``, ``.bin``) safely, with one clear sentence when we cannot.

``torch.load(weights_only=True)`` unpickles nothing but tensors and plain containers. When it refuses a file,
its message advises re-running with ``weights_only=False`` — exactly what a user must not do with a file that
asks for code — so we replace it: the refused global is named and the file is called unsafe. Files that are no
pickle at all (a text file passed as an embedding) are recognised by their first bytes, before torch sees them.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import InputFileError, UnsafeFileError

__all__ = ["looks_like_torch_file", "safe_torch_load"]

_PICKLE_PROTOCOL_2_PLUS = b"\x80"  # every torch.save since 2017 (legacy non-zip files) starts a pickle with PROTO
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since PyTorch 1.6
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def looks_like_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file (a zip archive or a binary pickle)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTOCOL_2_PLUS)


def safe_torch_load(path: str | os.PathLike, what: str = "PyTorch file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped for zip files), or one clear error.

    Raises :class:`UnsafeFileError` when the file asks for a global that is not a tensor type (its name is in
    the message), and :class:`InputFileError` when it is no ``torch.save`` file, or a damaged one. ``what``
    names the kind of file in messages ("checkpoint", "textual-inversion embedding").
    """
    path = Path(path)
    if not looks_like_torch_file(path):
        raise InputFileError(
            f"{path} is not a {what}: it is neither a torch.save file (.pt/.ckpt/.bin, a zip archive or a pickle) "
            "nor safetensors"
        )
    zipped = zipfile.is_zipfile(path)
    try:
        with path.open("rb") as handle:  # a file object: torch would treat a ".safetensors" name specially
            return torch.load(handle if not zipped else path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, KeyError...: torch has many
        refused = _REFUSED_GLOBAL.search(str(error))
        if refused:
            raise UnsafeFileError(
                f"{path} is unsafe: it asks to load the Python global {refused.group(1)!r}, which can run code, so "
                f"depth2img refuses it (only tensors are read from pickles); use a .safetensors version of this "
                f"{what} from a source you trust"
            ) from None
        raise InputFileError(f"{path} is a damaged or unsupported {what} ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {line}" if line else type(error).__name__
