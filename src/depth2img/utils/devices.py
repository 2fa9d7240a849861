"""Whether a torch device exists here: one sentence instead of torch's assertion deep inside ``.to()``."""

from __future__ import annotations

import torch

from ..errors import UserInputError

__all__ = ["check_device_available"]


def check_device_available(device: torch.device | str | None) -> None:
    """Raise :class:`UserInputError` (a ``ValueError``) when ``device`` is unknown or absent on this machine."""
    if device is None:
        return
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserInputError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(
                f"cannot move the pipeline to {device}: CUDA is not available here (no NVIDIA GPU, or a CPU-only "
                "torch build); use 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserInputError(
                f"cannot move the pipeline to {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if not (backend and backend.is_available()):
            raise UserInputError(f"cannot move the pipeline to {device}: MPS (Apple GPU) is not available here")
