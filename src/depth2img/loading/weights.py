"""Weights files: find them in a folder, read them into a state dict, write them back.

One reader per format, chosen by the file name:

- ``*.safetensors`` is memory-mapped: the returned tensors are views of the file, so reading costs no copy
  (pages are read on first touch) and nothing is unpickled.
- ``*.bin`` (``torch.save``) goes through ``torch.load(weights_only=True)``, which refuses arbitrary pickled
  objects, memory-mapped when the file is a zip archive (every ``torch.save`` since PyTorch 1.6).
- ``*.index.json`` names shards (``{"weight_map": {key: shard file}}``), each read as above and merged.

File names follow diffusers: ``diffusion_pytorch_model.safetensors``, with a variant inserted before the
suffix (``diffusion_pytorch_model.fp16.safetensors``, ``diffusion_pytorch_model.safetensors.index.fp16.json``).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from ..utils.files import atomic_path

__all__ = [
    "InvalidWeightsError",
    "check_state_dict",
    "find_weights_files",
    "read_state_dict",
    "read_weights",
    "variant_name",
    "weights_file_names",
    "write_state_dict",
]

SAFETENSORS = ".safetensors"
PICKLE = ".bin"
_MAX_LISTED = 5  # keys listed per kind of mismatch: enough to see the pattern, short enough to read


class InvalidWeightsError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model."""


def variant_name(file_name: str, variant: str | None) -> str:
    """Insert ``variant`` before the last suffix: ``model.safetensors`` → ``model.fp16.safetensors``."""
    if not variant:
        return file_name
    stem, _, suffix = file_name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def weights_file_names(base: str, variant: str | None = None, safetensors: bool = True) -> tuple[str, str]:
    """(single file, shard index) names for ``base`` (e.g. ``diffusion_pytorch_model``) in one format."""
    suffix = SAFETENSORS if safetensors else PICKLE
    return variant_name(base + suffix, variant), variant_name(f"{base}{suffix}.index.json", variant)


def find_weights_files(
    folder: str | os.PathLike, base: str, variant: str | None = None, use_safetensors: bool | None = None
) -> list[Path]:
    """The weights files of ``folder``: one file, or the shards named by an index file.

    safetensors is preferred; ``.bin`` is used when no safetensors file exists (never when
    ``use_safetensors=True``; only it when ``use_safetensors=False``). Raises ``FileNotFoundError`` naming
    the expected files and the weights-like files that are there (typically a forgotten ``variant``).
    """
    folder = Path(folder)
    formats = {True: (True,), False: (False,), None: (True, False)}[use_safetensors]
    expected = []
    for safetensors in formats:
        single, index = weights_file_names(base, variant, safetensors)
        expected += [single, index]
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            return _shards_of(folder / index)
    present = sorted(p.name for p in folder.glob(f"{base}*") if p.is_file()) if folder.is_dir() else []
    hint = f"; found {', '.join(present)}" if present else ""
    variants = sorted({v for v in map(lambda name: _variant_of(name, base), present) if v and v != variant})
    if variants:
        hint += f" (variants there: {', '.join(variants)}; choose one with variant=...)"
    raise FileNotFoundError(f"no weights file in {folder}: expected {' or '.join(expected)}{hint}")


def _variant_of(file_name: str, base: str) -> str | None:
    """``fp16`` for ``diffusion_pytorch_model.fp16.safetensors`` (or its index), None without a variant."""
    # ".fp16.safetensors" -> ["fp16"]; ".safetensors.index.fp16.json" -> ["fp16"]; ".safetensors" -> []
    parts = [p for p in file_name[len(base) :].split(".")[1:] if p not in ("safetensors", "bin", "index", "json")]
    return parts[0] if len(parts) == 1 and "-of-" not in file_name else None


def _shards_of(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
        raise InvalidWeightsError(f"{index_path} is not a valid shard index ({error!r})") from None
    shards = [index_path.parent / name for name in names]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path} names shard files that do not exist: {', '.join(missing)}")
    return shards


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read one weights file (safetensors or ``.bin``) on the CPU; one clear error naming a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == SAFETENSORS:
        return _read_safetensors(path)
    if path.suffix in (PICKLE, ".pt", ".pth"):
        return _read_pickle(path)
    raise InvalidWeightsError(f"{path}: unknown weights format (expected a .safetensors or .bin file)")


def read_weights(paths: Iterable[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Read and merge several weights files (shards); a key found in two files is an error."""
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        part = read_state_dict(path)
        repeated = merged.keys() & part.keys()
        if repeated:
            raise InvalidWeightsError(f"{path} repeats keys of an earlier shard: {_first(repeated)}")
        merged.update(part)
    return merged


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (safe_open is no dict)
    except SafetensorError as error:
        raise InvalidWeightsError(f"{path} is not a valid safetensors file ({error})") from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        # mmap avoids a second copy; only zip archives (torch.save since 1.6) support it.
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises several unrelated types (UnpicklingError, RuntimeError, EOFError...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidWeightsError(
            f"{path} could not be read as a PyTorch weights file with weights_only=True (nothing but tensors is "
            f"unpickled, for safety): {reason}"
        ) from None
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InvalidWeightsError(f"{path} does not hold a flat mapping of names to tensors")
    return dict(loaded)


def write_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``state_dict`` to ``path`` atomically: safetensors for ``.safetensors``, ``torch.save`` otherwise."""
    path = Path(path)
    # Contiguous, storage-owning copies only where needed: safetensors rejects views and shared storage.
    tensors = {key: _standalone(tensor) for key, tensor in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix == SAFETENSORS:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
        else:
            torch.save(tensors, tmp)
    return path


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    whole = tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole else tensor.contiguous().clone()


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    model_name: str,
) -> None:
    """Raise ``InvalidWeightsError`` unless ``state_dict`` has exactly the ``expected`` keys and shapes.

    The message names the source file and lists the first few keys of each kind of mismatch.
    """
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key} (file {tuple(state_dict[key].shape)}, model {tuple(expected[key])})"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key])
    ]
    problems = [
        f"{len(items)} {kind}: {_first(items)}"
        for kind, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape))
        if items
    ]
    if problems:
        raise InvalidWeightsError(f"{source} does not match {model_name}: " + "; ".join(problems))


def _first(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
