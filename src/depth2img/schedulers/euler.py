"""Euler sampler for the probability-flow ODE, from Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models" (2022): Algorithm 2 with its optional "churn", which with S_churn = 0 is the
plain first-order Euler step of Algorithm 1 — k-diffusion's ``sample_euler``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..utils.random import randn_tensor
from .base import SchedulerOutput
from .sigmas import (
    FINAL_SIGMAS_TYPES,
    Generator,
    KarrasSamplerMixin,
    fractional_timesteps,
    interpolate_sigmas,
    karras_sigmas,
    sigmas_to_timesteps,
    to_d,
)

__all__ = ["EulerDiscreteScheduler"]


class EulerDiscreteScheduler(KarrasSamplerMixin):
    """Euler steps in σ: x ← x + (σ_next - σ) · (x - D(x; σ)) / σ.

    Config keys (diffusers' names): ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``
    (linear / scaled_linear / squaredcos_cap_v2), ``trained_betas``, ``prediction_type`` (epsilon / v_prediction /
    sample), ``use_karras_sigmas`` (the σ schedule of Karras et al. eq. 5 instead of the training σ at evenly
    spaced timesteps), ``sigma_min`` / ``sigma_max`` (ends of that Karras schedule; default: the schedule's own),
    ``timestep_spacing`` (linspace / leading / trailing), ``steps_offset``, ``final_sigmas_type`` (zero: end
    exactly at σ = 0; sigma_min: end at the smallest training σ).
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
        use_karras_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
    ) -> None:
        self._init_noise_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type, timestep_spacing
        )
        self._check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        self._full_training_schedule()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` noise levels (and the timesteps the model is told) for sampling."""
        n = self._check_num_inference_steps(num_inference_steps)
        config = self.config
        timesteps = fractional_timesteps(n, config.num_train_timesteps, config.timestep_spacing, config.steps_offset)
        sigmas = interpolate_sigmas(timesteps, self.train_sigmas)
        if config.use_karras_sigmas:
            sigmas = karras_sigmas(*self._karras_range(sigmas), n)
            timesteps = sigmas_to_timesteps(sigmas, np.log(self.train_sigmas))
        sigma_last = self.train_sigmas[0] if config.final_sigmas_type == "sigma_min" else 0.0
        self._set_schedule(timesteps, np.concatenate([sigmas, [sigma_last]]), device)
        self.num_inference_steps = n
        self._reset_state()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One Euler step from ``timestep`` to the next noise level; returns ``prev_sample`` and the x_0 estimate.

        ``s_churn`` > 0 first raises σ to σ̂ = σ(1 + γ) by adding fresh noise (Karras Alg. 2, lines 4-6), for
        σ in [``s_tmin``, ``s_tmax``]; the noise is drawn from ``generator``.
        """
        i = self._start_step(timestep)
        self._check_step_inputs(model_output, sample)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[i]

        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        # diffusers reads an ε-prediction at σ̂ but a v-prediction at σ; mirrored so churned runs match it.
        sigma_read = sigma_hat if self.config.prediction_type == "epsilon" else sigma
        denoised = self._denoised(model_output, sample, sigma_read)
        d = to_d(sample, sigma_hat, denoised)
        dt = self.sigmas[i + 1] - sigma_hat
        prev_sample = (sample + d * dt).to(model_output.dtype)

        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)
