"""``Linear``: an ``nn.Linear`` whose float32 CPU matmuls run in oneDNN instead of the BLAS.

PyTorch computes a CPU float32 ``F.linear`` with its BLAS (MKL), and its convolutions with oneDNN. On the AMD
CPUs this project measures on, MKL's sgemm reaches about 190 GFLOP/s on 2 cores while oneDNN's kernels reach
350-470 (``python benchmarks/linear_kernels.py``): MKL does not use the AVX-512 units of non-Intel CPUs. A linear
layer *is* a 1×1 convolution over the rows of its input in channels-last layout, and that view of a
``(..., in_features)`` tensor needs no copy, so this class sends large CPU float32 inputs through
``F.conv2d`` and gets oneDNN's speed with exactly the same parameters (same keys, same shapes, still an
``nn.Linear`` for LoRA and for ``isinstance`` checks). Both are float32 sums of the same products in a
different order: outputs differ by float rounding (a few 1e-6 relative), not more.

``onednn = False`` (set by ``use_reference_arithmetic``) restores ``F.linear`` exactly. Other devices and dtypes
always use ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MIN_ONEDNN_ROWS", "Linear", "linear_as_conv"]

# Below this many rows the per-call setup of a oneDNN convolution costs more than the faster kernel saves
# (time-embedding projections are 1-2 rows; text tokens 77 per prompt already gain).
MIN_ONEDNN_ROWS = 32

# Read once: torch.compile refuses to trace torch.backends.mkldnn.is_available() and would break the graph at
# every linear layer (then recompile it per input shape) if forward asked each time.
_ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available()


def linear_as_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed as a 1×1 convolution of the rows of ``x`` in NHWC layout."""
    in_features = x.shape[-1]
    rows = x.reshape(1, 1, -1, in_features)  # a view for any x whose last dimension is contiguous
    out = F.conv2d(rows.permute(0, 3, 1, 2), weight.view(*weight.shape, 1, 1), bias)
    # The convolution keeps the channels-last layout: out's memory is (rows, out_features), a plain view away.
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` that computes large float32 CPU inputs with oneDNN (see the module docstring)."""

    onednn = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.onednn
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.numel() >= MIN_ONEDNN_ROWS * self.in_features
            and x.stride(-1) == 1
            and _ONEDNN_AVAILABLE
        ):
            return linear_as_conv(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
