"""Noise-level (σ) maths shared by the samplers that think in σ: Euler, Euler ancestral, Heun, DPM-Solver and
UniPC.

A discrete-time model trained on x_t = √ᾱ_t · x_0 + √(1 - ᾱ_t) · ε is, divided by √ᾱ_t, the variance-exploding
process x = x_0 + σ · ε with σ_t = √((1 - ᾱ_t) / ᾱ_t) (Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", 2022, Table 1, "VP"). The Karras-family samplers (Euler, Heun) integrate the
probability-flow ODE dx/dσ = (x - D(x; σ)) / σ in that form; DPM-Solver and UniPC stay in the VP form and use
α_t = 1 / √(σ² + 1), σ_t = σ · α_t and the half log-SNR λ = log α_t - log σ_t.

Like k-diffusion's ``sampling.py``, the noise schedules are pure functions here; the schedulers compose them.
The numerics follow diffusers (float32 ᾱ, float64 Karras ramps, numpy interpolation) so that trajectories match
the reference to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import (
    PREDICTION_TYPES,
    SchedulerMixin,
    SchedulerOutput,
    broadcast_to_sample,
    make_betas,
    spaced_timesteps,
)

__all__ = [
    "FINAL_SIGMAS_TYPES",
    "KarrasSamplerMixin",
    "SigmaSchedulerMixin",
    "half_log_snr",
    "interpolate_sigmas",
    "karras_sigmas",
    "model_output_to_data",
    "model_output_to_noise",
    "multistep_timesteps",
    "sigmas_from_alphas_cumprod",
    "sigmas_to_timesteps",
    "fractional_timesteps",
    "to_d",
    "vp_coefficients",
]

Generator = torch.Generator | Sequence[torch.Generator] | None
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


# ---------------------------------------------------------------------------------------------- noise schedules
def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """σ_t = √((1 - ᾱ_t) / ᾱ_t) for every training timestep (ascending in t), float32 as diffusers computes it."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


