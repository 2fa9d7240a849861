"""Original (ldm / CompVis) UNet module names for our UNet's layers, for kohya LoRAs that name the UNet that way.

Most kohya files name UNet layers after diffusers (``lora_unet_down_blocks_0_attentions_0_proj_in``), but some
trainers and converted files use the original checkpoint's names (``lora_unet_input_blocks_1_1_proj_in``,
``lora_unet_middle_block_0_in_layers_2``, ``lora_unet_output_blocks_5_2_conv``, ``lora_unet_out_2``); ComfyUI and
A1111 accept both. The translation is the one the checkpoint loader already uses
(``depth2img.loading.keymaps.ldm_unet``), applied to each layer's ``.weight``.

That key map needs ``layers_per_block`` and which up levels have attention. The LoRA converter only sees the
model's layer names, and those determine both, so the layout is read from the names: a UNet whose levels differ
in depth has no original layout, and then no original name matches.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from ..loading.keymaps import UnknownKeyError, ldm_unet

__all__ = ["LDM_ROOTS", "is_ldm_name", "ldm_module_names"]

# The first part of every original UNet module name; no diffusers UNet module starts with one of these.
LDM_ROOTS = ("input_blocks", "middle_block", "output_blocks", "time_embed", "out", "label_emb")
_RESNET = re.compile(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.")
_WEIGHT = ".weight"


def is_ldm_name(name: str, separator: str = "_") -> bool:
    """True when ``name`` (a module name, parts joined by ``separator``) starts in the original UNet's tree."""
    return any(name == root or name.startswith(root + separator) for root in LDM_ROOTS)


def ldm_module_names(module_names: Collection[str]) -> dict[str, str]:
    """Original module name (dotted, e.g. ``input_blocks.1.1.proj_in``) → ours, for each of ``module_names``.

    ``module_names`` are our UNet's layer names as ``named_modules()`` spells them. Layers the original layout
    has no place for are left out; the result is empty when the UNet has no original layout at all.
    """
    layout = _layout(module_names)
    if layout is None:
        return {}
    keymap = ldm_unet.keymap(layout)
    table = {}
    for name in module_names:
        try:
            original = keymap.source(name + _WEIGHT).key
        except UnknownKeyError:
            continue
        table[original[: -len(_WEIGHT)]] = name
    return table


def _layout(module_names: Iterable[str]) -> dict[str, object] | None:
    """The part of a UNet config the ldm key map needs, read from layer names; ``None`` if there is no ldm layout."""
    depth: dict[tuple[str, int], int] = {}  # (direction, level) -> number of resnets
    attention_levels = set()
    for name in module_names:
        match = _RESNET.match(name)
        if match:
            key = (match.group(1), int(match.group(2)))
            depth[key] = max(depth.get(key, 0), int(match.group(3)) + 1)
        elif name.startswith("up_blocks.") and ".attentions." in name:
            attention_levels.add(int(name.split(".")[1]))
    down = {level: n for (direction, level), n in depth.items() if direction == "down"}
    up = {level: n for (direction, level), n in depth.items() if direction == "up"}
    if not down or not up or len(set(down.values())) != 1:
        return None
    per_block = next(iter(down.values()))
    if set(up.values()) != {per_block + 1} or sorted(up) != list(range(len(up))):
        return None  # the original layout has layers_per_block + 1 entries on every up level
    up_block_types = ["CrossAttnUpBlock2D" if level in attention_levels else "UpBlock2D" for level in range(len(up))]
    return {"layers_per_block": per_block, "up_block_types": up_block_types}
