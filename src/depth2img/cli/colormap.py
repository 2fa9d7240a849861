"""A colour preview for depth maps without matplotlib: viridis as a degree-6 polynomial.

The coefficients are a least-squares polynomial fit of matplotlib's viridis table (published by Matt Zucker,
shadertoy "WlfXRN"); they stay within about 2/100 of the table, which is plenty for a preview.
"""

from __future__ import annotations

import numpy as np

__all__ = ["viridis"]

_VIRIDIS = np.array(
    [
        [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
        [0.1050930431085774, 1.404613529898575, 1.384590162594685],
        [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
        [-4.634230498983486, -5.799100973351585, -19.33244095627987],
        [6.228269936347081, 14.17993336680509, 56.69055260068105],
        [4.776384997670288, -13.74514537774601, -65.35303263337234],
        [-5.435455855934631, 4.645852612178535, 26.3124352495832],
    ]
)


def viridis(values: np.ndarray) -> np.ndarray:
    """Map ``values`` in [0, 1] (any shape; clipped) to RGB ``uint8`` with a trailing axis of 3."""
    t = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    rgb = np.zeros((*t.shape[:-1], 3))
    for coefficients in _VIRIDIS[::-1]:  # Horner's scheme, highest degree first
        rgb = rgb * t + coefficients
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
