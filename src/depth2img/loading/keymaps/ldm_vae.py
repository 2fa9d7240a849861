"""Original ``ldm`` autoencoder (``first_stage_model.*``) → our ``AutoencoderKL`` names.

- encoder ``down.i.block.j`` / ``down.i.downsample.conv`` → ``down_blocks.i.resnets.j`` / ``downsamplers.0.conv``
- decoder ``up.i`` is numbered from the *lowest* resolution up in ours: ``up_blocks.k`` ↔ ``up.{n-1-k}``
- ``mid.block_1`` / ``mid.attn_1`` / ``mid.block_2`` → ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
- ResBlocks keep their names except ``nin_shortcut`` → ``conv_shortcut``; ``norm_out`` → ``conv_norm_out``
- the mid attention's ``norm, q, k, v, proj_out`` are 1x1 convolutions there and ``group_norm, to_q, to_k,
  to_v, to_out.0`` linear layers here: same numbers, the converter drops the trailing 1x1 dims.
- ``quant_conv`` / ``post_quant_conv`` are unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import KeyMap, Source, UnknownKeyError

__all__ = ["PREFIX", "keymap"]

PREFIX = "first_stage_model."

_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_SAME = {"conv_in", "conv_out", "quant_conv", "post_quant_conv"}
_LEVEL = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)\.(.+)")
_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets\.(\d+)|attentions\.0)\.(.+)")


def keymap(config: Mapping[str, Any]) -> KeyMap:
    """The map for an autoencoder built from ``config`` (needs ``up_block_types`` for the decoder numbering)."""
    levels = len(config["up_block_types"])

    def source(name: str) -> Source:
        return Source(_original(name, levels))

    return KeyMap("VAE", PREFIX, source, lambda key: False)


def _original(name: str, levels: int) -> str:
    match = _LEVEL.fullmatch(name)
    if match:
        part, direction, level, _, resnet, rest = match.groups()
        level = int(level)
        if direction == "down" and part == "encoder":
            base = f"encoder.down.{level}"
            sampler = "downsample"
        elif direction == "up" and part == "decoder":
            base = f"decoder.up.{levels - 1 - level}"
            sampler = "upsample"
        else:
            raise UnknownKeyError(f"the original VAE layout has no place for {name}")
        if resnet is not None:
            return f"{base}.block.{resnet}.{_resnet(rest)}"
        return f"{base}.{sampler}.{rest}"

    match = _MID.fullmatch(name)
    if match:
        part, _, resnet, rest = match.groups()
        if resnet is not None:
            if int(resnet) > 1:
                raise UnknownKeyError(f"the original VAE layout has no place for {name}")
            return f"{part}.mid.block_{int(resnet) + 1}.{_resnet(rest)}"
        layer, _, parameter = rest.rpartition(".")
        if layer not in _ATTENTION:
            raise UnknownKeyError(f"the original VAE layout has no place for {name}")
        return f"{part}.mid.attn_1.{_ATTENTION[layer]}.{parameter}"

    module, _, parameter = name.rpartition(".")
    part, _, layer = module.partition(".")
    if module in _SAME or (part in ("encoder", "decoder") and layer in _SAME):
        return name
    if part in ("encoder", "decoder") and layer == "conv_norm_out":
        return f"{part}.norm_out.{parameter}"
    raise UnknownKeyError(f"the original VAE layout has no place for {name}")


def _resnet(rest: str) -> str:
    return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest
