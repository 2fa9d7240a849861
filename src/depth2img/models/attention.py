"""Multi-head attention, one module for the UNet's transformer blocks and the VAE's mid-block.

Parameter names follow the published diffusers checkpoints: ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` and, for
the VAE's spatial self-attention, ``group_norm``.

Three interchangeable backends compute softmax(q kᵀ / √d) v; they differ in memory and speed, not in maths:

* ``sdpa`` (default): ``torch.nn.functional.scaled_dot_product_attention``, which picks a fused kernel.
* ``sliced``: the same call on ``slice_size`` (batch × head) rows at a time, bounding peak memory.
* ``xformers``: ``xformers.ops.memory_efficient_attention``, only when xformers is installed (CUDA only).

Models choose a backend for all their attention layers through ``AttentionBackendMixin``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear

__all__ = ["Attention", "AttentionBackendMixin", "sliced_attention", "xformers_attention"]


def sliced_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slice_size: int) -> torch.Tensor:
    """Attention over ``(batch, heads, tokens, head_dim)`` tensors, ``slice_size`` (batch × head) rows at a time.

    Rows are ordered batch-major (row = b * heads + h), as in the reference's sliced processor, so a slice size
    means the same thing there and here.
    """
    batch, heads, tokens, head_dim = query.shape
    q, k, v = (t.reshape(batch * heads, t.shape[2], head_dim) for t in (query, key, value))
    out = torch.empty_like(q)
    for start in range(0, batch * heads, slice_size):
        end = start + slice_size
        out[start:end] = F.scaled_dot_product_attention(q[start:end], k[start:end], v[start:end])
    return out.view(batch, heads, tokens, head_dim)


def xformers_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int, op: Any = None
) -> torch.Tensor:
    """Attention through xformers on ``(batch, tokens, heads * head_dim)`` projections; same layout out."""
    import xformers.ops  # only reached after AttentionBackendMixin checked it is importable

    batch, tokens, inner = query.shape
    head_dim = inner // heads
    q = query.view(batch, tokens, heads, head_dim)
    k = key.view(batch, key.shape[1], heads, head_dim)
    v = value.view(batch, value.shape[1], heads, head_dim)
    return xformers.ops.memory_efficient_attention(q, k, v, op=op).reshape(batch, tokens, inner)


class Attention(nn.Module):
    """Multi-head attention; self-attention unless ``encoder_hidden_states`` are given.

    Token input ``(batch, tokens, query_dim)`` is what the UNet's transformer blocks use. Spatial input
    ``(batch, channels, height, width)`` is what the VAE uses: it is group-normalised (``norm_num_groups``),
    attended over its pixels and, with ``residual_connection``, added back to the input.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        bias: bool = False,
        out_bias: bool = True,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        residual_connection: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.residual_connection = residual_connection
        self.group_norm = nn.GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups else None
        self.to_q = Linear(query_dim, inner_dim, bias=bias)
        self.to_k = Linear(cross_attention_dim or query_dim, inner_dim, bias=bias)
        self.to_v = Linear(cross_attention_dim or query_dim, inner_dim, bias=bias)
        # A list so the checkpoint key is "to_out.0" (the reference keeps a dropout at index 1: no parameters).
        self.to_out = nn.ModuleList([Linear(inner_dim, query_dim, bias=out_bias)])
        # Backend state, set by AttentionBackendMixin: slice_size > 0 selects "sliced", use_xformers "xformers".
        self.slice_size: int | None = None
        self.use_xformers = False
        self.xformers_op: Any = None

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        spatial_shape = None
        if self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states)
        if hidden_states.ndim == 4:
            spatial_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        out = self.attend(self.to_q(hidden_states), self.to_k(context), self.to_v(context))
        out = self.to_out[0](out)

        if spatial_shape is not None:
            out = out.transpose(1, 2).reshape(spatial_shape)
        if self.residual_connection:
            out = out + residual
        return out

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """softmax(q kᵀ / √d) v for ``(batch, tokens, heads * head_dim)`` projections, with the chosen backend."""
        if self.use_xformers:
            return xformers_attention(query, key, value, self.heads, self.xformers_op)
        batch, tokens, inner = query.shape
        head_dim = inner // self.heads
        q = query.view(batch, tokens, self.heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, self.heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, self.heads, head_dim).transpose(1, 2)
        if self.slice_size:
            return _merge_heads(sliced_attention(q, k, v, self.slice_size))
        return _merge_heads(F.scaled_dot_product_attention(q, k, v))


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    """``(batch, heads, tokens, head_dim)`` -> ``(batch, tokens, heads * head_dim)``."""
    batch, heads, tokens, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class AttentionBackendMixin:
    """Backend switches for every ``Attention`` inside a model (mixed into the UNet and the VAE)."""

    def attention_layers(self) -> list[Attention]:
        """All attention modules, in module order (the order a list passed to ``set_attention_slice`` follows)."""
        return [module for module in self.modules() if isinstance(module, Attention)]  # type: ignore[attr-defined]

    def set_attention_slice(self, slice_size: str | int | list[int | None] | None = "auto") -> None:
        """Compute attention in slices of ``slice_size`` heads to save memory; ``None`` restores plain SDPA.

        ``"auto"``: half of each layer's heads (two steps); ``"max"``: one head at a time; an int: that many
        heads per step in every layer (at most the smallest layer's head count); a list: one entry per layer,
        in ``attention_layers()`` order. Replaces the xformers backend if it was on.
        """
        layers = self.attention_layers()
        if slice_size == "auto":
            sizes: list[int | None] = [max(1, layer.heads // 2) for layer in layers]
        elif slice_size == "max":
            sizes = [1] * len(layers)
        elif slice_size is None or isinstance(slice_size, int):
            sizes = [slice_size] * len(layers)
        elif isinstance(slice_size, (list, tuple)):
            if len(slice_size) != len(layers):
                raise ValueError(
                    f"slice_size has {len(slice_size)} entries but the model has {len(layers)} attention layers"
                )
            sizes = list(slice_size)
        else:
            raise ValueError(f"slice_size={slice_size!r} is not allowed; use 'auto', 'max', an int, a list or None")
        for layer, size in zip(layers, sizes):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise ValueError(f"slice_size={size!r} is not allowed; slice sizes are positive ints")
            if size is not None and size > layer.heads:
                raise ValueError(f"slice_size={size} is larger than a layer's {layer.heads} heads; use at most that")
        for layer, size in zip(layers, sizes):
            layer.slice_size = size
            if size is not None:
                layer.use_xformers = False

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op: Any = None) -> None:
        """Switch every attention layer to xformers (``valid=True``) or back to SDPA (``valid=False``).

        Raises ``ImportError`` when xformers is not installed and ``RuntimeError`` when CUDA is unavailable
        (xformers kernels run on CUDA only). Turning it on also turns attention slicing off.
        """
        if valid:
            try:
                importlib.import_module("xformers.ops")
            except ImportError as error:
                raise ImportError(
                    "xformers attention needs the xformers package (pip install xformers); "
                    f"the default SDPA attention needs nothing ({error})"
                ) from None
            if not torch.cuda.is_available():
                raise RuntimeError("xformers attention runs on CUDA only and no CUDA device is available")
        for layer in self.attention_layers():
            layer.use_xformers = bool(valid)
            layer.xformers_op = attention_op if valid else None
            if valid:
                layer.slice_size = None

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """Use xformers' memory-efficient attention (see ``set_use_memory_efficient_attention_xformers``)."""
        self.set_use_memory_efficient_attention_xformers(True, attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Go back to the default SDPA attention."""
        self.set_use_memory_efficient_attention_xformers(False)
