"""Choosing the device: ``auto`` picks cuda > mps > cpu (the dtypes are ``cli/precision.py``'s)."""

from __future__ import annotations

import torch

from .errors import CliError

__all__ = ["accelerators", "resolve_device"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def accelerators() -> list[str]:
    """The accelerator devices this machine offers, e.g. ``["cuda:0", "mps"]`` (empty on a CPU-only box)."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        found.append("mps")
    return found


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a ``torch.device`` that exists on this machine."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"--device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError("--device: CUDA is not available here (no NVIDIA GPU, or a CPU-only torch build)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CliError(f"--device: {name} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps":
        if not _mps_available():
            raise CliError("--device: MPS (Apple GPU) is not available here")
    elif device.type != "cpu":
        raise CliError(f"--device: unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device
