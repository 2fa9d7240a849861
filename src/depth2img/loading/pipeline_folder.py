"""A pipeline folder in the diffusers layout: ``model_index.json`` plus one subfolder per component.

``model_index.json`` names each component's library and class as diffusers and transformers write them
(``["diffusers", "UNet2DConditionModel"]``, ``["transformers", "CLIPTextModel"]``); this module maps those names
to ours (UNet, VAE, schedulers, the DPT preprocessor) or to transformers' classes, loads every component, and
writes the same layout back, so diffusers can read what we save and we read what diffusers saves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..components import COMPONENT_NAMES, DEFAULT_REPO_ID, LEGACY_REPO_IDS
from ..configuration import load_json
from ..utils.files import atomic_write_text
from .component_files import ComponentFiles, transformers_model_files
from .hub import ModelFilesNotFoundError, is_local_folder, resolve_folder
from .load_options import resolve_dtypes
from .model_folder import load_model_and_files
from .weights import VariantNotFoundError, parse_shard_size, variant_name

__all__ = [
    "FEATURE_EXTRACTOR_CLASSES",
    "PIPELINE_CLASS_NAMES",
    "LoadedComponents",
    "load_components",
    "save_pipeline",
]

PIPELINE_CLASS_NAMES = ("StableDiffusionDepth2ImgPipeline", "Depth2ImgPipeline")
INDEX_NAME = "model_index.json"
# What diffusers/transformers record for the DPT preprocessing; all map to our DPTPreprocessor.
FEATURE_EXTRACTOR_CLASSES = (
    "DPTImageProcessor",
    "DPTImageProcessorPil",
    "DPTImageProcessorFast",
    "DPTFeatureExtractor",
    "DPTPreprocessor",
)
_HUB_OPTIONS = ("revision", "cache_dir", "token")


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class LoadedComponents:
    """What ``load_components`` produced: the pipeline's arguments, and where each model it read came from."""

    components: dict[str, Any]  # every component by name (given ones as given; None where the index has none)
    # The models read from files (not those given): their files, or None where they cannot be told (e.g. a .bin
    # file only transformers knows how to name); low-memory mode reloads weights from these.
    files: dict[str, ComponentFiles | None]


def load_components(
    name_or_path: str | os.PathLike | None = None,
    *,
    torch_dtype: Any = None,
    variant: str | None = None,
    local_files_only: bool = False,
    **kwargs: Any,
) -> LoadedComponents:
    """Every component of a pipeline folder or Hub repo id; see ``Depth2ImgPipeline.from_pretrained``."""
    hub_options = {key: kwargs.pop(key) for key in _HUB_OPTIONS if key in kwargs}
    unknown = sorted(set(kwargs) - set(COMPONENT_NAMES))
    if unknown:
        raise TypeError(
            f"from_pretrained got unknown argument(s) {', '.join(unknown)}; accepted: torch_dtype, variant, "
            f"local_files_only, {', '.join(_HUB_OPTIONS)}, and components to use as they are: "
            f"{', '.join(COMPONENT_NAMES)}"
        )
    dtypes = resolve_dtypes(torch_dtype)  # one dtype, or one per component (load_options.py)
    source = _resolve_source(DEFAULT_REPO_ID if name_or_path is None else name_or_path, local_files_only, hub_options)
    index_path = resolve_folder(source, allow_patterns=[INDEX_NAME], local_files_only=local_files_only, **hub_options)
    index = load_json(index_path / INDEX_NAME)
    _check_pipeline_class(index, index_path / INDEX_NAME)

    loaded = LoadedComponents({}, {})
    for name in COMPONENT_NAMES:
        if name in kwargs:
            loaded.components[name] = kwargs[name]
            continue
        entry = index.get(name)
        if entry is None or entry == [None, None]:
            loaded.components[name] = None
            continue
        library, class_name = _entry(entry, name, index_path / INDEX_NAME)
        loader = _component_loader(library, class_name, name)
        component, files = loader(source, name, dtypes.for_component(name), variant, local_files_only, hub_options)
        loaded.components[name] = component
        if isinstance(component, torch.nn.Module):
            loaded.files[name] = files
    return loaded


