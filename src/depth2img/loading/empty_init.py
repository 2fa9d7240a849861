"""Build modules without paying for random initialisation.

Loading a checkpoint overwrites every parameter, so initialising them first is wasted time (seconds for the
866M-parameter UNet) and memory (a second full copy). ``parameters_on_meta()`` makes every parameter created
inside it a *meta* tensor (shape and dtype, no storage), so initialisers run on nothing. Buffers are left
alone: they are small, and non-persistent ones (absent from checkpoints, e.g. precomputed frequencies) must
keep the real values the constructor computed. ``torch.device("meta")`` would lose those.

Afterwards, ``load_state_dict(..., assign=True)`` puts the checkpoint's tensors in place, or
``materialize_parameters`` gives each parameter fresh storage to fill (random models).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["materialize_parameters", "meta_parameter_names", "parameters_on_meta"]

# The patch below is process-wide; the lock keeps two threads from interleaving their patch/restore.
_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside this context, every ``nn.Parameter`` registered on a module is moved to the meta device."""
    with _PATCH_LOCK:
        original = nn.Module.register_parameter

        def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
            if param is not None and param.device.type != "meta":
                # The CPU tensor the constructor made (torch.empty: allocated, never touched) is dropped here.
                param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
            original(module, name, param)

        nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]


def meta_parameter_names(module: nn.Module) -> list[str]:
    """Names of parameters and buffers still on the meta device (i.e. never loaded or materialised)."""
    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    return [name for name, tensor in tensors if tensor.is_meta]


def materialize_parameters(
    module: nn.Module,
    fill: Callable[[nn.Module, str, torch.Tensor], None],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> None:
    """Give every meta parameter real (uninitialised) storage on ``device``, then ``fill`` it in place.

    ``fill(owner, name, tensor)`` receives the module owning the parameter, the parameter's qualified name and
    the new tensor, and must write the tensor in place. Parameters
    that are already real are left untouched; shared (tied) parameters stay shared.
    """
    # id -> (meta parameter, its replacement); holding the meta one keeps its id from being reused meanwhile.
    done: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}
    for owner_name, owner in module.named_modules(remove_duplicate=False):
        for name, param in list(owner._parameters.items()):
            if param is None or not param.is_meta:
                continue
            if id(param) not in done:
                target_dtype = dtype if dtype is not None and param.dtype.is_floating_point else param.dtype
                data = torch.empty(param.shape, dtype=target_dtype, device=device)
                with torch.no_grad():
                    fill(owner, f"{owner_name}.{name}" if owner_name else name, data)
                done[id(param)] = (param, nn.Parameter(data, requires_grad=param.requires_grad))
            owner._parameters[name] = done[id(param)][1]
