"""Loaders: turn files (local folders, Hub repos, weights files) into modules, and modules back into files.

- ``weights``: read/write state dicts (safetensors memory-mapped, ``.bin`` with ``weights_only=True``, shards).
- ``hub``: resolve a local folder or a Hub repo id; one clear error when files cannot be had.
- ``model_folder``: ``config.json`` + weights ⇄ a ``ModelMixin`` built without random initialisation.
- ``empty_init``: build modules with parameters on the meta device.
- ``random_model``: any component of the ``tiny`` or ``sd2-depth`` architecture with random weights.
"""

from __future__ import annotations

from .hub import ModelFilesNotFoundError, resolve_folder
from .model_folder import load_model, save_model
from .weights import InvalidWeightsError, read_state_dict, write_state_dict

__all__ = [
    "InvalidWeightsError",
    "ModelFilesNotFoundError",
    "load_model",
    "read_state_dict",
    "resolve_folder",
    "save_model",
    "write_state_dict",
]
