"""What every scheduler shares: the training noise schedule (betas), timestep spacing, config I/O,
input validation and the bookkeeping of where in the schedule a sampler is.

The sampling maths lives in one file per algorithm; this file holds only the pieces they have in common.
Schedulers keep the diffusers interface (``set_timesteps``, ``timesteps``, ``step``, ``add_noise``,
``scale_model_input``, ``from_config``) so they drop into code written for diffusers.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..configuration import ConfigMixin, init_parameters, load_json

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "TIMESTEP_SPACINGS",
    "SchedulerMixin",
    "SchedulerOutput",
    "broadcast_to_sample",
    "cosine_betas",
    "dynamic_threshold",
    "forward_diffuse",
    "make_betas",
    "rescale_zero_terminal_snr",
    "spaced_timesteps",
    "AlphaBarScheduler",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class SchedulerOutput:
    """Result of ``step``: the sample at the next (less noisy) timestep, and the model's x0 estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __getitem__(self, index: int) -> torch.Tensor | None:  # tuple-style access, as diffusers outputs allow
        return (self.prev_sample, self.pred_original_sample)[index]


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule, ᾱ(t) = cos²((t + s)/(1 + s) · π/2) with s = 0.008.

    Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (2021), eq. 17; each beta is
    clipped at ``max_beta`` to avoid a singularity at t = 1.
    """

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Any = None,
) -> torch.Tensor:
    """The training noise schedule β_1..β_T as float32, exactly as the diffusers schedulers compute it.

    ``scaled_linear`` is linear in √β (the schedule Stable Diffusion was trained with); ``linear`` is DDPM's
    (Ho et al. 2020); ``squaredcos_cap_v2`` is the cosine schedule above. ``trained_betas`` overrides all.
    """
    if trained_betas is not None:
        betas = torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ValueError(
                f"trained_betas must be a list of num_train_timesteps={num_train_timesteps} numbers, "
                f"got shape {tuple(betas.shape)}"
            )
        return betas
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps)
    raise ValueError(f"beta_schedule={beta_schedule!r} is not supported; choose one of {', '.join(BETA_SCHEDULES)}")


def spaced_timesteps(
    num_inference_steps: int, num_train_timesteps: int, spacing: str, steps_offset: int = 0
) -> np.ndarray:
    """Integer timesteps, descending, for the three spacings of Lin et al., "Common Diffusion Noise Schedules
    and Sample Steps are Flawed" (2023), Table 2 — as DDIM, DDPM, PNDM, DPM-Solver and UniPC space them.

    ``leading`` takes every (T // n)-th step from 0 and adds ``steps_offset``; ``trailing`` counts back from T;
    ``linspace`` spreads n points evenly over [0, T - 1] and rounds.
    """
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        step_ratio = num_train_timesteps // num_inference_steps
        timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
        return timesteps + steps_offset
    if spacing == "trailing":
        step_ratio = num_train_timesteps / num_inference_steps
        return np.round(np.arange(num_train_timesteps, 0, -step_ratio)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing={spacing!r} is not supported; choose one of {', '.join(TIMESTEP_SPACINGS)}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so the last training step has zero signal (SNR = 0), keeping the first step's value.

    Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (2023), Algorithm 1.
    """
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


# ---------------------------------------------------------------------------------------- shared sample maths
def broadcast_to_sample(values: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Reshape per-batch scalars (B,) to (B, 1, 1, …) so they broadcast against ``sample``."""
    values = values.flatten()
    return values.reshape(values.shape + (1,) * (sample.ndim - 1))


def forward_diffuse(
    original: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x_0) = √ᾱ_t x_0 + √(1 - ᾱ_t) ε for integer ``timesteps`` (one per batch item).

    Ho et al., "Denoising Diffusion Probabilistic Models" (2020), eq. 4.
    """
    alpha_bar = alphas_cumprod.to(device=original.device, dtype=original.dtype)[timesteps.to(original.device)]
    return (
        broadcast_to_sample(alpha_bar**0.5, original) * original
        + broadcast_to_sample((1 - alpha_bar) ** 0.5, original) * noise
    )


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Clamp the x_0 estimate to [-s, s] and divide by s, where s is the ``ratio`` quantile of |x_0| per
    sample, clipped to [1, ``max_value``].

    Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep Language Understanding" (Imagen,
    2022), section 2.3. Meant for pixel-space models; latent models such as Stable Diffusion do not use it.
    """
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs float32/64, and clamp has no CPU half kernel
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


class SchedulerMixin(ConfigMixin):
    """Config I/O, validation and step bookkeeping shared by all schedulers.

    Subclasses set ``self.timesteps`` in ``set_timesteps`` and use ``_init_step_index`` / ``self._step_index``
    to know where they are; ``set_begin_index`` lets image-to-image start part-way through the schedule.
    """

    config_name = "scheduler_config.json"
    order = 1
    init_noise_sigma = 1.0

    timesteps: torch.Tensor | None = None
    num_inference_steps: int | None = None

    @classmethod
    def compatible_config_keys(cls) -> frozenset[str]:
        """Every key some scheduler of this package takes: a checkpoint's scheduler config may be read by any
        of them (``EulerDiscreteScheduler.from_config(pndm.config)``), so these are not "unknown" keys."""
        return _all_scheduler_keys()

    _timestep_set: frozenset[float] = frozenset()
    _step_index: int | None = None
    _begin_index: int | None = None

    # ------------------------------------------------------------------ config I/O
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, subfolder: str | None = None, **overrides: Any):
        """Build from ``scheduler_config.json`` in a local folder (optionally its ``subfolder``)."""
        path = Path(folder) / (subfolder or "") / cls.config_name
        return cls.from_config(load_json(path), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Alias of ``save_config`` (diffusers' name for it)."""
        return self.save_config(save_directory)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(allowed)}")

    def _check_options(
        self,
        prediction_type: str,
        timestep_spacing: str,
        beta_schedule: str,
        trained_betas: Any = None,
        prediction_types: tuple[str, ...] = PREDICTION_TYPES,
    ) -> None:
        """Reject an unknown ``prediction_type`` / ``timestep_spacing`` / ``beta_schedule`` at construction."""
        self._check_choice("prediction_type", prediction_type, prediction_types)
        self._check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if trained_betas is None:  # trained_betas replaces the named schedule
            self._check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)

    def _check_num_inference_steps(self, num_inference_steps: Any) -> int:
        total = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        if not 1 <= num_inference_steps <= total:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is out of range; it must be between 1 and "
                f"num_train_timesteps={total}"
            )
        return int(num_inference_steps)

    def _require_timesteps(self, method: str = "step") -> None:
        if self.num_inference_steps is None or self.timesteps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(num_inference_steps) before {method}()")

    def _schedule_timestep(self, timestep: Any) -> int:
        """``timestep`` as a Python int, after checking it is one of ``self.timesteps`` (for samplers that index
        the training schedule by timestep rather than by step index)."""
        value = float(timestep)
        if value not in self._timestep_set:
            schedule = self.timesteps
            raise ValueError(
                f"timestep {value:g} is not in this scheduler's schedule ({len(schedule)} steps from "
                f"{float(schedule[0]):g} to {float(schedule[-1]):g}); pass one of scheduler.timesteps"
            )
        return int(value)

    def _install_timesteps(self, timesteps: np.ndarray, device: torch.device | str | None) -> None:
        """Install a new ``timesteps`` schedule and forget where the previous run was."""
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._timestep_set = frozenset(float(t) for t in self.timesteps.cpu().tolist())
        self._step_index = None
        self._begin_index = None

    def step_kwargs(self, eta: float = 0.0, generator: Any = None) -> dict[str, Any]:
        """The subset of ``eta`` / ``generator`` this scheduler's ``step`` accepts (as a pipeline passes them:
        deterministic samplers take neither, DDIM takes both, stochastic ones take ``generator``)."""
        accepted = inspect.signature(self.step).parameters
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    # ------------------------------------------------------------------ where we are in the schedule
    @property
    def step_index(self) -> int | None:
        """Index of the current timestep in ``timesteps``; None until the first ``step``."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index the sampling starts from, when set with ``set_begin_index`` (image-to-image)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start sampling at ``timesteps[begin_index]`` (image-to-image skips the first steps)."""
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule; for a repeated timestep, the second occurrence (as in
        diffusers, so a sampler that starts mid-schedule never skips a step)."""
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(schedule_timesteps.device)
        indices = (schedule_timesteps == timestep).nonzero()
        if len(indices) == 0:
            raise ValueError(
                f"timestep {float(timestep):g} is not in this scheduler's schedule "
                f"({len(schedule_timesteps)} steps from {float(schedule_timesteps[0]):g} to "
                f"{float(schedule_timesteps[-1]):g}); pass one of scheduler.timesteps"
            )
        pos = 1 if len(indices) > 1 else 0
        return int(indices[pos].item())

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class AlphaBarScheduler(SchedulerMixin):
    """Shared by the samplers that read ᾱ_t at integer training timesteps (DDPM, DDIM, PNDM): the training
    schedule, the forward process for ``add_noise``, an identity ``scale_model_input`` and ᾱ of the step after
    the last one.

    These samplers locate themselves by the ``timestep`` passed to ``step``, so ``set_begin_index`` (kept for
    a uniform interface) does not change their results.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor

    def _init_training_schedule(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: Any,
        rescale_betas_zero_snr: bool = False,
        set_alpha_to_one: bool = True,
    ) -> None:
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # ᾱ "before" timestep 0: 1 (a clean sample) or, as Stable Diffusion was set up, ᾱ_0 itself.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def alpha_bar(self, timestep: int) -> torch.Tensor:
        """ᾱ at ``timestep``; a negative timestep (past the end of the chain) gives ``final_alpha_cumprod``."""
        return self.alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model sees x_t unscaled in ᾱ-parameterised samplers."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε at each item's ``timesteps`` (the forward process, Ho et al. eq. 4)."""
        timesteps = torch.as_tensor(timesteps)
        total = len(self.alphas_cumprod)
        if timesteps.numel() and not (int(timesteps.min()) >= 0 and int(timesteps.max()) < total):
            raise ValueError(f"add_noise timesteps must lie in 0..{total - 1}, got {timesteps.tolist()}")
        return forward_diffuse(original_samples, noise, self.alphas_cumprod, timesteps)

    def _integer_timesteps(self, num_inference_steps: int) -> np.ndarray:
        config = self.config
        return spaced_timesteps(
            num_inference_steps, config.num_train_timesteps, config.timestep_spacing, config.steps_offset
        )


@functools.cache
def _all_scheduler_keys() -> frozenset[str]:
    from .classes import SCHEDULER_MODULES, scheduler_class

    return frozenset(key for name in SCHEDULER_MODULES for key in init_parameters(scheduler_class(name)))
