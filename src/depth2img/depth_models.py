"""Any transformers depth model as the pipeline's depth estimator: running it, and sign and scale (loading:
``depth2img.loading.depth_estimator``).

SD2-depth was trained on MiDaS relative *inverse* depth: near is large. What a model predicts depends on the
model, and is read from its config:

- ``dpt`` (DPT-hybrid / MiDaS 3.0, DPT-large): relative inverse depth, used as it is;
- ``depth_anything``, ``prompt_depth_anything``: by ``config.depth_estimation_type``: ``"relative"`` is relative
  inverse depth (used as it is), ``"metric"`` is a distance in metres (converted);
- ``depth_pro``: the model's own output is a canonical inverse depth (transformers' post-processing turns it into
  metres with the estimated field of view, a per-image scale that normalisation removes): used as it is;
- ``zoedepth``, ``glpn``, ``chmv2``, ``tipsv2_dpt``: a distance in metres, converted to ``1 / max(d, 1e-4)``;
- anything else: assumed relative inverse depth, with a warning saying so.

``invert=True`` / ``False`` overrides the table (e.g. a DPT fine-tuned for metric depth). The 1e-4 m floor is
the one transformers' Depth Pro post-processing uses; it only matters for a (wrong) zero distance.

The depth is the model's ``predicted_depth``, which is also what transformers' ``post_process_depth_estimation``
returns without ``target_sizes`` for DPT, Depth Anything and GLPN. ZoeDepth's processor pads the image (reflect,
``int(sqrt(side / 2) * 3)`` pixels per side) against border artefacts; as transformers' post-processing does, the
map is resized (bicubic) to the padded input size and the padding cut off, here with torch alone (transformers'
version needs torchvision). The checkpoint's own DPT with our ``DPTPreprocessor`` keeps the original path, which
is what keeps seed-for-seed parity with diffusers.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch

__all__ = [
    "INVERSE",
    "METRIC",
    "METRIC_DEPTH_FLOOR",
    "NON_COMMERCIAL_MODELS",
    "depth_output_kind",
    "licence_notice",
    "model_depth",
    "needs_inversion",
    "to_inverse_depth",
]

INVERSE = "inverse"  # near = large, what SD2-depth was trained on
METRIC = "metric"  # a distance: near = small
METRIC_DEPTH_FLOOR = 1e-4  # metres; as transformers' Depth Pro post-processing clamps
_METRIC_MODEL_TYPES = frozenset({"zoedepth", "glpn", "chmv2", "tipsv2_dpt"})
_INVERSE_MODEL_TYPES = frozenset({"dpt", "depth_pro"})
_ZOEDEPTH_PADDING_FACTOR = 3  # transformers' ZoeDepth processor: pad int(sqrt(side / 2) * 3) pixels per side

# Known checkpoints under a non-commercial licence (lower-cased repo-id fragments -> licence). Depth Anything V2
# Small is Apache-2.0; Base, Large and Giant (relative and metric) are CC-BY-NC-4.0.
NON_COMMERCIAL_MODELS = {
    "depth-anything-v2-base": "CC-BY-NC-4.0",
    "depth-anything-v2-large": "CC-BY-NC-4.0",
    "depth-anything-v2-giant": "CC-BY-NC-4.0",
    "depth-anything-v2-metric-indoor-base": "CC-BY-NC-4.0",
    "depth-anything-v2-metric-indoor-large": "CC-BY-NC-4.0",
    "depth-anything-v2-metric-outdoor-base": "CC-BY-NC-4.0",
    "depth-anything-v2-metric-outdoor-large": "CC-BY-NC-4.0",
}


# ---------------------------------------------------------------------------------------------- sign and scale
def depth_output_kind(model: Any) -> str | None:
    """``INVERSE`` or ``METRIC`` from the model's config (see the table above); None when unknown."""
    config = getattr(model, "config", None)
    estimation_type = getattr(config, "depth_estimation_type", None)
    if estimation_type in ("relative", "metric"):
        return INVERSE if estimation_type == "relative" else METRIC
    model_type = getattr(config, "model_type", None)
    if model_type in _METRIC_MODEL_TYPES:
        return METRIC
    if model_type in _INVERSE_MODEL_TYPES:
        return INVERSE
    return None


def needs_inversion(model: Any, invert: bool | None = None) -> bool:
    """Whether the model's output is a distance to be turned into inverse depth; ``invert`` overrides."""
    if invert is not None:
        if not isinstance(invert, bool):
            raise TypeError(f"depth invert must be True, False or None (detect from the model), got {invert!r}")
        return invert
    kind = depth_output_kind(model)
    if kind is None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        warnings.warn(
            f"depth estimator {model_type!r} is not in depth2img's table of depth models; its output is taken as "
            "relative inverse depth (near = large). If near comes out far, set invert=True "
            "(pipe.set_depth_options(invert=True), --depth-invert yes)",
            stacklevel=3,
        )
        return False
    return kind == METRIC


def to_inverse_depth(distance: torch.Tensor) -> torch.Tensor:
    """Distance (metres) -> inverse depth, near = large: ``1 / max(d, METRIC_DEPTH_FLOOR)``."""
    return 1.0 / distance.clamp(min=METRIC_DEPTH_FLOOR)


# ---------------------------------------------------------------------------------------------- running
def model_depth(model: Any, processor: Any, outputs: Any, sizes: list[tuple[int, int]]) -> torch.Tensor:
    """(B, H', W') depth from a transformers depth model's ``outputs``: its ``predicted_depth``, without ZoeDepth's
    padding. ``sizes`` are the input images' (height, width)."""
    depth = outputs.predicted_depth
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "zoedepth" and getattr(processor, "do_pad", False):
        depth = torch.cat([_remove_zoedepth_padding(one, size) for one, size in zip(depth, sizes)])
    return depth


def _remove_zoedepth_padding(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One (H', W') ZoeDepth map -> (1, height, width): resized to the padded input, padding cut off."""
    height, width = size
    pad_h = int(math.sqrt(height / 2) * _ZOEDEPTH_PADDING_FACTOR)
    pad_w = int(math.sqrt(width / 2) * _ZOEDEPTH_PADDING_FACTOR)
    padded = torch.nn.functional.interpolate(
        depth[None, None], size=(height + 2 * pad_h, width + 2 * pad_w), mode="bicubic", align_corners=False
    )
    return padded[0, :, pad_h : pad_h + height, pad_w : pad_w + width]


# ---------------------------------------------------------------------------------------------- loading
def licence_notice(name_or_path: str | os.PathLike) -> str | None:
    """The one-line notice for a known non-commercial checkpoint, else None."""
    name = str(name_or_path).replace("\\", "/").rstrip("/").lower()
    for fragment, licence in NON_COMMERCIAL_MODELS.items():
        if name.endswith((fragment, f"{fragment}-hf")):
            return (
                f"depth model {name_or_path} is licensed {licence} (non-commercial use only); "
                "Depth Anything V2 Small (Apache-2.0) is free for commercial use"
            )
    return None
