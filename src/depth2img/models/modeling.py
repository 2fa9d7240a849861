"""The base class of our models: an ``nn.Module`` that remembers its config.

Loading and saving (``from_pretrained`` / ``save_pretrained``) are implemented in ``depth2img.loading.model_folder``
(which knows no model class, so the import goes one way) and exposed here as methods, so a model class is only its
architecture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..configuration import ConfigMixin
from ..loading.model_folder import load_model, save_model

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

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        variant: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ):
        """Build the model from ``config.json`` and load ``diffusion_pytorch_model[.variant].safetensors``.

        ``pretrained_model_name_or_path`` is a local folder or a Hugging Face Hub repo id
        (``"sd2-community/stable-diffusion-2-depth"`` with ``subfolder="unet"``). Parameters are created
        without random initialisation and filled from the (memory-mapped) file; keys and shapes must match
        exactly. ``torch_dtype`` casts floating tensors (default: keep float32). Also accepted:
        ``use_safetensors`` (None: prefer safetensors, fall back to ``.bin``), ``revision``, ``cache_dir``,
        ``token``. Offline (``local_files_only=True`` or ``HF_HUB_OFFLINE=1``) only the local cache is used.
        The model is returned in eval mode.
        """
        return load_model(
            cls,
            pretrained_model_name_or_path,
            subfolder=subfolder,
            torch_dtype=torch_dtype,
            variant=variant,
            local_files_only=local_files_only,
            **kwargs,
        )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        variant: str | None = None,
        safe_serialization: bool = True,
        max_shard_size: int | str | None = None,
    ) -> Path:
        """Write ``config.json`` and ``diffusion_pytorch_model[.variant].safetensors`` (or ``.bin``), atomically;
        weights above ``max_shard_size`` (bytes, or e.g. ``"5GB"``, ``"500MB"``, ``"2GiB"``; default 10GB as
        diffusers) are split into ``-00001-of-0000N`` shards with a ``.index.json``."""
        return save_model(
            self, save_directory, variant=variant, safe_serialization=safe_serialization, max_shard_size=max_shard_size
        )
