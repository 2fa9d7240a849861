"""Multistep DPM-Solver++ (the "DPM++ 2M" of A1111 / k-diffusion) and its relatives.

- ``dpmsolver++``: Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
  (2022), Algorithm 2 (multistep second order, "2M") with the first-order step DPM-Solver++1 (eq. 8 with the data
  prediction — DDIM in λ) and the third-order multistep extension of its Appendix.
- ``sde-dpmsolver++``: the stochastic variant of the same paper (k-diffusion's ``sample_dpmpp_2m_sde``): each step
  keeps e^{-h} of the current noise and adds fresh noise σ_t √(1 - e^{-2h}) · z from the generator.
- ``dpmsolver``: the noise-prediction multistep DPM-Solver of Lu et al., "DPM-Solver: A Fast ODE Solver for
  Diffusion Probabilistic Model Sampling in Around 10 Steps" (2022).

All of them integrate the diffusion ODE exactly in its linear part, over the half log-SNR λ = log(α_t / σ_t),
and approximate the model term by a polynomial in λ through the last ``solver_order`` model outputs; h is the
step in λ. Samples stay in the VP form x_t = α_t x_0 + σ_t ε, so the model input needs no scaling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..configuration import explicit_config
from ..utils.random import randn_tensor
from .base import SchedulerOutput
from .sigmas import (
    FINAL_SIGMAS_TYPES,
    Generator,
    SigmaSchedulerMixin,
    half_log_snr,
    interpolate_sigmas,
    karras_sigmas,
    model_output_to_data,
    model_output_to_noise,
    multistep_timesteps,
    sigmas_to_timesteps,
    vp_coefficients,
)

__all__ = ["DPMSolverMultistepScheduler"]

ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")
# Sibling solvers' values that diffusers maps onto this scheduler's when a config is switched over with from_config.
_FROM_SIBLING_CONFIG = {
    "algorithm_type": {"deis": "dpmsolver++"},
    "solver_type": dict.fromkeys(("logrho", "bh1", "bh2"), "midpoint"),
}


class DPMSolverMultistepScheduler(SigmaSchedulerMixin):
    """DPM-Solver(++) multistep sampler, one model evaluation per step.

    Config keys (diffusers' names): ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``
    (linear / scaled_linear / squaredcos_cap_v2), ``trained_betas``, ``solver_order`` (1-3; 2 is "2M"),
    ``prediction_type`` (epsilon / v_prediction / sample), ``algorithm_type`` (dpmsolver++ / sde-dpmsolver++ /
    dpmsolver), ``solver_type`` (midpoint / heun: how the second-order term is weighted), ``lower_order_final``
    (use lower orders for the last steps of short schedules, < 15 steps), ``euler_at_final`` (always make the
    last step first order), ``use_karras_sigmas`` (Karras et al. 2022 eq. 5 noise levels), ``sigma_min`` /
    ``sigma_max`` (ends of that schedule), ``final_sigmas_type`` (zero / sigma_min: the level the last step
    reaches), ``lambda_min_clipped`` (skip the noisiest timesteps, where λ is below this), ``timestep_spacing``
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
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_noise_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type, timestep_spacing
        )
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order={solver_order!r} is not supported; choose 1, 2 or 3")
        self._check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
        self._check_choice("solver_type", solver_type, SOLVER_TYPES)
        self._check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if algorithm_type == "dpmsolver" and final_sigmas_type == "zero":
            raise ValueError(
                "final_sigmas_type='zero' needs a data-prediction solver; with algorithm_type='dpmsolver' "
                "use final_sigmas_type='sigma_min'"
            )
        self._history_length = solver_order
        self._reset_state()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **overrides: Any):
        """Build from a config mapping plus overrides. A DEIS or UniPC config's ``algorithm_type``/``solver_type``
        become this solver's nearest equivalents (as diffusers does), so switching schedulers with
        ``from_config(pipe.scheduler.config)`` works; explicit overrides are taken as given."""
        config = explicit_config(config)
        for key, mapping in _FROM_SIBLING_CONFIG.items():
            if config.get(key) in mapping:
                config[key] = mapping[config[key]]
        return super().from_config(config, **overrides)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` integer timesteps and their noise levels, and clear the solver history."""
        n = self._check_num_inference_steps(num_inference_steps)
        config = self.config
        total = config.num_train_timesteps
        lambdas = torch.log(torch.sqrt(self.alphas_cumprod)) - torch.log(torch.sqrt(1 - self.alphas_cumprod))
        clipped = int(torch.searchsorted(torch.flip(lambdas, [0]), config.lambda_min_clipped))
        timesteps = multistep_timesteps(n, total, config.timestep_spacing, config.steps_offset, total - clipped)
        if config.use_karras_sigmas:
            sigmas = karras_sigmas(*self._karras_range(self.train_sigmas[::-1]), n)
            timesteps = sigmas_to_timesteps(sigmas, np.log(self.train_sigmas))
            if config.beta_schedule != "squaredcos_cap_v2":  # as diffusers: cosine keeps fractions, truncated below
                timesteps = timesteps.round()
        else:
            sigmas = interpolate_sigmas(timesteps, self.train_sigmas)
        sigma_last = self.train_sigmas[0] if config.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [sigma_last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_state()

    def _reset_state(self) -> None:
        super()._reset_state()
        self.model_outputs: list[torch.Tensor | None] = [None] * self._history_length  # oldest first
        self.lower_order_nums = 0  # how many earlier outputs the multistep formulas may use so far

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The sample unchanged: DPM-Solver works in the VP form the model was trained on."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """x_t = α_t x_0 + σ_t ε at ``timesteps`` (image-to-image start)."""
        alpha_t, sigma_t = vp_coefficients(self._sigmas_for_noise(timesteps, original_samples))
        return alpha_t * original_samples + sigma_t * noise

    def _coefficients(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(α, σ, λ) at ``self.sigmas[index]``."""
        alpha, sigma = vp_coefficients(self.sigmas[index])
        return alpha, sigma, half_log_snr(alpha, sigma)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One multistep update to the next timestep. The SDE variant draws its noise from ``generator`` (or takes
        ``variance_noise``); the ODE variants ignore both."""
        i = self._start_step(timestep)
        self._check_step_inputs(model_output, sample)
        config = self.config
        num_steps = len(self.timesteps)
        short_schedule = config.lower_order_final and num_steps < 15
        final_first_order = i == num_steps - 1 and (
            config.euler_at_final or short_schedule or config.final_sigmas_type == "zero"
        )
        final_second_order = i == num_steps - 2 and short_schedule

        alpha_s, sigma_s = vp_coefficients(self.sigmas[i])
        if config.algorithm_type == "dpmsolver":
            converted = model_output_to_noise(model_output, sample, alpha_s, sigma_s, config.prediction_type)
        else:
            converted = model_output_to_data(model_output, sample, alpha_s, sigma_s, config.prediction_type)
        self.model_outputs = [*self.model_outputs[1:], converted]

        sample = sample.to(torch.float32)
        noise = None
        if config.algorithm_type == "sde-dpmsolver++":
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator, model_output.device, torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)

        if self.sigmas[i + 1] == self.sigmas[i]:
            # A zero-length step (Karras σ_min followed by final_sigmas_type="sigma_min"): every update is the
            # identity in the limit h → 0, but the heun and third-order weights evaluate 0/0 (NaN in diffusers).
            prev_sample = sample
        elif config.solver_order == 1 or self.lower_order_nums < 1 or final_first_order:
            prev_sample = self._first_order_update(sample, converted, noise)
        elif config.solver_order == 2 or self.lower_order_nums < 2 or final_second_order:
            prev_sample = self._second_order_update(sample, noise)
        else:
            prev_sample = self._third_order_update(sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, config.solver_order)

        self._step_index += 1
        return self._output(prev_sample.to(model_output.dtype), None, return_dict)

    # ------------------------------------------------------------------------------------------- the updates
    def _first_order_update(self, x: torch.Tensor, m0: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """DPM-Solver-1 from s to t (DDIM, in λ): exact for a model output constant over the step."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._coefficients(i + 1)
        alpha_s, sigma_s, lambda_s = self._coefficients(i)
        h = lambda_t - lambda_s
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":  # x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂_0
            return sigma_t / sigma_s * x - alpha_t * (torch.exp(-h) - 1.0) * m0
        if algorithm == "dpmsolver":  # x_t = (α_t/α_s) x_s - σ_t (e^{h} - 1) ε̂
            return alpha_t / alpha_s * x - sigma_t * (torch.exp(h) - 1.0) * m0
        # SDE: x_t = (σ_t/σ_s) e^{-h} x_s + α_t (1 - e^{-2h}) x̂_0 + σ_t √(1 - e^{-2h}) z
        return (
            sigma_t / sigma_s * torch.exp(-h) * x
            + alpha_t * (1 - torch.exp(-2.0 * h)) * m0
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )

    def _second_order_update(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Multistep second order (DPM-Solver++(2M), Algorithm 2): D1 = (m0 - m1) / r0 estimates the derivative of
        the model output in λ from the previous step, r0 = h_{prev} / h."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._coefficients(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._coefficients(i)
        _, _, lambda_s1 = self._coefficients(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, 1.0 / r0 * (m0 - m1)
        algorithm, midpoint = self.config.algorithm_type, self.config.solver_type == "midpoint"
        if algorithm == "dpmsolver++":
            phi_1 = alpha_t * (torch.exp(-h) - 1.0)
            x_t = sigma_t / sigma_s0 * x - phi_1 * d0
            if midpoint:
                return x_t - 0.5 * phi_1 * d1
            return x_t + alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1
        if algorithm == "dpmsolver":
            phi_1 = sigma_t * (torch.exp(h) - 1.0)
            x_t = alpha_t / alpha_s0 * x - phi_1 * d0
            if midpoint:
                return x_t - 0.5 * phi_1 * d1
            return x_t - sigma_t * ((torch.exp(h) - 1.0) / h - 1.0) * d1
        # SDE-DPM-Solver++(2M)
        phi_1 = alpha_t * (1 - torch.exp(-2.0 * h))
        x_t = sigma_t / sigma_s0 * torch.exp(-h) * x + phi_1 * d0
        if midpoint:
            x_t = x_t + 0.5 * phi_1 * d1
        else:
            x_t = x_t + alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * d1
        return x_t + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise

    def _third_order_update(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Multistep third order: first and second divided differences of the last three outputs in λ
        (D1, D2) feed the Taylor terms of the exponential integrator."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._coefficients(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._coefficients(i)
        _, _, lambda_s1 = self._coefficients(i - 1)
        _, _, lambda_s2 = self._coefficients(i - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = 1.0 / r0 * (m0 - m1), 1.0 / r1 * (m1 - m2)
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = 1.0 / (r0 + r1) * (d1_0 - d1_1)
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            return (
                sigma_t / sigma_s0 * x
                - alpha_t * (torch.exp(-h) - 1.0) * m0
                + alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1
                - alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5) * d2
            )
        if algorithm == "dpmsolver":
            return (
                alpha_t / alpha_s0 * x
                - sigma_t * (torch.exp(h) - 1.0) * m0
                - sigma_t * ((torch.exp(h) - 1.0) / h - 1.0) * d1
                - sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5) * d2
            )
        return (
            sigma_t / sigma_s0 * torch.exp(-h) * x
            + alpha_t * (1.0 - torch.exp(-2.0 * h)) * m0
            + alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * d1
            + alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5) * d2
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )
