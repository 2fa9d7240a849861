"""The denoising UNet of Stable Diffusion 2 depth (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models"), conditioned on a timestep and on text embeddings through cross-attention.

    sample (latents + depth: 5 channels) -> conv_in
      -> down stages (resnets [+ transformers], stride-2 downsample), keeping every state as a skip
      -> mid stage (resnet, transformer, resnet)
      -> up stages (concatenate skips, resnets [+ transformers], ×2 upsample)
      -> GroupNorm, SiLU, conv_out -> predicted noise (or v)

Config keys and parameter names are those of diffusers' ``UNet2DConditionModel`` so the published
``unet/config.json`` and ``diffusion_pytorch_model.safetensors`` load unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionBackendMixin
from .blocks import DownBlock, MidBlock, Transformer2DModel, UpBlock
from .embeddings import TimestepEmbedding, sinusoidal_embedding
from .modeling import ModelMixin

__all__ = ["UNet2DConditionModel", "UNet2DConditionOutput"]

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

# Keys of the reference's config that select features this UNet does not implement: accepted (the published
# configs and diffusers' save_pretrained write them) but only with the value that turns the feature off.
_UNSUPPORTED_UNLESS = {
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "dual_cross_attention": (False,),
    "num_attention_heads": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,),
    "num_class_embeds": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "act_fn": ("silu",),
}


class UNet2DConditionOutput(NamedTuple):
    """``.sample``: the model output, shaped like the input sample but with ``out_channels`` channels."""

    sample: torch.Tensor


def _per_block(name: str, value: Any, count: int) -> list:
    """An int broadcast to ``count`` blocks, or a list that must have one entry per block."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name}={list(value)} needs one entry per down block ({count})")
        return list(value)
    return [value] * count


