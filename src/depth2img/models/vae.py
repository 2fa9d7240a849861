"""The KL autoencoder of Stable Diffusion (Rombach et al. 2022): images <-> latents 8× smaller per side.

``encode`` returns a diagonal Gaussian over latents (``mean``, ``std``; ``sample(generator)`` draws noise exactly
as the reference does, so seeded runs match it), ``decode`` maps latents back to images in [-1, 1]. Latents are
used by the diffusion model after multiplying by ``config.scaling_factor`` (the pipeline does that).

Memory savers: ``enable_slicing()`` runs a batch one image at a time; ``enable_tiling()`` splits large images
into overlapping tiles and blends the seams (an approximation: each tile is normalised on its own).

Config keys and parameter names are those of diffusers' ``AutoencoderKL``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.random import randn_tensor
from .attention import Attention, AttentionBackendMixin
from .blocks import DownBlock, MidBlock, UpBlock
from .modeling import ModelMixin

__all__ = ["AutoencoderKL", "AutoencoderKLOutput", "DecoderOutput", "DiagonalGaussianDistribution"]

_EPS = 1e-6  # GroupNorm epsilon of every VAE layer (fixed by the architecture, not a config key)


class DiagonalGaussianDistribution:
    """Gaussian with per-element mean and variance, from encoder ``moments`` = cat[mean, logvar] on dim 1."""

    def __init__(self, moments: torch.Tensor):
        self.parameters = moments
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """``mean + std * noise``; the noise is drawn like the reference's (same generator use, dtype, device)."""
        noise = randn_tensor(
            self.mean.shape, generator=generator, device=self.parameters.device, dtype=self.parameters.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean


class AutoencoderKLOutput(NamedTuple):
    latent_dist: DiagonalGaussianDistribution


class DecoderOutput(NamedTuple):
    sample: torch.Tensor


def spatial_attention(groups: int) -> Callable[[int], nn.Module]:
    """Factory of the VAE's mid-block attention: one head over all channels, group-normalised, residual."""

    def make(channels: int) -> nn.Module:
        return Attention(
            channels, heads=1, dim_head=channels, bias=True, norm_num_groups=groups, eps=_EPS, residual_connection=True
        )

    return make


class Encoder(nn.Module):
    """conv_in -> down stages -> mid (resnet, attention, resnet) -> GroupNorm, SiLU, conv_out (mean, logvar)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        groups: int,
        make_attention: Callable[[int], nn.Module] | None,
    ):
        super().__init__()
        channels = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(
                channels[max(i - 1, 0)],
                channels[i],
                layers_per_block,
                temb_channels=None,
                groups=groups,
                eps=_EPS,
                add_downsample=i < len(channels) - 1,
                downsample_padding=0,
            )
            for i in range(len(channels))
        )
        self.mid_block = MidBlock(
            channels[-1], temb_channels=None, groups=groups, eps=_EPS, make_attention=make_attention
        )
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """conv_in -> mid (resnet, attention, resnet) -> up stages -> GroupNorm, SiLU, conv_out (the image)."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        groups: int,
        make_attention: Callable[[int], nn.Module] | None,
    ):
        super().__init__()
        channels = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, channels[0], kernel_size=3, padding=1)
        self.up_blocks = nn.ModuleList(
            UpBlock(
                channels[max(i - 1, 0)],
                channels[i],
                layers_per_block + 1,
                skip_channels=None,
                temb_channels=None,
                groups=groups,
                eps=_EPS,
                add_upsample=i < len(channels) - 1,
            )
            for i in range(len(channels))
        )
        self.mid_block = MidBlock(
            channels[0], temb_channels=None, groups=groups, eps=_EPS, make_attention=make_attention
        )
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(ModelMixin, AttentionBackendMixin):
    """VAE with a KL-regularised latent space; build from the published ``vae/config.json`` keys.

    ``scaling_factor``, ``shift_factor``, ``latents_mean``/``latents_std`` and ``force_upcast`` are recorded for
    the pipeline and do not change ``encode``/``decode``. ``sample_size`` sets the tile size of tiled mode.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int | Sequence[int] = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: Sequence[float] | None = None,
        latents_std: Sequence[float] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        _check_config(down_block_types, up_block_types, block_out_channels, act_fn, norm_num_groups, layers_per_block)
        make_attention = spatial_attention(norm_num_groups) if mid_block_add_attention else None
        self.encoder = Encoder(
            in_channels, latent_channels, block_out_channels, layers_per_block, norm_num_groups, make_attention
        )
        self.decoder = Decoder(
            latent_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups, make_attention
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

        self.use_slicing = False
        self.use_tiling = False
        # Tiled mode works on image tiles of tile_sample_min_size pixels (latent tiles 2**(stages-1) times
        # smaller) whose neighbours overlap by tile_overlap_factor; the reference's names and defaults.
        self.downscale = 2 ** (len(block_out_channels) - 1)
        size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_sample_min_size = int(size)
        self.tile_latent_min_size = int(size / self.downscale)
        self.tile_overlap_factor = 0.25

    # ------------------------------------------------------------------ memory modes
    def enable_slicing(self) -> None:
        """Encode and decode batches one image at a time (lower peak memory, same result)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_sample_size: int | None = None, overlap_factor: float | None = None) -> None:
        """Encode/decode images larger than a tile in overlapping tiles, blended linearly across the overlap.

        ``tile_sample_size``: tile side in pixels (default: ``config.sample_size``), a multiple of the VAE's
        downscale factor; ``overlap_factor``: fraction of a tile shared with its neighbour (default 0.25).
        """
        sample, latent, overlap = self.tile_sample_min_size, self.tile_latent_min_size, self.tile_overlap_factor
        if tile_sample_size is not None:
            if (
                isinstance(tile_sample_size, bool)
                or not isinstance(tile_sample_size, int)
                or tile_sample_size < self.downscale
                or tile_sample_size % self.downscale
            ):
                raise ValueError(
                    f"tile_sample_size={tile_sample_size!r} must be a positive multiple of {self.downscale}"
                )
            sample, latent = tile_sample_size, tile_sample_size // self.downscale
        if overlap_factor is not None:
            if not 0.0 <= overlap_factor < 1.0:
                raise ValueError(f"overlap_factor={overlap_factor!r} must be in [0, 1)")
            overlap = float(overlap_factor)
        _check_tiles_stitch(sample, latent, self.downscale, overlap)
        self.tile_sample_min_size, self.tile_latent_min_size, self.tile_overlap_factor = sample, latent, overlap
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # ------------------------------------------------------------------ encode / decode
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Images ``(batch, in_channels, H, W)`` in [-1, 1] -> ``.latent_dist`` over ``(batch, latent, H/8, W/8)``."""
        self._check_input("x", x, self.encoder.conv_in.in_channels)
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode_batch(part) for part in x.split(1)])
        else:
            moments = self._encode_batch(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents ``(batch, latent_channels, h, w)`` (unscaled: divide by ``scaling_factor`` first) -> images."""
        self._check_input("z", z, self.decoder.conv_in.in_channels)
        if self.use_slicing and z.shape[0] > 1:
            images = torch.cat([self._decode_batch(part) for part in z.split(1)])
        else:
            images = self._decode_batch(z)
        return DecoderOutput(images) if return_dict else (images,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruct images: encode, take the posterior's mode (or a sample), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)

    def _encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return self._tiled(x, self._encode_tile, self.tile_sample_min_size, self.tile_latent_min_size)
        return self._encode_tile(x)

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return self._tiled(z, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size)
        return self._decode_tile(z)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _tiled(
        self, x: torch.Tensor, process: Callable[[torch.Tensor], torch.Tensor], tile_in: int, tile_out: int
    ) -> torch.Tensor:
        """Run ``process`` on overlapping ``tile_in`` tiles of ``x``, blend each output tile into its upper and
        left neighbours over the overlap, keep its top-left ``tile_out - overlap`` square, and stitch.

        The same traversal and blend as the reference's ``tiled_encode``/``tiled_decode``, so both agree.
        """
        stride = int(tile_in * (1 - self.tile_overlap_factor))
        overlap = int(tile_out * self.tile_overlap_factor)
        keep = tile_out - overlap
        rows = [
            [process(x[:, :, top : top + tile_in, left : left + tile_in]) for left in range(0, x.shape[3], stride)]
            for top in range(0, x.shape[2], stride)
        ]
        stitched_rows = []
        for i, row in enumerate(rows):
            pieces = []
            for j, tile in enumerate(row):
                # In place, like the reference: later neighbours blend against already-blended tiles.
                if i > 0:
                    _blend_into(rows[i - 1][j], tile, overlap, dim=2)
                if j > 0:
                    _blend_into(row[j - 1], tile, overlap, dim=3)
                pieces.append(tile[:, :, :keep, :keep])
            stitched_rows.append(torch.cat(pieces, dim=3))
        return torch.cat(stitched_rows, dim=2)

    @staticmethod
    def _check_input(name: str, value: Any, channels: int) -> None:
        if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[1] != channels:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a (batch, {channels}, height, width) tensor, got {shape}")


def _blend_into(previous: torch.Tensor, tile: torch.Tensor, overlap: int, dim: int) -> None:
    """Cross-fade the first ``overlap`` rows (dim 2) or columns (dim 3) of ``tile`` from ``previous``'s last ones.

    Weights go linearly from all-``previous`` to all-``tile``: row ``k`` gets ``previous * (1 - k/n) + tile * k/n``.
    """
    n = min(previous.shape[dim], tile.shape[dim], overlap)
    if n == 0:
        return
    shape = [1, 1, 1, 1]
    shape[dim] = n
    # Weights computed in float64 then cast, as the reference's Python-float factors are.
    ramp = torch.arange(n, dtype=torch.float64) / n
    w_tile = ramp.to(tile.dtype).to(tile.device).view(shape)
    w_prev = (1 - ramp).to(tile.dtype).to(tile.device).view(shape)
    head = tile.narrow(dim, 0, n)
    head.copy_(previous.narrow(dim, previous.shape[dim] - n, n) * w_prev + head * w_tile)


def _check_tiles_stitch(sample: int, latent: int, downscale: int, overlap_factor: float) -> None:
    """Refuse tile settings whose kept tile parts do not add up to the input's size.

    ``_tiled`` steps ``int(tile * (1 - overlap))`` input pixels but keeps ``tile_out - int(tile_out * overlap)``
    output pixels per tile; when rounding makes the two disagree (e.g. 16-pixel tiles, overlap 0.3), the stitched
    result would silently have the wrong size (diffusers has the same flaw), or the step would be 0.
    """
    decode_step = int(latent * (1 - overlap_factor)) * downscale
    decode_keep = sample - int(sample * overlap_factor)
    encode_step = int(sample * (1 - overlap_factor))
    encode_keep = (latent - int(latent * overlap_factor)) * downscale
    if decode_step != decode_keep or encode_step != encode_keep or decode_step == 0:
        raise ValueError(
            f"tile_sample_size={sample} with overlap_factor={overlap_factor} does not stitch back to the image size "
            f"(tiles step {decode_step} pixels but keep {decode_keep}); use an overlap of a whole number of latent "
            f"pixels, e.g. overlap_factor=0.25 with a tile that is a multiple of {4 * downscale}"
        )


def _check_config(
    down_block_types: Sequence[str],
    up_block_types: Sequence[str],
    block_out_channels: Sequence[int],
    act_fn: str,
    norm_num_groups: int,
    layers_per_block: int,
) -> None:
    """One clear error for a config whose sizes or block names do not fit together."""
    for name, types, allowed in (
        ("down_block_types", down_block_types, "DownEncoderBlock2D"),
        ("up_block_types", up_block_types, "UpDecoderBlock2D"),
    ):
        for block_type in types:
            if block_type != allowed:
                raise ValueError(f"{name} contains unknown block type {block_type!r}; allowed: {allowed}")
        if len(types) != len(block_out_channels):
            raise ValueError(
                f"{name} has {len(types)} entries but block_out_channels={list(block_out_channels)} has "
                f"{len(block_out_channels)}"
            )
    if not block_out_channels:
        raise ValueError("block_out_channels must have at least one entry")
    if act_fn != "silu":
        raise ValueError(f"AutoencoderKL: act_fn={act_fn!r} is not supported; allowed: 'silu'")
    if not isinstance(layers_per_block, int) or layers_per_block < 1:
        raise ValueError(f"layers_per_block={layers_per_block!r} must be a positive int")
    for width in block_out_channels:
        if width % norm_num_groups:
            raise ValueError(f"block_out_channels entry {width} is not divisible by norm_num_groups={norm_num_groups}")