def _resolve_source(name_or_path: str | os.PathLike, local_files_only: bool, hub_options: dict[str, Any]) -> Any:
    """A local folder as it is; a legacy repo id falls back to its new home when it cannot be had itself."""
    if isinstance(name_or_path, os.PathLike) or is_local_folder(name_or_path):
        return name_or_path
    new_id = LEGACY_REPO_IDS.get(str(name_or_path))
    if new_id is None:
        return name_or_path
    try:
        resolve_folder(name_or_path, allow_patterns=[INDEX_NAME], local_files_only=local_files_only, **hub_options)
        return name_or_path
    except ModelFilesNotFoundError:
        return new_id


def _check_pipeline_class(index: dict[str, Any], path: Path) -> None:
    name = index.get("_class_name")
    if name is not None and name not in PIPELINE_CLASS_NAMES:
        raise ValueError(
            f"{path} describes a {name}, not a depth-to-image pipeline (expected {PIPELINE_CLASS_NAMES[0]}); "
            "depth2img loads Stable Diffusion 2 depth checkpoints only"
        )


def _entry(entry: Any, name: str, path: Path) -> tuple[str, str]:
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise ValueError(f"{path}: entry {name!r} must be [library, class name], got {entry!r}")
    return entry[0], entry[1]


def _component_loader(library: str, class_name: str, name: str):
    """The function that loads component ``name`` recorded as (``library``, ``class_name``); it returns the
    component and, for a model, the files its weights were read from."""
    if name == "feature_extractor" and class_name in FEATURE_EXTRACTOR_CLASSES:
        return _load_preprocessor
    if name == "scheduler":
        return _scheduler_loader(class_name)
    if library in ("diffusers", "depth2img") and class_name in (
        "UNet2DConditionModel",
        "AutoencoderKL",
        "AutoencoderTiny",
    ):
        return _our_model_loader(class_name)
    if library == "transformers":
        return _transformers_loader(class_name, name)
    raise ValueError(
        f"model_index.json records {name} as ({library!r}, {class_name!r}), which depth2img cannot load; "
        f"pass {name}=... to from_pretrained to supply it"
    )


def _scheduler_loader(class_name: str):
    from ..schedulers import scheduler_class

    scheduler_cls = scheduler_class(class_name)  # raises, listing the known schedulers

    def load(source, name, dtype, variant, local_files_only, hub_options):
        folder = resolve_folder(
            source,
            subfolder=name,
            allow_patterns=[scheduler_cls.config_name],
            local_files_only=local_files_only,
            **hub_options,
        )
        return scheduler_cls.from_pretrained(folder), None

    return load


def _our_model_loader(class_name: str):
    def load(source, name, dtype, variant, local_files_only, hub_options):
        from .. import models

        model_cls = getattr(models, class_name)
        return load_model_and_files(
            model_cls,
            source,
            subfolder=name,
            torch_dtype=dtype,
            variant=variant,
            local_files_only=local_files_only,
            **hub_options,
        )

    return load


def _load_preprocessor(source, name, dtype, variant, local_files_only, hub_options):
    from ..depth import DPTPreprocessor

    folder = resolve_folder(
        source,
        subfolder=name,
        allow_patterns=[DPTPreprocessor.config_name],
        local_files_only=local_files_only,
        **hub_options,
    )
    return DPTPreprocessor.from_pretrained(folder), None


def _transformers_loader(class_name: str, name: str):
    import transformers

    component_cls = getattr(transformers, class_name, None)
    if component_cls is None:
        raise ValueError(
            f"model_index.json records {name} as transformers.{class_name}, which this transformers "
            f"({transformers.__version__}) does not have; upgrade transformers or pass {name}=... to from_pretrained"
        )
    is_model = isinstance(component_cls, type) and issubclass(component_cls, torch.nn.Module)

    def load(source, name, dtype, variant, local_files_only, hub_options):
        folder = _fetch_transformers_files(source, name, variant, is_model, local_files_only, hub_options)
        if not is_model:  # tokenizer
            return _load_tokenizer(component_cls, folder), None
        model = component_cls.from_pretrained(
            folder, variant=variant, local_files_only=True, **{transformers_dtype_keyword(): dtype or torch.float32}
        )
        return model.eval(), transformers_model_files(folder, variant, dtype)

    return load


