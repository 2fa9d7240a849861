"""Where a loaded model came from: the record the loaders keep for each model they read from files.

The loader is the one that resolved the folder (a local path, a Hub snapshot, a moved repo's new id) and chose the
weights files (variant, safetensors or ``.bin``, shards); it hands this record on, so low-memory mode can read the
same files again without resolving anything itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .weights import find_weights_files

__all__ = ["ComponentFiles", "transformers_model_files"]


@dataclass(frozen=True)
class ComponentFiles:
    """The files one model's weights were read from."""

    folder: Path  # the component's local folder (for a Hub repo, its snapshot in the cache)
    weights: tuple[Path, ...]  # the weights files read: one file, or every shard
    variant: str | None  # e.g. "fp16"; None for the default files
    dtype: torch.dtype | None  # what floating weights were converted to while loading; None: as stored

    @classmethod
    def of(
        cls, weights: Sequence[Path], variant: str | None = None, dtype: torch.dtype | None = None
    ) -> ComponentFiles:
        """The record for ``weights`` (all in one folder)."""
        weights = tuple(Path(path) for path in weights)
        return cls(weights[0].parent, weights, variant, dtype)

    @property
    def format(self) -> str:
        """ "safetensors" or "bin" (pickled ``torch.save`` files, read with ``weights_only=True``)."""
        return "safetensors" if all(path.suffix == ".safetensors" for path in self.weights) else "bin"


def transformers_model_files(
    folder: Path, variant: str | None, dtype: torch.dtype | None = None
) -> ComponentFiles | None:
    """The record for a transformers model loaded from ``folder`` (``model[.variant].safetensors``, sharded or not);
    None when its weights are in another file (e.g. ``pytorch_model.bin``), which low-memory mode then leaves alone."""
    try:
        return ComponentFiles.of(find_weights_files(folder, "model", variant), variant, dtype)
    except FileNotFoundError:
        return None
