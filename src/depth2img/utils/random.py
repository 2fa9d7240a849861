"""Seeded noise drawn exactly as the reference (diffusers' ``randn_tensor``) draws it, so seeded runs match."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["randn_tensor"]


def randn_tensor(
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device`` (default CPU) in ``dtype``.

    Same draws as the reference: with a list of generators, batch row ``i`` comes from ``generator[i]`` (a list
    of one acts like its single generator); a CPU generator draws on the CPU and the result moves to
    ``device``; the draw happens directly in ``dtype`` (drawing float32 and casting would give other numbers).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(generator, Sequence) and len(generator) == 1:
        generator = generator[0]
    first = generator[0] if isinstance(generator, Sequence) else generator
    draw_device = device
    if first is not None and first.device.type != device.type:
        if first.device.type != "cpu":
            raise ValueError(
                f"generator is on {first.device.type} but the noise is needed on {device.type}; "
                f"pass a CPU generator or one on {device.type}"
            )
        draw_device = torch.device("cpu")
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per batch item")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=draw_device, dtype=dtype) for g in generator]
        return torch.cat(rows, dim=0).to(device)
    return torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype).to(device)
