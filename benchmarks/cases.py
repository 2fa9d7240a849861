"""One function per measured stage: given a loaded pipeline (ours or the reference) and the shared inputs, return
the zero-argument call that the harness times. Each call returns the stage's output, which the harness compares
between the sides (the fidelity column).

Both sides get the very same input tensors (``make_inputs``, seeded), and each stage is reached through the
pipeline's own components and methods, so a stage costs what it costs inside a generation.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .sides import OURS

PROMPT = "a cosy living room with a sofa and a window, watercolor"
STAGES = ("text_encode", "depth_estimate", "vae_encode", "unet_step", "vae_decode", "full_pipeline")
UNET_TIMESTEP = 500  # mid-schedule; the cost of a step does not depend on it


@dataclass
class StageInputs:
    """Everything the stages consume, identical for both sides."""

    size: int  # image side in pixels (square)
    image: PIL.Image.Image
    pixels: torch.Tensor  # (1, 3, size, size) in [-1, 1]: the VAE encoder's input
    latents: torch.Tensor  # (1, C, size/8, size/8), already divided by the scaling factor: the decoder's input
    unet_sample: torch.Tensor  # (2, C + 1, size/8, size/8): latents and depth, twice for guidance
    text_embeddings: torch.Tensor  # (2, tokens, width): negative and positive prompt
    latent_size: tuple[int, int]
    steps: int
    strength: float
    guidance_scale: float
    seed: int
    device: torch.device
    dtype: torch.dtype


def test_image(size: int, seed: int = 0) -> PIL.Image.Image:
    """A smooth random RGB picture (coarse colour blocks plus fine noise), the same for every run of a seed."""
    rng = np.random.default_rng(seed)
    cells = max(size // 32, 2)
    coarse = rng.random((cells, cells, 3)).astype(np.float32)
    big = np.asarray(PIL.Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), PIL.Image.BICUBIC))
    noise = rng.integers(-12, 13, size=(size, size, 3))
    return PIL.Image.fromarray(np.clip(big.astype(np.int64) + noise, 0, 255).astype(np.uint8))


def _config(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def make_inputs(
    folder: str | os.PathLike,
    size: int,
    steps: int,
    strength: float = 0.8,
    guidance_scale: float = 7.5,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> StageInputs:
    """Seeded inputs of the right shapes for the pipeline folder's architecture at ``size``² pixels."""
    folder = Path(folder)
    unet = _config(folder, "unet/config.json")
    vae = _config(folder, "vae/config.json")
    tokens = _config(folder, "tokenizer/tokenizer_config.json").get("model_max_length", 77)
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    if size % factor:
        raise ValueError(f"size must be a multiple of {factor} (the VAE's scale factor), got {size}")
    latent = size // factor
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    image = test_image(size, seed)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    return StageInputs(
        size=size,
        image=image,
        pixels=pixels.to(device=device, dtype=dtype),
        latents=randn(1, vae["latent_channels"], latent, latent),
        unet_sample=randn(2, unet["in_channels"], latent, latent),
        text_embeddings=randn(2, tokens, unet["cross_attention_dim"]),
        latent_size=(latent, latent),
        steps=steps,
        strength=strength,
        guidance_scale=guidance_scale,
        seed=seed,
        device=torch.device(device),
        dtype=dtype,
    )


# ---------------------------------------------------------------------------------------------- stages
def text_encode(pipe: Any, side: str, x: StageInputs) -> Callable[[], torch.Tensor]:
    """Prompt and empty negative prompt through the tokenizer and CLIP text encoder."""

    def run() -> torch.Tensor:
        positive, negative = pipe.encode_prompt(PROMPT, x.device, 1, True, None)
        return torch.cat([negative, positive])

    return run


def depth_estimate(pipe: Any, side: str, x: StageInputs) -> Callable[[], torch.Tensor]:
    """The DPT depth estimate of the image, resized and normalised into the UNet's depth channel."""
    if side == OURS:
        from depth2img.images import describe_images

        # By keyword, filtered by the signature: the method's argument list is still evolving.
        accepted = inspect.signature(pipe.prepare_depth_map).parameters
        given = {
            "images": describe_images(x.image),
            "depth": None,
            "total": 1,
            "num_images_per_prompt": 1,
            "do_classifier_free_guidance": True,
            "dtype": x.dtype,
            "device": x.device,
            "latent_size": x.latent_size,
        }
        kwargs = {key: value for key, value in given.items() if key in accepted}
        return lambda: pipe.prepare_depth_map(**kwargs)
    return lambda: pipe.prepare_depth_map(x.image, None, 1, True, x.dtype, x.device)


def vae_encode(pipe: Any, side: str, x: StageInputs) -> Callable[[], torch.Tensor]:
    """The VAE encoder on the image (the latent distribution's mean: sampling adds nothing to the cost)."""
    return lambda: pipe.vae.encode(x.pixels).latent_dist.mean


def unet_step(pipe: Any, side: str, x: StageInputs) -> Callable[[], torch.Tensor]:
    """One UNet evaluation at batch 2 (negative and positive prompt: classifier-free guidance)."""
    timestep = torch.tensor(UNET_TIMESTEP, device=x.device)  # a 0-d tensor, as the scheduler gives the pipeline

    def run() -> torch.Tensor:
        return pipe.unet(x.unet_sample, timestep, encoder_hidden_states=x.text_embeddings, return_dict=False)[0]

    return run


def vae_decode(pipe: Any, side: str, x: StageInputs) -> Callable[[], torch.Tensor]:
    """The VAE decoder from latents to an image."""
    return lambda: pipe.vae.decode(x.latents, return_dict=False)[0]


def full_pipeline(pipe: Any, side: str, x: StageInputs) -> Callable[[], np.ndarray]:
    """A whole generation: ``pipe(prompt, image, ...)`` with a fixed seed, as float images in [0, 1]."""

    def run() -> np.ndarray:
        generator = torch.Generator().manual_seed(x.seed)
        return pipe(
            PROMPT,
            image=x.image,
            num_inference_steps=x.steps,
            strength=x.strength,
            guidance_scale=x.guidance_scale,
            generator=generator,
            output_type="np",
        ).images

    return run


STAGE_FUNCTIONS: dict[str, Callable[[Any, str, StageInputs], Callable[[], Any]]] = {
    "text_encode": text_encode,
    "depth_estimate": depth_estimate,
    "vae_encode": vae_encode,
    "unet_step": unet_step,
    "vae_decode": vae_decode,
    "full_pipeline": full_pipeline,
}


def as_array(output: Any) -> np.ndarray:
    """A stage output as float64 numpy (on the CPU), for comparing the sides."""
    if isinstance(output, torch.Tensor):
        return output.detach().to("cpu", torch.float64).numpy()
    return np.asarray(output, dtype=np.float64)
