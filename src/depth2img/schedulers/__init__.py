"""Noise schedulers: one sampling algorithm per file, sharing ``base.py``.

Classes are named as diffusers names them, so a checkpoint's ``scheduler_config.json`` ``_class_name``
resolves directly (``scheduler_class``). They are imported lazily: importing one sampler does not import
all of them. ``get_scheduler("dpm++2m-karras", config)`` builds one from a short sampler name (``registry.py``).
"""

from __future__ import annotations

from typing import Any

from .base import SchedulerMixin, SchedulerOutput
from .classes import SCHEDULER_MODULES, scheduler_class
from .registry import SCHEDULER_PRESETS, SchedulerPreset, get_scheduler, scheduler_names

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


def __getattr__(name: str) -> Any:
    if name in SCHEDULER_MODULES:
        return scheduler_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
