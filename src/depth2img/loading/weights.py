"""Weights files: find them in a folder, read them into a state dict, write them back.

One reader per format, chosen by the file name:

- ``*.safetensors`` is memory-mapped: the returned tensors are views of the file, so reading costs no copy
  (pages are read on first touch) and nothing is unpickled.
- ``*.bin`` (``torch.save``) goes through ``torch.load(weights_only=True)``, which refuses arbitrary pickled
  objects, memory-mapped when the file is a zip archive (every ``torch.save`` since PyTorch 1.6).
- ``*.index.json`` names shards (``{"weight_map": {key: shard file}}``), each read as above and merged.

File names follow diffusers: ``diffusion_pytorch_model.safetensors``, with a variant inserted before the
suffix (``diffusion_pytorch_model.fp16.safetensors``, ``diffusion_pytorch_model.safetensors.index.fp16.json``);
shards are ``diffusion_pytorch_model[.fp16]-00001-of-00003.safetensors``.

A load that converts dtypes does not memory-map: ``safetensors_layout`` reads where each tensor lies from the
file headers and ``read_stored`` reads one tensor at a time with plain reads, converting it chunk by chunk.
Converting a memory-mapped tensor would leave every file page it touched resident until the whole file is
unmapped, i.e. the file's size on top of the converted result.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils.files import atomic_path, atomic_write_text

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "InvalidWeightsError",
    "StoredTensor",
    "VariantNotFoundError",
    "check_state_dict",
    "find_weights_files",
    "parse_shard_size",
    "read_state_dict",
    "read_stored",
    "read_stored_tensors",
    "read_weights",
    "safetensors_layout",
    "shard_file_pattern",
    "split_into_shards",
    "variant_name",
    "weights_file_names",
    "write_sharded_state_dict",
    "write_state_dict",
]

SAFETENSORS = ".safetensors"
PICKLE = ".bin"
DEFAULT_MAX_SHARD_SIZE = "10GB"  # diffusers' ModelMixin.save_pretrained default: the SD2 UNet stays one file
_MAX_LISTED = 5  # keys listed per kind of mismatch: enough to see the pattern, short enough to read
_SIZE_UNITS = {
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,  # huggingface_hub's (decimal) units
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,  # and the binary ones (transformers accepted them)
}  # fmt: skip
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]I?B)", re.IGNORECASE)
_READ_CHUNK_BYTES = 16 << 20  # working set of a converting read: bounded, and large enough for fast reads


class InvalidWeightsError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model."""


class VariantNotFoundError(FileNotFoundError, ValueError):
    """No weights of the requested ``variant``. Both a ``FileNotFoundError`` (a file is missing: what depth2img
    raised before) and a ``ValueError`` (what diffusers raises for it), so code written for either catches it."""


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


def shard_file_pattern(base: str, variant: str | None = None, safetensors: bool = True) -> str:
    """The name of shards, ``{suffix}`` standing for ``-00001-of-00003``: diffusers puts the shard number after
    the variant (``diffusion_pytorch_model.fp16{suffix}.safetensors``)."""
    single, _ = weights_file_names(base, variant, safetensors)
    extension = SAFETENSORS if safetensors else PICKLE
    return single.removesuffix(extension) + "{suffix}" + extension


def parse_shard_size(max_shard_size: int | str | None) -> int:
    """Bytes per shard: an int (bytes), or a size such as ``"10GB"``, ``"500MB"`` (powers of 1000, as
    huggingface_hub reads them) or ``"5GiB"`` (powers of 1024); None is diffusers' default, 10GB."""
    if max_shard_size is None:
        max_shard_size = DEFAULT_MAX_SHARD_SIZE
    size = None
    if isinstance(max_shard_size, int) and not isinstance(max_shard_size, bool):
        size = max_shard_size
    elif isinstance(max_shard_size, str):
        match = _SIZE.fullmatch(max_shard_size.strip())
        if match:
            size = int(float(match[1]) * _SIZE_UNITS[match[2].upper()])  # int(value * unit), as huggingface_hub
    if size is None or size <= 0:
        raise ValueError(
            "max_shard_size must be a positive number of bytes or a size such as '10GB', '500MB' or '5GiB', "
            f"got {max_shard_size!r}"
        )
    return size


def split_into_shards(sizes: Mapping[str, int], max_bytes: int) -> list[list[str]]:
    """Group keys, in order, into shards of at most ``max_bytes``, as huggingface_hub's
    ``split_torch_state_dict_into_shards`` (which diffusers uses) does, so both write the same files for a model:
    a tensor larger than the limit gets a shard of its own, placed before the shard being filled."""
    shards: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for key, size in sizes.items():
        if size > max_bytes:
            shards.append([key])
            continue
        if current and current_bytes + size > max_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(key)
        current_bytes += size
    if current or not shards:
        shards.append(current)
    return shards


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
    error = VariantNotFoundError if variant else FileNotFoundError
    raise error(f"no weights file in {folder}: expected {' or '.join(expected)}{hint}")


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


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor of a safetensors file lies: its dtype, shape and byte range (absolute file offsets)."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def safetensors_layout(files: Sequence[Path]) -> dict[str, StoredTensor] | None:
    """Every tensor's place in the (safetensors) files, from their headers; None for other formats or dtypes.

    The headers are trusted: read the files with ``read_weights`` first, which validates them."""
    layout = {}
    for path in files:
        if Path(path).suffix != SAFETENSORS:
            return None
        with open(path, "rb") as file:
            header_size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(header_size))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                return None
            begin, end = info["data_offsets"]
            layout[key] = StoredTensor(
                Path(path), dtype, tuple(info["shape"]), 8 + header_size + begin, 8 + header_size + end
            )
    return layout


