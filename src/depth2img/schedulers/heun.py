"""Heun's second-order sampler for the probability-flow ODE: Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models" (2022), Algorithm 1 — k-diffusion's ``sample_heun``.

Each step from σ to σ_next takes an Euler step, evaluates the model again at σ_next and repeats the step with the
average of the two slopes (the trapezoidal rule); the last step, to σ = 0, stays a plain Euler step. The diffusers
interface runs one model evaluation per ``step`` call, so the schedule lists every timestep after the first twice
and ``order`` is 2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import SchedulerOutput
from .sigmas import (
    Generator,
    KarrasSamplerMixin,
    fractional_timesteps,
    interpolate_sigmas,
    karras_sigmas,
    sigmas_to_timesteps,
    to_d,
)

__all__ = ["HeunDiscreteScheduler"]


class HeunDiscreteScheduler(KarrasSamplerMixin):
    """Heun steps in σ (two model evaluations per noise level, except the last).

    Config keys (diffusers' names): ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``
    (linear / scaled_linear / squaredcos_cap_v2), ``trained_betas``, ``prediction_type`` (epsilon / v_prediction /
    sample), ``use_karras_sigmas`` (Karras et al. eq. 5 noise levels), ``sigma_min`` / ``sigma_max`` (ends of that
    schedule), ``clip_sample`` / ``clip_sample_range`` (clamp the x_0 estimate), ``timestep_spacing`` (linspace /
    leading / trailing), ``steps_offset``.
    """

    order = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_noise_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type, timestep_spacing
        )
        self._full_training_schedule()
        self._reset_state()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` noise levels; ``timesteps`` then holds 2n - 1 entries (see ``order``)."""
        n = self._check_num_inference_steps(num_inference_steps)
        config = self.config
        timesteps = fractional_timesteps(n, config.num_train_timesteps, config.timestep_spacing, config.steps_offset)
        sigmas = interpolate_sigmas(timesteps, self.train_sigmas)
        if config.use_karras_sigmas:
            sigmas = karras_sigmas(*self._karras_range(sigmas), n)
            timesteps = sigmas_to_timesteps(sigmas, np.log(self.train_sigmas))
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        # σ_0, σ_1, σ_1, σ_2, σ_2, …, σ_{n-1}, σ_{n-1}, 0: the second of each pair is where the correction is evaluated.
        sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
        self._set_schedule(timesteps, sigmas, device)
        self.num_inference_steps = n
        self._reset_state()

    def _reset_state(self) -> None:
        super()._reset_state()
        self._first_slope: torch.Tensor | None = None  # d at σ, kept for the correction
        self._dt: torch.Tensor | None = None  # σ_next - σ
        self._sample_at_sigma: torch.Tensor | None = None  # x at σ, where the corrected step starts again

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is an Euler (predictor) step, False when it is the Heun correction."""
        return self._dt is None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """The predictor or the corrector half of a Heun step (``generator`` is accepted for a uniform interface
        and unused: the sampler is deterministic)."""
        i = self._start_step(timestep)
        self._check_step_inputs(model_output, sample)
        predictor = self.state_in_first_order
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if predictor else (self.sigmas[i - 1], self.sigmas[i])

        # The model was evaluated at σ for the predictor and at σ_next for the corrector.
        denoised = self._denoised(model_output, sample, sigma if predictor else sigma_next)
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            denoised = denoised.clamp(-limit, limit)

        if predictor:
            d = to_d(sample, sigma, denoised)
            dt = sigma_next - sigma
            self._first_slope, self._dt, self._sample_at_sigma = d, dt, sample
        else:
            d = (self._first_slope + to_d(sample, sigma_next, denoised)) / 2
            dt, sample = self._dt, self._sample_at_sigma
            self._first_slope = self._dt = self._sample_at_sigma = None
        prev_sample = sample + d * dt

        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)
