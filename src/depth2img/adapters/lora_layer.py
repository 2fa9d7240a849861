"""``LoRALayer``: an ``nn.Linear`` or ``nn.Conv2d`` plus any number of named low-rank adapters.

    y = base(x) + Σ_{a active}  B_a(A_a(x)) · weight_a · scale_a · lora_scale

``scale_a`` comes from the file (alpha / rank), ``weight_a`` from ``set_adapters`` and ``lora_scale`` from
the call: our UNet sets it on every submodule with a ``lora_scale`` attribute from
``cross_attention_kwargs={"scale": s}``; the pipeline sets it on the text encoder from
``encode_prompt(lora_scale=s)``. For a convolution A is a convolution with the base layer's kernel, stride and
padding and B a 1×1 convolution (kohya's LoCon, peft).

Fusing adds the active adapters' ``B @ A · scaling`` into the base weight so inference costs nothing extra.
The weight before the first fuse is kept (on the CPU, so fusing costs no accelerator memory) and ``unfuse``
copies it back: the round trip is exact, not ``W + Δ - Δ``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALayer", "check_lora_target", "fit_to_layer"]


def check_lora_target(module: nn.Module, name: str) -> None:
    """Raise ``ValueError`` unless ``module`` is a layer a LoRA can be attached to."""
    base = module.base_layer if isinstance(module, LoRALayer) else module
    if isinstance(base, nn.Linear):
        return
    if isinstance(base, nn.Conv2d):
        if base.groups != 1 or base.padding_mode != "zeros" or isinstance(base.padding, str):
            raise ValueError(f"LoRA on {name}: only plain convolutions (groups=1, numeric zero padding) are supported")
        return
    raise ValueError(f"LoRA can target nn.Linear and nn.Conv2d layers; {name} is a {type(base).__name__}")


def fit_to_layer(
    base: nn.Linear | nn.Conv2d, down: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(down, up)`` in the shapes ``base`` needs, or ``ValueError`` naming both shapes.

    kohya files store 1×1-convolution LoRAs both as matrices and as 1×1 kernels; either fits either layer kind.
    """
    rank = down.shape[0]
    if isinstance(base, nn.Conv2d):
        if down.ndim == 2 and up.ndim == 2:
            down, up = down[:, :, None, None], up[:, :, None, None]
        want_down, want_up = (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1)
    else:
        if down.ndim == 4 and down.shape[2:] == (1, 1) and up.ndim == 4 and up.shape[2:] == (1, 1):
            down, up = down.flatten(1), up.flatten(1)
        want_down, want_up = (rank, base.in_features), (base.out_features, rank)
    if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        raise ValueError(
            f"LoRA shapes A {tuple(down.shape)}, B {tuple(up.shape)} do not fit a {type(base).__name__} that needs "
            f"A {want_down}, B {want_up}"
        )
    return down, up


