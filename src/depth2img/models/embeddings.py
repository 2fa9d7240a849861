"""Timestep embedding of the UNet: sinusoidal features, then a two-layer MLP (``time_embedding.linear_1/2``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TimestepEmbedding", "sinusoidal_embedding"]


def sinusoidal_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Transformer-style sinusoidal features of a 1-d tensor of timesteps: ``(N,)`` -> ``(N, dim)`` float32.

    Frequencies are ``max_period ** (-i / (dim / 2 - freq_shift))`` for ``i < dim / 2`` (DDPM, Ho et al. 2020,
    after "Attention Is All You Need"); the first half holds sines and the second cosines, or the reverse when
    ``flip_sin_to_cos`` (SD2's layout). An odd ``dim`` gets one zero column.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period))
    frequencies = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * frequencies[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    embedding = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedding(nn.Module):
    """``linear_1`` -> SiLU -> ``linear_2``: sinusoidal features to the resnets' time-embedding width."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))
