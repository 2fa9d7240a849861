"""LoRA file layouts → one form: ``{component: {module name: LoRAWeights}}``.

Three layouts are read; each names, for one ``nn.Linear`` / ``nn.Conv2d`` of the UNet or the text encoder, a
*down* matrix A (rank × in) and an *up* matrix B (out × rank), so that the layer computes ``W x + s · B A x``:

- **diffusers / peft** (what diffusers' ``save_lora_weights`` writes): ``unet.<module>.lora_A.weight`` and
  ``.lora_B.weight``, ``text_encoder.<module>...``. The file carries no alpha: ``s = 1`` (diffusers' convention,
  alpha = rank), unless its safetensors header holds diffusers' ``lora_adapter_metadata`` (a peft ``LoraConfig``
  per component: ``lora_alpha``, ``alpha_pattern``, ``use_rslora``), which we honour.
- **older diffusers** (attention-processor era): ``unet.<...>.attn1.processor.to_q_lora.down.weight``,
  ``...lora.up.weight``, ``...lora_linear_layer.down.weight``; ``to_out_lora`` is ``to_out.0`` in the UNet and
  ``out_proj`` in the text encoder. Files without any component prefix are UNet-only.
- **kohya / A1111** (``lora_unet_<module with _ for .>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``;
  ``lora_te_text_model_encoder_layers_0_self_attn_q_proj...`` for the text encoder, SD2 included): ``s = alpha /
  rank`` (1 when ``.alpha`` is absent). Module names contain underscores themselves, so names are resolved by
  looking them up among the model's own module names rather than by string surgery. UNet layers are named
  either after diffusers (``lora_unet_down_blocks_0_...``) or after the original ldm checkpoint
  (``lora_unet_input_blocks_1_1_proj_in``, ``lora_unet_output_blocks_2_1_conv``, see ``ldm_lora_names``); a file
  uses one naming, detected per file.

Text-encoder names are compared without transformers' ``text_model.`` prefix, which transformers 5 removed from
``CLIPTextModel``'s module tree but files written with transformers 4 (and all kohya files) still carry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .ldm_lora_names import is_ldm_name, ldm_module_names

__all__ = [
    "COMPONENTS",
    "LoRAWeights",
    "convert_lora_state_dict",
    "is_kohya_layout",
    "lora_weights_to_peft_state_dict",
    "unpack_adapter_metadata",
]

COMPONENTS = ("unet", "text_encoder")
TEXT_MODEL_PREFIX = "text_model."
_KOHYA_UNET = "lora_unet_"
_KOHYA_PREFIXES = {_KOHYA_UNET: "unet", "lora_te_": "text_encoder"}
_MAX_LISTED = 5


@dataclass(frozen=True)
class LoRAWeights:
    """One layer's low-rank update ``scale · up @ down``, as read from a file."""

    down: torch.Tensor  # A: (rank, in_features) or (rank, in_channels, kh, kw)
    up: torch.Tensor  # B: (out_features, rank) or (out_channels, rank, 1, 1)
    scale: float = 1.0  # alpha / rank (alpha / sqrt(rank) for rsLoRA); 1.0 when the file gives no alpha

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def convert_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    module_names: Mapping[str, Collection[str]],
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, LoRAWeights]]:
    """Map a LoRA state dict of any supported layout onto the modules of our models.

    ``module_names`` gives, per component (``"unet"``, ``"text_encoder"``), the names of the layers LoRA may
    target, as ``named_modules()`` spells them. ``metadata`` is diffusers' adapter metadata (``unet.lora_alpha``
    ...; see ``unpack_adapter_metadata``). Returns ``{component: {module name: LoRAWeights}}`` for the components
    the file touches. Raises ``ValueError`` for unsupported variants (DoRA, LoHa/LoKr, SDXL) and for names that
    match no module.
    """
    _reject_unsupported(state_dict)
    if is_kohya_layout(state_dict):
        return _from_kohya(state_dict, module_names)
    return _from_diffusers(state_dict, module_names, unpack_adapter_metadata(metadata))


def is_kohya_layout(state_dict: Mapping[str, Any]) -> bool:
    """True for kohya / A1111 files (every key starts with ``lora_unet_`` or ``lora_te_``)."""
    return bool(state_dict) and all(key.startswith(tuple(_KOHYA_PREFIXES)) for key in state_dict)


