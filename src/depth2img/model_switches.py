"""Pipeline-wide switches (attention slicing, xformers, VAE slicing/tiling) applied all-or-nothing.

A switch calls one method on several models. If the second model refuses (a slice size larger than its heads,
a missing package), the first must not stay changed: the pipeline would be half-configured, and the user's
next call would run with settings they were told had failed. So every model is checked for the method first,
the plain attributes of every submodule are remembered, and on any error they are put back before re-raising.
The switches only set plain attributes (``slice_size``, ``use_xformers``, ``use_tiling``...), never parameters,
so remembering those is enough and cheap (a dict per module, no tensors copied).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["call_on_models"]


def call_on_models(
    models: Mapping[str, Any],
    method: str,
    *args: Any,
    required: Sequence[str] = (),
    **kwargs: Any,
) -> None:
    """Call ``model.method(*args, **kwargs)`` on each model of ``models`` (name -> model or None) that has it.

    A model named in ``required`` that lacks the method is an error raised before anything changes; any error
    raised by a model restores every model's state as it was before the call.
    """
    targets = []
    for name, model in models.items():
        if model is not None and hasattr(model, method):
            targets.append(model)
        elif name in required:
            raise NotImplementedError(f"the {name} ({type(model).__name__}) does not support {method}()")
    saved = [_plain_state(model) for model in targets]
    try:
        for model in targets:
            getattr(model, method)(*args, **kwargs)
    except BaseException:
        for state in saved:
            _restore(state)
        raise


def _plain_state(model: Any) -> list[tuple[Any, dict[str, Any]]]:
    """(module, its public plain attributes) for the model and every submodule."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else [model]
    return [(module, {k: v for k, v in vars(module).items() if not k.startswith("_")}) for module in modules]


def _restore(state: list[tuple[Any, dict[str, Any]]]) -> None:
    for module, attributes in state:
        for key in [k for k in vars(module) if not k.startswith("_") and k not in attributes]:
            delattr(module, key)  # an attribute the failed switch added
        for key, value in attributes.items():
            setattr(module, key, value)
