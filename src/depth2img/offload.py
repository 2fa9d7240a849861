"""Low-memory mode: each large model holds its weights only while it runs.

``Depth2ImgPipeline.from_pretrained(folder, low_memory=True)`` loads the pipeline as usual (so every file is
checked up front), then *releases* the weights of the UNet, VAE, text encoder and depth estimator: each parameter
becomes a meta tensor (shape and dtype, no storage), and the memory-mapped file pages it held are unmapped. The
modules stay in place — configs, attributes, hooks and ``pipe.unet.dtype`` all work. Where each model's weights
are on disk is what the loader recorded while loading it (``loading.component_files.ComponentFiles``): this module
resolves no folder and guesses no file name. Where they are now is ``pipe.low_memory`` (a ``LowMemoryGroup``):
for each model a ``ModelWeights`` with its ``residence`` (resident or released) and the device and dtype it loads
to.

When any submodule of a released model is about to run (a forward pre-hook), its weights are mapped in again
from the safetensors file, which the page cache usually still holds, and every *other* model is released first.
So at most one large model is resident at a time: during the denoising loop the UNet stays (nothing else runs in
between), and the peak resident memory is about the largest model plus its activations instead of all four
models. A generation reloads each model once (page-cache reads, a few percent of a CPU generation's time).

The weights reloaded are the file's, unchanged. A model whose weights were changed in memory after loading
(e.g. a fused LoRA: ``_version`` counters tell) is kept resident from then on rather than silently reverted.
Adapters added to a released model are not supported (their new parameters would be meta tensors); that is
reported with one clear error when the model is next needed.
"""

from __future__ import annotations

import contextlib
import enum
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .components import LARGE_MODELS
from .loading.component_files import ComponentFiles
from .loading.load_options import resolve_dtypes
from .loading.weights import StoredTensor, read_stored, read_weights, safetensors_layout
from .utils.memory import trim_heap

__all__ = ["LowMemoryGroup", "ModelWeights", "Residence", "enable_low_memory"]


class Residence(enum.Enum):
    """Where a model's weights are."""

    RESIDENT = "resident"  # in memory, on the model's device
    RELEASED = "released"  # meta tensors only: read from the files again before the model next runs


@dataclass
class _Slot:
    """One parameter of a model: every (module, attribute) that holds it, and its key in the weights file."""

    key: str
    owners: list[tuple[nn.Module, str]]
    requires_grad: bool
    version: int = -1  # the tensor's in-place version counter right after loading


