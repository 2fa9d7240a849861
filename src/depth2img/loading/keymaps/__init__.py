"""Name maps from original (CompVis/Stability ``ldm``) checkpoint layouts to our parameter names.

One module per source layout:

- ``ldm_unet``: ``model.diffusion_model.*`` → ``UNet2DConditionModel``
- ``ldm_vae``: ``first_stage_model.*`` → ``AutoencoderKL``
- ``open_clip``: ``cond_stage_model.model.*`` (OpenCLIP text tower) → transformers ``CLIPTextModel``
- ``midas_dpt``: ``depth_model.model.*`` (MiDaS DPT-hybrid) → transformers ``DPTForDepthEstimation``

Each module's ``keymap(config)`` returns a ``KeyMap``: for every parameter name of *our* model it tells where the
value lives in the original file (a ``Source``). Mapping in this direction means every parameter the model
needs is asked for exactly once, so a checkpoint that lacks one fails with that name; original keys that
nothing asked for must be listed as deliberately unused (``KeyMap.unused``) or the file is rejected as a
different architecture. ``convert_state_dict`` applies a map to a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..weights import InvalidWeightsError

__all__ = ["KeyMap", "Source", "UnknownKeyError", "convert_state_dict", "original_keys"]

_MAX_LISTED = 5


@dataclass(frozen=True)
class Source:
    """Where one of our parameters lives in the original checkpoint (``key`` is relative to the map's prefix).

    ``chunk``/``chunks`` select an equal slice along dim 0: fused attention projections (``in_proj_weight``,
    ``qkv.weight``) hold query, key and value stacked, ours are separate.
    """

    key: str
    chunk: int = 0
    chunks: int = 1


class UnknownKeyError(KeyError):
    """One of our parameter names has no rule in a key map (the model has a layer the layout cannot hold)."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0])


@dataclass(frozen=True)
class KeyMap:
    """A source layout: the key prefix of its component, our name → ``Source``, and the keys it leaves unused."""

    component: str  # for messages, e.g. "UNet"
    prefix: str  # e.g. "model.diffusion_model."
    source: Callable[[str], Source]  # raises UnknownKeyError for names without a rule
    unused: Callable[[str], bool]  # original keys (relative to prefix) known to be unused by our model


def original_keys(keymap: KeyMap, names: list[str] | tuple[str, ...]) -> dict[str, Source]:
    """Our parameter name → its full ``Source`` (prefix included), for every name in ``names``."""
    out = {}
    for name in names:
        source = keymap.source(name)
        out[name] = Source(keymap.prefix + source.key, source.chunk, source.chunks)
    return out


def convert_state_dict(
    checkpoint: Mapping[str, torch.Tensor],
    keymap: KeyMap,
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    source_name: str,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Our state dict for a model whose parameter shapes are ``expected``, taken from an original ``checkpoint``.

    Floating tensors are cast to ``dtype`` when given. Raises ``InvalidWeightsError`` naming ``source_name`` and
    the first few offending keys when the checkpoint lacks a tensor, a shape differs, or keys under the map's
    prefix are neither used nor known to be unused.
    """
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    fused: dict[str, torch.Tensor] = {}  # read once: q, k and v stay views of one tensor (a lazy reader copies)
    missing, wrong_shape = [], []
    for name, source in original_keys(keymap, list(expected)).items():
        if source.key not in checkpoint:
            missing.append(f"{source.key} (for {name})")
            continue
        used.add(source.key)
        if source.chunks == 1:
            tensor = checkpoint[source.key]
        else:
            if source.key not in fused:
                fused[source.key] = checkpoint[source.key]
            tensor = fused[source.key]
            if tensor.shape[0] % source.chunks:
                wrong_shape.append(f"{source.key} {tuple(tensor.shape)} cannot be split in {source.chunks}")
                continue
            tensor = tensor.chunk(source.chunks, dim=0)[source.chunk]
        fitted = _fit_pointwise(tensor, tuple(expected[name]))
        if fitted is None:
            wrong_shape.append(f"{source.key} {tuple(tensor.shape)} for {name} {tuple(expected[name])}")
            continue
        if dtype is not None and fitted.is_floating_point():
            fitted = fitted.to(dtype)
        converted[name] = fitted
    unexpected = sorted(
        key[len(keymap.prefix) :]
        for key in checkpoint
        if key.startswith(keymap.prefix) and key not in used and not keymap.unused(key[len(keymap.prefix) :])
    )
    problems = [
        f"{len(items)} {kind}: {_first(items)}"
        for kind, items in (
            ("missing tensors", missing),
            ("tensors of the wrong shape", wrong_shape),
            (f"unexpected tensors under {keymap.prefix!r}", unexpected),
        )
        if items
    ]
    if problems:
        raise InvalidWeightsError(
            f"{source_name} does not match the configured {keymap.component}: " + "; ".join(problems)
        )
    return converted


def _fit_pointwise(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """``tensor`` with ``shape``, allowing only a 1x1 convolution ⇄ linear change (trailing size-1 dims).

    The original VAE attention uses 1x1 convolutions where ours uses linear layers; SD1-style transformer
    ``proj_in``/``proj_out`` are 1x1 convolutions where SD2's are linear. Any other difference is an error.
    """
    if tuple(tensor.shape) == shape:
        return tensor
    a, b = tuple(tensor.shape), shape
    if min(len(a), len(b)) >= 2 and a[:2] == b[:2] and all(d == 1 for d in a[2:] + b[2:]):
        return tensor.reshape(shape)
    return None


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