def unpack_adapter_metadata(metadata: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"unet.lora_alpha": 8, ...}`` (diffusers' packing) → ``{"unet": {"lora_alpha": 8, ...}}``."""
    unpacked: dict[str, dict[str, Any]] = {}
    for key, value in (metadata or {}).items():
        component, _, field = key.partition(".")
        if component in COMPONENTS and field:
            unpacked.setdefault(component, {})[field] = value
    return unpacked


def lora_weights_to_peft_state_dict(weights: Mapping[str, LoRAWeights]) -> dict[str, torch.Tensor]:
    """``{module: LoRAWeights}`` → ``{module.lora_A.weight, module.lora_B.weight}`` in diffusers' convention.

    That layout has no alpha (diffusers reads it as alpha = rank), so each layer's scale is folded into
    ``lora_B``: a file written from it gives the same layer outputs in diffusers and here.
    """
    state_dict: dict[str, torch.Tensor] = {}
    for name, lora in weights.items():
        state_dict[f"{name}.lora_A.weight"] = lora.down
        state_dict[f"{name}.lora_B.weight"] = lora.up if lora.scale == 1.0 else lora.up * lora.scale
    return state_dict


# ---------------------------------------------------------------------------------------------------------------
# Unsupported variants: say what the file is instead of failing on a key name.


def _reject_unsupported(state_dict: Mapping[str, Any]) -> None:
    if not state_dict:
        raise ValueError("the LoRA state dict is empty")
    keys = list(state_dict)
    if any("dora_scale" in k or "lora_magnitude_vector" in k for k in keys):
        raise ValueError(
            "this is a DoRA file (it has dora_scale / lora_magnitude_vector weights); only LoRA is supported"
        )
    if any(re.search(r"\.(hada_|lokr_|oft_)", k) for k in keys):
        raise ValueError(
            "this is a LyCORIS LoHa/LoKr/OFT file; only LoRA (lora_down/lora_up or lora_A/lora_B) is supported"
        )
    if any(".lora_mid." in k for k in keys):
        raise ValueError("this LoCon file uses CP-decomposed convolutions (lora_mid weights), which are not supported")
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys) or any(
        k.startswith("text_encoder_2.") for k in keys
    ):
        raise ValueError("this LoRA is for SDXL (it has a second text encoder); SD2-depth cannot use it")
    biased = [k for k in keys if re.search(r"\.lora_B(\.[^.]+)?\.bias$", k)]
    if biased:
        raise ValueError(f"LoRA with a bias on lora_B is not supported (e.g. {biased[0]})")


# ---------------------------------------------------------------------------------------------------------------
# kohya / A1111


def _from_kohya(
    state_dict: Mapping[str, torch.Tensor], module_names: Mapping[str, Collection[str]]
) -> dict[str, dict[str, LoRAWeights]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        lora_name, _, part = key.partition(".")
        groups.setdefault(lora_name, {})[part] = tensor
    ldm_names = _uses_ldm_unet_names(groups)
    lookup: dict[str, tuple[str, str]] = {}
    for component, names in module_names.items():
        if component == "unet" and ldm_names:
            table = ldm_module_names(names)
            lookup.update({_KOHYA_UNET + ldm.replace(".", "_"): (component, ours) for ldm, ours in table.items()})
        else:
            lookup.update({_kohya_name(component, name): (component, name) for name in names})
    converted: dict[str, dict[str, LoRAWeights]] = {}
    unknown = []
    for lora_name, parts in groups.items():
        extra = set(parts) - {"lora_down.weight", "lora_up.weight", "alpha"}
        if extra or "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise ValueError(
                f"kohya LoRA entry {lora_name!r} must have lora_down.weight, lora_up.weight and optionally alpha; "
                f"found {sorted(parts)}"
            )
        if lora_name not in lookup:
            unknown.append(lora_name)
            continue
        component, module = lookup[lora_name]
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        rank = down.shape[0]
        alpha = float(parts["alpha"].item()) if "alpha" in parts else float(rank)
        converted.setdefault(component, {})[module] = LoRAWeights(down, up, alpha / rank)
    if unknown:
        raise ValueError(
            f"{len(unknown)} kohya LoRA entries match no layer of this model (is the LoRA for another base model?"
            + ("; its UNet names were read as original ldm names" if ldm_names else "")
            + "): "
            + _listed(unknown)
        )
    return converted


def _uses_ldm_unet_names(lora_names: Collection[str]) -> bool:
    """Whether the file names UNet layers as the original checkpoint does; a file uses one naming throughout."""
    unet_names = [name[len(_KOHYA_UNET) :] for name in lora_names if name.startswith(_KOHYA_UNET)]
    ldm = [name for name in unet_names if is_ldm_name(name)]
    if ldm and len(ldm) < len(unet_names):
        other = next(name for name in unet_names if not is_ldm_name(name))
        raise ValueError(
            f"this kohya LoRA mixes original (ldm) UNet layer names such as {_KOHYA_UNET + ldm[0]!r} with diffusers "
            f"names such as {_KOHYA_UNET + other!r}; a file must use one naming"
        )
    return bool(ldm)


