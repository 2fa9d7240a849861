"""The dtype and device keywords of ``Depth2ImgPipeline.from_pretrained``, in every spelling diffusers accepts.

- ``torch_dtype=torch.float16`` (or its name), or ``dtype=`` (diffusers' newer spelling; giving both with
  different values is an error, since we could only silently pick one);
- a per-component mapping, ``torch_dtype={"unet": torch.bfloat16, "default": torch.float32}``: components not
  named use ``"default"`` (float32 when there is none); names must be the pipeline's model components;
- ``device_map="cpu"`` / ``"cuda"`` / ``"cuda:1"``: the single-device forms, i.e. load then move everything
  there. diffusers' placement strategies (``"balanced"``, ``"auto"``, per-module dicts) split the models over
  devices with accelerate hooks, which our pipeline does not have; they are refused with a sentence saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..components import LARGE_MODELS
from ..utils.dtypes import resolve_dtype

__all__ = ["DTYPE_COMPONENTS", "ComponentDtypes", "resolve_device_map", "resolve_dtypes"]

# the components whose weights have a dtype (tokenizer, scheduler and feature extractor have none)
DTYPE_COMPONENTS = LARGE_MODELS  # the components whose dtype can be chosen: those with weights
_DEFAULT_KEY = "default"


@dataclass(frozen=True)
class ComponentDtypes:
    """The dtype each component is loaded in: ``per_component`` overrides ``default`` (None = the files' own)."""

    default: torch.dtype | None = None
    per_component: dict[str, torch.dtype] = field(default_factory=dict)

    def for_component(self, name: str) -> torch.dtype | None:
        return self.per_component.get(name, self.default)

    @property
    def is_uniform(self) -> bool:
        return not self.per_component


def resolve_dtypes(torch_dtype: Any = None, dtype: Any = None) -> ComponentDtypes:
    """``torch_dtype`` and/or ``dtype`` (one dtype, its name, or a per-component mapping) -> ``ComponentDtypes``."""
    if torch_dtype is not None and dtype is not None and not _same(torch_dtype, dtype):
        raise ValueError(
            f"torch_dtype={torch_dtype!r} and dtype={dtype!r} disagree; dtype is diffusers' newer name for "
            "torch_dtype, so pass only one of them"
        )
    given = dtype if dtype is not None else torch_dtype
    if isinstance(given, ComponentDtypes):
        return given
    if not isinstance(given, Mapping):
        return ComponentDtypes(default=resolve_dtype(given))
    unknown = sorted(str(key) for key in given if key != _DEFAULT_KEY and key not in DTYPE_COMPONENTS)
    if unknown:
        raise ValueError(
            f"torch_dtype names unknown component(s) {', '.join(unknown)}; the keys may be "
            f"{', '.join(DTYPE_COMPONENTS)} and {_DEFAULT_KEY!r}"
        )
    per_component = {name: resolve_dtype(value) for name, value in given.items() if name != _DEFAULT_KEY}
    return ComponentDtypes(default=resolve_dtype(given.get(_DEFAULT_KEY)), per_component=per_component)


def _same(first: Any, second: Any) -> bool:
    try:
        return resolve_dtypes(first) == resolve_dtypes(second)
    except ValueError:
        return False


def resolve_device_map(device_map: Any) -> torch.device | None:
    """``device_map`` naming one device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device`` or a
    CUDA index) -> that device; None -> None. Multi-device strategies are refused."""
    if device_map is None:
        return None
    if isinstance(device_map, torch.device):
        return device_map
    if isinstance(device_map, int) and not isinstance(device_map, bool) and device_map >= 0:
        return torch.device("cuda", device_map)
    if isinstance(device_map, str):
        try:
            return torch.device(device_map)
        except RuntimeError:
            pass
    raise ValueError(
        f"device_map={device_map!r} is not supported; depth2img places the whole pipeline on one device: pass "
        "device_map='cpu', 'cuda' or 'cuda:N' (or call pipe.to(device)); to save memory use low_memory=True "
        "instead of diffusers' multi-device maps"
    )
