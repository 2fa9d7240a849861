"""Short sampler names, as A1111 and ComfyUI users know them, mapped to a scheduler class plus options.

``get_scheduler("dpm++2m-karras", pipe.scheduler.config)`` builds ``DPMSolverMultistepScheduler`` with
``use_karras_sigmas=True`` on the checkpoint's training schedule (betas, ``num_train_timesteps``,
``steps_offset``, ``prediction_type``). Names are matched case-insensitively, ignoring ``-``, ``_``, spaces
and dots, with ``++`` read as ``pp``: "DPM++ 2M Karras", "dpmpp_2m_karras" and "dpm++2m-karras" are one name.
A diffusers class name ("EulerDiscreteScheduler") is accepted too, with no options.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..configuration import explicit_config

__all__ = ["SCHEDULER_PRESETS", "SchedulerPreset", "get_scheduler", "resolve_scheduler_name", "scheduler_names"]


@dataclass(frozen=True)
class SchedulerPreset:
    """One named sampler: the class that runs it and the options that make it that sampler."""

    name: str
    class_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""  # A1111's name for it (ComfyUI's names are the short names with "_" and "dpmpp")
    aliases: tuple[str, ...] = ()


_KARRAS = {"use_karras_sigmas": True}
_NO_KARRAS = {"use_karras_sigmas": False}  # explicit, so a Karras base config does not leak into plain names
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

SCHEDULER_PRESETS: tuple[SchedulerPreset, ...] = (
    SchedulerPreset("pndm", "PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
    SchedulerPreset("pndm-prk", "PNDMScheduler", {"skip_prk_steps": False}),
    SchedulerPreset("ddim", "DDIMScheduler", {}, "DDIM"),
    SchedulerPreset("ddpm", "DDPMScheduler", {}, "DDPM"),
    SchedulerPreset("lms", "LMSDiscreteScheduler", _NO_KARRAS, "LMS", ("k_lms",)),
    SchedulerPreset("lms-karras", "LMSDiscreteScheduler", _KARRAS, "LMS Karras"),
    SchedulerPreset("euler", "EulerDiscreteScheduler", _NO_KARRAS, "Euler", ("k_euler",)),
    SchedulerPreset("euler-karras", "EulerDiscreteScheduler", _KARRAS, "Euler Karras"),
    SchedulerPreset("euler-a", "EulerAncestralDiscreteScheduler", {}, "Euler a", ("euler-ancestral", "k_euler_a")),
    SchedulerPreset("heun", "HeunDiscreteScheduler", _NO_KARRAS, "Heun", ("k_heun",)),
    SchedulerPreset("heun-karras", "HeunDiscreteScheduler", _KARRAS, "Heun Karras"),
    SchedulerPreset(
        "dpm++1m", "DPMSolverMultistepScheduler", {**_DPMPP_2M, "solver_order": 1, **_NO_KARRAS}, "DPM++ 1M"
    ),
    SchedulerPreset("dpm++2m", "DPMSolverMultistepScheduler", {**_DPMPP_2M, **_NO_KARRAS}, "DPM++ 2M"),
    SchedulerPreset("dpm++2m-karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M, **_KARRAS}, "DPM++ 2M Karras"),
    SchedulerPreset("dpm++2m-sde", "DPMSolverMultistepScheduler", {**_DPMPP_2M_SDE, **_NO_KARRAS}, "DPM++ 2M SDE"),
    SchedulerPreset(
        "dpm++2m-sde-karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M_SDE, **_KARRAS}, "DPM++ 2M SDE Karras"
    ),
    SchedulerPreset("unipc", "UniPCMultistepScheduler", _NO_KARRAS, "UniPC"),
    SchedulerPreset("unipc-karras", "UniPCMultistepScheduler", _KARRAS, "UniPC Karras"),
)


def _normalise(name: str) -> str:
    key = name.strip().lower().replace("++", "pp")
    for separator in ("-", "_", " ", "."):
        key = key.replace(separator, "")
    return key


def _lookup() -> dict[str, SchedulerPreset]:
    from .classes import SCHEDULER_MODULES

    table: dict[str, SchedulerPreset] = {}
    for class_name in SCHEDULER_MODULES:  # a bare class name: the class with its own defaults
        table[_normalise(class_name)] = SchedulerPreset(class_name, class_name)
    for preset in SCHEDULER_PRESETS:
        for key in (preset.name, preset.label, *preset.aliases):
            if key:
                table[_normalise(key)] = preset
    return table


def scheduler_names() -> list[str]:
    """The short names ``get_scheduler`` knows, in table order (aliases and class names not included)."""
    return [preset.name for preset in SCHEDULER_PRESETS]


def resolve_scheduler_name(name: str) -> SchedulerPreset:
    """The preset called ``name`` (short name, alias, A1111/ComfyUI label or diffusers class name)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"scheduler name must be a non-empty string, got {name!r}")
    preset = _lookup().get(_normalise(name))
    if preset is None:
        raise ValueError(
            f"unknown scheduler {name!r}; choose one of {', '.join(scheduler_names())} (or a class name such as "
            "DDIMScheduler)"
        )
    return preset


def get_scheduler(name: str, base_config: Mapping[str, Any] | Any = None, **overrides: Any):
    """Build the scheduler called ``name`` on ``base_config`` (usually the checkpoint's scheduler config).

    The base config's keys that the target class also takes (the training betas, ``num_train_timesteps``,
    ``steps_offset``, ``prediction_type``, …) are kept; the others are dropped silently, since they belong to
    the checkpoint's own scheduler class, and so are values the base scheduler only took from its defaults.
    The preset's options, then ``overrides``, are applied on top.
    ``base_config`` may also be a scheduler (its ``.config`` is used).
    """
    from .classes import scheduler_class

    preset = resolve_scheduler_name(name)
    cls = scheduler_class(preset.class_name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(f"{preset.class_name} does not take option(s) {', '.join(unknown)}")
    if base_config is not None and not isinstance(base_config, Mapping):
        base_config = getattr(base_config, "config", None)
        if not isinstance(base_config, Mapping):
            raise TypeError("base_config must be a scheduler config mapping or a scheduler")
    # Keys the base object only took from its class defaults are not the checkpoint's choice: leave them out
    # so the target class uses its own defaults, as diffusers' from_config does (explicit_config).
    config = {key: value for key, value in explicit_config(base_config).items() if key in accepted}
    config.update(preset.options)
    config.update(overrides)
    return cls.from_config(config)
