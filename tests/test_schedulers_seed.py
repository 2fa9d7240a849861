"""Parity of DDPM, DDIM, PNDM and LMS with the same-named diffusers schedulers (the oracle), config round trips,
and the clear errors for bad input.

Trajectories are driven by a deterministic fake model (a fixed function of the sample and t) on 1×4×8×8
latents, so the whole file runs in seconds.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

import depth2img
from conftest import require
from depth2img import schedulers
from depth2img.configuration import load_json
from depth2img.schedulers.lms import lms_coefficient

TOLERANCE = 1e-5
# Two float32 implementations of the same maths each sit within their rounding error of the exact result, so they
# may differ by about the sum of those errors. Ours is measured by re-running our scheduler in float64 beside the
# float32 run (see run_pair); the reference's is allowed up to ROUNDING_FACTOR - 1 times ours (it evaluates its LMS
# coefficients' integrand in float32). Where the computation does not amplify rounding this adds ~1e-7 to
# TOLERANCE; where it does (an ill-conditioned extrapolation), the bound grows with it, on whatever CPU it runs.
ROUNDING_FACTOR = 4.0
# Differences are measured in units of max(1, |sample| / 16): plain absolute differences for latents up to SD's
# σ_max ≈ 14.6, relative ones beyond. Only LMS on DDPM's linear betas (σ_max ≈ 157, |x| ≈ 450, where one float32
# ulp is 3e-5) reaches that range.
SCALE_FREE_UP_TO = 16.0
SD2_DEPTH_SCHEDULER = Path(depth2img.__file__).parent / "configs" / "sd2-depth" / "scheduler" / "scheduler_config.json"
# Stable Diffusion's training schedule: the keys every class shares.
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
CLASS_NAMES = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler")
STEP_COUNTS = (1, 2, 7, 25, 50)


def fake_model(sample: torch.Tensor, t, learned_variance: bool = False) -> torch.Tensor:
    """A smooth stand-in for a UNet that depends on both the (scaled) sample and the timestep. Its ε estimate is
    mostly the input itself, so trajectories shrink towards data-sized values as a real denoiser's do."""
    t = float(t)
    out = 0.9 * sample + 0.2 * torch.sin(0.37 * sample + t / 97.0)
    if learned_variance:  # DDPM "learned_range": a second half of channels in [-1, 1]
        out = torch.cat([out, torch.tanh(sample * 0.5 - t / 500.0)], dim=1)
    return out


