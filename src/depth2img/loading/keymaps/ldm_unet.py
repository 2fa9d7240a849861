"""Original ``ldm`` UNet (``model.diffusion_model.*``) → our ``UNet2DConditionModel`` names.

The original UNet is three flat lists of blocks; ours groups them by resolution:

- ``input_blocks.0.0`` is ``conv_in``; then each down level ``i`` contributes ``layers_per_block`` entries
  ``input_blocks.k`` = (ResBlock ``.0``, optional SpatialTransformer ``.1``) and, except the last level, one
  ``input_blocks.k.0.op`` downsampling conv. So ``down_blocks.i.resnets.j`` is
  ``input_blocks.{1 + i*(L+1) + j}.0`` and its downsampler ``input_blocks.{(i+1)*(L+1)}.0.op``.
- ``middle_block.0/1/2`` are ResBlock, transformer, ResBlock.
- each up level has ``L+1`` entries ``output_blocks.k`` = (ResBlock ``.0``, optional transformer ``.1``),
  and the last entry of every level but the last ends with an upsampler: ``.1.conv`` when the level has no
  attention, ``.2.conv`` when it has.
- ``time_embed.0/2``, ``out.0/2`` (norm, conv) and ``label_emb`` sit at the top.

Inside a ResBlock the names differ (``in_layers.0`` = ``norm1`` ...); inside a transformer they are the same
(``proj_in``, ``transformer_blocks.0.attn1.to_q`` ...). SD2's ``proj_in``/``proj_out`` are linear
(``use_linear_projection``), SD1's are 1x1 convolutions: the converter reshapes between the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import KeyMap, Source, UnknownKeyError

__all__ = ["PREFIX", "keymap"]

PREFIX = "model.diffusion_model."

_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "class_embedding": "label_emb",  # only for num_class_embeds (e.g. the x4 upscaler); absent in SD2-depth
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_SAMPLER = re.compile(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.+)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_MID_INDEX = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}


def keymap(config: Mapping[str, Any]) -> KeyMap:
    """The map for a UNet built from ``config`` (needs ``layers_per_block`` and ``up_block_types``)."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError(f"original UNet checkpoints have one layers_per_block for all levels, got {per_block!r}")
    up_has_attention = ["CrossAttn" in name for name in config["up_block_types"]]

    def source(name: str) -> Source:
        return Source(_original(name, per_block, up_has_attention))

    return KeyMap("UNet", PREFIX, source, lambda key: False)


def _original(name: str, per_block: int, up_has_attention: list[bool]) -> str:
    match = _BLOCK.fullmatch(name)
    if match:
        direction, level, kind, index, rest = match.groups()
        level, index = int(level), int(index)
        if direction == "down":
            block = f"input_blocks.{1 + level * (per_block + 1) + index}"
        else:
            block = f"output_blocks.{level * (per_block + 1) + index}"
        return f"{block}.0.{_resnet(rest, name)}" if kind == "resnets" else f"{block}.1.{rest}"

    match = _SAMPLER.fullmatch(name)
    if match:
        direction, level, _, rest = match.groups()
        level = int(level)
        if direction == "down":
            return f"input_blocks.{(level + 1) * (per_block + 1)}.0.op.{rest}"
        slot = 2 if up_has_attention[level] else 1
        return f"output_blocks.{level * (per_block + 1) + per_block}.{slot}.conv.{rest}"

    match = _MID.fullmatch(name)
    if match:
        kind, index, rest = match.groups()
        position = _MID_INDEX.get((kind, int(index)))
        if position is None:
            raise UnknownKeyError(f"the original UNet layout has no place for {name}")
        return f"middle_block.{position}.{_resnet(rest, name) if kind == 'resnets' else rest}"

    module, _, parameter = name.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{parameter}"
    raise UnknownKeyError(f"the original UNet layout has no place for {name}")


def _resnet(rest: str, name: str) -> str:
    layer, _, parameter = rest.partition(".")
    if layer not in _RESNET:
        raise UnknownKeyError(f"the original UNet layout has no place for {name}")
    return f"{_RESNET[layer]}.{parameter}"
