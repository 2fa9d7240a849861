"""A model folder in the diffusers layout: ``config.json`` plus ``diffusion_pytorch_model[.variant].safetensors``.

``load_model`` builds the module from the config with its parameters on the meta device (no random
initialisation, no memory), then puts the checkpoint's tensors in place with ``load_state_dict(assign=True)``.
safetensors files are memory-mapped, so a float32 checkpoint loaded as float32 costs one copy of the weights
(the file's pages) and no time spent copying. A load that converts (``torch_dtype=torch.bfloat16`` from a float32
file) reads tensor by tensor instead, converting through a small buffer: converting memory-mapped tensors would
keep the whole float32 file resident next to the converted model. ``save_model`` writes the same layout,
sharded above ``max_shard_size``, atomically per file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..configuration import load_json
from ..utils.arguments import refuse_unknown_arguments
from ..utils.dtypes import resolve_dtype
from .component_files import ComponentFiles
from .empty_init import meta_parameter_names, parameters_on_meta
from .hub import download_hint, is_local_folder, resolve_folder
from .legacy_keys import rename_legacy_attention_keys
from .weights import (
    InvalidWeightsError,
    StoredTensor,
    check_state_dict,
    find_weights_files,
    parse_shard_size,
    read_stored_tensors,
    read_weights,
    safetensors_layout,
    shard_file_pattern,
    weights_file_names,
    write_sharded_state_dict,
)

# A model class in the diffusers layout (depth2img.models.ModelMixin): an nn.Module with ``config_name``,
# ``weights_name``, ``extract_init_kwargs`` and ``save_config``. Taken as a parameter, never imported: the models
# import this module (ModelMixin.from_pretrained), so it must not import them.
Model = TypeVar("Model", bound=torch.nn.Module)

__all__ = ["fill_model", "load_model", "load_model_and_files", "save_model"]

_HUB_OPTIONS = ("revision", "cache_dir", "token")


def load_model(cls: type[Model], name_or_path: str | os.PathLike, **options: Any) -> Model:
    """Build ``cls`` from ``config.json`` and load its weights; see ``ModelMixin.from_pretrained`` for the options
    (``subfolder``, ``torch_dtype``, ``variant``, ``local_files_only``, ``use_safetensors``, Hub options)."""
    model, _ = load_model_and_files(cls, name_or_path, **options)
    return model


def load_model_and_files(
    cls: type[Model],
    name_or_path: str | os.PathLike,
    *,
    subfolder: str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    variant: str | None = None,
    local_files_only: bool = False,
    use_safetensors: bool | None = None,
    **hub_options: Any,
) -> tuple[Model, ComponentFiles]:
    """``load_model``, and the record of the files the weights were read from (for low-memory mode)."""
    refuse_unknown_arguments(
        f"{cls.__name__}.from_pretrained",
        hub_options,
        _HUB_OPTIONS,
        f"subfolder, torch_dtype, variant, local_files_only, use_safetensors, {', '.join(_HUB_OPTIONS)}",
    )
    dtype = resolve_dtype(torch_dtype)
    if variant is not None and (not isinstance(variant, str) or not variant or "/" in variant):
        raise ValueError(f"variant must be a short name such as 'fp16', got {variant!r}")

    folder = _fetch(cls, name_or_path, subfolder, variant, use_safetensors, local_files_only, hub_options)
    config_path = folder / cls.config_name
    config = load_json(config_path)
    _check_class(cls, config, config_path)
    with parameters_on_meta():  # cheap: a bad config is reported even when the weights are missing
        model = _build(cls, config, config_path)
    try:
        files = find_weights_files(folder, cls.weights_name, variant, use_safetensors)
    except FileNotFoundError as error:
        if is_local_folder(name_or_path):
            raise
        raise type(error)(f"{error}; {download_hint(str(name_or_path))}") from None  # VariantNotFoundError stays
    source = files[0] if len(files) == 1 else files[0].parent
    current = model.state_dict()
    expected = {key: tensor.shape for key, tensor in current.items()}
    state_dict = rename_legacy_attention_keys(read_weights(files), expected.keys())  # mmap: validates, reads nothing
    check_state_dict(expected, state_dict, source, cls.__name__)
    layout = _converting_layout(files, state_dict, dtype)
    if layout is not None:
        del state_dict  # unmap the files: the tensors are read again, one by one, converted
        stored = rename_legacy_attention_keys(layout, expected.keys())
        state_dict = read_stored_tensors(stored, {key: _target_dtype(tensor, dtype) for key, tensor in current.items()})
    return fill_model(model, state_dict, source, dtype), ComponentFiles.of(files, variant, dtype)


def fill_model(model: Model, state_dict: dict[str, torch.Tensor], source: Any, dtype: torch.dtype | None) -> Model:
    """Put checkpoint tensors (keys and shapes already checked) into ``model``, built on the meta device, cast to
    ``dtype`` (default: the module's own, float32); returns it in eval mode. ``source`` names the file(s) in errors.
    Every loader ends here: folders (``load_model``) and single-file checkpoints (``single_file``)."""
    _assign(model, state_dict, dtype)
    left = meta_parameter_names(model)
    if left:  # strict matching makes this unreachable unless a module hides parameters from state_dict()
        name = type(model).__name__
        raise InvalidWeightsError(f"{source} left {name} tensors without values: {', '.join(left[:5])}")
    if dtype is not None:
        model.to(dtype)  # non-persistent floating buffers too; loaded tensors already have this dtype (no copy)
    return model.eval()


def _fetch(
    cls: type[Model],
    name_or_path: str | os.PathLike,
    subfolder: str | None,
    variant: str | None,
    use_safetensors: bool | None,
    local_files_only: bool,
    hub_options: dict[str, Any],
) -> Path:
    """The local folder of the component; from the Hub, only config and one weights format are fetched."""

    def fetch(safetensors: bool) -> Path:
        single, index = weights_file_names(cls.weights_name, variant, safetensors)
        shards = shard_file_pattern(cls.weights_name, variant, safetensors).format(suffix="-*-of-*")
        return resolve_folder(
            name_or_path,
            subfolder=subfolder,
            allow_patterns=[cls.config_name, single, index, shards],
            local_files_only=local_files_only,
            **hub_options,
        )

    folder = fetch(use_safetensors is not False)
    if use_safetensors is None and not is_local_folder(name_or_path):
        try:
            find_weights_files(folder, cls.weights_name, variant, use_safetensors=True)
        except FileNotFoundError:  # the repo has no safetensors weights: fall back to .bin
            folder = fetch(False)
    return folder


def _check_class(cls: type[Model], config: dict, config_path: Path) -> None:
    name = config.get("_class_name")
    accepted = {cls.__name__, *getattr(cls, "config_class_names", ())}
    if name is not None and name not in accepted:
        raise ValueError(f"{config_path} describes class {name}, not {cls.__name__}: is this the right subfolder?")


def _build(cls: type[Model], config: dict, config_path: Path) -> Model:
    kwargs = cls.extract_init_kwargs(config, source=str(config_path))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{config_path} does not describe a valid {cls.__name__}: {error}") from error


def _target_dtype(current: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a checkpoint tensor is loaded in: ``dtype`` for floating tensors, else the module's own."""
    return dtype if dtype is not None and current.is_floating_point() else current.dtype


def _converting_layout(
    files: list[Path], state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None
) -> dict[str, StoredTensor] | None:
    """The tensors' places in the files when loading converts a floating tensor to ``dtype`` and the files can be
    read tensor by tensor (safetensors); None when the memory-mapped tensors can be used as they are."""
    converts = dtype is not None and any(t.is_floating_point() and t.dtype != dtype for t in state_dict.values())
    return safetensors_layout(files) if converts else None


def _assign(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> None:
    """Put the checkpoint tensors in place, cast to ``dtype`` (default: the module's own, float32)."""
    current = model.state_dict()
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.dtype != current[key].dtype:
            state_dict[key] = tensor.to(_target_dtype(current[key], dtype))  # no copy when the dtype matches
    model.load_state_dict(state_dict, strict=True, assign=True)


def save_model(
    model: Model,
    save_directory: str | os.PathLike,
    variant: str | None = None,
    safe_serialization: bool = True,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write ``config.json`` and the weights of ``model`` into ``save_directory``; returns the folder.

    Weights larger than ``max_shard_size`` (default 10GB, as diffusers) are split into shards plus an index;
    see ``weights.write_sharded_state_dict``."""
    if variant is not None and (not isinstance(variant, str) or not variant or "/" in variant):
        raise ValueError(f"variant must be a short name such as 'fp16', got {variant!r}")
    parse_shard_size(max_shard_size)  # a bad size is reported before anything is written
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot save into {folder}: it is a file")
    folder.mkdir(parents=True, exist_ok=True)
    left = meta_parameter_names(model)
    if left:
        raise ValueError(f"cannot save {type(model).__name__}: tensors without values (meta): {', '.join(left[:5])}")
    # Weights first: a folder whose config.json is new always has the matching weights next to it.
    write_sharded_state_dict(
        model.state_dict(), folder, model.weights_name, variant, safe_serialization, max_shard_size
    )
    model.save_config(folder)
    return folder
