"""TAESD, the tiny autoencoder (madebyollin, 2023): a ~2.4M-parameter distillation of Stable Diffusion's VAE.

It maps images to the *scaled* latents the UNet works in (so ``scaling_factor`` is 1.0) and back, in a few
milliseconds instead of the full VAE's hundreds: for live previews during sampling and for fast drafts. The price
is detail: fine textures, small text and faces come out softer and slightly blotchy, colours a little off; use
the full VAE for final images (docs/models.md).

Architecture (diffusers' ``AutoencoderTiny``, whose config keys and parameter names these are, so the published
``madebyollin/taesd`` weights load unchanged):

- a *tiny block* is three 3x3 convolutions with the activation between them, plus a skip (a 1x1 convolution only
  when the channel count changes), then a ReLU: ``relu(conv(x) + skip(x))``;
- the encoder maps [-1, 1] images to [0, 1], then per stage: a 3x3 convolution (stride 2 after the first stage,
  no bias) and ``num_encoder_blocks[i]`` tiny blocks; a last 3x3 convolution gives the latents;
- the decoder soft-clamps latents to (-3, 3) with ``3 tanh(x / 3)``, then a 3x3 convolution and activation, and
  per stage ``num_decoder_blocks[i]`` tiny blocks, a nearest 2x upsampling (not after the last stage) and a 3x3
  convolution (bias only in the last, which gives the image); output mapped from [0, 1] to [-1, 1].

Both are one ``nn.Sequential`` named ``layers``, activations and upsampling included, so the checkpoint's
indices (``decoder.layers.3.conv.0.weight``) address the same layers here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .modeling import ModelMixin
from .vae import DecoderOutput

__all__ = ["AutoencoderTiny", "AutoencoderTinyOutput"]

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "mish": nn.Mish}


class AutoencoderTinyOutput(NamedTuple):
    """What ``encode`` returns: the latents themselves (no distribution to sample from)."""

    latents: torch.Tensor


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"act_fn={name!r} is not supported; use one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def _conv3x3(channels_in: int, channels_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, stride=stride, bias=bias)


class TinyBlock(nn.Module):
    """``relu(conv(x) + skip(x))`` with three 3x3 convolutions; the skip is 1x1 only when channels change."""

    def __init__(self, channels_in: int, channels_out: int, act_fn: str) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3x3(channels_in, channels_out),
            _activation(act_fn),
            _conv3x3(channels_out, channels_out),
            _activation(act_fn),
            _conv3x3(channels_out, channels_out),
        )
        self.skip = (
            nn.Conv2d(channels_in, channels_out, kernel_size=1, bias=False)
            if channels_in != channels_out
            else nn.Identity()
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TinyEncoder(nn.Module):
    """[-1, 1] images -> latents, 2^(stages - 1) times smaller per side."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: Sequence[int], channels: Sequence[int], act_fn: str
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for stage, (blocks, width) in enumerate(zip(num_blocks, channels)):
            if stage == 0:
                layers.append(_conv3x3(in_channels, width))
            else:  # the checkpoint's downsampling keeps the width of the stage (the widths are all equal in TAESD)
                layers.append(_conv3x3(width, width, stride=2, bias=False))
            layers += [TinyBlock(width, width, act_fn) for _ in range(blocks)]
        layers.append(_conv3x3(channels[-1], out_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images.add(1).div(2))


class TinyDecoder(nn.Module):
    """Latents -> [-1, 1] images, ``upscale``^(stages - 1) times larger per side."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: Sequence[int],
        channels: Sequence[int],
        upscale: int,
        act_fn: str,
        upsample_fn: str,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv3x3(in_channels, channels[0]), _activation(act_fn)]
        for stage, (blocks, width) in enumerate(zip(num_blocks, channels)):
            last = stage == len(num_blocks) - 1
            layers += [TinyBlock(width, width, act_fn) for _ in range(blocks)]
            if not last:
                layers.append(nn.Upsample(scale_factor=upscale, mode=upsample_fn))
            layers.append(_conv3x3(width, out_channels if last else width, bias=last))
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        soft_clamped = torch.tanh(latents / 3) * 3  # keeps wild latents (early steps) from blowing up the image
        return self.layers(soft_clamped).mul(2).sub(1)


class AutoencoderTiny(ModelMixin):
    """TAESD: ``encode(images).latents`` and ``decode(latents).sample``, in the UNet's latent scale.

    Config keys are diffusers' (``block_out_channels``, which diffusers records as a copy of
    ``decoder_block_out_channels``, is accepted and kept for compatibility). ``latent_magnitude`` and
    ``latent_shift`` only serve ``scale_latents`` / ``unscale_latents`` (latents stored as 8-bit images).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: Sequence[int] = (64, 64, 64, 64),
        decoder_block_out_channels: Sequence[int] = (64, 64, 64, 64),
        act_fn: str = "relu",
        upsample_fn: str = "nearest",
        latent_channels: int = 4,
        upsampling_scaling_factor: int = 2,
        num_encoder_blocks: Sequence[int] = (1, 3, 3, 3),
        num_decoder_blocks: Sequence[int] = (3, 3, 3, 1),
        latent_magnitude: float = 3,
        latent_shift: float = 0.5,
        force_upcast: bool = False,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        block_out_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(encoder_block_out_channels) != len(num_encoder_blocks):
            raise ValueError("encoder_block_out_channels and num_encoder_blocks must have the same length")
        if len(decoder_block_out_channels) != len(num_decoder_blocks):
            raise ValueError("decoder_block_out_channels and num_decoder_blocks must have the same length")
        self.encoder = TinyEncoder(in_channels, latent_channels, num_encoder_blocks, encoder_block_out_channels, act_fn)
        self.decoder = TinyDecoder(
            latent_channels, out_channels, num_decoder_blocks, decoder_block_out_channels,
            upsampling_scaling_factor, act_fn, upsample_fn,
        )  # fmt: skip
        self.latent_magnitude = latent_magnitude
        self.latent_shift = latent_shift
        self.use_slicing = False

    @property
    def downscale(self) -> int:
        """Pixels per latent along each side (8 for TAESD)."""
        return self.config.upsampling_scaling_factor ** (len(self.config.num_decoder_blocks) - 1)

    # ------------------------------------------------------------------ encode / decode
    def _per_image(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([module(one) for one in x.split(1)])
        return module(x)

    def encode(self, images: torch.Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """[-1, 1] images (B, 3, H, W) -> latents (B, 4, H/8, W/8), already in the UNet's scale."""
        latents = self._per_image(self.encoder, images)
        return AutoencoderTinyOutput(latents) if return_dict else (latents,)

    def decode(
        self, latents: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents -> [-1, 1] images. ``generator`` is accepted (and unused) for the calling convention of VAEs."""
        images = self._per_image(self.decoder, latents)
        return DecoderOutput(images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Round trip through 8-bit latents, as TAESD's training did: encode, store as bytes, decode."""
        stored = self.scale_latents(self.encode(sample).latents).mul_(255).round_().byte()
        images = self.decode(self.unscale_latents(stored / 255.0)).sample
        return DecoderOutput(images) if return_dict else (images,)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> [0, 1] (for storing latents as images)."""
        return latents.div(2 * self.latent_magnitude).add(self.latent_shift).clamp(0, 1)

    def unscale_latents(self, scaled: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> raw latents."""
        return scaled.sub(self.latent_shift).mul(2 * self.latent_magnitude)

    # ------------------------------------------------------------------ memory switches
    def enable_slicing(self) -> None:
        """Encode and decode batches one image at a time (lower peak memory, same result)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False