def interpolate_sigmas(timesteps: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """σ at (possibly fractional) timesteps, linear in t between the training timesteps (float64)."""
    return np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """The noise levels of Karras et al. 2022, eq. 5: σ_i = (σ_max^(1/ρ) + i/(N-1) · (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ.

    ρ = 7 spends more steps at low noise, where the ODE curves most. Float64, descending, no trailing zero.
    """
    ramp = np.linspace(0, 1, num_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    # Piecewise-linear interpolation in log σ between the two training timesteps that bracket σ.
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(np.shape(sigma))


def sigmas_to_timesteps(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each σ, interpolating linearly in log σ — how k-diffusion's
    ``DiscreteSchedule.sigma_to_t`` tells a discrete-time model which noise level a Karras σ is."""
    # One σ at a time, as the reference does, so numpy's scalar type promotion is the same.
    return np.array([_sigma_to_t(sigma, log_train_sigmas) for sigma in sigmas])


# ---------------------------------------------------------------------------------------------- timestep spacings
def fractional_timesteps(
    num_inference_steps: int, num_train_timesteps: int, spacing: str, steps_offset: int = 0
) -> np.ndarray:
    """Descending float32 timesteps for Euler and Heun: like ``spaced_timesteps``, except that ``linspace``
    keeps the fractional points (σ is interpolated between training timesteps anyway)."""
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
    return spaced_timesteps(num_inference_steps, num_train_timesteps, spacing, steps_offset).astype(np.float32)


def multistep_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int,
    spacing: str,
    steps_offset: int = 0,
    last_timestep: int | None = None,
) -> np.ndarray:
    """Descending int64 timesteps for DPM-Solver and UniPC: ``linspace`` and ``leading`` place n + 1 points over
    [0, last_timestep) and drop the final 0, so the last step still lands on a noise level above zero.

    ``last_timestep`` (default: all ``num_train_timesteps``) cuts off the noisiest timesteps (``lambda_min_clipped``).
    """
    last = num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "trailing":
        step_ratio = num_train_timesteps / num_inference_steps
        return np.arange(last, 0, -step_ratio).round().astype(np.int64) - 1
    return spaced_timesteps(num_inference_steps + 1, last, spacing, steps_offset)[:-1].copy()


# ---------------------------------------------------------------------------------------------- VP form
def vp_coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) of the VP process at noise level σ: α_t = 1/√(σ² + 1), σ_t = σ · α_t."""
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    return alpha_t, sigma * alpha_t


def half_log_snr(alpha_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """λ_t = log(α_t / σ_t), the time variable DPM-Solver and UniPC integrate over (+∞ at σ = 0)."""
    return torch.log(alpha_t) - torch.log(sigma_t)


def model_output_to_data(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor, prediction: str
) -> torch.Tensor:
    """The data prediction x̂_0 (VP form) from an ε-, v- or x_0-predicting model."""
    if prediction == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    return model_output


def model_output_to_noise(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor, prediction: str
) -> torch.Tensor:
    """The noise prediction ε̂ (VP form) from an ε-, v- or x_0-predicting model."""
    if prediction == "sample":
        return (sample - alpha_t * model_output) / sigma_t
    if prediction == "v_prediction":
        return alpha_t * model_output + sigma_t * sample
    return model_output


# ---------------------------------------------------------------------------------------------- shared bookkeeping
class SigmaSchedulerMixin(SchedulerMixin):
    """State shared by the σ-based samplers: the training schedule, ``self.sigmas`` (one per timestep, plus the
    final level) and the lookup of a timestep's σ for ``add_noise``."""

    sigmas: torch.Tensor | None = None

    def _init_noise_schedule(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: Any,
        prediction_type: str,
        timestep_spacing: str,
        prediction_types: tuple[str, ...] = PREDICTION_TYPES,
    ) -> None:
        self._check_options(prediction_type, timestep_spacing, beta_schedule, trained_betas, prediction_types)
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)  # ascending in t, float32

    def _karras_range(self, in_sigmas: np.ndarray) -> tuple[float, float]:
        """(σ_min, σ_max) of a Karras schedule: the config's ``sigma_min``/``sigma_max`` when set, else the ends
        of ``in_sigmas`` (descending)."""
        sigma_min = self.config.get("sigma_min")
        sigma_max = self.config.get("sigma_max")
        sigma_min = sigma_min if sigma_min is not None else in_sigmas[-1].item()
        sigma_max = sigma_max if sigma_max is not None else in_sigmas[0].item()
        return sigma_min, sigma_max

    def _reset_state(self) -> None:
        """Forget the position in the schedule and any solver history (called by ``set_timesteps``)."""
        self._step_index = None
        self._begin_index = None

    def _start_step(self, timestep: Any) -> int:
        """Index of this ``step`` in the schedule, with clear errors for the usual mistakes."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.timesteps):
            raise RuntimeError(
                f"{type(self).__name__}: all {len(self.timesteps)} steps of the schedule are done; "
                "call set_timesteps again to sample anew"
            )
        return self._step_index

    @staticmethod
    def _output(
        prev_sample: torch.Tensor, pred_original_sample: torch.Tensor | None, return_dict: bool
    ) -> SchedulerOutput | tuple:
        # diffusers' tuple form carries x_0 only for the schedulers that define it
        if return_dict:
            return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
        return (prev_sample,) if pred_original_sample is None else (prev_sample, pred_original_sample)

    def _check_step_inputs(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; "
                "step() needs the model's prediction for exactly this sample"
            )

    def _sigmas_for_noise(self, timesteps: Any, sample: torch.Tensor) -> torch.Tensor:
        """σ for each of ``timesteps``, shaped to broadcast against ``sample``. As in diffusers, once a begin index
        is set (image-to-image) the current position in the schedule decides, not the timestep values."""
        if self.timesteps is None or self.sigmas is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(num_inference_steps) before add_noise()")
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is None:
            schedule = self.timesteps.to(sample.device)
            indices = [self.index_for_timestep(t, schedule) for t in timesteps.to(sample.device)]
        else:
            index = self._step_index if self._step_index is not None else self._begin_index
            indices = [index] * len(timesteps)
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        return broadcast_to_sample(sigmas[indices], sample)


class KarrasSamplerMixin(SigmaSchedulerMixin):
    """The Karras-form samplers (Euler, Euler ancestral, Heun): the sample is x = x_0 + σ·ε, the model sees
    x / √(σ² + 1) (the VP preconditioning c_in of Karras et al. 2022, Table 1), and its output is turned into the
    denoiser D(x; σ) that the ODE dx/dσ = (x - D) / σ needs."""

    def _set_schedule(self, timesteps: np.ndarray, sigmas: np.ndarray, device: Any = None) -> None:
        self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)
        self.sigmas = torch.from_numpy(sigmas.astype(np.float32))  # kept on the CPU: read one scalar at a time

    def _full_training_schedule(self) -> None:
        # Before set_timesteps: every training timestep, as diffusers starts (init_noise_sigma, add_noise work).
        total = len(self.train_sigmas)
        timesteps = np.linspace(0, total - 1, total, dtype=float)[::-1].copy()
        self._set_schedule(timesteps, np.concatenate([self.train_sigmas[::-1], [0.0]]))

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Standard deviation of the starting noise: the largest σ (√(σ² + 1) for ``leading`` spacing, whose
        first σ sits below the top of the training range, as diffusers has it)."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model's input at this step: x / √(σ² + 1), i.e. back to the unit-variance VP scale it was trained on."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return sample / ((sigma**2 + 1) ** 0.5)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """x = x_0 + σ(t) · ε, the sample at ``timesteps`` in the Karras form (image-to-image start)."""
        return original_samples + noise * self._sigmas_for_noise(timesteps, original_samples)

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; σ), the model's estimate of x_0, from its ε-, v- or x_0-prediction."""
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            return sample - sigma * model_output
        if prediction == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        return model_output


def to_d(sample: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dσ = (x - D(x; σ)) / σ, the probability-flow ODE in the Karras form (k-diffusion's ``to_d``)."""
    return (sample - denoised) / sigma
