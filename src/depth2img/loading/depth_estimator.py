"""Load any transformers depth model (``AutoModelForDepthEstimation``) and its image processor, to use as the
pipeline's depth estimator. How its output becomes SD2-depth's conditioning (sign, scale) is
``depth2img.depth_models``; this module only finds and loads the files."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from ..depth_models import licence_notice
from .hub import is_local_folder
from .load_options import resolve_dtypes
from .pipeline_folder import transformers_dtype_keyword

__all__ = ["load_depth_estimator"]


def load_depth_estimator(
    name_or_path: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    local_files_only: bool = False,
    **hub_options: Any,
) -> tuple[torch.nn.Module, Any]:
    """Load any transformers depth model and its image processor: ``(model, image_processor)``.

    ``name_or_path`` is a Hub repo id (``depth-anything/Depth-Anything-V2-Small-hf``) or a local folder; loaded
    with ``AutoModelForDepthEstimation`` and ``AutoImageProcessor``, in eval mode, in ``torch_dtype`` (default
    float32) and on ``device``. ``revision``, ``cache_dir``, ``token`` and ``subfolder`` go to transformers.
    Pass both to ``Depth2ImgPipeline.from_pretrained(..., depth_estimator=model, feature_extractor=processor)``.
    A known non-commercial checkpoint is announced with one warning.
    """
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    unknown = sorted(set(hub_options) - {"revision", "cache_dir", "token", "subfolder"})
    if unknown:
        raise TypeError(
            f"load_depth_estimator got unknown argument(s) {', '.join(unknown)}; accepted: torch_dtype, device, "
            "local_files_only, revision, cache_dir, token, subfolder"
        )
    dtype = resolve_dtypes(torch_dtype).default or torch.float32
    if not is_local_folder(name_or_path) and str(name_or_path).count("/") != 1:
        raise FileNotFoundError(
            f"depth model {str(name_or_path)!r} is neither a local folder nor a Hub repo id (owner/name)"
        )
    notice = licence_notice(name_or_path)
    if notice:
        warnings.warn(notice, stacklevel=2)
    options = {"local_files_only": local_files_only, **hub_options}
    processor = AutoImageProcessor.from_pretrained(name_or_path, **options)
    model = AutoModelForDepthEstimation.from_pretrained(
        name_or_path, **{transformers_dtype_keyword(): dtype}, **options
    ).eval()
    if device is not None:
        model = model.to(device)
    return model, processor
