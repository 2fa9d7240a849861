"""Previews of the image being made, from the latents of any step: ``pipe.decode_preview(latents)``.

The full VAE decodes a 512x512 image in hundreds of milliseconds on a CPU; TAESD (``AutoencoderTiny``, set as
``pipe.preview_vae``) in a few, which is what makes a preview every step affordable (A1111's and ComfyUI's live
previews use it too). Previews are approximate: softer, with slightly shifted colours. Typical use:

    pipe.preview_vae = AutoencoderTiny.from_pretrained("madebyollin/taesd")

    def show(pipe, step, timestep, tensors):
        pipe.decode_preview(tensors["latents"])[0].save(f"step-{step:02d}.png")
        return {}

    pipe(prompt, image=photo, callback_on_step_end=show)
"""

from __future__ import annotations

from typing import Any

import torch

from .images import postprocess

__all__ = ["PREVIEW_OUTPUT_TYPES", "decode_preview"]

PREVIEW_OUTPUT_TYPES = ("pil", "np", "pt")


@torch.no_grad()
def decode_preview(pipe: Any, latents: torch.Tensor, output_type: str = "pil") -> Any:
    """``latents`` (B, 4, h, w), in the UNet's scale, decoded by ``pipe.preview_vae`` (else ``pipe.vae``) into
    ``output_type`` images. The latents are not changed; they are moved to the decoder's device and dtype."""
    if output_type not in PREVIEW_OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not supported for previews; use one of pil, np, pt")
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        raise ValueError(f"decode_preview needs (batch, channels, height, width) latents, got {_describe(latents)}")
    decoder = pipe.preview_vae if pipe.preview_vae is not None else pipe.vae
    if decoder is None:
        raise ValueError("decode_preview needs pipe.preview_vae (e.g. TAESD) or pipe.vae; both are None")
    dtype = next(decoder.parameters()).dtype
    scaled = latents.to(device=pipe.device_of(decoder), dtype=dtype) / decoder.config.scaling_factor
    decoded = decoder.decode(scaled, return_dict=False)[0]
    return postprocess(decoded.float(), output_type)


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
