"""MiDaS DPT-hybrid (``depth_model.model.*``) → transformers ``DPTForDepthEstimation`` (hybrid) names.

The original is MiDaS v3's ``DPTDepthModel(backbone="vitb_rn50_384")``: ``pretrained.model`` is timm's
``vit_base_resnet50_384`` (a ViT whose patch embedding is a ResNetV2 stem + 3 stages), ``pretrained.act_postprocess{n}``
reassembles ViT tokens, ``scratch`` holds the fusion decoder and the head. The correspondence:

- ``pretrained.model.cls_token`` / ``pos_embed`` → ``dpt.embeddings.cls_token`` / ``position_embeddings``
- ``pretrained.model.patch_embed.backbone.stem.{conv,norm}`` →
  ``dpt.embeddings.backbone.bit.embedder.{convolution,norm}``
- ``...backbone.stages.s.blocks.b.*`` → ``dpt.embeddings.backbone.bit.encoder.stages.s.layers.b.*`` (same leaf names)
- ``pretrained.model.patch_embed.proj`` → ``dpt.embeddings.projection``
- ``pretrained.model.blocks.i``: ``norm1/norm2`` → ``layernorm_before/after``, ``attn.proj`` →
  ``attention.output.dense``, ``mlp.fc1/fc2`` → ``intermediate.dense`` / ``output.dense``, and the fused
  ``attn.qkv`` (rows query, key, value) → ``attention.attention.query/key/value``
- ``pretrained.model.norm`` → ``dpt.layernorm``
- ``pretrained.act_postprocess{n+1}``: ``.0.project.0`` → ``neck.reassemble_stage.readout_projects.n.0``,
  ``.3`` → ``layers.n.projection``, ``.4`` → ``layers.n.resize`` (the hybrid only has them for n = 2, 3)
- ``scratch.layer{n+1}_rn`` → ``neck.convs.n``
- ``scratch.refinenet{4-n}`` → ``neck.fusion_stage.layers.n`` (fusion runs from the coarsest level):
  ``out_conv`` → ``projection``, ``resConfUnit{1,2}.conv{1,2}`` → ``residual_layer{1,2}.convolution{1,2}``
- ``scratch.output_conv.k`` → ``head.head.k``

``pretrained.model.head`` (timm's ImageNet classifier) is in the file and unused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import KeyMap, Source, UnknownKeyError

__all__ = ["PREFIX", "UNUSED_KEYS", "keymap"]

PREFIX = "depth_model.model."

UNUSED_KEYS = frozenset({"pretrained.model.head.weight", "pretrained.model.head.bias"})

_VIT = "pretrained.model"
_BACKBONE = f"{_VIT}.patch_embed.backbone"
_RULES: list[tuple[re.Pattern[str], Any]] = []


def _rule(pattern: str):
    def register(function):
        _RULES.append((re.compile(pattern), function))
        return function

    return register


@_rule(r"dpt\.embeddings\.cls_token")
def _cls_token(_: str) -> Source:
    return Source(f"{_VIT}.cls_token")


@_rule(r"dpt\.embeddings\.position_embeddings")
def _position(_: str) -> Source:
    return Source(f"{_VIT}.pos_embed")


@_rule(r"dpt\.embeddings\.backbone\.bit\.embedder\.(convolution|norm)\.(\w+)")
def _stem(layer: str, parameter: str) -> Source:
    return Source(f"{_BACKBONE}.stem.{'conv' if layer == 'convolution' else 'norm'}.{parameter}")


@_rule(r"dpt\.embeddings\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)")
def _stage(stage: str, block: str, rest: str) -> Source:
    return Source(f"{_BACKBONE}.stages.{stage}.blocks.{block}.{rest}")


@_rule(r"dpt\.embeddings\.projection\.(\w+)")
def _patch_projection(parameter: str) -> Source:
    return Source(f"{_VIT}.patch_embed.proj.{parameter}")


_VIT_LAYER_PARTS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_QKV = {"query": 0, "key": 1, "value": 2}


@_rule(r"dpt\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
def _vit_layer(index: str, layer: str, parameter: str) -> Source:
    block = f"{_VIT}.blocks.{index}"
    if layer in _VIT_LAYER_PARTS:
        return Source(f"{block}.{_VIT_LAYER_PARTS[layer]}.{parameter}")
    qkv = layer.removeprefix("attention.attention.")
    if qkv in _QKV:
        return Source(f"{block}.attn.qkv.{parameter}", chunk=_QKV[qkv], chunks=3)
    raise UnknownKeyError(f"the MiDaS ViT block has no place for {layer}.{parameter}")


@_rule(r"dpt\.layernorm\.(\w+)")
def _final_norm(parameter: str) -> Source:
    return Source(f"{_VIT}.norm.{parameter}")


@_rule(r"neck\.reassemble_stage\.readout_projects\.(\d+)\.0\.(\w+)")
def _readout(index: str, parameter: str) -> Source:
    return Source(f"pretrained.act_postprocess{int(index) + 1}.0.project.0.{parameter}")


@_rule(r"neck\.reassemble_stage\.layers\.(\d+)\.(projection|resize)\.(\w+)")
def _reassemble(index: str, layer: str, parameter: str) -> Source:
    position = 3 if layer == "projection" else 4
    return Source(f"pretrained.act_postprocess{int(index) + 1}.{position}.{parameter}")


@_rule(r"neck\.convs\.(\d+)\.(\w+)")
def _neck_conv(index: str, parameter: str) -> Source:
    return Source(f"scratch.layer{int(index) + 1}_rn.{parameter}")


_FUSION_PARTS = {
    "projection": "out_conv",
    "residual_layer1.convolution1": "resConfUnit1.conv1",
    "residual_layer1.convolution2": "resConfUnit1.conv2",
    "residual_layer2.convolution1": "resConfUnit2.conv1",
    "residual_layer2.convolution2": "resConfUnit2.conv2",
}


@_rule(r"neck\.fusion_stage\.layers\.(\d+)\.(.+)\.(\w+)")
def _fusion(index: str, layer: str, parameter: str) -> Source:
    if layer not in _FUSION_PARTS:
        raise UnknownKeyError(f"the MiDaS refinenet has no place for {layer}.{parameter}")
    return Source(f"scratch.refinenet{4 - int(index)}.{_FUSION_PARTS[layer]}.{parameter}")


@_rule(r"head\.head\.(\d+)\.(\w+)")
def _head(index: str, parameter: str) -> Source:
    return Source(f"scratch.output_conv.{index}.{parameter}")


def keymap(config: Mapping[str, Any] | None = None) -> KeyMap:
    """The map for a hybrid ``DPTForDepthEstimation`` (its names do not depend on the sizes in ``config``)."""
    if config is not None and not config.get("is_hybrid", False):
        raise ValueError("the MiDaS DPT-hybrid layout only maps onto a DPT config with is_hybrid: true")
    return KeyMap("depth estimator", PREFIX, _source, UNUSED_KEYS.__contains__)


def _source(name: str) -> Source:
    for pattern, function in _RULES:
        match = pattern.fullmatch(name)
        if match:
            return function(*match.groups()) if match.groups() else function(name)
    raise UnknownKeyError(f"the MiDaS DPT-hybrid layout has no place for {name}")
