"""LoRA on a whole model: attach adapters to named layers, choose the active ones, scale, fuse, remove.

Works on any ``nn.Module`` (our UNet, transformers' CLIP text encoder): a targeted ``nn.Linear`` /
``nn.Conv2d`` is replaced by a ``LoRALayer`` wrapping it, so its parameters appear as ``<name>.base_layer.*``
while a LoRA is loaded, as with peft; removing the LoRA puts the original modules back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from .lora_keys import LoRAWeights
from .lora_layer import LoRALayer, check_lora_target, fit_to_layer

__all__ = [
    "active_adapters",
    "adapter_names",
    "add_adapter",
    "adapter_state",
    "check_adapter",
    "check_fusable",
    "delete_adapters",
    "fuse",
    "fused_adapters",
    "lora_layers",
    "lora_target_names",
    "remove_lora",
    "runtime_scale",
    "set_active_adapters",
    "set_enabled",
    "unfuse",
]


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    """``(name, layer)`` for every ``LoRALayer`` in ``model``."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALayer)]


def lora_target_names(model: nn.Module) -> list[str]:
    """Names of the layers a LoRA may target: every ``nn.Linear`` / ``nn.Conv2d`` (wrapped or not)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer) or (
            isinstance(module, (nn.Linear, nn.Conv2d)) and not name.endswith(".base_layer")
        ):
            names.append(name)
    return names


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters loaded into ``model``, in loading order."""
    names: dict[str, None] = {}
    for _, layer in lora_layers(model):
        names.update(dict.fromkeys(layer.adapter_names))
    return list(names)


def active_adapters(model: nn.Module) -> list[str]:
    """The active adapters (the same for every layer of ``model``)."""
    layers = lora_layers(model)
    return list(layers[0][1].active_adapters) if layers else []


def check_adapter(model: nn.Module, weights: Mapping[str, LoRAWeights], model_name: str) -> None:
    """Raise ``ValueError`` if any of ``weights`` does not fit its layer; ``model`` is not modified."""
    for name, lora in weights.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{model_name} has no layer {name!r} for the LoRA") from None
        check_lora_target(module, f"{model_name}.{name}")
        try:
            fit_to_layer(module.base_layer if isinstance(module, LoRALayer) else module, lora.down, lora.up)
        except ValueError as error:
            raise ValueError(
                f"the LoRA for {model_name}.{name} does not fit: {error}; is the LoRA for another base model "
                "(e.g. SD 1.x)?"
            ) from None


def add_adapter(model: nn.Module, adapter_name: str, weights: Mapping[str, LoRAWeights]) -> None:
    """Attach adapter ``adapter_name`` to the named layers and make it the only active adapter of ``model``.

    Call ``check_adapter`` first to validate without side effects.
    """
    for name, lora in weights.items():
        module = model.get_submodule(name)
        if not isinstance(module, LoRALayer):
            module = _wrap(model, name, module)
        module.add_adapter(adapter_name, lora.down, lora.up, lora.scale)
    for _, layer in lora_layers(model):
        layer.active_adapters = [adapter_name]


def _wrap(model: nn.Module, name: str, module: nn.Module) -> LoRALayer:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    layer = LoRALayer(module)
    setattr(parent, child, layer)
    return layer


def set_active_adapters(model: nn.Module, names: Sequence[str], weights: Sequence[float]) -> None:
    """Activate exactly ``names`` in every LoRA layer, with ``weights`` (multipliers of each adapter's output)."""
    for _, layer in lora_layers(model):
        layer.active_adapters = list(names)
        for name, weight in zip(names, weights):
            if name in layer.adapter_weight:
                layer.adapter_weight[name] = float(weight)


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch all LoRA layers on or off (the adapters stay loaded)."""
    if not enabled and fused_adapters(model):
        raise ValueError("LoRA weights are fused into the model; call unfuse_lora() before disable_lora()")
    for _, layer in lora_layers(model):
        layer.enabled = enabled


def delete_adapters(model: nn.Module, names: Sequence[str]) -> None:
    """Remove adapters; layers left without any adapter get their original module back."""
    fused = sorted(fused_adapters(model) & set(names))
    if fused:
        raise ValueError(f"adapter(s) {fused} are fused into the weights; call unfuse_lora() before deleting them")
    for name, layer in lora_layers(model):
        for adapter in names:
            layer.delete_adapter(adapter)
        if not layer.adapter_names:
            _unwrap(model, name, layer)


def remove_lora(model: nn.Module) -> None:
    """Put every original layer back. Fused adapters stay in the weights (that is how a LoRA is baked in)."""
    for name, layer in lora_layers(model):
        layer.forget_fuse()
        _unwrap(model, name, layer)


def _unwrap(model: nn.Module, name: str, layer: LoRALayer) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, layer.base_layer)


def check_fusable(model: nn.Module, lora_scale: float = 1.0, adapter_names: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` if fusing would put NaN/inf into a weight of ``model`` (nothing is modified)."""
    names = None if adapter_names is None else list(adapter_names)
    for name, layer in lora_layers(model):
        fused = layer.fused_weight(names, lora_scale)
        if fused is not None and not torch.isfinite(fused).all():
            raise ValueError(f"fusing the LoRA into {name} gives non-finite weights; nothing was fused")


def fuse(model: nn.Module, lora_scale: float = 1.0, adapter_names: Sequence[str] | None = None) -> set[str]:
    """Fuse adapters (default: active) into the weights of ``model``; returns the names fused."""
    fused: set[str] = set()
    for _, layer in lora_layers(model):
        fused.update(layer.fuse(None if adapter_names is None else list(adapter_names), lora_scale))
    return fused


def unfuse(model: nn.Module) -> None:
    """Restore every fused weight of ``model`` exactly."""
    for _, layer in lora_layers(model):
        layer.unfuse()


def fused_adapters(model: nn.Module) -> set[str]:
    """Adapters fused into at least one layer of ``model``."""
    return {name for _, layer in lora_layers(model) for name in layer.fused_adapters}


@contextlib.contextmanager
def runtime_scale(model: nn.Module | None, scale: float | None) -> Iterator[None]:
    """Multiply every LoRA output of ``model`` by ``scale`` inside the block (``None``: leave as is).

    The UNet does this itself for ``cross_attention_kwargs={"scale": s}`` (it sets ``lora_scale`` on every
    submodule that has one); the text encoder, a transformers model, needs this context.
    """
    layers = [layer for _, layer in lora_layers(model)] if model is not None and scale is not None else []
    previous = [layer.lora_scale for layer in layers]
    for layer in layers:
        layer.lora_scale = float(scale)
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.lora_scale = value


def adapter_state(model: nn.Module, adapter_name: str) -> dict[str, LoRAWeights]:
    """The weights of one adapter as ``{layer name: LoRAWeights}`` (export, e.g. to save it)."""
    return {
        name: LoRAWeights(
            layer.lora_A[adapter_name].detach(), layer.lora_B[adapter_name].detach(), layer.file_scale[adapter_name]
        )
        for name, layer in lora_layers(model)
        if adapter_name in layer.lora_A
    }
