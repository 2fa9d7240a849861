"""UniPC: Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"
(2023) — the multistep predictor UniP-p and corrector UniC-p with the B(h) variants B1(h) = h ("bh1") and
B2(h) = e^h - 1 ("bh2").

Like DPM-Solver, each step integrates the linear part of the diffusion ODE exactly over the half log-SNR λ and
approximates the model term from earlier outputs. Before predicting, UniC reuses the model output just computed at
the new point to correct that point itself — one more order of accuracy for no extra model evaluation. The
φ-functions of the exponential integrator follow φ_{k+1}(h) = (φ_k(h) - 1/k!) / h, and the weights ρ of the
divided differences solve R ρ = b with R_ij = r_j^(i-1) (the paper's eq. for a_p).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..configuration import explicit_config
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

__all__ = ["UniPCMultistepScheduler"]

SOLVER_TYPES = ("bh1", "bh2")
# DPM-Solver / DEIS solver types in a config switched over with from_config become bh2, as in diffusers.
_SIBLING_SOLVER_TYPES = ("midpoint", "heun", "logrho")


class UniPCMultistepScheduler(SigmaSchedulerMixin):
    """UniPC multistep predictor-corrector sampler, one model evaluation per step.

    Config keys (diffusers' names): ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``
    (linear / scaled_linear / squaredcos_cap_v2), ``trained_betas``, ``solver_order`` (1-3), ``prediction_type``
    (epsilon / v_prediction / sample), ``predict_x0`` (solve with the data prediction, "UniPC" in the paper's
    data-prediction form; False uses the noise prediction), ``solver_type`` (bh1 / bh2), ``lower_order_final``
    (lower the order for the last steps), ``disable_corrector`` (step indices whose point is not corrected),
    ``use_karras_sigmas`` (Karras et al. 2022 eq. 5 noise levels), ``sigma_min`` / ``sigma_max`` (ends of that
    schedule), ``timestep_spacing`` (linspace / leading / trailing), ``steps_offset``, ``final_sigmas_type``
    (zero / sigma_min).
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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] | tuple[int, ...] = (),
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
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order={solver_order!r} is not supported; choose 1, 2 or 3")
        self._check_choice("solver_type", solver_type, SOLVER_TYPES)
        self._check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if not predict_x0 and final_sigmas_type == "zero":
            # The noise prediction cannot reach σ = 0 (the step becomes 0 · ∞); diffusers returns NaN there.
            raise ValueError(
                "final_sigmas_type='zero' needs the data prediction; with predict_x0=False "
                "use final_sigmas_type='sigma_min'"
            )
        self._history_length = solver_order
        self._reset_state()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **overrides: Any):
        """Build from a config mapping plus overrides; a DPM-Solver or DEIS config's ``solver_type`` becomes bh2
        (as diffusers does), so ``from_config(pipe.scheduler.config)`` switches solvers. Overrides are kept as given.
        """
        config = explicit_config(config)
        if config.get("solver_type") in _SIBLING_SOLVER_TYPES:
            config["solver_type"] = "bh2"
        return super().from_config(config, **overrides)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` integer timesteps and their noise levels, and clear the solver history."""
        n = self._check_num_inference_steps(num_inference_steps)
        config = self.config
        timesteps = multistep_timesteps(n, config.num_train_timesteps, config.timestep_spacing, config.steps_offset)
        if config.use_karras_sigmas:
            sigmas = karras_sigmas(*self._karras_range(self.train_sigmas[::-1]), n)
            timesteps = sigmas_to_timesteps(sigmas, np.log(self.train_sigmas)).round()
            sigma_last = sigmas[-1]
        else:
            sigmas = interpolate_sigmas(timesteps, self.train_sigmas)
            sigma_last = self.train_sigmas[0]
        if config.final_sigmas_type == "zero":
            sigma_last = 0.0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [sigma_last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_state()

    def _reset_state(self) -> None:
        super()._reset_state()
        self.model_outputs: list[torch.Tensor | None] = [None] * self._history_length  # oldest first
        self.lower_order_nums = 0  # how many earlier outputs the multistep formulas may use so far
        self.last_sample: torch.Tensor | None = None  # the point the last predictor started from
        self.this_order = 0  # order of the last predictor, which the next corrector matches

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The sample unchanged: UniPC works in the VP form the model was trained on."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """x_t = α_t x_0 + σ_t ε at ``timesteps`` (image-to-image start)."""
        alpha_t, sigma_t = vp_coefficients(self._sigmas_for_noise(timesteps, original_samples))
        return alpha_t * original_samples + sigma_t * noise

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Correct the current point with UniC (from the second step on), then predict the next with UniP
        (``generator`` is accepted for a uniform interface and unused: the sampler is deterministic)."""
        i = self._start_step(timestep)
        self._check_step_inputs(model_output, sample)
        config = self.config
        alpha_s, sigma_s = vp_coefficients(self.sigmas[i])
        if config.predict_x0:
            converted = model_output_to_data(model_output, sample, alpha_s, sigma_s, config.prediction_type)
        else:
            converted = model_output_to_noise(model_output, sample, alpha_s, sigma_s, config.prediction_type)

        if i > 0 and (i - 1) not in config.disable_corrector and self.last_sample is not None:
            sample = self._unic_corrector(converted, self.last_sample, sample, self.this_order)

        self.model_outputs = [*self.model_outputs[1:], converted]
        order = min(config.solver_order, len(self.timesteps) - i) if config.lower_order_final else config.solver_order
        if self.sigmas[i + 1] == 0:
            # Into σ = 0 (λ = ∞) the divided differences get weight ∞: only the first-order step is finite there
            # (DPM-Solver's rule; diffusers returns NaN with lower_order_final=False).
            order = 1
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        zero_length = self.sigmas[i + 1] == self.sigmas[i]  # Karras σ_min then "sigma_min": the identity
        prev_sample = sample if zero_length else self._unip_predictor(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, config.solver_order)

        self._step_index += 1
        return self._output(prev_sample, None, return_dict)

    # ------------------------------------------------------------------------------------------- the updates
    def _exponential_integrator(self, start: int, order: int, x: torch.Tensor):
        """The terms UniP and UniC share for a step from ``sigmas[start]`` (output m0 = ``model_outputs[-1]``) to
        ``sigmas[start + 1]``: the first-order (DDIM-like) point, the factor α_t·B(h) (σ_t·B(h) for the noise
        prediction), the system R, b for the weights ρ, and the scaled differences D_k = (m_k - m0) / r_k."""
        device = x.device
        alpha_t, sigma_t = vp_coefficients(self.sigmas[start + 1].to(device))
        alpha_s0, sigma_s0 = vp_coefficients(self.sigmas[start].to(device))
        lambda_s0 = half_log_snr(alpha_s0, sigma_s0)
        h = half_log_snr(alpha_t, sigma_t) - lambda_s0
        m0 = self.model_outputs[-1]

        rks, differences = [], []
        for k in range(1, order):
            lambda_sk = half_log_snr(*vp_coefficients(self.sigmas[start - k].to(device)))
            rk = (lambda_sk - lambda_s0) / h
            rks.append(rk)
            differences.append((self.model_outputs[-(k + 1)] - m0) / rk)
        rks.append(torch.ones((), device=device))
        rks = torch.stack(rks)

        hh = -h if self.config.predict_x0 else h
        h_phi_1 = torch.expm1(hh)  # h φ_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1  # φ_2(h)
        b_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        rows, b = [], []
        factorial = 1
        for k in range(1, order + 1):
            rows.append(torch.pow(rks, k - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R, b = torch.stack(rows), torch.stack(b)

        if self.config.predict_x0:
            first_order = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
            scale = alpha_t * b_h
        else:
            first_order = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0
            scale = sigma_t * b_h
        return first_order, scale, R, b, differences

    @staticmethod
    def _weighted(rhos: torch.Tensor, differences: list[torch.Tensor]) -> torch.Tensor:
        """Σ_k ρ_k D_k over the batch."""
        return torch.einsum("k,bkc...->bc...", rhos, torch.stack(differences, dim=1))

    def _unip_predictor(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP-p: the next point from the current one, using ``order`` - 1 earlier outputs."""
        first_order, scale, R, b, differences = self._exponential_integrator(self._step_index, order, x)
        if not differences:  # first order: the exponential-integrator (DDIM) step itself
            return first_order.to(x.dtype)
        if order == 2:
            rhos_p = torch.ones(1, dtype=x.dtype, device=x.device) * 0.5
        else:
            rhos_p = torch.linalg.solve(R[:-1, :-1], b[:-1]).to(x.device).to(x.dtype)
        return (first_order - scale * self._weighted(rhos_p, differences)).to(x.dtype)

    def _unic_corrector(
        self, model_t: torch.Tensor, last_sample: torch.Tensor, this_sample: torch.Tensor, order: int
    ) -> torch.Tensor:
        """UniC-p: redo the last step from ``last_sample`` with the output ``model_t`` at its end point added to the
        differences (D1_t = model_t - m0), giving ``this_sample`` one more order of accuracy."""
        x = last_sample
        first_order, scale, R, b, differences = self._exponential_integrator(self._step_index - 1, order, x)
        if order == 1:
            rhos_c = torch.ones(1, dtype=x.dtype, device=x.device) * 0.5
        else:
            rhos_c = torch.linalg.solve(R, b).to(x.device).to(x.dtype)
        correction = rhos_c[-1] * (model_t - self.model_outputs[-1])
        if differences:
            correction = self._weighted(rhos_c[:-1], differences) + correction
        return (first_order - scale * correction).to(x.dtype)
