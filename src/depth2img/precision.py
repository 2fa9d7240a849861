"""Which floating precision each model of a pipeline computes in, and choosing one for this machine.

``choose_precision("auto", device)`` picks, per model:

- on CUDA: float16 everywhere (as the reference's users do);
- on a CPU with bfloat16 matrix instructions (``amx_bf16``, or ``avx512_bf16``): bfloat16 for the UNet, the VAE and
  the text encoder, float32 for the depth estimator. Measured (docs/precision.md): a full-size UNet step at 512²
  takes 3.87 s in bfloat16 against 7.36 s in float32 on an AMD EPYC with avx512_bf16, and 2.0 s against 7.4 s on
  an Intel Xeon with AMX. DPT-hybrid in bfloat16 loses too much (its depth map has a PSNR of about 6 dB against
  float32), and it runs once per image, so it stays float32;
- anywhere else (no bfloat16 instructions: bfloat16 would be emulated and slower; MPS): float32.

The library's own default stays float32 (``from_pretrained`` without ``torch_dtype``): the reference-exact path.
``apply_precision(pipe, precision)`` casts a loaded (float32) pipeline's models to the chosen dtypes; the depth
estimator computes in its own dtype whatever the others use (``depth.estimate_depth``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .components import LARGE_MODELS

__all__ = [
    "BF16_CPU_FLAGS",
    "PRECISIONS",
    "Precision",
    "apply_precision",
    "choose_precision",
    "precision_from_record",
    "cpu_flags",
    "cpu_model_name",
]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# CPU flags (as /proc/cpuinfo names them) whose bfloat16 dot products make bfloat16 faster than float32 in oneDNN.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Models that stay float32 under "auto" whatever the others use, and why (see the module docstring).
FLOAT32_UNDER_AUTO = ("depth_estimator",)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: the compute dtype, the dtype of each model, and why it was chosen."""

    requested: str  # "auto" or a dtype name, as the user asked
    name: str  # the compute dtype's name: float32, bfloat16 or float16
    dtypes: Mapping[str, torch.dtype]  # one per model of LARGE_MODELS
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (the UNet's)."""
        return _DTYPES[self.name]

    @property
    def uniform(self) -> bool:
        """Whether every model uses the compute dtype (then ``from_pretrained(torch_dtype=...)`` alone does it)."""
        return all(dtype == self.dtype for dtype in self.dtypes.values())

    def record(self) -> dict[str, Any]:
        """What the PNG metadata stores: the request, the result, and each model's dtype."""
        return {
            "precision": self.requested,
            "precision_resolved": self.name,
            "model_dtypes": {model: _name(dtype) for model, dtype in self.dtypes.items()},
        }


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's feature flags as Linux names them (``avx512_bf16``, ``amx_bf16``...); empty where unknown."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return _flags_from_torch()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return _flags_from_torch()


def _flags_from_torch() -> frozenset[str]:
    """Where /proc/cpuinfo is missing (macOS, Windows): what torch's own CPU probe reports (private helpers of
    ``torch.cpu``, hence the guard)."""
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    found = set()
    for flag, probe in probes.items():
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            found.add(flag)
    return frozenset(found)


def cpu_model_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``AMD EPYC 9R14 ...``), or the platform's processor string."""
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def bf16_fast_on_cpu(flags: Iterable[str]) -> str | None:
    """The flag that makes bfloat16 faster than float32 on this CPU, or None."""
    present = set(flags)
    return next((flag for flag in BF16_CPU_FLAGS if flag in present), None)


def choose_precision(requested: str, device: torch.device | str, flags: Iterable[str] | None = None) -> Precision:
    """Resolve ``requested`` (auto, float32, bfloat16 or float16) for ``device``; ``flags`` default to this CPU's."""
    requested = requested.strip().lower()
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if requested != "auto":
        return _uniform(requested, requested, "asked for")
    if device.type == "cuda":
        return _uniform("auto", "float16", "CUDA: float16 tensor cores")
    if device.type != "cpu":
        return _uniform("auto", "float32", f"{device.type}: float32")
    flag = bf16_fast_on_cpu(cpu_flags() if flags is None else flags)
    if flag is None:
        return _uniform("auto", "float32", "CPU without bfloat16 instructions (amx_bf16, avx512_bf16): float32")
    dtypes = {model: torch.float32 if model in FLOAT32_UNDER_AUTO else torch.bfloat16 for model in LARGE_MODELS}
    return Precision("auto", "bfloat16", dtypes, f"CPU with {flag}: bfloat16, depth estimator float32")


def _uniform(requested: str, name: str, reason: str) -> Precision:
    return Precision(requested, name, dict.fromkeys(LARGE_MODELS, _DTYPES[name]), reason)


def precision_from_record(record: Mapping[str, Any]) -> Precision | None:
    """The ``Precision`` that ``Precision.record()`` wrote into ``record``, or None where it holds none.

    Raises ValueError for a record whose dtypes are not float32/bfloat16/float16 or miss a model."""
    dtypes, name = record.get("model_dtypes"), record.get("precision_resolved")
    if not isinstance(dtypes, Mapping) or name is None:
        return None
    unknown = [str(value) for value in (*dtypes.values(), name) if value not in _DTYPES]
    missing = [model for model in LARGE_MODELS if model not in dtypes]
    if unknown or missing:
        raise ValueError(f"the recorded precision is not readable (dtypes {unknown}, models missing {missing})")
    parsed = {model: _DTYPES[dtypes[model]] for model in LARGE_MODELS}
    return Precision(str(record.get("precision", name)), name, parsed, "replayed from the PNG's record")


def apply_precision(pipe: Any, precision: Precision) -> Any:
    """Cast each model of a loaded ``pipe`` to its dtype in ``precision`` (load in float32 first, so that a model
    kept in float32 has its exact weights); returns ``pipe``. Works with ``low_memory=True`` pipelines too."""
    low_memory = getattr(pipe, "low_memory", None)
    for model in LARGE_MODELS:
        module = getattr(pipe, model, None)
        if not isinstance(module, torch.nn.Module):
            continue
        dtype = precision.dtypes[model]
        weights = low_memory.weights_of(module) if low_memory is not None else None
        if weights is not None:  # a released model records the dtype it is loaded in
            weights.move(None, dtype)
        else:
            module.to(dtype=dtype)
    return pipe