def _kohya_name(component: str, module_name: str) -> str:
    if component == "text_encoder":
        # kohya names the text encoder's layers as transformers 4 did: text_model.encoder.layers...
        module_name = TEXT_MODEL_PREFIX + _strip_text_model(module_name)
        return "lora_te_" + module_name.replace(".", "_")
    return _KOHYA_UNET + module_name.replace(".", "_")


# ---------------------------------------------------------------------------------------------------------------
# diffusers / peft, and the older diffusers layouts

# (suffix in the file, which matrix, text to put back in place of the suffix for UNet / text encoder)
_DIFFUSERS_SUFFIXES = (
    (".lora_A.weight", "down", "", ""),
    (".lora_B.weight", "up", "", ""),
    (".lora_linear_layer.down.weight", "down", "", ""),
    (".lora_linear_layer.up.weight", "up", "", ""),
    (".lora.down.weight", "down", "", ""),
    (".lora.up.weight", "up", "", ""),
    (".to_q_lora.down.weight", "down", ".to_q", ".q_proj"),
    (".to_q_lora.up.weight", "up", ".to_q", ".q_proj"),
    (".to_k_lora.down.weight", "down", ".to_k", ".k_proj"),
    (".to_k_lora.up.weight", "up", ".to_k", ".k_proj"),
    (".to_v_lora.down.weight", "down", ".to_v", ".v_proj"),
    (".to_v_lora.up.weight", "up", ".to_v", ".v_proj"),
    (".to_out_lora.down.weight", "down", ".to_out.0", ".out_proj"),
    (".to_out_lora.up.weight", "up", ".to_out.0", ".out_proj"),
)


def _from_diffusers(
    state_dict: Mapping[str, torch.Tensor],
    module_names: Mapping[str, Collection[str]],
    configs: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, LoRAWeights]]:
    has_prefix = any(key.startswith(tuple(f"{c}." for c in COMPONENTS)) for key in state_dict)
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (component, module name in the file) -> down/up
    for key, tensor in state_dict.items():
        component, rest = _split_component(key) if has_prefix else ("unet", key)
        if component is None:
            raise ValueError(f"LoRA key {key!r} belongs to neither the unet nor the text_encoder")
        module, which = _diffusers_module(rest, component)
        if module is None:
            raise ValueError(f"unrecognised LoRA key {key!r} (expected <module>.lora_A.weight / .lora_B.weight)")
        pairs.setdefault((component, module), {})[which] = tensor

    lookups = {component: _name_lookup(component, names) for component, names in module_names.items()}
    converted: dict[str, dict[str, LoRAWeights]] = {}
    unknown = []
    for (component, file_module), matrices in pairs.items():
        if set(matrices) != {"down", "up"}:
            missing = "lora_B (up)" if "up" not in matrices else "lora_A (down)"
            raise ValueError(f"LoRA for {component}.{file_module} has no {missing} weight")
        module = lookups.get(component, {}).get(_canonical(component, file_module))
        if module is None:
            unknown.append(f"{component}.{file_module}")
            continue
        down, up = matrices["down"], matrices["up"]
        scale = _scale_from_config(configs.get(component), file_module, down.shape[0])
        converted.setdefault(component, {})[module] = LoRAWeights(down, up, scale)
    if unknown:
        raise ValueError(
            f"{len(unknown)} LoRA layers match no layer of this model (is the LoRA for another base model?): "
            + _listed(unknown)
        )
    return converted


def _split_component(key: str) -> tuple[str | None, str]:
    for component in COMPONENTS:
        if key.startswith(component + "."):
            return component, key[len(component) + 1 :]
    return None, key


def _diffusers_module(rest: str, component: str) -> tuple[str | None, str]:
    rest = rest.replace(".processor.", ".")  # attention-processor era: attn1.processor.to_q_lora -> attn1.to_q
    for suffix, which, unet_name, text_name in _DIFFUSERS_SUFFIXES:
        if rest.endswith(suffix):
            return rest[: -len(suffix)] + (text_name if component == "text_encoder" else unet_name), which
    return None, ""


def _scale_from_config(config: Mapping[str, Any] | None, module: str, rank: int) -> float:
    """peft's scaling for one layer: alpha / rank (alpha / sqrt(rank) with rsLoRA); 1 without a config."""
    if not config:
        return 1.0
    alpha = config.get("lora_alpha", rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):  # peft's own matching rule (peft.utils.other.get_pattern_key)
            alpha = value
            break
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _strip_text_model(name: str) -> str:
    return name[len(TEXT_MODEL_PREFIX) :] if name.startswith(TEXT_MODEL_PREFIX) else name


def _canonical(component: str, name: str) -> str:
    return _strip_text_model(name) if component == "text_encoder" else name


def _name_lookup(component: str, names: Collection[str]) -> dict[str, str]:
    return {_canonical(component, name): name for name in names}


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