def read_stored(
    stored: StoredTensor, dtype: torch.dtype | None = None, buffer: bytearray | None = None
) -> torch.Tensor:
    """Read one tensor with plain reads (no memory map), converted to ``dtype`` if given.

    A conversion goes chunk by chunk through one small buffer (``buffer`` if given: reusing one across tensors
    leaves no trail of freed buffers in the heap), so its working set is a chunk, not a copy of the tensor in
    the file's dtype; the values equal ``tensor.to(dtype)`` (same element-wise cast)."""
    target = stored.dtype if dtype is None else dtype
    size = stored.end - stored.start
    if size == 0:
        return torch.empty(stored.shape, dtype=target)
    with open(stored.path, "rb", buffering=0) as file:
        file.seek(stored.start)
        if target == stored.dtype:
            buffer = bytearray(size)
            _read_exactly(file, memoryview(buffer), stored.path)
            return torch.frombuffer(buffer, dtype=stored.dtype).reshape(stored.shape)
        result = torch.empty(stored.shape, dtype=target)
        flat = result.view(-1)
        item = stored.dtype.itemsize
        if buffer is None or len(buffer) < item:
            buffer = bytearray(min(size, max(item, _READ_CHUNK_BYTES)))
        chunk = memoryview(buffer)[: len(buffer) // item * item]
        source = torch.frombuffer(chunk, dtype=stored.dtype)
        done = 0
        while done < flat.numel():
            count = min(source.numel(), flat.numel() - done)
            _read_exactly(file, chunk[: count * item], stored.path)
            flat[done : done + count].copy_(source[:count])
            done += count
    return result


def read_stored_tensors(
    stored: Mapping[str, StoredTensor], dtypes: Mapping[str, torch.dtype]
) -> dict[str, torch.Tensor]:
    """Read every tensor of ``stored`` in its dtype from ``dtypes``, in file order (sequential reads), through one
    shared read buffer: beside the results only that buffer is alive, so converting a float32 file costs the
    converted tensors plus 16 MiB, not the file plus the converted tensors."""
    order = sorted(stored, key=lambda key: (str(stored[key].path), stored[key].start))
    largest = max((stored[key].end - stored[key].start for key in order), default=0)
    buffer = bytearray(min(largest, _READ_CHUNK_BYTES))
    return {key: read_stored(stored[key], dtypes[key], buffer) for key in order}


def _read_exactly(file, view: memoryview, path: Path) -> None:
    while view.nbytes:
        count = file.readinto(view)
        if not count:
            raise OSError(f"{path} is shorter than its header says; was it changed after loading?")
        view = view[count:]


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


def write_sharded_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | os.PathLike,
    base: str,
    variant: str | None = None,
    safetensors: bool = True,
    max_shard_size: int | str | None = None,
) -> list[Path]:
    """Write ``state_dict`` into ``folder`` the way diffusers' ``save_pretrained`` does; returns the files written.

    Up to ``max_shard_size`` (see ``parse_shard_size``; default 10GB): one file, ``{base}[.variant].safetensors``.
    Larger: shards ``{base}[.variant]-00001-of-0000N.safetensors`` and their index
    ``{base}.safetensors.index[.variant].json`` (``metadata.total_size``, ``weight_map``). ``.bin`` likewise.
    Each file is written atomically. Then the files of an earlier save in the same format and variant that this
    one did not write (a single file, an index, shards) are deleted: loaders would otherwise pick up stale
    weights (we prefer a single file, diffusers an index). Other formats, variants and files are left alone.
    """
    max_bytes = parse_shard_size(max_shard_size)
    folder = Path(folder)
    sizes = {key: tensor.numel() * tensor.element_size() for key, tensor in state_dict.items()}
    groups = split_into_shards(sizes, max_bytes)
    single, index_name = weights_file_names(base, variant, safetensors)
    if len(groups) == 1:
        written = [write_state_dict(state_dict, folder / single)]
    else:
        pattern = shard_file_pattern(base, variant, safetensors)
        names = [pattern.format(suffix=f"-{number:05d}-of-{len(groups):05d}") for number in range(1, len(groups) + 1)]
        written = [
            write_state_dict({key: state_dict[key] for key in keys}, folder / name)
            for name, keys in zip(names, groups, strict=True)
        ]
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": {key: name for name, keys in zip(names, groups, strict=True) for key in keys},
        }
        # Last, so that an index always names complete shards; the same bytes as diffusers writes.
        atomic_write_text(folder / index_name, json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(folder / index_name)
    _remove_stale_weights(folder, base, variant, safetensors, keep={path.name for path in written})
    return written


def _remove_stale_weights(folder: Path, base: str, variant: str | None, safetensors: bool, keep: set[str]) -> None:
    """Delete ``base``'s weights files of this format and variant (single file, index, shards) not in ``keep``."""
    names = set(weights_file_names(base, variant, safetensors))
    stem, extension = shard_file_pattern(base, variant, safetensors).split("{suffix}")
    shard = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(extension))
    for path in folder.iterdir():
        if path.name in keep or not (path.is_file() or path.is_symlink()):
            continue
        if path.name in names or shard.fullmatch(path.name):
            path.unlink(missing_ok=True)


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
