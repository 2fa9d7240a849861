"""depth2img: text-guided, depth-preserving image-to-image generation with Stable Diffusion 2 depth.

    from depth2img import Depth2ImgPipeline
    pipe = Depth2ImgPipeline.from_pretrained()  # sd2-community/stable-diffusion-2-depth

Public names are imported on first use, so ``import depth2img`` stays cheap (no torch or transformers yet).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Depth2ImgPipeline": ".pipeline",
    "Depth2ImgPipelineOutput": ".pipeline",
    "DPTPreprocessor": ".depth",
    "load_depth_estimator": ".loading.depth_estimator",
    "UNet2DConditionModel": ".models",
    "AutoencoderKL": ".models",
    "AutoencoderTiny": ".models",
    "use_reference_arithmetic": ".models",
    "DDPMScheduler": ".schedulers",
    "DDIMScheduler": ".schedulers",
    "PNDMScheduler": ".schedulers",
    "LMSDiscreteScheduler": ".schedulers",
    "EulerDiscreteScheduler": ".schedulers",
    "EulerAncestralDiscreteScheduler": ".schedulers",
    "HeunDiscreteScheduler": ".schedulers",
    "DPMSolverMultistepScheduler": ".schedulers",
    "UniPCMultistepScheduler": ".schedulers",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