def build_pair(diffusers, class_name: str, config: dict):
    """(reference, ours) built from the same config dict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys of another class (e.g. skip_prk_steps for DDIM)
        reference = getattr(diffusers, class_name).from_config(config)
        ours = getattr(schedulers, class_name).from_config(config)
    return reference, ours


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def scaled_diff(reference: torch.Tensor, ours: torch.Tensor, scale_of: torch.Tensor | None = None) -> float:
    """max |reference - ours| in units of max(1, |scale_of| / 16) (``scale_of`` defaults to ``reference``)."""
    scale_of = reference if scale_of is None else scale_of
    return max_diff(reference, ours) / max(1.0, scale_of.abs().max().item() / SCALE_FREE_UP_TO)


def run_pair(reference, ours, num_steps: int, *, t_start: int = 0, step_kwargs=None, seed=0, learned=False):
    """Sample with both schedulers the way the depth2img pipeline does; return (the worst difference seen, our
    own float32 rounding error on the same trajectory, measured against a float64 run of our scheduler).

    Samplers that draw noise get identical generators seeded with ``seed``; their float64 run is skipped (a
    float64 draw is not the float32 draw), so they get no rounding allowance."""
    step_kwargs = dict(step_kwargs or {})
    stochastic = "generator" in inspect.signature(reference.step).parameters
    shadow = None if stochastic else copy.deepcopy(ours)
    reference.set_timesteps(num_steps)
    ours.set_timesteps(num_steps)
    assert ours.timesteps.dtype == reference.timesteps.dtype
    assert torch.equal(ours.timesteps, reference.timesteps), (ours.timesteps, reference.timesteps)

    worst = rounding = 0.0
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(1, 4, 8, 8, generator=generator)
    noise = torch.randn(1, 4, 8, 8, generator=generator)
    # As pipeline_stable_diffusion_depth2img.get_timesteps: skip t_start * order, tell the scheduler where it is.
    timesteps = reference.timesteps[t_start * reference.order :]
    ours.set_begin_index(t_start * ours.order)
    if hasattr(reference, "set_begin_index"):
        reference.set_begin_index(t_start * reference.order)
    if shadow is not None:
        shadow.set_timesteps(num_steps)
        shadow.set_begin_index(t_start * shadow.order)
    if len(timesteps) == 0:
        return worst, rounding
    first = timesteps[:1]
    sample_ref = reference.add_noise(clean, noise, first)
    sample_ours = ours.add_noise(clean, noise, first)
    worst = max(worst, scaled_diff(sample_ref, sample_ours))
    if shadow is not None:
        sample_64 = shadow.add_noise(clean.double(), noise.double(), first)

    gen_ref, gen_ours = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for t in timesteps:
        input_ref = reference.scale_model_input(sample_ref, t)
        input_ours = ours.scale_model_input(sample_ours, t)
        worst = max(worst, scaled_diff(input_ref, input_ours))
        extra_ref = {**step_kwargs, **({"generator": gen_ref} if stochastic else {})}
        extra_ours = {**step_kwargs, **({"generator": gen_ours} if stochastic else {})}
        out_ref = reference.step(fake_model(input_ref, t, learned), t, sample_ref, **extra_ref)
        out_ours = ours.step(fake_model(input_ours, t, learned), t, sample_ours, **extra_ours)
        worst = max(worst, scaled_diff(out_ref.prev_sample, out_ours.prev_sample, sample_ref))
        if getattr(out_ref, "pred_original_sample", None) is not None:
            # x̂_0 inherits the rounding of the (possibly much larger) sample it was computed from
            worst = max(worst, scaled_diff(out_ref.pred_original_sample, out_ours.pred_original_sample, sample_ref))
        if shadow is not None:
            input_64 = shadow.scale_model_input(sample_64, t)
            sample_64 = shadow.step(fake_model(input_64, t, learned), t, sample_64, **step_kwargs).prev_sample
            rounding = max(rounding, scaled_diff(sample_64, out_ours.prev_sample, sample_ref))
        sample_ref, sample_ours = out_ref.prev_sample, out_ours.prev_sample
    return worst, rounding


def assert_pair_matches(reference, ours, num_steps: int, **kwargs) -> None:
    """The trajectories of ``run_pair`` agree within TOLERANCE plus what float32 rounding of this computation
    explains (ROUNDING_FACTOR times our own measured rounding error)."""
    worst, rounding = run_pair(reference, ours, num_steps, **kwargs)
    allowed = TOLERANCE + ROUNDING_FACTOR * rounding
    assert worst <= allowed, f"max difference {worst:.3g} > {allowed:.3g} (our float32 rounding: {rounding:.3g})"


def _trajectory_cases():
    cases = []
    for name in CLASS_NAMES:
        for spacing in ("leading", "trailing", "linspace"):
            for steps in STEP_COUNTS:
                cases.append((name, steps, {"timestep_spacing": spacing}, {}))
        predictions = ("epsilon", "v_prediction") if name == "PNDMScheduler" else ("v_prediction", "sample")
        for prediction in predictions:
            for steps in (7, 25):
                cases.append((name, steps, {"prediction_type": prediction}, {}))
    options = [
        ("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": True}, {}),
        ("DDIMScheduler", {"thresholding": True, "sample_max_value": 2.0}, {}),
        ("DDIMScheduler", {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}, {}),
        ("DDIMScheduler", {"clip_sample": True}, {"use_clipped_model_output": True}),
        ("DDIMScheduler", {"beta_schedule": "squaredcos_cap_v2"}, {}),
        ("DDIMScheduler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, {}),
        ("DDPMScheduler", {"variance_type": "fixed_large", "clip_sample": True}, {}),
        ("DDPMScheduler", {"variance_type": "fixed_small_log", "thresholding": True}, {}),
        ("PNDMScheduler", {"skip_prk_steps": False}, {}),
        ("PNDMScheduler", {"skip_prk_steps": False, "timestep_spacing": "trailing", "set_alpha_to_one": True}, {}),
        ("PNDMScheduler", {"beta_schedule": "squaredcos_cap_v2"}, {}),
        ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, {}),
        ("LMSDiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}),
        ("LMSDiscreteScheduler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, {"order": 2}),
    ]
    for name, config, step_kwargs in options:
        for steps in (7, 25, 50):
            cases.append((name, steps, config, step_kwargs))
    return cases


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_lms_exponential_sigmas_match_with_an_ill_conditioned_last_step(diffusers, spacing):
    """With exponential σ's at 50 steps, the last order-4 step extrapolates the derivative polynomial from nodes
    ~0.01 apart down to σ = 0 (Σ|c_j| ≈ 10 for a step of ~0.1), amplifying the float32 rounding of earlier steps —
    and of the reference's quad coefficients, whose integrand it evaluates in float32 — to ~3e-5 there
    (≤ 4e-6 before it). The bound follows: assert_pair_matches measures that amplification with a float64 run."""
    require("scipy")
    config = {**SD_BETAS, "use_exponential_sigmas": True, "timestep_spacing": spacing}
    for steps in (7, 25, 50):
        reference, ours = build_pair(diffusers, "LMSDiscreteScheduler", config)
        assert_pair_matches(reference, ours, steps)


def _case_id(case):
    name, steps, config, step_kwargs = case
    return "-".join([name.replace("Scheduler", ""), str(steps), *map(str, config.values()), *step_kwargs])


@pytest.mark.parametrize("case", _trajectory_cases(), ids=_case_id)
def test_trajectory_matches_reference(diffusers, case):
    if case[0] == "LMSDiscreteScheduler":
        require("scipy")  # the oracle's LMS integrates with scipy; ours does not need it
    name, steps, config, step_kwargs = case
    config = {**SD_BETAS, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True, **config}
    reference, ours = build_pair(diffusers, name, config)
    assert_pair_matches(reference, ours, steps, step_kwargs=step_kwargs)


@pytest.mark.parametrize("name", CLASS_NAMES)
@pytest.mark.parametrize("t_start", [1, 3, 12])
def test_img2img_start_matches_reference(diffusers, name, t_start):
    """Start part-way (strength < 1) the way the depth2img pipeline does: timesteps[t_start*order:] and
    set_begin_index(t_start*order), with add_noise at the first remaining timestep."""
    if name == "LMSDiscreteScheduler":
        require("scipy")
    for skip_prk_steps in (True, False) if name == "PNDMScheduler" else (True,):
        config = {**SD_BETAS, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": skip_prk_steps}
        reference, ours = build_pair(diffusers, name, config)
        assert_pair_matches(reference, ours, 25, t_start=t_start, seed=7)


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_stochastic_samplers_match_with_identical_generators(diffusers, steps, spacing):
    config = {**SD_BETAS, "clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": spacing}
    for name, step_kwargs in (("DDPMScheduler", {}), ("DDIMScheduler", {"eta": 1.0}), ("DDIMScheduler", {"eta": 0.3})):
        reference, ours = build_pair(diffusers, name, config)
        assert_pair_matches(reference, ours, steps, step_kwargs=step_kwargs, seed=123)


def test_ddpm_learned_range_variance_matches(diffusers):
    config = {**SD_BETAS, "clip_sample": False, "variance_type": "learned_range"}
    reference, ours = build_pair(diffusers, "DDPMScheduler", config)
    assert_pair_matches(reference, ours, 25, seed=3, learned=True)


def test_ddim_generator_list_draws_one_row_per_generator(diffusers):
    reference, ours = build_pair(diffusers, "DDIMScheduler", {**SD_BETAS, "clip_sample": False})
    reference.set_timesteps(10)
    ours.set_timesteps(10)
    sample = torch.randn(2, 4, 8, 8)
    t = reference.timesteps[3]
    out = []
    for scheduler in (reference, ours):
        generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
        out.append(scheduler.step(fake_model(sample, t), t, sample, eta=1.0, generator=generators).prev_sample)
    assert max_diff(*out) <= TOLERANCE
    assert max_diff(out[1][0], out[1][1]) > 0.01  # the two rows really drew different noise


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_add_noise_matches_reference_at_many_timesteps(diffusers, name):
    if name == "LMSDiscreteScheduler":
        require("scipy")
    reference, ours = build_pair(diffusers, name, {**SD_BETAS, "skip_prk_steps": True})
    reference.set_timesteps(50)
    ours.set_timesteps(50)
    clean, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    timesteps = reference.timesteps[torch.tensor([0, 9, 30, len(reference.timesteps) - 1])]
    expected = reference.add_noise(clean, noise, timesteps)
    assert max_diff(ours.add_noise(clean, noise, timesteps), expected) <= TOLERANCE
    assert max_diff(expected[0], clean[0]) > 0.1  # noise was really added


def test_init_noise_sigma_matches_reference(diffusers):
    require("scipy")
    for spacing in ("leading", "linspace", "trailing"):
        for name in CLASS_NAMES:
            reference, ours = build_pair(diffusers, name, {**SD_BETAS, "timestep_spacing": spacing})
            reference.set_timesteps(30)
            ours.set_timesteps(30)
            assert abs(float(ours.init_noise_sigma) - float(reference.init_noise_sigma)) <= TOLERANCE


# ------------------------------------------------------------------------------------------------ LMS maths
def test_lms_coefficients_are_exact_integrals_of_the_lagrange_basis():
    sigmas = [14.6, 9.0, 5.5, 3.1, 1.2, 0.0]
    # Order 1: ∫ 1 dτ over [σ_i, σ_{i+1}] is the step itself.
    assert lms_coefficient(sigmas, 2, 1, 0) == pytest.approx(sigmas[3] - sigmas[2], abs=1e-14)
    # Order 2 on nodes (σ_i, σ_{i-1}): l_0(τ) = (τ - σ_{i-1}) / (σ_i - σ_{i-1}), integrated by hand.
    a, b, s0, s1 = sigmas[2], sigmas[3], sigmas[2], sigmas[1]
    by_hand = ((b - s1) ** 2 - (a - s1) ** 2) / (2 * (s0 - s1))
    assert lms_coefficient(sigmas, 2, 2, 0) == pytest.approx(by_hand, abs=1e-13)
    # The basis sums to 1, so the coefficients of any order sum to the step length.
    for order in (1, 2, 3, 4):
        total = sum(lms_coefficient(sigmas, 4, order, j) for j in range(order))
        assert total == pytest.approx(sigmas[5] - sigmas[4], abs=1e-13)


def test_the_package_never_needs_scipy(monkeypatch):
    """No module of the package imports scipy (LMS integrates exactly itself), and LMS runs with it blocked."""
    package = Path(depth2img.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                assert not any(alias.name.split(".")[0] == "scipy" for alias in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "scipy", path
    monkeypatch.setitem(sys.modules, "scipy", None)  # any import of scipy now raises
    lms = schedulers.LMSDiscreteScheduler(use_karras_sigmas=True)
    lms.set_timesteps(5)
    sample = torch.ones(1, 4, 2, 2)
    for t in lms.timesteps:
        sample = lms.step(torch.zeros_like(sample), t, sample).prev_sample
    assert torch.equal(sample, torch.ones(1, 4, 2, 2))  # zero noise prediction: the sample does not move


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_config_round_trips_through_save_config(tmp_path, name):
    cls = getattr(schedulers, name)
    original = cls.from_config({**SD_BETAS, "prediction_type": "v_prediction", "timestep_spacing": "trailing"})
    path = original.save_config(tmp_path)
    saved = json.loads(path.read_text())
    assert saved["_class_name"] == name
    again = cls.from_config(load_json(path))
    assert again.config == original.config
    assert cls.from_pretrained(tmp_path).config == original.config
    again.set_timesteps(10)
    original.set_timesteps(10)
    assert torch.equal(again.timesteps, original.timesteps)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_loads_the_sd2_depth_scheduler_config(name):
    config = load_json(SD2_DEPTH_SCHEDULER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PNDM-only keys are unknown to the other classes
        scheduler = getattr(schedulers, name).from_config(config)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.steps_offset == 1
    assert scheduler.config.num_train_timesteps == 1000
    scheduler.set_timesteps(50)
    assert len(scheduler.timesteps) >= 50


def test_sd2_depth_config_builds_plms_exactly_as_the_reference(diffusers):
    reference = diffusers.PNDMScheduler.from_config(load_json(SD2_DEPTH_SCHEDULER))
    ours = schedulers.PNDMScheduler.from_config(load_json(SD2_DEPTH_SCHEDULER))
    assert_pair_matches(reference, ours, 50)
    assert ours.timesteps[:4].tolist() == [981, 961, 961, 941]  # leading + steps_offset, second step repeated


def test_unknown_config_key_warns_once_and_is_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = schedulers.DDIMScheduler.from_config({"not_a_ddim_key_xyz": 1})
        schedulers.DDIMScheduler.from_config({"not_a_ddim_key_xyz": 1})
    messages = [str(w.message) for w in caught if "not_a_ddim_key_xyz" in str(w.message)]
    assert len(messages) == 1
    assert "not_a_ddim_key_xyz" not in first.config


def test_trained_betas_replace_the_named_schedule(diffusers):
    betas = torch.linspace(0.0002, 0.03, 1000).tolist()
    for name in ("DDIMScheduler", "PNDMScheduler", "DDPMScheduler"):
        reference, ours = build_pair(diffusers, name, {"trained_betas": betas, "skip_prk_steps": True})
        assert torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)
        assert_pair_matches(reference, ours, 7, seed=1)


def test_step_kwargs_follow_each_step_signature():
    generator = torch.Generator()
    assert schedulers.DDIMScheduler().step_kwargs(eta=0.5, generator=generator) == {"eta": 0.5, "generator": generator}
    assert schedulers.DDPMScheduler().step_kwargs(eta=0.5, generator=generator) == {"generator": generator}
    assert schedulers.PNDMScheduler().step_kwargs(eta=0.5, generator=generator) == {}
    assert schedulers.LMSDiscreteScheduler().step_kwargs(eta=0.5, generator=generator) == {}


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_bad_input_gets_one_clear_sentence(name):
    cls = getattr(schedulers, name)
    scheduler = cls(num_train_timesteps=100)
    sample = torch.zeros(1, 4, 2, 2)
    with pytest.raises(RuntimeError, match=r"call set_timesteps\(num_inference_steps\) before step\(\)"):
        scheduler.step(sample, 10, sample)
    with pytest.raises(ValueError, match=r"num_inference_steps=0 is out of range; it must be between 1 and"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match=r"num_inference_steps=101 is out of range.*num_train_timesteps=100"):
        scheduler.set_timesteps(101)
    with pytest.raises(TypeError, match="num_inference_steps must be an integer"):
        scheduler.set_timesteps(2.5)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match=r"timestep 12 is not in this scheduler's schedule"):
        scheduler.step(sample, 12, sample)
    for key, value in (("prediction_type", "noise"), ("beta_schedule", "cosine"), ("timestep_spacing", "even")):
        with pytest.raises(ValueError, match=rf"{key}='{value}' is not supported; choose one of"):
            cls(**{key: value})


def test_class_specific_errors():
    with pytest.raises(ValueError, match="prediction_type='sample' is not supported; choose one of epsilon, v_pred"):
        schedulers.PNDMScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="num_inference_steps=3 is too few for PNDMScheduler's Runge-Kutta warm-up"):
        schedulers.PNDMScheduler(skip_prk_steps=False).set_timesteps(3)
    with pytest.raises(ValueError, match="variance_type='fixed_large_log' is not supported"):
        schedulers.DDPMScheduler(variance_type="fixed_large_log")
    ddpm = schedulers.DDPMScheduler(variance_type="learned_range")
    ddpm.set_timesteps(5)
    sample = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="needs a model output with twice the sample's 4 channels"):
        ddpm.step(sample, ddpm.timesteps[0], sample)
    ddim = schedulers.DDIMScheduler()
    with pytest.raises(ValueError, match=r"add_noise timesteps must lie in 0\.\.999, got \[1000\]"):
        ddim.add_noise(sample, sample, torch.tensor([1000]))
    ddim.set_timesteps(5)
    with pytest.raises(ValueError, match="pass either generator or variance_noise"):
        ddim.step(sample, ddim.timesteps[0], sample, eta=1.0, generator=torch.Generator(), variance_noise=sample)
    with pytest.raises(ValueError, match="use_beta_sigmas=True is not supported"):
        schedulers.LMSDiscreteScheduler(use_beta_sigmas=True)
    lms = schedulers.LMSDiscreteScheduler()
    lms.set_timesteps(2)
    for t in lms.timesteps:
        lms.step(sample, t, sample)
    with pytest.raises(RuntimeError, match="all 2 steps of the schedule are done"):
        lms.step(sample, lms.timesteps[-1], sample)
