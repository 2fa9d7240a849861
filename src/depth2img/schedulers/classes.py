"""Which module of this package defines each scheduler class, and the class for a diffusers ``_class_name``.

Its own module (not the package's ``__init__``), so ``base`` and ``registry`` can use it without importing their
own package back. It imports no scheduler: each is imported when first asked for.
"""

from __future__ import annotations

import importlib

__all__ = ["SCHEDULER_MODULES", "scheduler_class"]

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


def scheduler_class(name: str) -> type:
    """The scheduler class called ``name`` (a diffusers ``_class_name``), with a clear error if unknown."""
    if name not in SCHEDULER_MODULES:
        raise ValueError(f"unknown scheduler class {name!r}; available: {', '.join(SCHEDULER_MODULES)}")
    module = importlib.import_module(f".{SCHEDULER_MODULES[name]}", __package__)
    return getattr(module, name)
