"""The ``torch_dtype`` argument of the loaders: a ``torch.dtype`` or its name, checked once for all of them."""

from __future__ import annotations

import torch

__all__ = ["resolve_dtype"]


def resolve_dtype(torch_dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.float16`` or its name (``"float16"``, ``"torch.float16"``) as a floating ``torch.dtype``."""
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        dtype = torch_dtype
    else:
        dtype = getattr(torch, str(torch_dtype).removeprefix("torch."), None)
    if torch_dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"torch_dtype must be a floating torch dtype such as torch.float16, got {torch_dtype!r}")
    return dtype
