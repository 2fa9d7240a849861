"""Tell what an original single-file checkpoint is from its tensor names and shapes (ComfyUI-style).

The UNet's first convolution (``model.diffusion_model.input_blocks.0.0.weight``, shape ``(320, C, 3, 3)``)
says what the model is conditioned on: ``C = 5`` is SD2-depth (4 latent channels + depth), 4 a text-to-image
model, 9 inpainting (latents + mask + masked image), 8 instruct-pix2pix (latents + image latents), 7 the x4
upscaler (latents + low-resolution image). The width of the cross-attention context (``attn2.to_k`` input)
separates SD1.x (768, CLIP ViT-L), SD2.x (1024, OpenCLIP ViT-H) and SDXL (2048).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CheckpointKind", "NotADepthCheckpointError", "describe", "require_depth_checkpoint"]

UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"
DEPTH_MODEL_PREFIX = "depth_model.model."

_FAMILIES = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "Stable Diffusion XL"}
_BY_INPUT_CHANNELS = {
    4: "text-to-image",
    5: "depth-to-image",
    7: "x4 upscaler",
    8: "instruct-pix2pix (image-conditioned)",
    9: "inpainting",
}


class NotADepthCheckpointError(ValueError):
    """The file is a checkpoint of another kind (or no Stable Diffusion checkpoint at all)."""


@dataclass(frozen=True)
class CheckpointKind:
    """What the tensors say: UNet input channels, cross-attention width, whether depth-model weights are there."""

    in_channels: int | None
    context_dim: int | None
    has_depth_model: bool

    @property
    def is_depth(self) -> bool:
        return self.in_channels == 5

    def name(self) -> str:
        """A human description, e.g. "a Stable Diffusion 1.x text-to-image checkpoint"."""
        family = _FAMILIES.get(self.context_dim, "Stable Diffusion")
        if self.context_dim is not None and self.context_dim not in _FAMILIES:
            family += f" (text context width {self.context_dim})"
        task = _BY_INPUT_CHANNELS.get(self.in_channels, f"{self.in_channels}-input-channel")
        return f"a {family} {task} checkpoint"


def describe(shapes: Mapping[str, tuple[int, ...]]) -> CheckpointKind:
    """Read the kind of checkpoint from ``shapes`` (key → tensor shape) without loading any tensor."""
    unet_input = shapes.get(UNET_INPUT)
    in_channels = unet_input[1] if unet_input is not None and len(unet_input) == 4 else None
    context = next(
        (shape[1] for key, shape in shapes.items() if key.startswith("model.diffusion_model.") and _is_cross_k(key)),
        None,
    )
    has_depth_model = any(key.startswith(DEPTH_MODEL_PREFIX) for key in shapes)
    return CheckpointKind(in_channels, context, has_depth_model)


def _is_cross_k(key: str) -> bool:
    return key.endswith(".attn2.to_k.weight")


def require_depth_checkpoint(shapes: Mapping[str, tuple[int, ...]], source: str) -> CheckpointKind:
    """The checkpoint's kind, or ``NotADepthCheckpointError`` saying what it is instead."""
    kind = describe(shapes)
    if kind.in_channels is None:
        raise NotADepthCheckpointError(f"{source} is not an original Stable Diffusion checkpoint: {_guess(shapes)}")
    if not kind.is_depth:
        raise NotADepthCheckpointError(
            f"{source} is {kind.name()} (UNet with {kind.in_channels} input channels), not a depth model; "
            "from_single_file loads SD2-depth checkpoints such as 512-depth-ema.ckpt (UNet with 5 input channels)"
        )
    return kind


def _guess(shapes: Mapping[str, tuple[int, ...]]) -> str:
    keys = list(shapes)
    if not keys:
        return "it holds no tensors"
    if any(key.startswith("conditioner.embedders.") for key in keys):
        return "it looks like Stable Diffusion XL (conditioner.embedders.*), which is not a depth model"
    if any(key.startswith(("down_blocks.", "conv_in.", "encoder.down_blocks.")) for key in keys):
        return "it is a single model in the diffusers layout; load a diffusers folder with from_pretrained instead"
    if any(key.startswith(("lora_", "lora_unet_", "lora_te_")) or ".lora_" in key for key in keys):
        return "it looks like a LoRA file; use load_lora_weights"
    return f"it has no {UNET_INPUT} (first keys: {', '.join(keys[:3])})"