class UNet2DConditionModel(ModelMixin, AttentionBackendMixin):
    """Conditional UNet; build from the published ``unet/config.json`` keys (``from_config`` or kwargs).

    ``attention_head_dim`` is, as in the reference's config, the number of attention *heads* per block (an int
    for all blocks or one per block); the head width is the block's channels divided by it. ``dropout`` is a
    training setting and has no effect here; ``upcast_attention`` is accepted and, as in the reference's default
    SDPA attention, changes nothing (attention runs in the input dtype).
    """

    def __init__(
        self,
        sample_size: int | Sequence[int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: Sequence[str] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        only_cross_attention: bool | Sequence[bool] = False,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int | Sequence[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | Sequence[int] = 1,
        reverse_transformer_layers_per_block: Any = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | Sequence[int] = 8,
        num_attention_heads: int | Sequence[int] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        fixed = dict(locals())
        for key, allowed in _UNSUPPORTED_UNLESS.items():
            if fixed[key] not in allowed:
                raise ValueError(
                    f"UNet2DConditionModel: {key}={fixed[key]!r} is not supported; allowed: "
                    + ", ".join(repr(a) for a in allowed)
                )
        n_blocks = len(down_block_types)
        heads = _per_block("attention_head_dim", attention_head_dim, n_blocks)
        layers = _per_block("layers_per_block", layers_per_block, n_blocks)
        depths = _per_block("transformer_layers_per_block", transformer_layers_per_block, n_blocks)
        if any(_per_block("only_cross_attention", only_cross_attention, n_blocks)):
            raise ValueError("UNet2DConditionModel: only_cross_attention=True is not supported; allowed: False")
        _check_sizes(down_block_types, up_block_types, block_out_channels, heads, norm_num_groups, cross_attention_dim)

        self.center_input_sample = center_input_sample
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        channels = list(block_out_channels)
        time_embed_dim = channels[0] * 4
        common = {"temb_channels": time_embed_dim, "groups": norm_num_groups, "eps": norm_eps}

        def transformer_factory(block_heads: int, depth: int):
            def make(width: int) -> nn.Module:
                return Transformer2DModel(
                    block_heads,
                    width // block_heads,
                    width,
                    cross_attention_dim=cross_attention_dim,
                    groups=norm_num_groups,
                    use_linear_projection=use_linear_projection,
                    num_layers=depth,
                )

            return make

        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)

        # Registration order (down, up, mid) follows the reference so state dicts list keys in its order.
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i, block_type in enumerate(down_block_types):
            is_last = i == n_blocks - 1
            self.down_blocks.append(
                DownBlock(
                    channels[max(i - 1, 0)],
                    channels[i],
                    layers[i],
                    add_downsample=not is_last,
                    downsample_padding=downsample_padding,
                    make_attention=transformer_factory(heads[i], depths[i])
                    if block_type == "CrossAttnDownBlock2D"
                    else None,
                    **common,
                )
            )
        self.mid_block = MidBlock(
            channels[-1],
            output_scale_factor=mid_block_scale_factor,
            make_attention=transformer_factory(heads[-1], depths[-1]),
            **common,
        )
        # Up stage i mirrors down stage n-1-i; its resnets take the skips of that stage (plus the downsample
        # output of the stage below, or conv_in's output for the last one), read last-first.
        skip_widths = [channels[0]]
        for i in range(n_blocks):
            skip_widths += [channels[i]] * layers[i] + ([channels[i]] if i < n_blocks - 1 else [])
        for i, block_type in enumerate(up_block_types):
            level = n_blocks - 1 - i
            num_layers = layers[level] + 1
            skips = skip_widths[len(skip_widths) - num_layers :]
            del skip_widths[len(skip_widths) - num_layers :]
            self.up_blocks.append(
                UpBlock(
                    channels[min(level + 1, n_blocks - 1)],
                    channels[level],
                    num_layers,
                    skip_channels=skips[::-1],
                    add_upsample=i < n_blocks - 1,
                    make_attention=transformer_factory(heads[level], depths[level])
                    if block_type == "CrossAttnUpBlock2D"
                    else None,
                    **common,
                )
            )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(channels[0], out_channels, kernel_size=3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        cross_attention_kwargs: Mapping[str, Any] | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict the noise (or v) of ``sample`` at ``timestep`` given text ``encoder_hidden_states``.

        Args:
            sample: ``(batch, in_channels, height, width)`` latents (SD2-depth: 4 latent + 1 depth channels).
            timestep: an int, a float, a 0-d tensor, or a 1-d tensor of length 1 or ``batch``.
            encoder_hidden_states: ``(batch, tokens, cross_attention_dim)`` text embeddings.
            cross_attention_kwargs: only ``{"scale": s}``, the runtime LoRA scale. During this call every
                submodule with a ``lora_scale`` attribute (the LoRA layers the adapters code inserts) has it set
                to ``s``, and restored afterwards; without LoRA layers it changes nothing.
            return_dict: return ``UNet2DConditionOutput`` (``.sample``) rather than a 1-tuple.
        """
        lora_scale = _lora_scale_from(cross_attention_kwargs)
        batch = self._check_inputs(sample, encoder_hidden_states)
        timesteps = _timesteps_for_batch(timestep, batch, sample.device)

        with _lora_layers_scaled(self, lora_scale):
            out = self._denoise(sample, timesteps, encoder_hidden_states)
        return UNet2DConditionOutput(out) if return_dict else (out,)

    def _denoise(self, sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        features = sinusoidal_embedding(
            timesteps, self.conv_in.out_channels, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
        )
        # Every resnet applies SiLU to the time embedding before its projection: do it once here.
        temb = F.silu(self.time_embedding(features.to(sample.dtype)))

        # A size not divisible by the total downsampling makes the upsamplers target the skips' sizes instead.
        upsample_factor = 2 ** (len(self.up_blocks) - 1)
        needs_sizes = any(size % upsample_factor for size in sample.shape[-2:])

        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            h, states = block(h, temb, context)
            skips += states
        h = self.mid_block(h, temb, context)
        for i, block in enumerate(self.up_blocks):
            num_skips = len(block.resnets)
            block_skips = skips[-num_skips:]
            del skips[-num_skips:]
            upsample_size = skips[-1].shape[2:] if needs_sizes and i < len(self.up_blocks) - 1 else None
            h = block(h, block_skips, temb, context, upsample_size)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

    def _check_inputs(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> int:
        """The batch size, after checking shapes against the config (cheap; before any heavy work)."""
        in_channels = self.conv_in.in_channels
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4 or sample.shape[1] != in_channels:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must be a (batch, {in_channels}, height, width) tensor, got {shape}")
        width = self.config["cross_attention_dim"]
        if (
            not isinstance(encoder_hidden_states, torch.Tensor)
            or encoder_hidden_states.ndim != 3
            or encoder_hidden_states.shape[2] != width
        ):
            shape = (
                tuple(encoder_hidden_states.shape)
                if isinstance(encoder_hidden_states, torch.Tensor)
                else type(encoder_hidden_states).__name__
            )
            raise ValueError(f"encoder_hidden_states must be a (batch, tokens, {width}) tensor, got {shape}")
        if encoder_hidden_states.shape[0] != sample.shape[0]:
            raise ValueError(
                f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]} but sample has {sample.shape[0]}"
            )
        return sample.shape[0]


def _check_sizes(
    down_block_types: Sequence[str],
    up_block_types: Sequence[str],
    block_out_channels: Sequence[int],
    heads: list[int],
    norm_num_groups: int,
    cross_attention_dim: Any,
) -> None:
    """One clear error for a config whose sizes or block names do not fit together."""
    for name, types, allowed in (
        ("down_block_types", down_block_types, DOWN_BLOCK_TYPES),
        ("up_block_types", up_block_types, UP_BLOCK_TYPES),
    ):
        for block_type in types:
            if block_type not in allowed:
                raise ValueError(f"{name} contains unknown block type {block_type!r}; allowed: {', '.join(allowed)}")
    n_blocks = len(down_block_types)
    if n_blocks == 0:
        raise ValueError("down_block_types must name at least one block")
    if len(up_block_types) != n_blocks:
        raise ValueError(f"up_block_types has {len(up_block_types)} entries but down_block_types has {n_blocks}")
    if len(block_out_channels) != n_blocks:
        raise ValueError(f"block_out_channels={list(block_out_channels)} needs one entry per down block ({n_blocks})")
    if not isinstance(cross_attention_dim, int) or isinstance(cross_attention_dim, bool):
        raise ValueError(f"cross_attention_dim={cross_attention_dim!r} is not supported; use one int")
    for width, block_heads in zip(block_out_channels, heads):
        if width % norm_num_groups:
            raise ValueError(f"block_out_channels entry {width} is not divisible by norm_num_groups={norm_num_groups}")
        if not isinstance(block_heads, int) or block_heads < 1 or width % block_heads:
            raise ValueError(
                f"attention_head_dim entry {block_heads!r} (heads) must be a positive divisor of its block's "
                f"{width} channels"
            )


def _timesteps_for_batch(timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """A 1-d tensor of ``batch`` timesteps from an int, float, 0-d or 1-d tensor (length 1 or ``batch``)."""
    if not isinstance(timestep, torch.Tensor):
        if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
            raise ValueError(f"timestep must be an int, a float or a tensor, got {type(timestep).__name__}")
        dtype = torch.float32 if isinstance(timestep, float) else torch.int64
        return torch.tensor([timestep], dtype=dtype, device=device).expand(batch)
    if timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, batch)):
        raise ValueError(f"timestep tensor must be 0-d or have 1 or {batch} entries, got shape {tuple(timestep.shape)}")
    return timestep.reshape(-1).to(device).expand(batch)


def _lora_scale_from(cross_attention_kwargs: Mapping[str, Any] | None) -> float:
    if not cross_attention_kwargs:
        return 1.0
    unknown = sorted(set(cross_attention_kwargs) - {"scale"})
    if unknown:
        raise ValueError(f"cross_attention_kwargs keys {unknown} are not supported; allowed: 'scale' (LoRA scale)")
    return float(cross_attention_kwargs.get("scale", 1.0))


@contextlib.contextmanager
def _lora_layers_scaled(model: nn.Module, scale: float) -> Iterator[None]:
    """Set ``lora_scale`` on every submodule that has one, for the duration of a forward pass.

    LoRA layers start at (and are restored to) 1.0, so the default scale costs no module walk.
    """
    if scale == 1.0:
        yield
        return
    layers = [module for module in model.modules() if hasattr(module, "lora_scale")]
    previous = [layer.lora_scale for layer in layers]
    for layer in layers:
        layer.lora_scale = scale
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.lora_scale = value
