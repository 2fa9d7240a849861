"""Low-memory mode: each large model holds its weights only while it runs.

``Depth2ImgPipeline.from_pretrained(folder, low_memory=True)`` loads the pipeline as usual (so every file is
checked up front), then *releases* the weights of the UNet, VAE, text encoder and depth estimator: each parameter
becomes a meta tensor (shape and dtype, no storage), and the memory-mapped file pages it held are unmapped. The
modules stay in place — configs, attributes, hooks and ``pipe.unet.dtype`` all work — and know where their
weights are on disk.

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
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .loading.weights import StoredTensor, find_weights_files, read_stored, read_weights, safetensors_layout
from .utils.memory import trim_heap

__all__ = [
    "OFFLOADED_COMPONENTS",
    "LowMemoryGroup",
    "all_weights_loaded",
    "enable_low_memory",
    "module_device",
    "move_module",
]

OFFLOADED_COMPONENTS = ("text_encoder", "depth_estimator", "vae", "unet")
# Base names of the weights files: diffusers models, then transformers models.
_WEIGHTS_NAMES = ("diffusion_pytorch_model", "model")


@dataclass
class _Slot:
    """One parameter of a model: every (module, attribute) that holds it, and its key in the weights file."""

    key: str
    owners: list[tuple[nn.Module, str]]
    requires_grad: bool
    version: int = -1  # the tensor's in-place version counter right after loading


@dataclass
class _Offloaded:
    """A model that can be released and reloaded from its weights files."""

    name: str
    module: nn.Module
    files: list[Path]
    slots: list[_Slot]
    device: torch.device
    dtype: torch.dtype | None  # cast floating weights to this (None: as in the file)
    loaded: bool = True
    pinned_reason: str | None = None  # set when the model must stay resident from now on
    hooks: list[Any] = field(default_factory=list)
    layout: dict[str, StoredTensor] | None = None  # where each tensor lies in safetensors files (None: other formats)
    channels_last: bool = False  # give 4-D weights the channels-last layout when loading (depth2img.speed)


class LowMemoryGroup:
    """The models of one pipeline, at most one of them resident at a time."""

    def __init__(self) -> None:
        self.models: dict[str, _Offloaded] = {}

    # ------------------------------------------------------------------ setup
    def add(self, name: str, module: nn.Module, files: Sequence[Path]) -> bool:
        """Make ``module`` offloadable (released now); False, leaving it resident, if its parameters cannot all be
        found in ``files``."""
        slots = _slots_in_files(module, files)
        if slots is None:
            return False
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        entry = _Offloaded(name, module, list(files), slots, device, None, layout=safetensors_layout(files))
        for slot in slots:
            slot.version = _tensor_of(slot)._version
        entry.hooks = [m.register_forward_pre_hook(self._pre_hook(entry)) for m in module.modules()]
        module._depth2img_low_memory = entry  # read by module_device / move_module
        self.models[name] = entry
        self.release(entry)
        return True

    def _pre_hook(self, entry: _Offloaded):
        def hook(module: nn.Module, args: Any) -> None:
            if not entry.loaded:
                self.activate(entry)

        return hook

    # ------------------------------------------------------------------ residency
    def activate(self, entry: _Offloaded) -> None:
        """Release every other model, then load ``entry``'s weights."""
        for other in self.models.values():
            if other is not entry and other.loaded:
                self.release(other)
        if not entry.loaded:
            self._load(entry)

    def release(self, entry: _Offloaded) -> None:
        """Replace the model's parameters by meta tensors, unless they changed since loading (then pin it)."""
        if not entry.loaded or entry.pinned_reason:
            return
        changed = [slot.key for slot in entry.slots if not _unchanged(slot)]
        if changed:
            entry.pinned_reason = f"its weights were changed after loading ({changed[0]}, ...)"
            warnings.warn(
                f"low_memory: the {entry.name} stays in memory from now on: {entry.pinned_reason}", stacklevel=3
            )
            return
        live = _tensor_of(entry.slots[0]) if entry.slots else None
        if live is not None:  # follow a .to() made directly on the module
            entry.device, entry.dtype = live.device, live.dtype if live.is_floating_point() else entry.dtype
        for slot in entry.slots:
            original = _tensor_of(slot)
            meta = nn.Parameter(torch.empty(original.shape, dtype=original.dtype, device="meta"), slot.requires_grad)
            for owner, attribute in slot.owners:
                owner._parameters[attribute] = meta
        entry.loaded = False
        trim_heap()  # so the next model does not stack on top of the freed pages

    def _load(self, entry: _Offloaded) -> None:
        left = _meta_parameters_outside(entry)
        if left:
            raise ValueError(
                f"low_memory=True does not support adapters added after loading: the {entry.name} has parameters "
                f"that are not in its weights file ({', '.join(left[:3])}); load the pipeline with low_memory=False "
                "to use LoRA or textual inversion"
            )
        tensors = dict(_read_for(entry))
        for slot in entry.slots:
            tensor = tensors.pop(slot.key)
            if entry.channels_last and tensor.ndim == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            parameter = nn.Parameter(tensor, requires_grad=slot.requires_grad)
            for owner, attribute in slot.owners:
                owner._parameters[attribute] = parameter
            slot.version = parameter._version
        entry.loaded = True

    def release_all(self) -> None:
        """Release every model (e.g. between generations, to return to the smallest footprint)."""
        for entry in self.models.values():
            self.release(entry)

    @contextlib.contextmanager
    def all_loaded(self) -> Iterator[None]:
        """Every model resident for the duration (saving needs every weight), all released afterwards."""
        for entry in self.models.values():
            if not entry.loaded:
                self._load(entry)
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


