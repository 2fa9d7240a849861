"""Generation parameters inside the output PNGs, and writing PNGs atomically.

Two text chunks go into every image:

- ``parameters``: the AUTOMATIC1111 format (prompt line, ``Negative prompt:`` line, then
  ``Steps: 20, Sampler: ..., CFG scale: 7.5, Seed: 42, Size: 512x384, ...``), which A1111's "PNG Info",
  ComfyUI and image sites already read;
- ``depth2img``: JSON with every parameter of the run, which ``depth2img generate --from-png`` reads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from ..utils.files import atomic_path
from .errors import CliError

__all__ = ["JSON_KEY", "PARAMETERS_KEY", "a1111_parameters", "read_png_record", "write_png"]

PARAMETERS_KEY = "parameters"
JSON_KEY = "depth2img"


def a1111_parameters(prompt: str, negative_prompt: str | None, fields: Mapping[str, Any]) -> str:
    """The A1111 ``parameters`` text: prompt, optional negative prompt, then ``Key: value`` pairs (None skipped).

    Values containing a comma, colon or quote are JSON-quoted, as A1111 does, so the line stays parseable.
    """
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [f"{key}: {_a1111_value(value)}" for key, value in fields.items() if value is not None]
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def _a1111_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def write_png(path: str | os.PathLike, image: Image.Image, text: Mapping[str, str] | None = None) -> None:
    """Save ``image`` as a PNG at ``path`` with ``text`` chunks, atomically (no half-written file, ever)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)  # tEXt when Latin-1 encodable, iTXt (UTF-8) otherwise
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def read_png_record(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON parameter record that ``depth2img generate`` stored in the PNG at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"--from-png: file not found: {path}")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise CliError(f"--from-png: {path} is a {image.format} image, not a PNG written by depth2img")
            text = dict(image.text)  # type: ignore[attr-defined]
    except (UnidentifiedImageError, OSError) as error:
        raise CliError(f"--from-png: cannot read {path} as an image ({_reason(error)})") from None
    if JSON_KEY not in text:
        raise CliError(f"--from-png: {path} has no depth2img parameters (only PNGs from 'depth2img generate' do)")
    try:
        record = json.loads(text[JSON_KEY])
    except json.JSONDecodeError as error:
        raise CliError(f"--from-png: the depth2img parameters in {path} are not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise CliError(f"--from-png: the depth2img parameters in {path} are not a JSON object")
    return record


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)
