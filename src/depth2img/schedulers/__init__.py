"""Noise schedulers: one sampling algorithm per file, sharing ``base.py``.

Classes are named as diffusers names them, so a checkpoint's ``scheduler_config.json`` ``_class_name``
resolves directly (``scheduler_class``). They are imported lazily: importing one sampler does not import
all of them. ``get_scheduler("dpm++2m-karras", config)`` builds one from a short sampler name (``registry.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import SchedulerMixin, SchedulerOutput
from .registry import SCHEDULER_PRESETS, SchedulerPreset, get_scheduler, scheduler_names

# class name -> module (in this package) that defines it
SCHEDULER_MODULES = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
    "LMSDiscreteScheduler": "lms",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_ancestral",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpm_solver_multistep",
    "UniPCMultistepScheduler": "unipc",
}

__all__ = [
    "SCHEDULER_MODULES",
    "SCHEDULER_PRESETS",
    "SchedulerMixin",
    "SchedulerOutput",
    "SchedulerPreset",
    "get_scheduler",
    "scheduler_class",
    "scheduler_names",
    *SCHEDULER_MODULES,
]


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """The scheduler class called ``name`` (a diffusers ``_class_name``), with a clear error if unknown."""
    if name not in SCHEDULER_MODULES:
        raise ValueError(f"unknown scheduler class {name!r}; available: {', '.join(SCHEDULER_MODULES)}")
    module = importlib.import_module(f".{SCHEDULER_MODULES[name]}", __name__)
    return getattr(module, name)


def __getattr__(name: str) -> Any:
    if name in SCHEDULER_MODULES:
        return scheduler_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
