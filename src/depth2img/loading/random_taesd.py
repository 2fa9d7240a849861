"""A random-weight TAESD (``AutoencoderTiny``) in the published layout: for tests and for trying previews offline.

``random_taesd("taesd")`` is the published architecture (~2.4M parameters), ``"taesd-tiny"`` a few thousand
parameters with the same layout (both configs ship in ``configs/``); ``write_random_taesd(folder)`` saves one as
``config.json`` + ``diffusion_pytorch_model.safetensors``, the folder layout of ``madebyollin/taesd``, which
``AutoencoderTiny.from_pretrained``, ``--vae PATH`` and diffusers all load. Its decodes are noise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch

from ..configuration import load_json
from .empty_init import parameters_on_meta
from .random_model import _swap_in, init_random_

__all__ = ["TAESD_CONFIGS", "random_taesd", "write_random_taesd"]

TAESD_CONFIGS = ("taesd", "taesd-tiny")
# TAESD's plain conv stacks have no normalisation: the usual 0.02 would make every decode a flat grey; a
# He-like scale keeps activations alive through the ~30 layers, so random decodes still vary with the latents.
_TAESD_WEIGHT_STD = 0.1


def _config_path(config: str | os.PathLike) -> Path:
    if str(config) in TAESD_CONFIGS:
        return Path(str(resources.files("depth2img") / "configs" / str(config) / "config.json"))
    path = Path(config)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"config must be one of {', '.join(TAESD_CONFIGS)} or a TAESD config.json, got {config!r}")
    return path


def random_taesd(config: str | os.PathLike = "taesd", seed: int = 0, dtype: torch.dtype | None = None):
    """An ``AutoencoderTiny`` of ``config`` with random weights (deterministic for ``seed``), in eval mode."""
    from ..models.taesd import AutoencoderTiny

    path = _config_path(config)
    kwargs = AutoencoderTiny.extract_init_kwargs(load_json(path), source=str(path))
    with parameters_on_meta():
        model = AutoencoderTiny(**kwargs)
    init_random_(model, seed=seed, std=_TAESD_WEIGHT_STD, dtype=dtype)
    return model.eval()


def write_random_taesd(
    folder: str | os.PathLike, config: str | os.PathLike = "taesd", seed: int = 0, overwrite: bool = False
) -> Path:
    """Save a random TAESD into ``folder`` (config.json + diffusion_pytorch_model.safetensors); returns it. The
    folder appears complete or not at all; an existing non-empty one is replaced only with ``overwrite``."""
    out_dir = Path(folder)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass overwrite=True or a new folder")
    model = random_taesd(config, seed=seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
