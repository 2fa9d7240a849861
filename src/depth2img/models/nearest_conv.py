"""Nearest-neighbour ×2 upsampling followed by a 3×3 convolution, computed without the upsampled tensor.

After nearest ×2, every 2×2 block of pixels repeats one input pixel, so each output pixel's 3×3 window covers
only a 2×2 neighbourhood of the *input*: two of the three kernel rows (and columns) land on the same input
row (column). Which two depends on the output pixel's phase (its row and column parity), giving four 2×2
kernels made of sums of the 3×3 taps. Convolving the input once with those four kernels (4 × 4 = 16 taps per
input pixel instead of 4 × 9 = 36 on the upsampled one) and interleaving the phases is the same linear map
with 2.25× fewer multiplies; only float rounding differs (the taps are summed before multiplying). Measured
on the full-size VAE decoder at 512² with 2 threads: 8.6 → 7.8 s, max abs difference 3.3e-6 on the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MIN_FOLDED_POSITIONS", "fold_nearest_kernel", "upsample_nearest_conv"]

# Folding costs one pass over a 16/9-size copy of the kernel on every call; below about this many input
# positions (batch × height × width) that costs more than the multiplies it saves (measured on 2 CPU threads:
# even at batch 2 × 16², a break-even at 1280 channels).
MIN_FOLDED_POSITIONS = 1024


def _fold_pairs(kernel: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 2-tap kernels along ``dim`` (size 3) for phase 0 (taps 0 | 1+2) and phase 1 (taps 0+1 | 2)."""
    first, middle, last = kernel.unbind(dim)
    return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)


def fold_nearest_kernel(weight: torch.Tensor) -> torch.Tensor:
    """``(out, in, 3, 3)`` → ``(4·out, in, 2, 2)``: the kernels of phases (0,0), (0,1), (1,0), (1,1), in order.

    Half-precision weights are summed in float32, then cast back, so they lose no more than one rounding.
    """
    folded = []
    for rows in _fold_pairs(weight.to(torch.promote_types(weight.dtype, torch.float32)), 2):
        folded.extend(_fold_pairs(rows, 3))
    return torch.cat(folded).to(weight.dtype)


def upsample_nearest_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(interpolate(x, scale_factor=2, mode="nearest"))`` for a 3×3, stride-1, padding-1 ``conv``.

    Keeps ``x``'s memory layout: a channels-last input gives a channels-last output.
    """
    batch, _, height, width = x.shape
    out_channels = conv.out_channels
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    weight = fold_nearest_kernel(conv.weight)
    if channels_last:
        weight = weight.contiguous(memory_format=torch.channels_last)
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    # Phase (a, b)'s output at input pixel (i, j) reads padded rows i+a, i+a+1 and columns j+b, j+b+1, so one
    # 2×2 convolution of the once-padded input holds all four phases, each offset by (a, b).
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, bias)  # (batch, 4·out, height+1, width+1)
    phases = phases.unflatten(1, (2, 2, out_channels))  # a view in either layout
    # out is indexed (batch, out, row, row phase, column, column phase) whatever its memory order, so one
    # interleaving loop serves both layouts and the final reshape to (batch, out, 2·height, 2·width) is a view.
    if channels_last:
        out = x.new_empty(batch, height, 2, width, 2, out_channels).permute(0, 5, 1, 2, 3, 4)
    else:
        out = x.new_empty(batch, out_channels, height, 2, width, 2)
    for a in range(2):
        for b in range(2):
            out[:, :, :, a, :, b] = phases[:, a, b, :, a : a + height, b : b + width]
    return out.reshape(batch, out_channels, 2 * height, 2 * width)
