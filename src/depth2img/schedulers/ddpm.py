"""DDPM: ancestral sampling of denoising diffusion probabilistic models.

Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (NeurIPS 2020). Each step samples the posterior
q(x_{t'} | x_t, x̂_0) of the forward process, for t' the next timestep of the (possibly strided) schedule and
β_t = 1 - ᾱ_t / ᾱ_{t'} the noise added between them (eqs. 6–7):

    μ̃ = √ᾱ_{t'} β_t / (1 - ᾱ_t) · x̂_0  +  √(1 - β_t) (1 - ᾱ_{t'}) / (1 - ᾱ_t) · x_t
    β̃ = (1 - ᾱ_{t'}) / (1 - ᾱ_t) · β_t                      ("fixed_small"; "fixed_large" uses β_t)
    x_{t'} = μ̃ + std · z,  z ~ N(0, I)

"learned" / "learned_range" variances follow Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic
Models" (2021), eq. 15: the model's extra output channels interpolate log β̃ and log β_t.
"""

from __future__ import annotations

import numpy as np
import torch

from ..utils.random import randn_tensor
from .base import AlphaBarScheduler, SchedulerOutput, dynamic_threshold
from .sigmas import model_output_to_data

__all__ = ["VARIANCE_TYPES", "DDPMScheduler"]

# "fixed_large_log" is left out: the reference takes the square root of log β_t there, which is NaN.
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")


class DDPMScheduler(AlphaBarScheduler):
    """Ancestral DDPM sampler (Ho et al. 2020) with diffusers' ``DDPMScheduler`` config keys and interface.

    Stochastic: every step but the one at t = 0 draws noise from ``generator`` exactly as the reference does.
    """

    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | np.ndarray | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_options(prediction_type, timestep_spacing, beta_schedule, trained_betas)
        self._check_choice("variance_type", variance_type, VARIANCE_TYPES)
        self._init_training_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.variance_type = variance_type
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Choose ``num_inference_steps`` timesteps with ``timestep_spacing`` (descending)."""
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self._install_timesteps(self._integer_timesteps(num_inference_steps), device)

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in the schedule, or -1 after the last one."""
        self._require_timesteps("previous_timestep")
        timestep = self._schedule_timestep(timestep)
        index = int((self.timesteps == timestep).nonzero()[0])  # first occurrence, as the reference looks it up
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def _posterior_std(
        self, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, predicted_variance: torch.Tensor | None
    ) -> torch.Tensor:
        beta = 1 - alpha_bar / alpha_bar_prev
        posterior_variance = torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar) * beta, min=1e-20)
        kind = self.variance_type
        if kind == "fixed_small":
            return posterior_variance**0.5
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior_variance))
        if kind == "fixed_large":
            return beta**0.5
        if kind == "learned":
            return predicted_variance**0.5
        # learned_range: the model outputs v in [-1, 1]; log σ² = (v+1)/2 · log β + (1 - (v+1)/2) · log β̃
        fraction = (predicted_variance + 1) / 2
        log_variance = fraction * torch.log(beta) + (1 - fraction) * torch.log(posterior_variance)
        return torch.exp(0.5 * log_variance)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Sample x_{t'} from the DDPM posterior at ``timestep`` (eqs. 6–7)."""
        self._require_timesteps()
        t = self._schedule_timestep(timestep)
        predicted_variance = None
        if self.variance_type in ("learned", "learned_range"):
            if model_output.shape[1] != 2 * sample.shape[1]:
                raise ValueError(
                    f"variance_type={self.variance_type!r} needs a model output with twice the sample's "
                    f"{sample.shape[1]} channels (mean and variance), got {model_output.shape[1]}"
                )
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        t_prev = self.previous_timestep(t)
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        alpha = alpha_bar / alpha_bar_prev
        beta = 1 - alpha

        x0 = model_output_to_data(
            model_output, sample, alpha_bar**0.5, (1 - alpha_bar) ** 0.5, self.config.prediction_type
        )
        if self.config.thresholding:
            x0 = dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        elif self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)

        x0_coeff = alpha_bar_prev**0.5 * beta / (1 - alpha_bar)
        sample_coeff = alpha**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar)
        prev_sample = x0_coeff * x0 + sample_coeff * sample
        if t > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + self._posterior_std(alpha_bar, alpha_bar_prev, predicted_variance) * noise

        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