@dataclass
class ModelWeights:
    """Where one large model's weights live: resident or released, the files they come from, and the device and
    dtype they load to."""

    name: str
    module: nn.Module
    files: ComponentFiles
    slots: list[_Slot]
    device: torch.device
    dtype: torch.dtype | None  # cast floating weights to this (None: as in the file)
    residence: Residence = Residence.RESIDENT
    pinned_reason: str | None = None  # set when the model must stay resident from now on
    hooks: list[Any] = field(default_factory=list)
    layout: dict[str, StoredTensor] | None = None  # where each tensor lies in safetensors files (None: other formats)
    channels_last: bool = False  # give 4-D weights the channels-last layout when loading (depth2img.speed)

    @property
    def loaded(self) -> bool:
        return self.residence is Residence.RESIDENT

    def move(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        """``module.to(device=..., dtype=...)``; a released model only records where to load to (and moves its
        buffers, which are never released)."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        if self.loaded:
            self.module.to(device=device, dtype=dtype)
            return
        if dtype is not None:
            self.module.to(dtype=dtype)  # meta parameters just take the dtype; the (real) buffers are cast
        if device is not None:
            _move_buffers(self.module, self.device)


class LowMemoryGroup:
    """The models of one pipeline, at most one of them resident at a time."""

    def __init__(self) -> None:
        self.models: dict[str, ModelWeights] = {}

    def weights_of(self, module: Any) -> ModelWeights | None:
        """The record of ``module`` if it is one of this group's models (None for any other object)."""
        return next((weights for weights in self.models.values() if weights.module is module), None)

    # ------------------------------------------------------------------ setup
    def add(self, name: str, module: nn.Module, files: ComponentFiles) -> bool:
        """Make ``module`` offloadable (released now); False, leaving it resident, if its parameters cannot all be
        found in ``files``."""
        slots = _slots_in_files(module, files.weights)
        if slots is None:
            return False
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        weights = ModelWeights(
            name, module, files, slots, device, files.dtype, layout=safetensors_layout(files.weights)
        )
        for slot in slots:
            slot.version = _tensor_of(slot)._version
        weights.hooks = [m.register_forward_pre_hook(self._pre_hook(weights)) for m in module.modules()]
        self.models[name] = weights
        self.release(weights)
        return True

    def _pre_hook(self, weights: ModelWeights):
        def hook(module: nn.Module, args: Any) -> None:
            if not weights.loaded:
                self.activate(weights)

        return hook

    # ------------------------------------------------------------------ residency
    def activate(self, weights: ModelWeights) -> None:
        """Release every other model, then load this one's weights."""
        for other in self.models.values():
            if other is not weights and other.loaded:
                self.release(other)
        if not weights.loaded:
            self._load(weights)

    def release(self, weights: ModelWeights) -> None:
        """Replace the model's parameters by meta tensors, unless they changed since loading (then pin it)."""
        if not weights.loaded or weights.pinned_reason:
            return
        changed = [slot.key for slot in weights.slots if not _unchanged(slot)]
        if changed:
            weights.pinned_reason = f"its weights were changed after loading ({changed[0]}, ...)"
            warnings.warn(
                f"low_memory: the {weights.name} stays in memory from now on: {weights.pinned_reason}", stacklevel=3
            )
            return
        live = _tensor_of(weights.slots[0]) if weights.slots else None
        if live is not None:  # follow a .to() made directly on the module
            weights.device, weights.dtype = live.device, live.dtype if live.is_floating_point() else weights.dtype
        for slot in weights.slots:
            original = _tensor_of(slot)
            meta = nn.Parameter(torch.empty(original.shape, dtype=original.dtype, device="meta"), slot.requires_grad)
            for owner, attribute in slot.owners:
                owner._parameters[attribute] = meta
        weights.residence = Residence.RELEASED
        trim_heap()  # so the next model does not stack on top of the freed pages

    def _load(self, weights: ModelWeights) -> None:
        left = _meta_parameters_outside(weights)
        if left:
            raise ValueError(
                f"low_memory=True does not support adapters added after loading: the {weights.name} has parameters "
                f"that are not in its weights file ({', '.join(left[:3])}); load the pipeline with low_memory=False "
                "to use LoRA or textual inversion"
            )
        tensors = dict(_read_for(weights))
        for slot in weights.slots:
            tensor = tensors.pop(slot.key)
            if weights.channels_last and tensor.ndim == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            parameter = nn.Parameter(tensor, requires_grad=slot.requires_grad)
            for owner, attribute in slot.owners:
                owner._parameters[attribute] = parameter
            slot.version = parameter._version
        weights.residence = Residence.RESIDENT

    def release_all(self) -> None:
        """Release every model (e.g. between generations, to return to the smallest footprint)."""
        for weights in self.models.values():
            self.release(weights)

    @contextlib.contextmanager
    def all_loaded(self) -> Iterator[None]:
        """Every model resident for the duration (saving needs every weight), all released afterwards."""
        for weights in self.models.values():
            if not weights.loaded:
                self._load(weights)
        try:
            yield
        finally:
            self.release_all()


# ---------------------------------------------------------------------------------------------- helpers
def _tensor_of(slot: _Slot) -> torch.Tensor:
    owner, attribute = slot.owners[0]
    return owner._parameters[attribute]


def _unchanged(slot: _Slot) -> bool:
    """The slot still holds the tensor loaded from the file, never modified in place (e.g. by a LoRA fuse)."""
    tensor = _tensor_of(slot)
    same_object = all(owner._parameters.get(attribute) is tensor for owner, attribute in slot.owners)
    return same_object and tensor._version == slot.version


def _slots_in_files(module: nn.Module, files: Iterable[Path]) -> list[_Slot] | None:
    """Each parameter of ``module`` with its key in the weights files; None if any is missing or mis-shaped."""
    shapes = {key: tuple(tensor.shape) for key, tensor in read_weights(files).items()}  # headers only (mmap)
    by_tensor: dict[int, _Slot] = {}
    for qualified, owner, attribute, parameter in _named_parameter_slots(module):
        slot = by_tensor.get(id(parameter))
        if slot is not None:  # a tied parameter: one tensor, several owners
            slot.owners.append((owner, attribute))
            continue
        if shapes.get(qualified) != tuple(parameter.shape):
            return None
        by_tensor[id(parameter)] = _Slot(qualified, [(owner, attribute)], parameter.requires_grad)
    return list(by_tensor.values())


def _named_parameter_slots(module: nn.Module) -> Iterable[tuple[str, nn.Module, str, nn.Parameter]]:
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for attribute, parameter in owner._parameters.items():
            if parameter is not None:
                yield (f"{prefix}.{attribute}" if prefix else attribute), owner, attribute, parameter


def _meta_parameters_outside(weights: ModelWeights) -> list[str]:
    known = {(id(owner), attribute) for slot in weights.slots for owner, attribute in slot.owners}
    return [
        name
        for name, owner, attribute, parameter in _named_parameter_slots(weights.module)
        if parameter.is_meta and (id(owner), attribute) not in known
    ]


def _move_buffers(module: nn.Module, device: torch.device) -> None:
    for owner in module.modules():
        for name, buffer in owner._buffers.items():
            if buffer is not None:
                owner._buffers[name] = buffer.to(device)


def _read_for(weights: ModelWeights) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's parameters from its files, in its dtype and on its device.

    Without conversion the file is memory-mapped (no copy). With one (another dtype, another device) each tensor is
    read, converted and its buffer dropped before the next: memory-mapping would keep every page of the file that
    the conversion touched resident until the whole file is unmapped, i.e. the file's size on top of the result.
    """
    keys = [slot.key for slot in weights.slots]
    layout = weights.layout

    def converts(dtype: torch.dtype) -> bool:
        return weights.dtype is not None and dtype.is_floating_point and dtype != weights.dtype

    if layout is None or (weights.device.type == "cpu" and not any(converts(layout[key].dtype) for key in keys)):
        state = read_weights(weights.files.weights)
        for key in keys:
            tensor = state.pop(key)
            if converts(tensor.dtype):
                tensor = tensor.to(weights.dtype)
            yield key, tensor.to(weights.device)
        return
    for key in sorted(keys, key=lambda k: (str(layout[k].path), layout[k].start)):  # sequential reads
        stored = layout[key]
        tensor = read_stored(stored)
        yield key, tensor.to(device=weights.device, dtype=weights.dtype if converts(stored.dtype) else stored.dtype)


# ---------------------------------------------------------------------------------------------- pipeline side
def enable_low_memory(
    models: Mapping[str, Any],
    files: Mapping[str, ComponentFiles | None],
    *,
    torch_dtype: torch.dtype | str | None = None,
) -> LowMemoryGroup:
    """Make the large models among ``models`` (a pipeline's components by name) offloadable, reading each one's
    weights from the files the loader recorded for it in ``files``.

    The models are expected in their files' dtype (loaded without ``torch_dtype``: nothing converted, nothing
    read yet); ``torch_dtype`` is applied here, so a converting load never holds the whole file in memory.
    Components without an entry in ``files`` (passed to ``from_pretrained`` as objects) stay resident and as
    they are, as do models whose parameters cannot all be matched to their weights files (with a warning).
    """
    dtypes = resolve_dtypes(torch_dtype)  # one dtype, or one per component
    group = LowMemoryGroup()
    for name in LARGE_MODELS:
        module = models.get(name)
        if name not in files or not isinstance(module, nn.Module):
            continue
        record = files[name]
        if record is None or not group.add(name, module, record):
            warnings.warn(
                f"low_memory: the {name} stays in memory: its parameters could not be matched to a weights file",
                stacklevel=3,
            )
        dtype = dtypes.for_component(name)
        if dtype is not None:  # the models were loaded in the files' dtype; released ones cast when they load
            weights = group.weights_of(module)
            if weights is None:
                module.to(dtype=dtype)
            else:
                weights.move(None, dtype)
    return group
