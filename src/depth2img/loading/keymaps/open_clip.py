"""OpenCLIP ViT-H/14 text tower (``cond_stage_model.model.*``) → transformers ``CLIPTextModel`` names.

SD2 conditions on the *penultimate* layer of the 24-layer OpenCLIP text transformer, followed by ``ln_final``.
That is exactly a 23-layer ``CLIPTextModel`` (``num_hidden_layers: 23`` in the published config): the last
resblock, ``text_projection`` and ``logit_scale`` are in the file but unused.

- ``token_embedding.weight`` → ``embeddings.token_embedding.weight``
- ``positional_embedding`` (a bare parameter) → ``embeddings.position_embedding.weight``
- ``transformer.resblocks.i``: ``ln_1/ln_2`` → ``layer_norm1/2``; ``mlp.c_fc/c_proj`` → ``mlp.fc1/fc2``;
  ``attn.out_proj`` → ``self_attn.out_proj``; ``attn.in_proj_weight/bias`` holds query, key and value
  stacked (rows ``[0:d]``, ``[d:2d]``, ``[2d:3d]``) → ``self_attn.q_proj/k_proj/v_proj``
- ``ln_final`` → ``final_layer_norm``

transformers 4.x names the parameters ``text_model.embeddings...``; 5.x drops ``text_model.``: both work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import KeyMap, Source, UnknownKeyError

__all__ = ["PREFIX", "UNUSED_KEYS", "keymap"]

PREFIX = "cond_stage_model.model."

# Keys of the original text tower that SD2 never uses (besides resblocks past num_hidden_layers).
UNUSED_KEYS = frozenset({"text_projection", "logit_scale", "attn_mask"})

_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_LAYER_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_QKV = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\..+")


def keymap(config: Mapping[str, Any]) -> KeyMap:
    """The map for a ``CLIPTextModel`` built from ``config`` (its ``num_hidden_layers`` decides what is unused)."""
    layers = config["num_hidden_layers"]

    def unused(key: str) -> bool:
        match = _RESBLOCK.fullmatch(key)
        return key in UNUSED_KEYS or (match is not None and int(match.group(1)) >= layers)

    return KeyMap("text encoder", PREFIX, _source, unused)


def _source(name: str) -> Source:
    name = name.removeprefix("text_model.")
    if name in _TOP:
        return Source(_TOP[name])
    match = _LAYER.fullmatch(name)
    if match:
        index, rest = match.groups()
        layer, _, parameter = rest.rpartition(".")
        block = f"transformer.resblocks.{index}"
        if layer in _LAYER_PARTS:
            return Source(f"{block}.{_LAYER_PARTS[layer]}.{parameter}")
        if layer in _QKV and parameter in ("weight", "bias"):
            return Source(f"{block}.attn.in_proj_{parameter}", chunk=_QKV[layer], chunks=3)
    raise UnknownKeyError(f"the OpenCLIP text tower has no place for {name}")
