"""Find an adapter's weights file: a file path, a folder, or a Hugging Face Hub repo id.

Adapters (LoRA, textual inversion) are single files. A folder or repo holds them under a conventional name
(``pytorch_lora_weights.safetensors``, ``learned_embeds.bin``...) or under the name given by ``weight_name``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingFileError

__all__ = ["read_safetensors_metadata", "resolve_adapter_file"]

_WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _names_a_file(name: str) -> bool:
    """Whether ``name`` can only be a local path, not a Hub repo id (``owner/name``): it has a weights suffix,
    starts like a path, or has other than exactly one slash."""
    return (
        name.lower().endswith(_WEIGHTS_SUFFIXES)
        or name.startswith((".", "/", "~", "\\"))
        or name.count("/") != 1
        or os.sep in name.replace("/", "")
    )


def resolve_adapter_file(
    path_or_repo_id: str | os.PathLike,
    weight_name: str | None,
    default_names: Sequence[str],
    what: str,
    **hub_kwargs: Any,
) -> Path:
    """The weights file meant by ``path_or_repo_id`` (+ ``weight_name``).

    A file is used as it is. In a folder (local, or a Hub snapshot fetched with ``hub_kwargs``:
    ``local_files_only``, ``revision``, ``cache_dir``, ``token``, ``subfolder``), ``weight_name`` is taken, else the
    first of ``default_names`` present, else the folder's only ``.safetensors`` file. ``what`` names the adapter
    kind in errors.
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_file():
        return path
    if not path.is_dir() and _names_a_file(str(path_or_repo_id)):
        raise MissingFileError(f"{what} file not found: {path}")
    if not path.is_dir():
        from ..loading.hub import resolve_folder

        patterns = [weight_name] if weight_name else list(default_names)
        subfolder = hub_kwargs.pop("subfolder", None)
        path = resolve_folder(str(path_or_repo_id), subfolder=subfolder, allow_patterns=patterns, **hub_kwargs)
    elif hub_kwargs.get("subfolder"):
        path = path / hub_kwargs["subfolder"]
    if weight_name:
        if not (path / weight_name).is_file():
            raise MissingFileError(f"{what} file {weight_name!r} not found in {path}")
        return path / weight_name
    for name in default_names:
        if (path / name).is_file():
            return path / name
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise MissingFileError(
        f"no {what} file in {path}: looked for {', '.join(default_names)} (.safetensors files there: {found}); "
        "pass weight_name='<file name>'"
    )


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """diffusers' ``lora_adapter_metadata`` (a JSON object) from a safetensors header, or None."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as file:
        raw = (file.metadata() or {}).get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"{path}: the lora_adapter_metadata in its header is not valid JSON") from None
    return data if isinstance(data, dict) else None
