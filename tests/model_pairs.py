"""Helpers for parity tests: a reference (diffusers) model and ours with identical weights."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "depth2img" / "configs"


def load_config(name: str, component: str) -> dict:
    """A shipped config, e.g. ``load_config("tiny", "unet")``, without its ``_``-prefixed file metadata."""
    data = json.loads((CONFIGS / name / component / "config.json").read_text())
    return {key: value for key, value in data.items() if not key.startswith("_")}


def jitter_vectors(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Perturb every 1-d parameter (biases, norm scales/shifts), which default to 0 or 1 everywhere.

    Without this, swapping two norms or two biases would go unnoticed by a parity test.
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * scale)
    return model


def twin(reference: nn.Module, ours_class: type) -> nn.Module:
    """Our model built from the reference's config, with the reference's weights loaded strictly."""
    config = {key: value for key, value in dict(reference.config).items() if not key.startswith("_")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key diffusers writes must be one we understand
        ours = ours_class.from_config(config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
