"""Depth maps for the command line: estimate one with the pipeline's estimator, resize it, save it.

Depth here is what the estimator (DPT / MiDaS) predicts: relative inverse depth, larger = nearer. Saved
files keep that convention — a 16-bit grayscale PNG where white is near, a viridis preview where yellow is
near, and optionally the raw float32 values as ``.npy``.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..utils.files import atomic_path, atomic_write_bytes
from .colormap import viridis

__all__ = [
    "estimate_depth",
    "normalized",
    "shared_range",
    "resize_depth",
    "write_depth_npy",
    "write_depth_png16",
    "write_preview",
]


@torch.no_grad()
def estimate_depth(pipe: Any, image: Image.Image) -> torch.Tensor:
    """The estimator's raw prediction (1, h, w) for ``image``, computed as the pipeline computes it itself.

    Passing it back as ``depth_map=`` gives the same images as letting the pipeline estimate depth, so the
    command estimates once per input image (not once per output) and can save the very map it used.
    """
    from ..depth import estimate_depth as estimate
    from ..images import describe_images, to_uint8_images

    pixels = to_uint8_images(describe_images(image))
    invert = getattr(pipe, "depth_invert", None)  # --depth-invert (cli/depth_model_options.py)
    return estimate(pipe.depth_estimator, pipe.feature_extractor, pixels, pipe.device, pipe.dtype, invert)


def shared_range(depths: Any, sizes: Any = None) -> tuple[float, float]:
    """(min, max) over all ``depths`` ((1, h, w) tensors or arrays), each first resized (bicubic, as the pipeline
    resizes) to its ``sizes`` entry (height, width) when given: one scale for a whole run (--depth-normalize
    batch). With one map and its latent size, this is the range the pipeline's per-image normalisation uses."""
    values = [torch.as_tensor(depth).float().reshape(1, 1, *depth.shape[-2:]) for depth in depths]
    if sizes is not None:
        values = [
            torch.nn.functional.interpolate(value, size=tuple(size), mode="bicubic", align_corners=False)
            for value, size in zip(values, sizes)
        ]
    return min(float(d.min()) for d in values), max(float(d.max()) for d in values)


def resize_depth(depth: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A (1, h, w) or (h, w) depth tensor resized (bicubic) to ``size`` = (width, height), as float32 numpy."""
    depth = depth.float().reshape(1, 1, *depth.shape[-2:])
    resized = torch.nn.functional.interpolate(depth, size=(size[1], size[0]), mode="bicubic", align_corners=False)
    return resized[0, 0].cpu().numpy()


def normalized(depth: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``depth`` scaled to [0, 1] (min → 0, max → 1, or ``value_range``'s ends, clipped); a constant map becomes
    all zeros instead of NaN."""
    low, high = value_range or (float(depth.min()), float(depth.max()))
    if high - low < 1e-12:
        return np.zeros_like(depth, dtype=np.float64)
    return np.clip((depth.astype(np.float64) - low) / (high - low), 0.0, 1.0)


def write_depth_png16(
    path: str | os.PathLike, depth: np.ndarray, value_range: tuple[float, float] | None = None
) -> None:
    """``depth`` as a 16-bit grayscale PNG (min..max, or ``value_range``, → 0..65535, white = near), atomically."""
    levels = np.round(normalized(depth, value_range) * 65535).astype(np.uint16)
    image = Image.fromarray(levels)  # uint16 → mode "I;16", saved as a 16-bit grayscale PNG
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_preview(path: str | os.PathLike, depth: np.ndarray, value_range: tuple[float, float] | None = None) -> None:
    """A viridis-coloured preview of ``depth`` (yellow = near, purple = far) as an 8-bit RGB PNG."""
    with atomic_path(path) as tmp:
        Image.fromarray(viridis(normalized(depth, value_range))).save(tmp, format="PNG")


def write_depth_npy(path: str | os.PathLike, depth: np.ndarray) -> None:
    """The raw float32 depth values as ``.npy`` (no pickle), written atomically."""
    buffer = io.BytesIO()
    np.save(buffer, depth.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
