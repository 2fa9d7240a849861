"""LMS: the linear multistep sampler of k-diffusion, on the probability-flow ODE in σ.

Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (2022) write sampling as
dx/dσ = (x − D(x; σ)) / σ, with D the denoiser (x̂_0). A linear multistep method of order r integrates it with
the Lagrange polynomial through the last r derivatives d_{i-k} (Adams–Bashforth on a non-uniform grid):

    x_{i+1} = x_i + Σ_{j<r} c_j d_{i-j},    c_j = ∫_{σ_i}^{σ_{i+1}} Π_{k≠j} (τ − σ_{i-k}) / (σ_{i-j} − σ_{i-k}) dτ

as in Crowson's k-diffusion ``sample_lms`` / ``linear_multistep_coeff``. The integrand is a polynomial of degree
r − 1, so a ⌈r/2⌉-point Gauss–Legendre rule integrates it exactly — no numerical quadrature library needed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import SchedulerOutput
from .sigmas import (
    KarrasSamplerMixin,
    fractional_timesteps,
    interpolate_sigmas,
    karras_sigmas,
    sigmas_to_timesteps,
    to_d,
)

__all__ = ["LMSDiscreteScheduler", "exponential_sigmas", "lms_coefficient"]


def exponential_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    """σ evenly spaced in log σ from σ_max down to σ_min (k-diffusion's ``get_sigmas_exponential``)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps))


def lms_coefficient(sigmas: np.ndarray, i: int, order: int, j: int) -> float:
    """c_j for the step σ_i → σ_{i+1}: the integral of the j-th Lagrange basis polynomial on the nodes
    σ_i, σ_{i-1}, …, σ_{i-order+1} over [σ_i, σ_{i+1}], by exact Gauss–Legendre quadrature."""
    nodes = [float(sigmas[i - k]) for k in range(order)]
    lower, upper = float(sigmas[i]), float(sigmas[i + 1])
    points, weights = np.polynomial.legendre.leggauss((order + 1) // 2)
    half_width, middle = (upper - lower) / 2, (upper + lower) / 2
    taus = middle + half_width * points
    basis = np.ones_like(taus)
    for k, node in enumerate(nodes):
        if k != j:
            basis *= (taus - node) / (nodes[j] - node)
    return float(half_width * np.dot(weights, basis))


class LMSDiscreteScheduler(KarrasSamplerMixin):
    """Linear multistep sampler (k-diffusion ``sample_lms``) with diffusers' ``LMSDiscreteScheduler`` config
    keys and interface.

    Works on x in σ-space: ``init_noise_sigma`` is σ_max-sized and ``scale_model_input`` divides by √(σ² + 1)
    before the model call. ``step(..., order=4)`` uses up to ``order`` past derivatives. ``use_karras_sigmas``
    and ``use_exponential_sigmas`` replace the interpolated σ schedule. Deterministic.
    """

    order = 1  # model calls per step (the multistep order is step()'s ``order`` argument)

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | np.ndarray | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        if use_beta_sigmas:
            raise ValueError("use_beta_sigmas=True is not supported; use use_karras_sigmas or use_exponential_sigmas")
        if use_karras_sigmas and use_exponential_sigmas:
            raise ValueError("use_karras_sigmas and use_exponential_sigmas are exclusive; set at most one")
        self._init_noise_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type, timestep_spacing
        )
        self.use_karras_sigmas = use_karras_sigmas
        self.num_inference_steps = None
        self._full_training_schedule()  # so add_noise/init_noise_sigma work before set_timesteps, as in diffusers
        self.derivatives: list[torch.Tensor] = []

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Choose ``num_inference_steps`` timesteps and their σ's (interpolated, Karras or exponential)."""
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        config = self.config
        timesteps = fractional_timesteps(
            num_inference_steps, config.num_train_timesteps, config.timestep_spacing, config.steps_offset
        )
        sigmas = interpolate_sigmas(timesteps, self.train_sigmas)
        if config.use_karras_sigmas or config.use_exponential_sigmas:
            respace = karras_sigmas if config.use_karras_sigmas else exponential_sigmas
            sigmas = respace(sigmas[-1].item(), sigmas[0].item(), num_inference_steps)
            timesteps = sigmas_to_timesteps(sigmas, np.log(self.train_sigmas))
        self._set_schedule(timesteps, np.concatenate([sigmas, [0.0]]), device)
        self._reset_state()
        self.derivatives = []

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        order: int = 4,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One order-``order`` linear multistep step from σ_i to σ_{i+1}."""
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order={order!r} must be a positive integer")
        i = self._start_step(timestep)
        sigma = self.sigmas[i]
        denoised = self._denoised(model_output, sample, sigma)
        self.derivatives.append(to_d(sample, sigma, denoised))
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(i + 1, order)
        sigmas = self.sigmas.numpy()
        coefficients = [lms_coefficient(sigmas, i, order, j) for j in range(order)]
        prev_sample = sample + sum(c * d for c, d in zip(coefficients, reversed(self.derivatives)))

        self._step_index += 1
        if not return_dict:
            return prev_sample, denoised
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
