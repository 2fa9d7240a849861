"""Depth conditioning: estimate a depth map with the DPT model, or take the user's, and bring it to latent size.

``DPTPreprocessor`` is the pipeline's ``feature_extractor``: it reads the DPT image processor's
``preprocessor_config.json`` and prepares the estimator's input with PIL and numpy only (no torchvision), giving
the same numbers as transformers' DPT image processor. Any other object with the transformers calling
convention (``processor(images=..., return_tensors="pt").pixel_values``) works too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .utils.files import atomic_write_text

__all__ = [
    "DEPTH_NORMALIZE_MODES",
    "DPTPreprocessor",
    "DepthInputs",
    "DepthNormalize",
    "check_depth_normalize",
    "depth_map_to_tensor",
    "estimate_depth",
    "normalize_depth",
]


@dataclass
class DepthInputs:
    """The estimator's input batch, named as transformers names it."""

    pixel_values: torch.Tensor


def _constrain_to_multiple(value: float, multiple: int) -> int:
    return round(value / multiple) * multiple


@dataclass
class DPTPreprocessor:
    """Resize (PIL), rescale and normalise images for a DPT depth estimator, as transformers' DPT processor does.

    Fields are the keys of ``preprocessor_config.json``; ``resample`` is a PIL filter number (2 = bilinear,
    3 = bicubic). With ``keep_aspect_ratio`` the image is scaled as little as possible to fit ``size``, rounded to
    ``ensure_multiple_of``.
    """

    size: dict = field(default_factory=lambda: {"height": 384, "width": 384})
    resample: int = 3
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    keep_aspect_ratio: bool = False
    ensure_multiple_of: int = 1
    do_pad: bool = False
    size_divisor: int | None = None

    config_name = "preprocessor_config.json"

    def __post_init__(self) -> None:
        if isinstance(self.size, int):  # old feature-extractor configs: one number for a square
            self.size = {"height": self.size, "width": self.size}
        if not {"height", "width"} <= set(self.size):
            raise ValueError(f"DPT preprocessor size must have 'height' and 'width', got {self.size!r}")

    # ------------------------------------------------------------------ config I/O
    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> DPTPreprocessor:
        """Build from a ``preprocessor_config.json`` mapping; keys that do not affect DPT input are ignored."""
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in config.items() if key in known})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, subfolder: str | None = None) -> DPTPreprocessor:
        """Read ``preprocessor_config.json`` from ``folder`` (optionally its ``subfolder``)."""
        from .configuration import load_json

        return cls.from_dict(load_json(Path(folder) / (subfolder or "") / cls.config_name))

    def to_dict(self) -> dict[str, Any]:
        """The config as transformers writes it, so transformers' ``AutoImageProcessor`` reads it back too."""
        return {**asdict(self), "image_processor_type": "DPTImageProcessor"}

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``preprocessor_config.json`` into ``save_directory`` (atomically); returns its path."""
        path = Path(save_directory) / self.config_name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    # ------------------------------------------------------------------ preprocessing
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the estimator sees for an input of ``height`` x ``width``."""
        scale_h, scale_w = self.size["height"] / height, self.size["width"] / width
        if self.keep_aspect_ratio:  # scale as little as possible
            scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        multiple = self.ensure_multiple_of
        return _constrain_to_multiple(scale_h * height, multiple), _constrain_to_multiple(scale_w * width, multiple)

    def preprocess_one(self, image: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 image → (3, H', W') float32 estimator input."""
        if self.do_resize:
            height, width = self.output_size(*image.shape[:2])
            resized = PIL.Image.fromarray(image).resize((width, height), resample=self.resample)
            image = np.array(resized)
        if self.do_rescale:  # in float64, then float32: transformers' arithmetic, bit for bit
            image = (image.astype(np.float64) * self.rescale_factor).astype(np.float32)
        image = image.astype(np.float32, copy=False)
        if self.do_normalize:
            image = (image - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        image = image.transpose(2, 0, 1)
        if self.do_pad and self.size_divisor:
            image = _center_pad(image, self.size_divisor)
        return np.ascontiguousarray(image)

    def __call__(self, images, return_tensors: str = "pt") -> DepthInputs:
        """Images (uint8 (H, W, 3) arrays, PIL images, or anything ``depth2img.images`` accepts) → pixel values."""
        from .images import describe_images, to_uint8_images

        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; only 'pt' is")
        arrays = to_uint8_images(describe_images(images))
        return DepthInputs(pixel_values=torch.from_numpy(np.stack([self.preprocess_one(a) for a in arrays])))


def _center_pad(image: np.ndarray, divisor: int) -> np.ndarray:
    def split(size: int) -> tuple[int, int]:
        pad = math.ceil(size / divisor) * divisor - size
        return pad // 2, pad - pad // 2

    return np.pad(image, ((0, 0), split(image.shape[1]), split(image.shape[2])))


# ---------------------------------------------------------------------------------------------- estimation
def _autocast(device: torch.device, dtype: torch.dtype):
    """Half-precision DPT-hybrid needs autocast (its batch norms misbehave in fp16), as in the reference; float32
    needs none, and MPS does not support it."""
    if dtype in (torch.float16, torch.bfloat16) and device.type != "mps":
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def estimate_depth(
    depth_estimator: torch.nn.Module,
    feature_extractor: Any,
    images: list[np.ndarray],
    device: torch.device,
    dtype: torch.dtype,
    invert: bool | None = None,
) -> torch.Tensor:
    """Inverse depth (B, H', W'), near = large, of (H, W, 3) uint8 ``images``, one estimator pass for the batch.

    With our ``DPTPreprocessor`` this is the DPT's raw ``predicted_depth`` (the reference's path). With a
    transformers image processor, ZoeDepth's padding is removed from its output; a model that
    predicts distance (metric depth) is converted to inverse depth, as decided by ``invert`` (None: from the
    model's config). See ``depth2img.depth_models``.
    """
    from .depth_models import model_depth, needs_inversion, to_inverse_depth

    # A mixed-precision pipeline keeps the estimator in float32 while the UNet uses bfloat16 (depth2img.precision):
    # the estimator computes in its own weights' dtype.
    dtype = next((p.dtype for p in depth_estimator.parameters() if p.is_floating_point()), dtype)
    invert = needs_inversion(depth_estimator, invert)  # before the model runs: a bad value fails early
    if isinstance(feature_extractor, DPTPreprocessor):
        pixel_values = torch.from_numpy(np.stack([feature_extractor.preprocess_one(image) for image in images]))
    else:
        pixel_values = feature_extractor(images=images, return_tensors="pt").pixel_values
    pixel_values = pixel_values.to(device=device, dtype=dtype)
    with _autocast(device, dtype):
        outputs = depth_estimator(pixel_values)
    if isinstance(feature_extractor, DPTPreprocessor):
        depth = outputs.predicted_depth
    else:
        depth = model_depth(depth_estimator, feature_extractor, outputs, [image.shape[:2] for image in images])
    return to_inverse_depth(depth) if invert else depth


# ---------------------------------------------------------------------------------------------- user depth maps
def _one_depth(depth: Any) -> torch.Tensor:
    """A single depth map given as PIL, numpy or torch → a float tensor of its native layout."""
    if isinstance(depth, PIL.Image.Image):
        if depth.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            depth = depth.convert("L")
        return torch.from_numpy(np.asarray(depth).astype(np.float32))
    if isinstance(depth, np.ndarray):
        if not (np.issubdtype(depth.dtype, np.number) or depth.dtype == np.bool_):
            raise TypeError(f"depth_map arrays must be numeric, got dtype {depth.dtype}")
        return torch.from_numpy(np.ascontiguousarray(depth))
    if isinstance(depth, torch.Tensor):
        return depth
    raise TypeError(
        f"depth_map must be a torch tensor, numpy array, PIL image or a list of them, got {type(depth).__name__}"
    )


def _as_batch(depth: torch.Tensor) -> torch.Tensor:
    """(H, W), (B, H, W) or (B, 1, H, W) → (B, H, W)."""
    if depth.ndim == 2:
        return depth[None]
    if depth.ndim == 3:
        return depth
    if depth.ndim == 4 and depth.shape[1] == 1:
        return depth[:, 0]
    raise ValueError(f"depth_map must have shape (H, W), (B, H, W) or (B, 1, H, W), got {tuple(depth.shape)}")


def depth_map_to_tensor(depth_map: Any) -> torch.Tensor:
    """The user's ``depth_map`` (tensor, array, PIL image, or a list of them) as a (B, H, W) tensor."""
    if isinstance(depth_map, (list, tuple)):
        if len(depth_map) == 0:
            raise ValueError("depth_map is an empty list; pass one depth map per image")
        maps = [_as_batch(_one_depth(entry)) for entry in depth_map]
        if len({tuple(m.shape[1:]) for m in maps}) > 1:
            shapes = sorted({tuple(m.shape[1:]) for m in maps})
            raise ValueError(f"depth maps in a list must share one size, got {shapes}")
        return torch.cat([m.to(maps[0].device) for m in maps])
    batch = _as_batch(_one_depth(depth_map))
    if min(batch.shape[1:]) < 1:
        raise ValueError(f"depth_map is empty (shape {tuple(batch.shape)})")
    return batch


# ---------------------------------------------------------------------------------------------- to latent size
DEPTH_NORMALIZE_MODES = ("image", "batch")
DepthNormalize = str | tuple[float, float]  # "image", "batch", or a fixed (low, high) range


def check_depth_normalize(mode: Any) -> DepthNormalize:
    """``mode`` if valid: "image", "batch", or a (low, high) pair of finite numbers with low < high."""
    if isinstance(mode, str) and mode in DEPTH_NORMALIZE_MODES:
        return mode
    if isinstance(mode, (tuple, list)) and len(mode) == 2 and all(_is_number(v) for v in mode):
        low, high = float(mode[0]), float(mode[1])
        if math.isfinite(low) and math.isfinite(high) and low < high:
            return (low, high)
    raise ValueError(
        f"depth normalize={mode!r} is not allowed; use 'image' (per image), 'batch' (one range for the batch) or a "
        "(low, high) range with low < high"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def normalize_depth(
    depth: torch.Tensor, size: tuple[int, int], dtype: torch.dtype, mode: DepthNormalize = "image"
) -> torch.Tensor:
    """(B, H, W) depth → (B, 1, h, w): bicubic resize to ``size``, then scaled to [-1, 1] by the min and max of each
    map (``mode="image"``, the reference's), of the whole batch (``"batch"``: the maps keep their relative depths,
    so frames of a video stay consistent), or by a fixed ``(low, high)`` range (the same scale across calls, e.g.
    over all frames of a video made one call at a time). A constant map (no depth structure) becomes all zeros
    rather than the reference's NaN."""
    mode = check_depth_normalize(mode)
    depth = torch.nn.functional.interpolate(depth.unsqueeze(1), size=size, mode="bicubic", align_corners=False)
    if isinstance(mode, tuple):
        depth_min = torch.tensor(mode[0], dtype=depth.dtype, device=depth.device)
        depth_max = torch.tensor(mode[1], dtype=depth.dtype, device=depth.device)
    else:
        dims = [1, 2, 3] if mode == "image" else [0, 1, 2, 3]
        depth_min = torch.amin(depth, dim=dims, keepdim=True)
        depth_max = torch.amax(depth, dim=dims, keepdim=True)
    spread = depth_max - depth_min
    flat = spread == 0
    if bool(flat.any()):
        normalized = 2.0 * (depth - depth_min) / torch.where(flat, torch.ones_like(spread), spread) - 1.0
        normalized = torch.where(flat, torch.zeros_like(normalized), normalized)
    else:  # the common case: exactly the reference's arithmetic, no extra work
        normalized = 2.0 * (depth - depth_min) / spread - 1.0
    return normalized.to(dtype)