class LoRALayer(nn.Module):
    """Wraps ``base_layer`` (``nn.Linear`` / ``nn.Conv2d``); adapters live in ``lora_A`` / ``lora_B`` by name."""

    def __init__(self, base_layer: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        check_lora_target(base_layer, type(base_layer).__name__)
        self.base_layer = base_layer
        self.lora_A = nn.ParameterDict()  # down: (rank, in) or (rank, in, kh, kw)
        self.lora_B = nn.ParameterDict()  # up: (out, rank) or (out, rank, 1, 1)
        self.file_scale: dict[str, float] = {}  # alpha / rank, fixed by the adapter's file
        self.adapter_weight: dict[str, float] = {}  # set by set_adapters()
        self.active_adapters: list[str] = []
        self.lora_scale = 1.0  # the call's scale; our UNet sets it from cross_attention_kwargs["scale"]
        self.enabled = True
        self.fused_adapters: list[str] = []
        self._weight_before_fuse: torch.Tensor | None = None

    # The base layer's tensors, for code that reads e.g. ``to_q.weight.dtype``.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # ... and its sizes, for code that reads e.g. ``conv_in.in_channels`` (the UNet's input checks).
    @property
    def in_channels(self) -> int:
        return self.base_layer.in_channels

    @property
    def out_channels(self) -> int:
        return self.base_layer.out_channels

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def is_conv(self) -> bool:
        return isinstance(self.base_layer, nn.Conv2d)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.lora_A.keys())

    # -- adapters ---------------------------------------------------------------------------------------------

    def add_adapter(self, name: str, down: torch.Tensor, up: torch.Tensor, scale: float = 1.0) -> None:
        """Add adapter ``name`` (inactive until listed in ``active_adapters``), copied to the base's device/dtype."""
        if name in self.lora_A:
            raise ValueError(f"this layer already has an adapter named {name!r}")
        down, up = fit_to_layer(self.base_layer, down, up)
        weight = self.base_layer.weight
        as_param = lambda t: nn.Parameter(t.detach().to(weight.device, weight.dtype, copy=True), requires_grad=False)  # noqa: E731
        self.lora_A[name] = as_param(down)
        self.lora_B[name] = as_param(up)
        self.file_scale[name] = float(scale)
        self.adapter_weight[name] = 1.0

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (an error while it is fused into the weight)."""
        if name in self.fused_adapters:
            raise ValueError(f"adapter {name!r} is fused into the weights; call unfuse_lora() before deleting it")
        if name in self.lora_A:
            del self.lora_A[name], self.lora_B[name], self.file_scale[name], self.adapter_weight[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def scaling(self, name: str, call_scale: float | None = None) -> float:
        """The factor of adapter ``name``'s ``B @ A``: weight · alpha/rank · the call's scale (``self.lora_scale``)."""
        call_scale = self.lora_scale if call_scale is None else call_scale
        return self.adapter_weight[name] * self.file_scale[name] * call_scale

    def delta_weight(self, name: str) -> torch.Tensor:
        """``B @ A`` of adapter ``name`` in the base weight's shape, in float32 (no scaling applied)."""
        down, up = self.lora_A[name].float(), self.lora_B[name].float()
        if self.is_conv:
            # (out, rank, 1, 1) ∘ (rank, in, kh, kw): each kernel tap is a rank-r product.
            return torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        return up @ down

    # -- forward ----------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if not self.enabled:
            return out
        for name in self.active_adapters:
            if name in self.fused_adapters or name not in self.lora_A:
                continue
            out = out + self._low_rank(x, name) * self.scaling(name)
        return out

    def _low_rank(self, x: torch.Tensor, name: str) -> torch.Tensor:
        down, up = self.lora_A[name], self.lora_B[name]
        if self.is_conv:
            base = self.base_layer
            hidden = F.conv2d(x, down, None, base.stride, base.padding, base.dilation)
            return F.conv2d(hidden, up)
        return F.linear(F.linear(x, down), up)

    # -- fusing -----------------------------------------------------------------------------------------------

    def fused_weight(self, adapter_names: list[str] | None = None, lora_scale: float = 1.0) -> torch.Tensor | None:
        """The base weight with the adapters (default: active, not yet fused) added, or None if there are none.

        Uses set_adapters' weights and the file's alpha times ``lora_scale``, not the call's scale; the sum is
        formed in float32 and cast back to the weight's dtype.
        """
        names = self._fusable(adapter_names)
        if not names:
            return None
        weight = self.base_layer.weight.detach()
        delta = sum(self.delta_weight(n) * self.scaling(n, call_scale=1.0) * lora_scale for n in names)
        return (weight.float() + delta).to(weight.dtype)

    def fuse(self, adapter_names: list[str] | None = None, lora_scale: float = 1.0) -> list[str]:
        """Add adapters (default: the active ones) into the base weight, times ``lora_scale``; returns those fused."""
        names = self._fusable(adapter_names)
        fused = self.fused_weight(names, lora_scale)
        if fused is None:
            return []
        weight = self.base_layer.weight
        if self._weight_before_fuse is None:
            self._weight_before_fuse = weight.detach().to("cpu", copy=True)
        with torch.no_grad():
            weight.copy_(fused)
        self.fused_adapters.extend(names)
        return names

    def _fusable(self, adapter_names: list[str] | None) -> list[str]:
        wanted = self.active_adapters if adapter_names is None else adapter_names
        return [n for n in wanted if n in self.lora_A and n not in self.fused_adapters]

    def unfuse(self) -> None:
        """Restore the base weight exactly as it was before the first ``fuse``."""
        if self._weight_before_fuse is None:
            return
        with torch.no_grad():
            self.base_layer.weight.copy_(self._weight_before_fuse)
        self._weight_before_fuse = None
        self.fused_adapters.clear()

    def forget_fuse(self) -> None:
        """Keep the fused weight as the new base weight (used when the adapters are unloaded)."""
        self._weight_before_fuse = None
        self.fused_adapters.clear()

    def extra_repr(self) -> str:
        ranks = {name: self.lora_A[name].shape[0] for name in self.lora_A}
        return f"adapters(rank)={ranks}, active={self.active_adapters}, fused={self.fused_adapters}"
