"""Euler ancestral sampler: k-diffusion's ``sample_euler_ancestral`` (Katherine Crowson), the sampler A1111 calls
"Euler a". Each step takes a deterministic Euler step down to σ_down and then adds fresh noise of size σ_up, so
that the sample lands at σ_next with σ_down² + σ_up² = σ_next² — ancestral sampling of the DDPM posterior
(Ho et al. 2020) written in the σ form of Karras et al. 2022."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..utils.random import randn_tensor
from .base import SchedulerOutput
from .sigmas import (
    Generator,
    KarrasSamplerMixin,
    fractional_timesteps,
    interpolate_sigmas,
    to_d,
)

__all__ = ["EulerAncestralDiscreteScheduler", "ancestral_step"]


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_down, σ_up) for a step from σ_from to σ_to (k-diffusion's ``get_ancestral_step`` with η = 1):
    σ_up = √(σ_to² (σ_from² - σ_to²) / σ_from²), σ_down = √(σ_to² - σ_up²)."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


class EulerAncestralDiscreteScheduler(KarrasSamplerMixin):
    """Euler ancestral: x ← x + (σ_down - σ) · (x - D(x; σ)) / σ + σ_up · z, z ~ N(0, I) from ``generator``.

    Config keys (diffusers' names): ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``
    (linear / scaled_linear / squaredcos_cap_v2), ``trained_betas``, ``prediction_type`` (epsilon / v_prediction /
    sample — diffusers lacks ``sample`` here; it is the plain x_0 = model output), ``timestep_spacing``
    (linspace / leading / trailing), ``steps_offset``.
    """

    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_noise_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type, timestep_spacing
        )
        self._full_training_schedule()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` timesteps and their training noise levels, ending at σ = 0."""
        n = self._check_num_inference_steps(num_inference_steps)
        config = self.config
        timesteps = fractional_timesteps(n, config.num_train_timesteps, config.timestep_spacing, config.steps_offset)
        sigmas = interpolate_sigmas(timesteps, self.train_sigmas)
        self._set_schedule(timesteps, np.concatenate([sigmas, [0.0]]), device)
        self.num_inference_steps = n
        self._reset_state()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One ancestral step; the fresh noise comes from ``generator`` (drawn every step, even the last, whose
        σ_up is 0, so a seed consumes the generator exactly as diffusers does)."""
        i = self._start_step(timestep)
        self._check_step_inputs(model_output, sample)
        sigma = self.sigmas[i]
        sample = sample.to(torch.float32)
        denoised = self._denoised(model_output, sample, sigma)

        sigma_down, sigma_up = ancestral_step(sigma, self.sigmas[i + 1])
        d = to_d(sample, sigma, denoised)
        prev_sample = sample + d * (sigma_down - sigma)
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)

        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)