def _slots_in_files(module: nn.Module, files: Sequence[Path]) -> list[_Slot] | None:
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


def _meta_parameters_outside(entry: _Offloaded) -> list[str]:
    known = {(id(owner), attribute) for slot in entry.slots for owner, attribute in slot.owners}
    return [
        name
        for name, owner, attribute, parameter in _named_parameter_slots(entry.module)
        if parameter.is_meta and (id(owner), attribute) not in known
    ]


def _move_buffers(module: nn.Module, device: torch.device) -> None:
    for owner in module.modules():
        for name, buffer in owner._buffers.items():
            if buffer is not None:
                owner._buffers[name] = buffer.to(device)


def _read_for(entry: _Offloaded) -> Iterator[tuple[str, torch.Tensor]]:
    """The entry's parameters from its files, in the entry's dtype and on its device.

    Without conversion the file is memory-mapped (no copy). With one (another dtype, another device) each tensor is
    read, converted and its buffer dropped before the next: memory-mapping would keep every page of the file that
    the conversion touched resident until the whole file is unmapped, i.e. the file's size on top of the result.
    """
    keys = [slot.key for slot in entry.slots]
    layout = entry.layout

    def converts(dtype: torch.dtype) -> bool:
        return entry.dtype is not None and dtype.is_floating_point and dtype != entry.dtype

    if layout is None or (entry.device.type == "cpu" and not any(converts(layout[key].dtype) for key in keys)):
        state = read_weights(entry.files)
        for key in keys:
            tensor = state.pop(key)
            if converts(tensor.dtype):
                tensor = tensor.to(entry.dtype)
            yield key, tensor.to(entry.device)
        return
    for key in sorted(keys, key=lambda k: (str(layout[k].path), layout[k].start)):  # sequential reads
        stored = layout[key]
        tensor = read_stored(stored)
        yield key, tensor.to(device=entry.device, dtype=entry.dtype if converts(stored.dtype) else stored.dtype)


def _weights_files(folder: Path, variant: str | None) -> list[Path] | None:
    for base in _WEIGHTS_NAMES:
        try:
            return find_weights_files(folder, base, variant)
        except FileNotFoundError:
            continue
    return None


# ---------------------------------------------------------------------------------------------- pipeline side
def enable_low_memory(
    pipe: Any,
    source: str | os.PathLike,
    *,
    variant: str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    given: Iterable[str] = (),
    hub_options: dict[str, Any] | None = None,
) -> LowMemoryGroup:
    """Make the large models of ``pipe``, just loaded from ``source`` (a folder or downloaded Hub repo), offloadable.

    The models are expected in their files' dtype (loaded without ``torch_dtype``: nothing converted, nothing
    read yet); ``torch_dtype`` is applied here, so a converting load never holds the whole file in memory.
    Components in ``given`` (passed to ``from_pretrained`` as objects) stay resident and as they are, as do models
    whose parameters cannot all be matched to their weights file (with a warning).
    """
    from .loading.load_options import resolve_dtypes

    dtypes = resolve_dtypes(torch_dtype)  # one dtype, or one per component
    names = [name for name in OFFLOADED_COMPONENTS if name not in set(given)]
    folders = _component_folders(source, names, hub_options or {})
    group = LowMemoryGroup()
    for name in names:
        module = getattr(pipe, name, None)
        if not isinstance(module, nn.Module):
            continue
        files = _weights_files(folders[name], variant) if name in folders else None
        if files is None or not group.add(name, module, files):
            warnings.warn(
                f"low_memory: the {name} stays in memory: its parameters could not be matched to a weights file",
                stacklevel=3,
            )
        dtype = dtypes.for_component(name)
        if dtype is not None:  # the models were loaded in the files' dtype; released ones cast when they load
            move_module(module, None, dtype)
    pipe._low_memory = group
    return group


def _component_folders(source: str | os.PathLike, names: Iterable[str], hub_options: dict[str, Any]) -> dict[str, Path]:
    """The local folder of each component of a pipeline folder or an already downloaded Hub repo."""
    from .loading.hub import ModelFilesNotFoundError, resolve_folder
    from .loading.pipeline_folder import LEGACY_REPO_IDS

    folders = {}
    for name in names:
        for candidate in (source, LEGACY_REPO_IDS.get(str(source))):
            if candidate is None:
                continue
            try:
                folders[name] = resolve_folder(candidate, subfolder=name, local_files_only=True, **hub_options)
                break
            except (FileNotFoundError, ModelFilesNotFoundError):
                continue
    return folders


def all_weights_loaded(pipe: Any) -> contextlib.AbstractContextManager:
    """For the duration, every model of a low-memory pipeline holds its weights (a no-op for other pipelines)."""
    group = getattr(pipe, "_low_memory", None)
    return group.all_loaded() if group is not None else contextlib.nullcontext()


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its parameters' device, or for a released low-memory model where it loads to."""
    entry = getattr(module, "_depth2img_low_memory", None)
    if entry is not None:
        return entry.device
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def move_module(module: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
    """``module.to(device=..., dtype=...)``, also for released low-memory models (which then load there)."""
    entry = getattr(module, "_depth2img_low_memory", None)
    if entry is None:
        module.to(device=device, dtype=dtype)
        return
    if device is not None:
        entry.device = torch.device(device)
    if dtype is not None:
        entry.dtype = dtype
    if entry.loaded:
        module.to(device=device, dtype=dtype)
        return
    if dtype is not None:
        module.to(dtype=dtype)  # meta parameters just take the dtype; the (real) buffers are cast
    if device is not None:
        _move_buffers(module, entry.device)
