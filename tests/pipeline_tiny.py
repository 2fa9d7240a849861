"""Tiny random-weight SD2-depth components for the pipeline tests (shared by tests/test_pipeline_*.py).

The reference pipeline is diffusers' ``StableDiffusionDepth2ImgPipeline`` built from the package's tiny configs
(``configs/tiny``: diffusers' UNet/VAE/PNDM, a 4-layer CLIP text encoder with a 1000-token CLIP BPE, a tiny
DPT-hybrid depth estimator with a BiT backbone like the published one). diffusers saves it; our
``Depth2ImgPipeline.from_pretrained`` loads that folder with our UNet, VAE, schedulers and DPT preprocessing.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import PIL.Image
import torch

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "depth2img" / "configs"


def build_reference():
    """diffusers' depth2img pipeline from the package's tiny configs, with each library's default random
    initialisation (seeded): outputs then depend strongly on prompt, depth and seed, which keeps the parity
    checks sharp."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    tiny = CONFIGS / "tiny"
    unet = diffusers.UNet2DConditionModel.from_config(json.loads((tiny / "unet/config.json").read_text()))
    vae = diffusers.AutoencoderKL.from_config(json.loads((tiny / "vae/config.json").read_text()))
    scheduler = diffusers.PNDMScheduler.from_config(json.loads((tiny / "scheduler/scheduler_config.json").read_text()))
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(tiny / "text_encoder"))
    depth_estimator = transformers.DPTForDepthEstimation(
        transformers.DPTConfig.from_pretrained(tiny / "depth_estimator")
    )
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    processor_cls = getattr(transformers, "DPTImageProcessorPil", None) or transformers.DPTImageProcessor
    feature_extractor = processor_cls.from_pretrained(tiny / "feature_extractor")
    pipe = diffusers.StableDiffusionDepth2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        depth_estimator=depth_estimator.eval(),
        feature_extractor=feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@cache
def tiny_folder() -> Path:
    """The tiny reference pipeline saved by diffusers, built once per test process (removed at exit)."""
    from conftest import require

    require("diffusers")
    root = Path(tempfile.mkdtemp(prefix="depth2img-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    build_reference().save_pretrained(root / "pipeline")
    return root / "pipeline"


def load_ours(folder: Path, **kwargs):
    from depth2img import Depth2ImgPipeline

    pipe = Depth2ImgPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_reference(folder: Path, **kwargs):
    import diffusers

    pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@cache
def random_pil(height: int = 24, width: int = 40, seed: int = 0) -> PIL.Image.Image:
    """A smooth-ish random RGB picture (non-square by default: catches swapped H/W)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 4 + 1, width // 4 + 1, 3))
    big = np.kron(coarse, np.ones((4, 4, 1)))[:height, :width]
    noise = rng.random((height, width, 3)) * 0.2
    return PIL.Image.fromarray((np.clip(big * 0.8 + noise, 0, 1) * 255).astype(np.uint8))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


class ModelsMustNotRun:
    """Context manager: any forward pass of the pipeline's models fails the test (for 'checked before any model
    runs')."""

    def __init__(self, pipe):
        self.modules = [m for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.depth_estimator) if m is not None]
        self.handles = []

    def __enter__(self):
        def refuse(module, args):
            raise AssertionError(f"{type(module).__name__} ran before the input was rejected")

        self.handles = [m.register_forward_pre_hook(refuse) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return False
