"""DDIM: denoising diffusion implicit models.

Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021). One step from x_t to x_{t-Δ} (eq. 12):

    x̂_0     = (x_t - √(1 - ᾱ_t) ε̂) / √ᾱ_t                              "predicted x_0"
    σ_t     = η √((1 - ᾱ_{t-Δ}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t-Δ})          eq. 16
    x_{t-Δ} = √ᾱ_{t-Δ} x̂_0 + √(1 - ᾱ_{t-Δ} - σ_t²) ε̂ + σ_t z,  z ~ N(0, I)

η = 0 is the deterministic sampler (an ODE solver in disguise); η = 1 is DDPM's ancestral sampler on the
sub-sequence of timesteps.
"""

from __future__ import annotations

import numpy as np
import torch

from ..utils.random import randn_tensor
from .base import AlphaBarScheduler, SchedulerOutput, dynamic_threshold
from .sigmas import model_output_to_data, model_output_to_noise

__all__ = ["DDIMScheduler"]


def ddim_sigma(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t of DDIM eq. 16: η times the standard deviation of DDPM's posterior q(x_{t-Δ} | x_t, x_0)."""
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    return eta * variance**0.5


class DDIMScheduler(AlphaBarScheduler):
    """DDIM sampler (Song et al. 2021, eq. 12) with diffusers' ``DDIMScheduler`` config keys and interface.

    ``eta`` in ``step`` blends between deterministic DDIM (0) and ancestral sampling (1); noise is drawn from
    ``generator`` exactly as the reference draws it. ``clip_sample`` clamps x̂_0 to ±``clip_sample_range``;
    ``thresholding`` applies Imagen's dynamic thresholding instead; ``set_alpha_to_one`` picks ᾱ after the last
    step (1, or ᾱ_0 as Stable Diffusion uses).
    """

    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | np.ndarray | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_options(prediction_type, timestep_spacing, beta_schedule, trained_betas)
        self._init_training_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
            set_alpha_to_one=set_alpha_to_one,
        )
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Choose ``num_inference_steps`` timesteps with ``timestep_spacing`` (descending)."""
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self._install_timesteps(self._integer_timesteps(num_inference_steps), device)

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor):
        # x_t = √ᾱ x_0 + √(1-ᾱ) ε: the VP form with α_t = √ᾱ, σ_t = √(1-ᾱ)
        alpha_t, sigma_t = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
        prediction = self.config.prediction_type
        x0 = model_output_to_data(model_output, sample, alpha_t, sigma_t, prediction)
        eps = model_output_to_noise(model_output, sample, alpha_t, sigma_t, prediction)
        if self.config.thresholding:
            x0 = dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        elif self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return x0, eps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update from ``timestep`` to the previous timestep (eq. 12).

        ``use_clipped_model_output`` recomputes ε̂ from the clipped x̂_0; ``variance_noise`` replaces the drawn z.
        """
        self._require_timesteps()
        t = self._schedule_timestep(timestep)
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to step(), not both")
        # The previous timestep is t - T/n whatever the spacing, as in the reference implementation.
        t_prev = t - self.config.num_train_timesteps // self.num_inference_steps
        alpha_bar, alpha_bar_prev = self.alpha_bar(t), self.alpha_bar(t_prev)

        x0, eps = self._denoised(model_output, sample, alpha_bar)
        if use_clipped_model_output:
            eps = (sample - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5

        sigma = ddim_sigma(alpha_bar, alpha_bar_prev, eta)
        prev_sample = alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev - sigma**2) ** 0.5 * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + sigma * variance_noise

        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
