"""PNDM: pseudo numerical methods for diffusion models (PLMS, with an optional pseudo Runge–Kutta warm-up).

Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (ICLR 2022). The "transfer
part" φ moves x_t to x_{t-δ} along the DDIM direction for a given noise estimate ε (eq. 9):

    φ(x_t, ε, t, t-δ) = √(ᾱ_{t-δ}/ᾱ_t) x_t − (ᾱ_{t-δ} − ᾱ_t) ε / (ᾱ_t √(1−ᾱ_{t-δ}) + √(ᾱ_t (1−ᾱ_t) ᾱ_{t-δ}))

and the "gradient part" chooses ε: a linear multistep (Adams–Bashforth) combination of past model outputs
(PLMS, eq. 12), started either by three pseudo Runge–Kutta steps (PRK, eq. 13; four model calls each) or, with
``skip_prk_steps`` as Stable Diffusion ships, by one pseudo improved-Euler step that evaluates the model twice
at the first step.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import AlphaBarScheduler, SchedulerOutput

__all__ = ["PNDMScheduler", "adams_bashforth_eps", "pndm_transfer"]

PRK_STAGE_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # classic RK4: (e1 + 2 e2 + 2 e3 + e4) / 6


def pndm_transfer(
    sample: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor
) -> torch.Tensor:
    """φ(x_t, ε, t, t-δ) of PNDM eq. 9, with ᾱ_t = ``alpha_bar`` and ᾱ_{t-δ} = ``alpha_bar_prev``."""
    sample_coeff = (alpha_bar_prev / alpha_bar) ** 0.5
    eps_denominator = alpha_bar * (1 - alpha_bar_prev) ** 0.5 + (alpha_bar * (1 - alpha_bar) * alpha_bar_prev) ** 0.5
    return sample_coeff * sample - (alpha_bar_prev - alpha_bar) * eps / eps_denominator


def adams_bashforth_eps(history: list[torch.Tensor]) -> torch.Tensor:
    """ε' = Σ_k w_k ε_{t-kδ}: the Adams–Bashforth estimate from the last 1–4 model outputs (oldest first).

    Weights, newest first: (1), (3, -1)/2, (23, -16, 5)/12 and PNDM eq. 12's (55, -59, 37, -9)/24.
    """
    if len(history) == 1:
        return history[0]
    if len(history) == 4:  # written out so the arithmetic is the reference's, to the rounding
        return (1 / 24) * (55 * history[-1] - 59 * history[-2] + 37 * history[-3] - 9 * history[-4])
    if len(history) == 3:
        return (23 * history[-1] - 16 * history[-2] + 5 * history[-3]) / 12
    return (3 * history[-1] - history[-2]) / 2


class PNDMScheduler(AlphaBarScheduler):
    """PNDM / PLMS sampler (Liu et al. 2022) with diffusers' ``PNDMScheduler`` config keys and interface.

    With ``skip_prk_steps=False`` the first three intervals take four model calls each (pseudo Runge–Kutta) and
    ``timesteps`` lists every call's timestep; with ``skip_prk_steps=True`` the second timestep is repeated once
    (the improved-Euler start). Deterministic. Supports ``epsilon`` and ``v_prediction`` models.
    """

    order = 1
    pndm_order = 4

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | np.ndarray | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        self._check_options(
            prediction_type,
            timestep_spacing,
            beta_schedule,
            trained_betas,
            prediction_types=("epsilon", "v_prediction"),
        )
        self._init_training_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, set_alpha_to_one=set_alpha_to_one
        )
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = None
        self.prk_timesteps = np.array([], dtype=np.int64)
        self.plms_timesteps = np.array([], dtype=np.int64)
        self._reset_history()

    def _reset_history(self) -> None:
        self.counter = 0  # model calls taken so far; PRK stages and the PLMS start are keyed on it
        self.ets: list[torch.Tensor] = []  # past model outputs, one per interval (newest last)
        self.cur_sample: torch.Tensor | None = None  # x_t at the start of the current interval
        self.cur_model_output: torch.Tensor | float = 0  # running RK4 sum of stage outputs

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Lay out the PRK warm-up (unless skipped) and PLMS timesteps for ``num_inference_steps`` intervals."""
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        if not self.config.skip_prk_steps and num_inference_steps < self.pndm_order:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is too few for PNDMScheduler's Runge-Kutta warm-up; "
                f"use at least {self.pndm_order}, or skip_prk_steps=True"
            )
        self.num_inference_steps = num_inference_steps
        ascending = self._integer_timesteps(num_inference_steps)[::-1].copy()
        if self.config.skip_prk_steps:
            # Repeat the second timestep: the first interval is evaluated twice (improved Euler).
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        else:
            # The three highest intervals [t, t-δ] become RK4 stage times t, t-δ/2, t-δ/2, t-δ (descending).
            half_step = self.config.num_train_timesteps // num_inference_steps // 2
            last = ascending[-self.pndm_order :]
            with_halves = last.repeat(2) + np.tile(np.array([0, half_step]), self.pndm_order)
            self.prk_timesteps = with_halves[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = ascending[:-3][::-1].copy()
        schedule = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self._install_timesteps(schedule, device)
        self._reset_history()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """Take the next PRK stage or PLMS step (chosen by how many model calls came before)."""
        self._require_timesteps()
        t = self._schedule_timestep(timestep)
        if self.counter < len(self.prk_timesteps):
            prev_sample = self._step_prk(model_output, t, sample)
        else:
            prev_sample = self._step_plms(model_output, t, sample)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _transfer(self, sample: torch.Tensor, model_output: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        alpha_bar, alpha_bar_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        eps = model_output
        if self.config.prediction_type == "v_prediction":
            eps = alpha_bar**0.5 * model_output + (1 - alpha_bar) ** 0.5 * sample
        return pndm_transfer(sample, eps, alpha_bar, alpha_bar_prev)

    def _step_prk(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """One RK4 stage (PNDM eq. 13). Stages 1–3 return the probe x_{t-δ/2}, x_{t-δ/2}, x_{t-δ} for the next
        model call; stage 4 returns x_{t-δ} from the weighted mean of the four outputs."""
        stage = self.counter % 4
        half_step = self.config.num_train_timesteps // self.num_inference_steps // 2
        t_prev = t - (half_step if stage % 2 == 0 else 0)
        t_start = int(self.prk_timesteps[self.counter // 4 * 4])
        if stage == 0:
            self.cur_model_output = 0 + PRK_STAGE_WEIGHTS[0] * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output = self.cur_model_output + PRK_STAGE_WEIGHTS[stage] * model_output
        else:
            model_output = self.cur_model_output + PRK_STAGE_WEIGHTS[3] * model_output
            self.cur_model_output = 0
        start_sample = self.cur_sample if self.cur_sample is not None else sample
        return self._transfer(start_sample, model_output, t_start, t_prev)

    def _step_plms(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """One linear multistep step (PNDM eq. 12), or either half of the improved-Euler start."""
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        t_prev = t - ratio
        if self.counter == 1:
            # Second call at the first interval: redo [t+δ, t] from the saved x with the mean of both outputs.
            t_prev, t = t, t + ratio
        else:
            self.ets = [*self.ets[-3:], model_output]

        if len(self.ets) == 1 and self.counter == 0:
            eps = model_output
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            eps = (model_output + self.ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        else:
            eps = adams_bashforth_eps(self.ets)
        return self._transfer(sample, eps, t, t_prev)
