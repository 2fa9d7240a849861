"""Renames for parameter names that older diffusers releases wrote.

Checkpoints converted before diffusers 0.14 name the VAE's spatial attention ``query`` / ``key`` / ``value`` /
``proj_attn``; today's layout (and our modules) call them ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0``. The
tensors are identical (1×1 projections stored as Linear weights), so a rename is all it takes. Hub snapshots of
SD2-depth from that era still carry the old names, hence this map in ``loading/`` rather than in model code.
"""

from __future__ import annotations

import torch

__all__ = ["rename_legacy_attention_keys"]

_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_legacy_attention_keys(
    state_dict: dict[str, torch.Tensor], expected_keys: set[str] | frozenset[str]
) -> dict[str, torch.Tensor]:
    """Return ``state_dict`` with legacy attention names renamed where the new name is what the model expects.

    A key is only renamed when its modern name is in ``expected_keys`` and not already present, so an
    up-to-date checkpoint passes through untouched and strict key checking still reports real mismatches.
    """
    renamed = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in _LEGACY_ATTENTION:
            modern = ".".join([*parts[:-2], _LEGACY_ATTENTION[parts[-2]], parts[-1]])
            if modern in expected_keys and modern not in state_dict:
                key = modern
        renamed[key] = tensor
    return renamed
