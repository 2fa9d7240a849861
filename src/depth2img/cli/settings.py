"""The parameters of a ``generate`` run: defaults, a PNG's stored record, and flags, merged in that order.

Flags the user typed win over the record of ``--from-png``, which wins over the defaults. The record stored
in each output PNG describes that one image (its own seed, prompt and input), so replaying it makes one image
with the same pixels — given the same device and dtype, since GPUs and CPUs round differently.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..components import DEFAULT_REPO_ID
from .errors import CliError
from .pngmeta import read_png_record

__all__ = ["DEFAULT_MODEL", "GENERATION_DEFAULTS", "GenerateSettings", "resolve_settings"]

DEFAULT_MODEL = DEFAULT_REPO_ID  # the published checkpoint

# Defaults equal to Depth2ImgPipeline.__call__'s, so the command and the library agree.
GENERATION_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "negative_prompt": "",
    "depth_map": None,
    "strength": 0.8,
    "steps": 50,
    "guidance_scale": 7.5,
    "scheduler": None,  # None: the model's own scheduler (PNDM for the published checkpoint)
    "seed": -1,
    "num_images": 1,
    "clip_skip": None,
    "eta": 0.0,
    "width": None,
    "height": None,
    "loras": [],
    "embeddings": [],
    "device": "auto",
    "dtype": "auto",
    "attention_slicing": False,
    "vae_tiling": False,
    "depth_model": None,  # the flags of component_options.py, with its defaults
    "depth_invert": "auto",
    "depth_normalize": "image",
    "vae": None,
}

# Record keys (one image) that differ from the flag names (one run).
_RECORD_TO_SETTING = {"prompt": "prompts", "image": "images"}


@dataclass
class GenerateSettings:
    """Every parameter of a run, after merging; paths are absolute strings."""

    prompts: list[str]
    images: list[str]
    model: str
    negative_prompt: str
    depth_map: str | None
    strength: float
    steps: int
    guidance_scale: float
    scheduler: str | None
    seed: int
    num_images: int
    clip_skip: int | None
    eta: float
    width: int | None
    height: int | None
    loras: list[tuple[str, float]]
    embeddings: list[str]
    device: str
    dtype: str
    attention_slicing: bool
    vae_tiling: bool
    depth_model: str | None
    depth_invert: str
    depth_normalize: str
    vae: str | None
    # Where the values came from: keys taken from --from-png, and that record's input checksums.
    from_record: set[str] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)


def resolve_settings(args: argparse.Namespace) -> GenerateSettings:
    """Merge defaults, the ``--from-png`` record and the typed flags; fail on a missing prompt or image."""
    record = read_png_record(args.from_png) if args.from_png else {}
    values: dict[str, Any] = dict(GENERATION_DEFAULTS)
    from_record: set[str] = set()
    for key, value in record.items():
        name = _RECORD_TO_SETTING.get(key, key)
        if name in GENERATION_DEFAULTS or name in ("prompts", "images"):
            values[name] = [value] if name in ("prompts", "images") else value
            from_record.add(name)
    if record:
        values["num_images"] = 1  # a record is one image, with its own seed already
    for name in (*GENERATION_DEFAULTS, "prompts", "images"):
        typed = getattr(args, name, None)
        if typed is not None:
            values[name] = typed
            from_record.discard(name)
    if "prompts" not in values:
        raise CliError("generate needs a prompt: -p/--prompt TEXT (or --from-png FILE to repeat a run)")
    if "images" not in values:
        raise CliError("generate needs an input image: -i/--image FILE or FOLDER (or --from-png FILE)")
    values["loras"] = [tuple(item) for item in values["loras"]]
    return GenerateSettings(**values, from_record=from_record, record=record)


def image_record(settings: GenerateSettings, *, prompt: str, image: Path, seed: int, **extra: Any) -> dict[str, Any]:
    """The JSON record stored in one output PNG: enough to make that image again, alone."""
    record = {key: value for key, value in asdict(settings).items() if key in GENERATION_DEFAULTS}
    record.update(prompt=prompt, image=str(image), seed=seed, num_images=1, loras=[list(x) for x in settings.loras])
    record.update(extra)
    record["depth2img_version"] = __version__
    return record


def a1111_fields(record: dict[str, Any], sampler: str, size: tuple[int, int]) -> dict[str, Any]:
    """The ``Key: value`` line of the A1111 ``parameters`` chunk, in A1111's order (None values are dropped)."""
    loras = ", ".join(f"{Path(path).stem}:{scale:g}" for path, scale in record["loras"]) or None
    return {
        "Steps": record["steps"],
        "Sampler": sampler,
        "CFG scale": f"{record['guidance_scale']:g}",
        "Seed": record["seed"],
        "Size": f"{size[0]}x{size[1]}",
        "Denoising strength": f"{record['strength']:g}",
        "Model": record["model"],
        "Clip skip": record["clip_skip"],
        "Eta": f"{record['eta']:g}" if record["eta"] else None,
        "Lora": loras,
        "Version": f"depth2img {__version__}",
    }
