"""Opt-in CPU speed-ups that change float32 rounding (so they are not on by default).

The default pipeline computes what the reference computes up to float rounding (bit for bit after
``pipe.use_reference_arithmetic()``; the default computes linear layers with oneDNN and folds nearest-neighbour
upsampling into the next convolution, differences of a few 1e-6). These options trade more rounding for speed;
the images stay within about 1e-4 of the reference's (measured by ``python -m benchmarks.run``, see
docs/benchmarks.md):

- ``channels_last`` (the VAE's convolutions in NHWC): oneDNN computes convolutions in a blocked channels-last
  layout, so NCHW tensors cost a reorder in and out of every layer. Full-size VAE at 512², 2 threads:
  decode 9.3 → 7.6 s, encode 4.6 → 3.7 s. The UNet is left alone (no gain measured: its time is in matmuls).
- ``compile_unet``: ``torch.compile`` of the UNet with inductor *freezing* (weights folded into the graph and
  pre-packed for oneDNN, element-wise work fused): a 512² step 7.4 s (reference) → 4.7 s, against 6.0 s
  uncompiled, after a one-off compile of about a minute per image size (and again for every new size). Worth
  it for many steps or many images. Its images drift further from the reference's: 1.3e-4 max abs difference
  end to end on random weights, more than the 1e-4 of the exact modes.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["enable_cpu_speedups"]


def enable_cpu_speedups(pipe: Any, channels_last: bool = True, compile_unet: bool = False) -> None:
    """Switch on the opt-in CPU speed-ups of ``pipe`` (see the module docstring for what each one costs and gains).

    ``channels_last`` also works with ``low_memory=True`` (the VAE takes the layout whenever it loads);
    ``compile_unet`` needs weights that stay in place, so it is refused for a ``low_memory=True`` pipeline.
    """
    low_memory = getattr(pipe, "low_memory", None)  # depth2img.offload.LowMemoryGroup, or None
    if compile_unet and low_memory is not None:
        raise ValueError(
            "compile_unet=True cannot be combined with low_memory=True (the compiled UNet keeps its weights folded "
            "in, while low-memory mode releases and reloads them); choose one"
        )
    if channels_last and pipe.vae is not None:
        pipe.vae.to(memory_format=torch.channels_last)
        weights = low_memory.weights_of(pipe.vae) if low_memory is not None else None
        if weights is not None:  # low_memory: the VAE's weights are reloaded from the file before each use
            weights.channels_last = True
    if compile_unet:
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True  # weights become constants: pre-packed once, not reordered per call
        pipe.unet = torch.compile(pipe.unet, dynamic=False)
