"""The base class of our models: an ``nn.Module`` that remembers its config.

Loading and saving (``from_pretrained`` / ``save_pretrained``) are implemented in ``depth2img.loading`` and
exposed here as methods, so a model class is only its architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import ConfigMixin

__all__ = ["ModelMixin"]


class ModelMixin(nn.Module, ConfigMixin):
    """An ``nn.Module`` built from config keys; ``self.config`` holds them (see ``ConfigMixin``)."""

    config_name = "config.json"
    weights_name = "diffusion_pytorch_model"  # + ".safetensors" / ".bin", optionally ".fp16" before the suffix

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (all parameters live on one device)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the first parameter."""
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())