def _fetch_transformers_files(source, name, variant, is_model, local_files_only, hub_options) -> Path:
    """The component's folder; from the Hub only its configs/vocabulary and one weights format are fetched."""
    text_files = ["*.json", "*.txt", "*.model"]
    if not is_model:
        return resolve_folder(
            source, subfolder=name, allow_patterns=text_files, local_files_only=local_files_only, **hub_options
        )
    for single, shards in (
        ("model.safetensors", "model-*-of-*.safetensors"),
        ("pytorch_model.bin", "pytorch_model-*-of-*.bin"),
    ):
        patterns = [*text_files, variant_name(single, variant), variant_name(shards, variant)]
        folder = resolve_folder(
            source, subfolder=name, allow_patterns=patterns, local_files_only=local_files_only, **hub_options
        )
        if any(folder.glob(variant_name("*.safetensors", variant))) or any(folder.glob("*.bin")):
            return folder
    if variant and not any(folder.glob(variant_name("*.bin", variant))):
        present = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
        raise VariantNotFoundError(
            f"no {variant!r} variant of the {name} in {folder}: expected {variant_name('model.safetensors', variant)}"
            + (f"; found {', '.join(present)} (load without variant=...)" if present else "")
        )
    return folder  # let transformers name what is missing


def transformers_dtype_keyword() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _load_tokenizer(tokenizer_cls: type, folder: Path) -> Any:
    try:
        return tokenizer_cls.from_pretrained(folder)
    except (OSError, ValueError, TypeError):
        # transformers 4's slow CLIPTokenizer needs vocab.json/merges.txt; a folder written by transformers 5 has
        # only tokenizer.json, which the fast tokenizer reads.
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------- saving
def _record(name: str, component: Any) -> list[str | None]:
    """The [library, class] entry diffusers expects for ``component``."""
    if component is None:
        return [None, None]
    class_name = type(component).__name__
    if name == "feature_extractor" and class_name in FEATURE_EXTRACTOR_CLASSES:
        return ["transformers", "DPTImageProcessor"]
    module = type(component).__module__.split(".")[0]
    if module in ("depth2img", "diffusers"):
        return ["diffusers", class_name]  # our classes carry diffusers' names, so diffusers can read the folder
    return [module, class_name]


def save_pipeline(
    pipe: Any,
    save_directory: str | os.PathLike,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Write every component into its subfolder, then ``model_index.json`` (last, so a folder with an index is
    complete); returns the folder. ``max_shard_size`` and ``safe_serialization`` apply to our models (UNet, VAE),
    and ``safe_serialization`` also to transformers models whose ``save_pretrained`` still takes it (4.x)."""
    from .. import __version__
    from ..models.modeling import ModelMixin

    parse_shard_size(max_shard_size)  # a bad size is reported before anything is written
    if not isinstance(safe_serialization, bool):
        raise TypeError(f"safe_serialization must be True or False, got {safe_serialization!r}")
    _refuse_wrapped_layers(pipe, COMPONENT_NAMES)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS_NAMES[0], "_depth2img_version": __version__}
    for name in COMPONENT_NAMES:
        component = getattr(pipe, name)
        index[name] = _record(name, component)
        if component is None:
            continue
        target = folder / name
        options: dict[str, Any] = {}
        if isinstance(component, torch.nn.Module) and variant is not None:
            options["variant"] = variant
        if isinstance(component, ModelMixin):
            options["max_shard_size"] = max_shard_size
        if isinstance(component, torch.nn.Module) and _takes_keyword(component.save_pretrained, "safe_serialization"):
            options["safe_serialization"] = safe_serialization
        component.save_pretrained(target, **options)
    atomic_write_text(folder / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    return folder


def _takes_keyword(function: Any, name: str) -> bool:
    import inspect

    return name in inspect.signature(function).parameters


def _refuse_wrapped_layers(pipe: Any, names: tuple[str, ...] | list[str]) -> None:
    """A loaded LoRA wraps layers (``…to_q.base_layer.weight``): saved as is, the folder would no longer match
    the published key names, so no other loader (ours with strict keys, diffusers) could read it back."""
    for name in names:
        component = getattr(pipe, name, None)
        if not isinstance(component, torch.nn.Module):
            continue
        wrapped = [key for key, module in component.named_modules() if hasattr(module, "base_layer")]
        if wrapped:
            raise ValueError(
                f"cannot save the pipeline while LoRA adapters are loaded ({name}.{wrapped[0]} and "
                f"{len(wrapped) - 1} more): call pipe.fuse_lora() then pipe.unload_lora_weights() to bake them into "
                "the weights, or pipe.unload_lora_weights() to drop them; save the adapters with save_lora_weights()"
            )
