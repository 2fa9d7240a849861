"""Building blocks shared by the UNet and the VAE: resnets, resampling, transformers, down/mid/up stages.

Attribute names mirror the published checkpoints' keys (``resnets.0.conv1``, ``attentions.0.proj_in``,
``downsamplers.0.conv``, ...), so weights load without renaming. Time embeddings reach the resnets already
passed through SiLU: the UNet applies it once per forward instead of once per resnet (same result).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .linear import Linear
from .nearest_conv import MIN_FOLDED_POSITIONS, upsample_nearest_conv

__all__ = [
    "BasicTransformerBlock",
    "DownBlock",
    "Downsample2D",
    "FeedForward",
    "MidBlock",
    "ResnetBlock2D",
    "Transformer2DModel",
    "UpBlock",
    "Upsample2D",
    "use_reference_arithmetic",
]

# Builds the attention layer of a stage from its channel count (None: a stage without attention).
AttentionFactory = Callable[[int], nn.Module]


class ResnetBlock2D(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the projected time embedding, GroupNorm -> SiLU -> conv, plus the input
    (through a 1×1 ``conv_shortcut`` when the channel count changes), divided by ``output_scale_factor``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temb_channels: int | None,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """``temb``: the time embedding after SiLU, ``(batch, temb_channels)``; ignored without ``time_emb_proj``."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h += self.time_emb_proj(temb)[:, :, None, None]  # h is fresh conv output: in place is safe
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        h += x
        if self.output_scale_factor != 1.0:
            h /= self.output_scale_factor
        return h


class Downsample2D(nn.Module):
    """Stride-2 3×3 convolution. ``padding=0`` pads right and bottom by one first (the VAE encoder's layout)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour ×2 (or to ``output_size``) followed by a 3×3 convolution.

    An exact ×2 of a large enough input takes the folded route of ``nearest_conv`` (same map, 2.25× fewer
    multiplies, rounding-level differences); ``fold_nearest = False`` (see ``use_reference_arithmetic``)
    restores the reference's upsample-then-convolve, bit for bit. A LoRA-wrapped ``conv`` always takes the
    reference route.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.fold_nearest = True

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        doubled = output_size is None or tuple(output_size) == (2 * x.shape[-2], 2 * x.shape[-1])
        if (
            doubled
            and self.fold_nearest
            and type(self.conv) is nn.Conv2d
            and x.shape[0] * x.shape[-2] * x.shape[-1] >= MIN_FOLDED_POSITIONS
        ):
            return upsample_nearest_conv(x, self.conv)
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")
        return self.conv(x)


def use_reference_arithmetic(model: nn.Module, enabled: bool = True) -> None:
    """Make ``model`` (a UNet, a VAE, or anything holding them) compute exactly the reference's float
    operations, so its outputs equal diffusers' bit for bit on the CPU; ``enabled=False`` goes back to the
    default, which computes large CPU linear layers with oneDNN (``linear.Linear``) and folds nearest-neighbour
    upsampling into the following convolution (faster, and within float rounding: a few 1e-6)."""
    for module in model.modules():
        if isinstance(module, Upsample2D):
            module.fold_nearest = not enabled
        elif isinstance(module, Linear):
            module.onednn = not enabled


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): one projection to twice the width, half of it gating the other half."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer MLP: GEGLU to ``mult × dim``, then back to ``dim`` (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # Index 1 is the reference's dropout; an Identity keeps the output layer at key "net.2".
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer layer: self-attention, cross-attention on the text, feed-forward; each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on text tokens, with a residual around it.

    GroupNorm, ``proj_in`` (a 1×1 conv, or a Linear after flattening when ``use_linear_projection``, SD2's
    layout), ``num_layers`` transformer blocks, ``proj_out``, plus the input.
    """

    def __init__(
        self,
        heads: int,
        dim_head: int,
        in_channels: int,
        *,
        cross_attention_dim: int,
        groups: int,
        use_linear_projection: bool,
        num_layers: int = 1,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, heads, dim_head, cross_attention_dim) for _ in range(num_layers)
        )
        if use_linear_projection:
            self.proj_out = Linear(inner_dim, in_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(batch, height * width, -1))
        else:
            h = self.proj_in(h)
            h = h.permute(0, 2, 3, 1).reshape(batch, height * width, -1)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        else:
            # Contiguous NCHW into the conv, as the reference does: same kernel, same rounding.
            h = self.proj_out(h.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous())
        # x first: the sum then takes x's (contiguous NCHW) memory layout rather than the permuted view's.
        return x + h


class DownBlock(nn.Module):
    """A down stage: ``num_layers`` resnets (each followed by attention when the stage has it), then an
    optional stride-2 downsampler. Returns the output and every intermediate state (the UNet's skips)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        *,
        temb_channels: int | None,
        groups: int,
        eps: float,
        add_downsample: bool,
        downsample_padding: int = 1,
        make_attention: AttentionFactory | None = None,
    ):
        super().__init__()
        if make_attention is not None:
            self.attentions = nn.ModuleList(make_attention(out_channels) for _ in range(num_layers))
        else:
            self.attentions = None
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                in_channels if i == 0 else out_channels,
                out_channels,
                temb_channels=temb_channels,
                groups=groups,
                eps=eps,
            )
            for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)]) if add_downsample else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        states = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class MidBlock(nn.Module):
    """The bottleneck: resnet, attention (when given), resnet."""

    def __init__(
        self,
        channels: int,
        *,
        temb_channels: int | None,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
        make_attention: AttentionFactory | None = None,
    ):
        super().__init__()
        self.attentions = nn.ModuleList([make_attention(channels)] if make_attention is not None else [])
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                channels,
                channels,
                temb_channels=temb_channels,
                groups=groups,
                eps=eps,
                output_scale_factor=output_scale_factor,
            )
            for _ in range(2)
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for attention in self.attentions:
            x = attention(x, context)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    """An up stage: resnets (each fed the previous output, concatenated with a skip when ``skip_channels`` are
    given; each followed by attention when the stage has it), then an optional ×2 upsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        *,
        skip_channels: Sequence[int] | None,
        temb_channels: int | None,
        groups: int,
        eps: float,
        add_upsample: bool,
        make_attention: AttentionFactory | None = None,
    ):
        """``skip_channels[i]``: channels of the skip concatenated before resnet ``i`` (None: the VAE, no skips)."""
        super().__init__()
        if make_attention is not None:
            self.attentions = nn.ModuleList(make_attention(out_channels) for _ in range(num_layers))
        else:
            self.attentions = None
        resnets = []
        for i in range(num_layers):
            resnet_in = in_channels if i == 0 else out_channels
            if skip_channels is not None:
                resnet_in += skip_channels[i]
            resnets.append(ResnetBlock2D(resnet_in, out_channels, temb_channels=temb_channels, groups=groups, eps=eps))
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(
        self,
        x: torch.Tensor,
        skips: Sequence[torch.Tensor] | None = None,
        temb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        upsample_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``skips``: one per resnet, consumed last-first (the UNet's down states in reverse order)."""
        for i, resnet in enumerate(self.resnets):
            if skips is not None:
                x = torch.cat([x, skips[-1 - i]], dim=1)
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
