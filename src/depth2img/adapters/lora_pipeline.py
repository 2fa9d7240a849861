"""``LoraLoaderMixin``: diffusers' LoRA methods for a pipeline with ``unet`` and ``text_encoder`` attributes.

    pipe.load_lora_weights("path/or/repo", weight_name="style.safetensors", adapter_name="style")
    pipe.set_adapters(["style", "detail"], adapter_weights=[0.8, 0.5])
    pipe(prompt, image, cross_attention_kwargs={"scale": 0.7})   # UNet and text encoder LoRA × 0.7
    pipe.fuse_lora(lora_scale=0.7); pipe.unfuse_lora()          # unfuse restores the weights bit for bit
    pipe.unload_lora_weights()

Semantics follow diffusers with peft (the reference): a newly loaded adapter becomes the only active one;
``set_adapters`` picks the active set and per-adapter weights; the call's ``scale`` multiplies every active LoRA
of the UNet (via ``cross_attention_kwargs``) and of the text encoder (via ``encode_prompt(lora_scale=...)``).
Two deliberate differences: ``unfuse_lora`` copies the pre-fuse weights back instead of subtracting (so it is
exact) and leaves the adapters' scales as they were before ``fuse_lora`` (diffusers keeps them multiplied by
``lora_scale``); adapter names are per pipeline (``default_0``, ``default_1`` ...), not per component.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError, as_user_errors
from . import lora_model
from .files import read_safetensors_metadata, resolve_adapter_file
from .lora_keys import convert_lora_state_dict, lora_weights_to_peft_state_dict

__all__ = ["LORA_WEIGHT_NAME", "LORA_WEIGHT_NAME_SAFE", "LoraLoaderMixin", "fitting_lora_weights", "read_lora_file"]

LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
LORA_WEIGHT_NAME = "pytorch_lora_weights.bin"
_HUB_KWARGS = ("local_files_only", "revision", "cache_dir", "token", "subfolder")
_COMPONENTS = ("unet", "text_encoder")


def read_lora_file(
    path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor], weight_name: str | None = None, **hub_kwargs: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state_dict, diffusers adapter metadata or None)`` from a file, folder, Hub repo id or state dict."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), None
    from ..loading.weights import read_state_dict

    path = resolve_adapter_file(
        path_or_dict, weight_name, (LORA_WEIGHT_NAME_SAFE, LORA_WEIGHT_NAME), "LoRA", **hub_kwargs
    )
    state_dict = read_state_dict(path)  # first: a damaged file gets read_state_dict's sentence naming it
    return state_dict, read_safetensors_metadata(path) if path.suffix == ".safetensors" else None


@as_user_errors  # a LoRA that does not fit is the user's file's problem: InputFileError-like, exit 2
def fitting_lora_weights(
    path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    models: Mapping[str, nn.Module],
    weight_name: str | None = None,
    **hub_kwargs: Any,
) -> dict[str, Any]:
    """A LoRA's weights per component (``unet``, ``text_encoder``), checked to fit ``models`` without changing
    them; raises ``ValueError`` naming the first layer that does not fit. ``models`` may live on the meta device
    (built from their configs alone), so a LoRA is checked before any weights are loaded."""
    state_dict, metadata = read_lora_file(path_or_dict, weight_name, **hub_kwargs)
    per_component = convert_lora_state_dict(
        state_dict, {c: lora_model.lora_target_names(m) for c, m in models.items()}, metadata
    )
    if not per_component:
        raise ValueError("the LoRA holds no weights for the unet or the text_encoder")
    missing = sorted(set(per_component) - set(models))
    if missing:
        raise ValueError(f"the LoRA has weights for {missing}, which this pipeline does not have")
    for component, weights in per_component.items():  # validate everything before changing anything
        lora_model.check_adapter(models[component], weights, component)
    return per_component


class LoraLoaderMixin:
    """LoRA for the ``unet`` and ``text_encoder`` of the class that inherits this."""

    unet: nn.Module
    text_encoder: nn.Module | None

    # -- loading ------------------------------------------------------------------------------------------------

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
        adapter_name: str | None = None,
        weight_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Load a LoRA (diffusers/peft, older diffusers or kohya/A1111 layout) into the UNet and text encoder.

        Args:
            pretrained_model_name_or_path_or_dict: a ``.safetensors`` / ``.bin`` file, a folder or Hub repo id
                holding one (``pytorch_lora_weights.safetensors`` unless ``weight_name`` says otherwise), or a state
                dict.
            adapter_name: name to refer to this LoRA by (``set_adapters``, ``delete_adapters``); default
                ``default_<n>``.
            weight_name: file name inside the folder or repo.
            kwargs: Hub options ``local_files_only``, ``revision``, ``cache_dir``, ``token``, ``subfolder``.

        The new adapter becomes the only active one. Nothing is modified when the file does not fit.
        """
        unknown = sorted(set(kwargs) - set(_HUB_KWARGS))
        if unknown:
            raise TypeError(f"load_lora_weights() got unexpected arguments {unknown}; allowed: {list(_HUB_KWARGS)}")
        adapter_name = self._new_adapter_name(adapter_name)
        models = self._lora_models()
        per_component = fitting_lora_weights(pretrained_model_name_or_path_or_dict, models, weight_name, **kwargs)
        for component, weights in per_component.items():
            lora_model.add_adapter(models[component], adapter_name, weights)

    def _lora_models(self) -> dict[str, nn.Module]:
        return {c: m for c in _COMPONENTS if isinstance(m := getattr(self, c, None), nn.Module)}

    def _new_adapter_name(self, adapter_name: str | None) -> str:
        existing = {name for names in self.get_list_adapters().values() for name in names}
        if adapter_name is None:
            index = len(existing)
            while f"default_{index}" in existing:
                index += 1
            return f"default_{index}"
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
            raise ValueError(f"adapter_name must be a non-empty string without '.', got {adapter_name!r}")
        if adapter_name in existing:
            raise ValueError(
                f"adapter_name {adapter_name!r} is already loaded; choose another or delete_adapters({adapter_name!r})"
            )
        return adapter_name

    # -- choosing adapters --------------------------------------------------------------------------------------

    def get_list_adapters(self) -> dict[str, list[str]]:
        """``{component: [adapter names]}`` for the components holding LoRA layers."""
        return {c: names for c, m in self._lora_models().items() if (names := lora_model.adapter_names(m))}

    def get_active_adapters(self) -> list[str]:
        """The adapters in use (those of the first component holding LoRA layers)."""
        for model in self._lora_models().values():
            if lora_model.lora_layers(model):
                return lora_model.active_adapters(model)
        return []

    def set_adapters(
        self,
        adapter_names: str | Sequence[str],
        adapter_weights: float | Sequence[float | None] | Mapping[str, float] | None = None,
    ) -> None:
        """Use exactly ``adapter_names``, each output multiplied by its weight.

        ``adapter_weights``: one number for all, one per adapter (``None`` = 1.0), or one per adapter given as
        ``{"unet": w, "text_encoder": w}`` to weight the components differently.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"adapter_weights has {len(weights)} entries for {len(names)} adapter_names")
        self._check_known(names)
        models = self._lora_models()
        per_component = {c: [_component_weight(w, c) for w in weights] for c in models}  # all checked first
        for component, model in models.items():
            lora_model.set_active_adapters(model, names, per_component[component])

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        """Remove adapters entirely (layers without any adapter left get their original module back)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._check_known(names)
        fused = sorted(self.fused_loras & set(names))
        if fused:  # checked for all components first, so a refusal leaves every component as it was
            raise ValueError(f"adapter(s) {fused} are fused into the weights; call unfuse_lora() before deleting them")
        for model in self._lora_models().values():
            lora_model.delete_adapters(model, names)

    def _check_known(self, names: Sequence[str]) -> None:
        loaded = {name for names_ in self.get_list_adapters().values() for name in names_}
        unknown = [name for name in names if name not in loaded]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; loaded: {sorted(loaded)}")

    def disable_lora(self) -> None:
        """Run without LoRA (adapters stay loaded; ``enable_lora`` switches them back on)."""
        if self.fused_loras:
            raise ValueError("LoRA weights are fused into the model; call unfuse_lora() before disable_lora()")
        for model in self._lora_models().values():
            lora_model.set_enabled(model, False)

    def enable_lora(self) -> None:
        for model in self._lora_models().values():
            lora_model.set_enabled(model, True)

    # -- fusing -------------------------------------------------------------------------------------------------

    def fuse_lora(
        self,
        components: Sequence[str] = _COMPONENTS,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Sequence[str] | None = None,
    ) -> None:
        """Add the LoRA (active adapters, or ``adapter_names``) × ``lora_scale`` into the weights of ``components``.

        Inference then runs at the base model's speed. ``safe_fusing`` refuses weights that would hold NaN/inf.
        """
        if not isinstance(lora_scale, (int, float)) or isinstance(lora_scale, bool) or not math.isfinite(lora_scale):
            raise UserInputError(f"lora_scale must be a finite number, got {lora_scale!r}")
        models = self._checked_components(components)
        if safe_fusing:  # every component is checked before any is changed
            for model in models:
                lora_model.check_fusable(model, lora_scale, adapter_names)
        for model in models:
            lora_model.fuse(model, lora_scale, adapter_names)

    def unfuse_lora(self, components: Sequence[str] = _COMPONENTS) -> None:
        """Restore the weights from before ``fuse_lora`` exactly (bit for bit)."""
        for model in self._checked_components(components):
            lora_model.unfuse(model)

    @property
    def fused_loras(self) -> set[str]:
        """Names of the adapters fused into the weights."""
        return {name for m in self._lora_models().values() for name in lora_model.fused_adapters(m)}

    @property
    def num_fused_loras(self) -> int:
        return len(self.fused_loras)

    def _checked_components(self, components: Sequence[str]) -> list[nn.Module]:
        components = [components] if isinstance(components, str) else list(components)
        unknown = [c for c in components if c not in _COMPONENTS]
        if unknown or not components:
            raise ValueError(f"components must be a non-empty list of {list(_COMPONENTS)}, got {components}")
        models = self._lora_models()
        return [models[c] for c in components if c in models]

    def unload_lora_weights(self) -> None:
        """Remove all LoRA layers. Fused adapters stay in the weights (fuse → unload bakes a LoRA in)."""
        for model in self._lora_models().values():
            lora_model.remove_lora(model)

    # -- runtime scale of the text encoder (the UNet's comes through cross_attention_kwargs) ----------------------

    @contextlib.contextmanager
    def text_encoder_lora_scale(self, lora_scale: float | None) -> Iterator[None]:
        """Inside the block, the text encoder's LoRA outputs are multiplied by ``lora_scale`` (None: unchanged)."""
        with lora_model.runtime_scale(getattr(self, "text_encoder", None), lora_scale):
            yield

    # -- saving -------------------------------------------------------------------------------------------------

    def get_lora_state_dict(self, adapter_name: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """One adapter's weights, ready for ``save_lora_weights(directory, **pipe.get_lora_state_dict(name))``.

        Returns ``{"unet_lora_layers": {...}, "text_encoder_lora_layers": {...}}`` in diffusers' layout
        (``<module>.lora_A.weight`` / ``.lora_B.weight``, alpha folded into ``lora_B``). Default: the only
        adapter loaded.
        """
        loaded = sorted({name for names in self.get_list_adapters().values() for name in names})
        if adapter_name is None:
            if len(loaded) != 1:
                raise ValueError(f"adapter_name is required when {len(loaded)} adapters are loaded: {loaded}")
            adapter_name = loaded[0]
        if adapter_name not in loaded:
            raise ValueError(f"unknown adapter {adapter_name!r}; loaded: {loaded}")
        return {
            f"{component}_lora_layers": lora_weights_to_peft_state_dict(lora_model.adapter_state(model, adapter_name))
            for component, model in self._lora_models().items()
            if lora_model.adapter_state(model, adapter_name)
        }

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: Mapping[str, torch.Tensor] | nn.Module | None = None,
        text_encoder_lora_layers: Mapping[str, torch.Tensor] | nn.Module | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable[[dict[str, torch.Tensor], str], None] | None = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata: Mapping[str, Any] | None = None,
        text_encoder_lora_adapter_metadata: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write LoRA layers in diffusers' layout (``unet.<module>.lora_A.weight`` ...), as diffusers does.

        ``*_lora_layers`` are state dicts with module-relative keys (``pipe.get_lora_state_dict()`` gives them)
        or modules whose ``state_dict()`` is used. The file is ``pytorch_lora_weights.safetensors`` (``.bin``
        without ``safe_serialization``) unless ``weight_name`` is given; it is written atomically. The optional
        metadata (peft ``LoraConfig`` fields) goes into the safetensors header as diffusers writes it.
        """
        layers = {"unet": unet_lora_layers, "text_encoder": text_encoder_lora_layers}
        if not any(layers.values()):
            raise ValueError("pass at least one of unet_lora_layers or text_encoder_lora_layers")
        if Path(save_directory).is_file():
            raise ValueError(f"save_directory must be a directory, {save_directory} is a file")
        metadata_in = {"unet": unet_lora_adapter_metadata, "text_encoder": text_encoder_lora_adapter_metadata}
        if any(metadata_in.values()) and not safe_serialization:
            raise ValueError("LoRA adapter metadata can only be saved with safe_serialization=True")
        state_dict = {
            f"{component}.{key}": tensor
            for component, part in layers.items()
            if part
            for key, tensor in (part.state_dict() if isinstance(part, nn.Module) else part).items()
        }
        if not is_main_process:
            return None
        path = Path(save_directory) / (
            weight_name or (LORA_WEIGHT_NAME_SAFE if safe_serialization else LORA_WEIGHT_NAME)
        )
        if save_function is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_function(state_dict, str(path))
            return path
        from ..loading.weights import write_state_dict

        header = _pack_metadata(metadata_in)
        if safe_serialization and path.suffix != ".safetensors":
            raise ValueError(f"weight_name must end in .safetensors with safe_serialization=True, got {path.name!r}")
        write_state_dict(state_dict, path, metadata=header)
        return path


def _component_weight(weight: float | Mapping[str, float] | None, component: str) -> float:
    if isinstance(weight, Mapping):
        unknown = set(weight) - set(_COMPONENTS)
        if unknown:
            raise ValueError(
                f"per-component adapter weights take the keys {list(_COMPONENTS)}, got {sorted(unknown)} (block-wise "
                "UNet weights are not supported)"
            )
        weight = weight.get(component)
    if weight is None:
        return 1.0
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
        raise UserInputError(f"an adapter weight must be a finite number, got {weight!r}")
    return float(weight)


def _pack_metadata(metadata: Mapping[str, Mapping[str, Any] | None]) -> dict[str, str] | None:
    import json

    packed = {
        f"{component}.{key}": (sorted(value) if isinstance(value, set) else value)
        for component, fields in metadata.items()
        if fields
        for key, value in fields.items()
    }
    return {"lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)} if packed else None
