"""Manifests: one job per row of a ``.jsonl`` or ``.csv`` file, with per-row parameters.

Columns: ``image`` (required; relative paths are taken from the manifest's folder), ``prompt``,
``negative_prompt``, ``seed``, ``strength``, ``steps``, ``guidance`` (or ``guidance_scale``), ``sampler`` (or
``scheduler``), ``depth_map`` (a path), ``name`` (the output file, relative to OUTDIR), and ``width``,
``height``, ``eta``, ``clip_skip``. A column left out, or an empty cell, takes the command line's value. Values
are checked by the same converters as the command-line flags; a bad value fails that row only (it is recorded in
the journal), an unknown column fails the whole manifest before anything runs.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..cli import argtypes
from ..cli.errors import CliError
from .jobs import Failure

__all__ = ["MANIFEST_SUFFIXES", "Row", "read_manifest"]

MANIFEST_SUFFIXES = (".jsonl", ".csv")

# column -> (setting name, converter of the text)
_COLUMNS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "prompt": ("prompt", str),
    "negative_prompt": ("negative_prompt", str),
    "seed": ("seed", argtypes.seed),
    "strength": ("strength", argtypes.fraction),
    "steps": ("steps", argtypes.int_at_least(1)),
    "guidance": ("guidance_scale", argtypes.non_negative_float),
    "guidance_scale": ("guidance_scale", argtypes.non_negative_float),
    "sampler": ("scheduler", str),
    "scheduler": ("scheduler", str),
    "width": ("width", argtypes.int_at_least(8)),
    "height": ("height", argtypes.int_at_least(8)),
    "eta": ("eta", argtypes.non_negative_float),
    "clip_skip": ("clip_skip", argtypes.int_at_least(1)),
}
_PATH_COLUMNS = ("image", "depth_map", "name")


@dataclass
class Row:
    """One input with the parameters its manifest row sets (none for plain files)."""

    image: Path
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


def read_manifest(path: Path) -> list[Row | Failure]:
    """The rows of the manifest at ``path``; a row that cannot be used becomes a ``Failure``."""
    try:
        raw = _read_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CliError(f"manifest {path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    rows: list[Row | Failure] = []
    for number, values in raw:
        where = f"{path} {'line' if path.suffix.lower() == '.jsonl' else 'row'} {number}"
        if isinstance(values, str):
            rows.append(Failure(where, values))
            continue
        unknown = sorted(set(values) - set(_COLUMNS) - set(_PATH_COLUMNS))
        if unknown:
            allowed = ", ".join((*_PATH_COLUMNS, *_COLUMNS))
            raise CliError(f"manifest {path}: unknown column {unknown[0]!r}; the columns are {allowed}")
        try:
            rows.append(_row(path, where, values))
        except ValueError as error:
            rows.append(Failure(where, str(error)))
    return rows


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    """(line or row number, {column: value} without empty cells, or the reason the line is not a row)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [
            (number, {key.strip(): value for key, value in row.items() if key and value not in (None, "")})
            for number, row in enumerate(reader, start=2)  # row 1 is the header
        ]
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append((number, f"not valid JSON ({error.msg})"))
            continue
        if not isinstance(value, dict):
            rows.append((number, "not a JSON object"))
            continue
        rows.append((number, {key: item for key, item in value.items() if item not in (None, "")}))
    return rows


def _row(manifest: Path, where: str, values: dict[str, Any]) -> Row:
    if "image" not in values:
        raise ValueError("has no image")
    overrides: dict[str, Any] = {}
    for column, value in values.items():
        if column in _COLUMNS:
            setting, convert = _COLUMNS[column]
            try:
                overrides[setting] = convert(str(value))
            except argparse.ArgumentTypeError as error:
                raise ValueError(f"{column}: {error}") from None
    if "scheduler" in overrides:
        from ..schedulers.registry import resolve_scheduler_name

        overrides["scheduler"] = resolve_scheduler_name(overrides["scheduler"]).name  # ValueError names the choices
    if "depth_map" in values:
        overrides["depth_map"] = str(_beside(manifest, values["depth_map"]))
    image = _beside(manifest, values["image"])
    return Row(image, f"{where} ({values['image']})", overrides, _output_name(values.get("name")))


def _beside(manifest: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else manifest.parent / path


def _output_name(value: Any) -> str | None:
    """A manifest's ``name``: a relative path inside OUTDIR, ``.png`` added when it has no suffix."""
    if value is None:
        return None
    name = PurePosixPath(str(value).replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise ValueError(f"name {value!r} must be a relative path inside the output folder")
    if name.suffix.lower() != ".png":
        if name.suffix:
            raise ValueError(f"name {value!r} must end in .png (the PNG carries the generation parameters)")
        name = name.with_suffix(".png")
    return str(name)
