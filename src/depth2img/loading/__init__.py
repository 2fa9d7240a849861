"""Loaders: turn files (local folders, Hub repos, weights files) into modules, and modules back into files.

- ``weights``: read/write state dicts (safetensors memory-mapped, ``.bin`` with ``weights_only=True``, shards).
- ``hub``: resolve a local folder or a Hub repo id; one clear error when files cannot be had.
- ``model_folder``: ``config.json`` + weights ⇄ a ``ModelMixin`` built without random initialisation (it takes the
  class as an argument: the models call it, so it imports none of them).
- ``pipeline_folder``: ``model_index.json`` + a folder per component ⇄ the pipeline's components, each model with
  the files it was read from (``component_files``), which low-memory mode reloads from.
- ``single_file``: original checkpoints through the key maps in ``keymaps/``; the shipped architecture configs.
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
