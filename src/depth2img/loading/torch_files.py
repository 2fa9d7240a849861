"""Reading ``torch.save`` files (``.ckpt``, ``.pt``, ``.bin``) safely, with one clear sentence when we cannot.

``torch.load(weights_only=True)`` unpickles nothing but tensors and plain containers. When it refuses a file,
its message advises re-running with ``weights_only=False`` — exactly what a user must not do with a file that
asks for code — so we replace it: the refused global is named and the file is called unsafe. Files that are no
pickle at all (a text file passed as an embedding) are recognised by their first bytes, before torch sees them.
"""

from __future__ import annotations

import io
import os
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import InputFileError, UnsafeFileError

__all__ = ["InvalidWeightsError", "UnsafeWeightsError", "looks_like_torch_file", "pickle_globals", "safe_torch_load"]


class InvalidWeightsError(InputFileError):
    """A weights file that cannot be read, or whose tensors do not fit the model (a ``ValueError``)."""


class UnsafeWeightsError(InvalidWeightsError, UnsafeFileError):
    """A weights file refused because its pickle asks for code (a global that is not a tensor type)."""


_PICKLE_PROTOCOL_2_PLUS = b"\x80"  # every torch.save since 2017 (legacy non-zip files) starts a pickle with PROTO
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since PyTorch 1.6
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_PICKLE_READ_LIMIT = 64 << 20  # bytes of a pickle scanned for globals: a zip bomb's data.pkl stops here
# Globals torch.load(weights_only=True) accepts in ordinary checkpoints: tensor rebuilders, dtypes, OrderedDict.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset")


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
        raise InvalidWeightsError(
            f"{path} is not a {what}: it is neither a torch.save file (.pt/.ckpt/.bin, a zip archive or a pickle) "
            "nor safetensors"
        )
    zipped = zipfile.is_zipfile(path)
    try:
        mmap = zipped and not path.name.endswith(".safetensors")  # torch hands such a name to safetensors
        if mmap:  # memory-mapped: no second copy of the weights
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        with path.open("rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, KeyError...: torch has many
        reason, refused = _refusal_reason(error), _REFUSED_GLOBAL.search(str(error))
    code = [name for name in _safe_globals(path) if not name.startswith(_TENSOR_GLOBALS)]
    if code or refused:
        name = code[0] if code else refused.group(1)
        raise UnsafeWeightsError(
            f"{path} is unsafe: it asks to load the Python global {name!r}, which can run code, so depth2img "
            f"refuses it (torch.load(weights_only=True) reads tensors only); use a .safetensors version of this "
            f"{what} from a source you trust"
        )
    raise InvalidWeightsError(f"{path} is a damaged or unsupported {what} ({reason})")


def pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` of every global a pickle asks for (GLOBAL and STACK_GLOBAL opcodes), without
    unpickling anything; a damaged pickle gives the globals found before the damage."""
    found: list[str] = []
    strings: list[str] = []
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # legacy torch.save files hold several pickles in a row
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    found.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(argument, str):
                    strings.append(argument)
    except Exception:  # noqa: BLE001 - truncated, or raw tensor bytes after the pickles: what was found is the answer
        pass
    return found


def _safe_globals(path: Path) -> list[str]:
    """Globals named by the pickle in ``path`` (a raw pickle, or a torch zip's ``data.pkl``), read with a limit."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return []
                with archive.open(names[0]) as member:
                    return pickle_globals(member.read(_PICKLE_READ_LIMIT))
        with path.open("rb") as handle:
            return pickle_globals(handle.read(_PICKLE_READ_LIMIT))
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
        return []


def _refusal_reason(error: BaseException) -> str:
    """What torch objected to, without its advice to load with weights_only=False (never safe for such a file)."""
    text = str(error)
    refused = _REFUSED_GLOBAL.search(text)
    if refused:
        return f"unsupported global {refused.group(1)}"
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].strip()
        return f"the weights-only unpickler cannot read it: {detail}"
    if "Weights only load failed" in text:
        return "the weights-only unpickler cannot read it"
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {line}" if line else type(error).__name__
