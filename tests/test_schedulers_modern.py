"""Parity of Euler, Euler ancestral, Heun, DPM-Solver(++) and UniPC with the same-named diffusers schedulers (the
oracle), config round trips, and the clear errors for bad input.

Trajectories follow the depth2img pipeline (``scale_model_input`` → model → ``step``; image-to-image starts via
``set_begin_index`` and ``add_noise(latents, noise, timesteps[:1])``), driven by a deterministic fake model on
1×4×8×8 latents; stochastic samplers get identically seeded generators. The whole file runs in seconds.
"""

from __future__ import annotations

import inspect
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import depth2img
from depth2img import schedulers
from depth2img.configuration import load_json
from depth2img.schedulers.sigmas import interpolate_sigmas, karras_sigmas, sigmas_to_timesteps

TOLERANCE = 1e-5
SD2_DEPTH_SCHEDULER = Path(depth2img.__file__).parent / "configs" / "sd2-depth" / "scheduler"
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
CLASS_NAMES = (
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
)
KARRAS_CAPABLE = {name for name in CLASS_NAMES if name != "EulerAncestralDiscreteScheduler"}
STEP_COUNTS = (1, 2, 7, 25, 50)
SPACINGS = ("linspace", "leading", "trailing")
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def fake_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A smooth stand-in for a UNet, depending on both the (scaled) sample and the timestep."""
    return 0.9 * sample + 0.2 * torch.sin(0.37 * sample + float(t) / 97.0)


def build(library, class_name: str, config: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # another class's keys; diffusers' deprecation of "dpmsolver"
        return getattr(library, class_name).from_config(config)


def sample_like_pipeline(scheduler, num_steps: int, strength: float | None = None, step_kwargs=None, batch: int = 1):
    """Run the depth2img sampling loop; return everything the scheduler produced, stacked, for comparison."""
    scheduler.set_timesteps(num_steps)
    draw = torch.Generator().manual_seed(0)
    clean = torch.randn(batch, 4, 8, 8, generator=draw)
    noise = torch.randn(batch, 4, 8, 8, generator=draw)
    timesteps = scheduler.timesteps
    if strength is None:  # text-to-image style start from pure noise
        latents = noise * scheduler.init_noise_sigma
    else:  # StableDiffusionDepth2ImgPipeline.get_timesteps / prepare_latents
        t_start = max(num_steps - min(int(num_steps * strength), num_steps), 0)
        timesteps = timesteps[t_start * scheduler.order :]
        scheduler.set_begin_index(t_start * scheduler.order)
        latents = scheduler.add_noise(clean, noise, timesteps[:1].repeat(batch))
    kwargs = dict(step_kwargs or {})
    if "generator" in inspect.signature(scheduler.step).parameters:  # as the pipeline's prepare_extra_step_kwargs
        generators = [torch.Generator().manual_seed(1 + i) for i in range(batch)]
        kwargs["generator"] = generators[0] if batch == 1 else generators
    trace = [latents]
    for t in timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        output = scheduler.step(fake_model(model_input, t), t, latents, **kwargs)
        latents = output.prev_sample
        trace += [model_input, latents]
        if getattr(output, "pred_original_sample", None) is not None:
            trace.append(output.pred_original_sample)
    return torch.stack(trace)


def assert_same_schedule(reference, ours) -> None:
    assert ours.timesteps.dtype == reference.timesteps.dtype
    assert torch.equal(ours.timesteps, reference.timesteps), (ours.timesteps, reference.timesteps)
    assert ours.sigmas.shape == reference.sigmas.shape
    assert (ours.sigmas - reference.sigmas).abs().max().item() <= TOLERANCE
    assert abs(float(ours.init_noise_sigma) - float(reference.init_noise_sigma)) <= TOLERANCE


def assert_parity(diffusers, class_name: str, config: dict, num_steps: int, strength=None, step_kwargs=None):
    reference, ours = build(diffusers, class_name, config), build(schedulers, class_name, config)
    expected = sample_like_pipeline(reference, num_steps, strength, step_kwargs)
    actual = sample_like_pipeline(ours, num_steps, strength, step_kwargs)
    assert_same_schedule(reference, ours)
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    assert (actual - expected).abs().max().item() <= TOLERANCE


# ------------------------------------------------------------------------------------------------ parity cases
def _common_cases():
    """Every spacing × prediction type once per class, cycling step counts and Karras on/off."""
    for class_name in CLASS_NAMES:
        combos = itertools.product(SPACINGS, PREDICTIONS)
        for i, (spacing, prediction) in enumerate(combos):
            if class_name == "EulerAncestralDiscreteScheduler" and prediction == "sample":
                continue  # diffusers does not implement it (ours does: see test_euler_ancestral_sample_prediction)
            config = {**SD_BETAS, "timestep_spacing": spacing, "prediction_type": prediction, "steps_offset": 1}
            if class_name in KARRAS_CAPABLE and i % 2:
                config["use_karras_sigmas"] = True
            yield pytest.param(class_name, config, STEP_COUNTS[i % len(STEP_COUNTS)], id=f"{class_name}-{i}")


def _schedule_cases():
    """The other training schedules: DDPM's linear default, cosine (with Karras: fractional timesteps), trained."""
    trained = torch.linspace(0.0001, 0.02, 1000).tolist()
    for class_name in CLASS_NAMES:
        # σ_max capped: cosine's clipped last β gives σ ≈ 2e4, where Karras steps collapse onto the same timestep
        karras = {"use_karras_sigmas": True, "sigma_max": 80.0} if class_name in KARRAS_CAPABLE else {}
        yield pytest.param(class_name, {}, 25, id=f"{class_name}-linear")
        yield pytest.param(class_name, {"beta_schedule": "squaredcos_cap_v2", **karras}, 7, id=f"{class_name}-cosine")
        yield pytest.param(class_name, {"trained_betas": trained}, 10, id=f"{class_name}-trained")


def _option_cases():
    """Each class's own options."""
    yield pytest.param("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min"}, 10, id="euler-sigma_min")
    karras_range = {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}
    yield pytest.param("EulerDiscreteScheduler", karras_range, 10, id="euler-karras-range")
    yield pytest.param("HeunDiscreteScheduler", karras_range, 7, id="heun-karras-range")
    clip = {"clip_sample": True, "clip_sample_range": 0.5, "prediction_type": "sample"}
    yield pytest.param("HeunDiscreteScheduler", clip, 7, id="heun-clip")

    dpm = itertools.product(("dpmsolver++", "sde-dpmsolver++", "dpmsolver"), (1, 2, 3), ("midpoint", "heun"))
    for i, (algorithm, order, solver_type) in enumerate(dpm):
        config = {"algorithm_type": algorithm, "solver_order": order, "solver_type": solver_type}
        num_steps = (7, 25, 50, 2, 20)[i % 5]
        if algorithm == "dpmsolver" or i % 3 == 0:
            config["final_sigmas_type"] = "sigma_min"
        # Karras with "sigma_min" and >= 15 steps ends on a zero-length step: see test_zero_length_final_step
        zero_length_end = config.get("final_sigmas_type") == "sigma_min" and num_steps >= 15
        config["use_karras_sigmas"] = bool(i % 2) and not zero_length_end
        yield pytest.param("DPMSolverMultistepScheduler", config, num_steps, id=f"dpm-{i}")
    late = {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"}
    yield pytest.param("DPMSolverMultistepScheduler", late, 7, id="dpm-no-lower-order-final")
    yield pytest.param("DPMSolverMultistepScheduler", {"euler_at_final": True}, 20, id="dpm-euler-at-final")
    clipped = {"lambda_min_clipped": -2.5, "timestep_spacing": "trailing"}
    yield pytest.param("DPMSolverMultistepScheduler", clipped, 10, id="dpm-lambda-clipped")

    unipc = itertools.product(("bh1", "bh2"), (1, 2, 3), (True, False))
    for i, (solver_type, order, predict_x0) in enumerate(unipc):
        config = {"solver_type": solver_type, "solver_order": order, "predict_x0": predict_x0}
        config["use_karras_sigmas"] = bool(i % 2)
        if solver_type == "bh1" or not predict_x0:  # the reference returns NaN at σ = 0 for these
            config["final_sigmas_type"] = "sigma_min"
        yield pytest.param("UniPCMultistepScheduler", config, (7, 25, 50, 2, 20)[i % 5], id=f"unipc-{i}")
    yield pytest.param("UniPCMultistepScheduler", {"disable_corrector": [0, 2]}, 7, id="unipc-disable-corrector")
    no_lower = {"lower_order_final": False, "final_sigmas_type": "sigma_min"}
    yield pytest.param("UniPCMultistepScheduler", no_lower, 10, id="unipc-no-lower-order-final")


@pytest.mark.parametrize(("class_name", "config", "num_steps"), [*_common_cases(), *_schedule_cases()])
def test_trajectory_matches_reference(diffusers, class_name, config, num_steps):
    assert_parity(diffusers, class_name, config, num_steps)


@pytest.mark.parametrize(("class_name", "config", "num_steps"), list(_option_cases()))
def test_options_match_reference(diffusers, class_name, config, num_steps):
    assert_parity(diffusers, class_name, {**SD_BETAS, "steps_offset": 1, **config}, num_steps)


@pytest.mark.parametrize("class_name", CLASS_NAMES)
@pytest.mark.parametrize(("num_steps", "strength", "karras"), [(25, 0.5, True), (7, 0.75, False), (50, 0.3, False)])
def test_image_to_image_start_matches_reference(diffusers, class_name, num_steps, strength, karras):
    config = {**SD_BETAS, "steps_offset": 1, "timestep_spacing": "leading"}
    if karras and class_name in KARRAS_CAPABLE:
        config["use_karras_sigmas"] = True
    if class_name == "DPMSolverMultistepScheduler" and num_steps == 7:
        config["algorithm_type"] = "sde-dpmsolver++"  # a stochastic start as well
    assert_parity(diffusers, class_name, config, num_steps, strength=strength)


def test_euler_churn_matches_reference(diffusers):
    churn = {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 5.0}
    assert_parity(diffusers, "EulerDiscreteScheduler", {**SD_BETAS}, 10, step_kwargs=churn)


@pytest.mark.parametrize("class_name", ["EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_generator_lists_draw_like_reference(diffusers, class_name):
    config = {**SD_BETAS, "algorithm_type": "sde-dpmsolver++"}
    reference, ours = build(diffusers, class_name, config), build(schedulers, class_name, config)
    expected = sample_like_pipeline(reference, 7, batch=2)
    assert (sample_like_pipeline(ours, 7, batch=2) - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_add_noise_at_several_timesteps_matches_reference(diffusers, class_name):
    reference, ours = build(diffusers, class_name, SD_BETAS), build(schedulers, class_name, SD_BETAS)
    reference.set_timesteps(25)
    ours.set_timesteps(25)
    timesteps = ours.timesteps[[0, 7, -1]]
    clean, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    expected = reference.add_noise(clean, noise, timesteps)
    assert (ours.add_noise(clean, noise, timesteps) - expected).abs().max().item() <= TOLERANCE


def test_unipc_bh1_reaches_zero_sigma_without_nan(diffusers):
    """The reference's bh1 predictor computes 0 · ∞ at σ = 0 and returns NaN; ours ends on the data prediction
    and matches it everywhere before that last step."""
    config = {**SD_BETAS, "solver_type": "bh1"}
    reference = build(diffusers, "UniPCMultistepScheduler", config)
    ours = build(schedulers, "UniPCMultistepScheduler", config)
    expected, actual = sample_like_pipeline(reference, 7), sample_like_pipeline(ours, 7)
    assert torch.isnan(expected[-1]).all()  # documents the reference's behaviour
    assert torch.isfinite(actual).all()
    assert (actual[:-1] - expected[:-1]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("class_name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_zero_length_final_step(diffusers, class_name):
    """Karras σ ends at σ_min and final_sigmas_type="sigma_min" appends σ_min again: the last step has h = 0.
    The reference's heun / third-order weights are 0/0 there (NaN); ours takes the h → 0 limit, the identity.
    The same run matches the reference up to that step."""
    config = {**SD_BETAS, "use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_order": 3}
    config.update({"solver_type": "heun"} if class_name.startswith("DPM") else {"lower_order_final": False})
    reference, ours = build(diffusers, class_name, config), build(schedulers, class_name, config)
    expected, actual = sample_like_pipeline(reference, 20), sample_like_pipeline(ours, 20)
    assert torch.isnan(expected[-1]).all()  # documents the reference's behaviour
    assert (actual[:-1] - expected[:-1]).abs().max().item() <= TOLERANCE
    assert torch.isfinite(actual).all()
    if class_name.startswith("DPM"):  # (UniPC still applies its corrector to the input first)
        assert torch.equal(actual[-1], actual[-3])  # prev_sample of the last step is its input


def test_euler_ancestral_sample_prediction():
    """Ours also accepts x_0-predicting models: given x_0 = x - σ ε it samples as the ε model does."""
    eps_model = schedulers.EulerAncestralDiscreteScheduler(**SD_BETAS)
    x0_model = schedulers.EulerAncestralDiscreteScheduler(**SD_BETAS, prediction_type="sample")
    results = []
    for scheduler, as_x0 in ((eps_model, False), (x0_model, True)):
        scheduler.set_timesteps(5)
        latents = torch.ones(1, 4, 8, 8) * scheduler.init_noise_sigma
        generator = torch.Generator().manual_seed(3)
        for t, sigma in zip(scheduler.timesteps, scheduler.sigmas):
            eps = fake_model(scheduler.scale_model_input(latents, t), t)
            output = latents - sigma * eps if as_x0 else eps
            latents = scheduler.step(output, t, latents, generator=generator).prev_sample
        results.append(latents)
    assert (results[0] - results[1]).abs().max().item() <= TOLERANCE


def test_step_tuple_form_matches_reference(diffusers):
    for class_name in CLASS_NAMES:
        reference, ours = build(diffusers, class_name, SD_BETAS), build(schedulers, class_name, SD_BETAS)
        for scheduler in (reference, ours):
            scheduler.set_timesteps(4)
        t, sample = ours.timesteps[0], torch.randn(1, 4, 8, 8)
        takes_generator = "generator" in inspect.signature(reference.step).parameters
        kwargs = {"generator": torch.Generator().manual_seed(0)} if takes_generator else {}
        expected = reference.step(sample, t, sample, return_dict=False, **kwargs)
        actual = ours.step(sample, t, sample, return_dict=False, generator=torch.Generator().manual_seed(0))
        assert isinstance(actual, tuple) and len(actual) == len(expected), class_name
        assert (actual[0] - expected[0]).abs().max().item() <= TOLERANCE


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_real_world_switch_from_the_checkpoint_scheduler(diffusers, class_name):
    """``X.from_config(pipe.scheduler.config)`` where pipe.scheduler is the checkpoint's PNDM scheduler: ours from
    our PNDM, the reference from its own, then an image-to-image run as the depth pipeline makes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PNDM's own keys (skip_prk_steps, …)
        our_pipe_scheduler = schedulers.PNDMScheduler.from_pretrained(SD2_DEPTH_SCHEDULER)
        reference_pipe_scheduler = diffusers.PNDMScheduler.from_pretrained(SD2_DEPTH_SCHEDULER)
        ours = getattr(schedulers, class_name).from_config(our_pipe_scheduler.config)
        reference = getattr(diffusers, class_name).from_config(reference_pipe_scheduler.config)
    assert ours.config.timestep_spacing == reference.config.timestep_spacing  # the class's own, not PNDM's default
    for key in ours.config.keys() & reference.config.keys():
        assert ours.config[key] == reference.config[key], key
    expected = sample_like_pipeline(reference, 25, strength=0.75)
    assert (sample_like_pipeline(ours, 25, strength=0.75) - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_builds_from_the_package_scheduler_config(class_name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PNDM's own keys (skip_prk_steps, …)
        scheduler = getattr(schedulers, class_name).from_pretrained(SD2_DEPTH_SCHEDULER)
    raw = load_json(SD2_DEPTH_SCHEDULER / "scheduler_config.json")
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "steps_offset", "prediction_type"):
        assert scheduler.config[key] == raw[key]
    scheduler.set_timesteps(25)
    assert len(scheduler.timesteps) == 25 * scheduler.order - (scheduler.order - 1)


NON_DEFAULT_OPTIONS = {
    "EulerDiscreteScheduler": {"use_karras_sigmas": True, "sigma_min": 0.05, "final_sigmas_type": "sigma_min"},
    "EulerAncestralDiscreteScheduler": {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "HeunDiscreteScheduler": {"use_karras_sigmas": True, "clip_sample": True},
    "DPMSolverMultistepScheduler": {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "lambda_min_clipped": -3},
    "UniPCMultistepScheduler": {"solver_type": "bh1", "disable_corrector": [1], "final_sigmas_type": "sigma_min"},
}


@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_save_config_round_trip(tmp_path, class_name):
    cls = getattr(schedulers, class_name)
    first = cls(**SD_BETAS, steps_offset=1, **NON_DEFAULT_OPTIONS[class_name])
    path = first.save_config(tmp_path)
    assert load_json(path)["_class_name"] == class_name
    again = cls.from_config(load_json(path))
    assert again.config == first.config
    for scheduler in (first, again):
        scheduler.set_timesteps(7)
    assert torch.equal(again.timesteps, first.timesteps)
    assert torch.equal(again.sigmas, first.sigmas)


def test_default_lambda_clip_survives_json(tmp_path):
    first = schedulers.DPMSolverMultistepScheduler()  # lambda_min_clipped = -inf, written as -Infinity
    again = schedulers.DPMSolverMultistepScheduler.from_config(load_json(first.save_config(tmp_path)))
    assert again.config.lambda_min_clipped == -float("inf")


def test_sibling_solver_configs_switch_like_the_reference(diffusers):
    unipc_config = build(diffusers, "UniPCMultistepScheduler", SD_BETAS).config
    dpm_config = build(diffusers, "DPMSolverMultistepScheduler", SD_BETAS).config
    assert build(schedulers, "DPMSolverMultistepScheduler", unipc_config).config.solver_type == "midpoint"
    assert build(diffusers, "DPMSolverMultistepScheduler", unipc_config).config.solver_type == "midpoint"
    assert build(schedulers, "UniPCMultistepScheduler", dpm_config).config.solver_type == "bh2"
    assert build(diffusers, "UniPCMultistepScheduler", dpm_config).config.solver_type == "bh2"


# ------------------------------------------------------------------------------------------------ sigma maths
def test_karras_sigmas_span_the_range_densest_at_low_noise():
    sigmas = karras_sigmas(0.03, 14.6, 10)
    assert sigmas[0] == pytest.approx(14.6) and sigmas[-1] == pytest.approx(0.03)
    steps = -np.diff(sigmas)
    assert (steps > 0).all() and (np.diff(steps) < 0).all()  # descending, in ever smaller steps


def test_sigma_to_timestep_inverts_the_training_schedule():
    scheduler = schedulers.EulerDiscreteScheduler(**SD_BETAS)
    train = scheduler.train_sigmas
    t = np.array([0.0, 10.0, 500.0, 999.0, 123.5])
    recovered = sigmas_to_timesteps(interpolate_sigmas(t, train), np.log(train))
    assert np.abs(recovered - t).max() < 0.01  # log-linear inverse of a linear interpolation: exact at knots


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_bad_input_gets_one_clear_error(class_name):
    cls = getattr(schedulers, class_name)
    for key, value in (("prediction_type", "noise"), ("beta_schedule", "cubic"), ("timestep_spacing", "random")):
        with pytest.raises(ValueError, match=f"{key}='{value}' is not supported"):
            cls(**{key: value})
    scheduler = cls()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 4, 8, 8), 999, torch.zeros(1, 4, 8, 8))
    for bad in (0, 1001):
        with pytest.raises(ValueError, match=f"num_inference_steps={bad} is out of range"):
            scheduler.set_timesteps(bad)
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="not in this scheduler's schedule"):
        scheduler.step(torch.zeros(1, 4, 8, 8), 3, torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(torch.zeros(1, 3, 8, 8), scheduler.timesteps[0], torch.zeros(1, 4, 8, 8))
    for t in scheduler.timesteps:
        scheduler.step(torch.zeros(1, 4, 8, 8), t, torch.zeros(1, 4, 8, 8))
    with pytest.raises(RuntimeError, match="all 5 steps|all 9 steps"):
        scheduler.step(torch.zeros(1, 4, 8, 8), scheduler.timesteps[-1], torch.zeros(1, 4, 8, 8))


def test_solver_options_are_checked_at_construction():
    DPM, UniPC = schedulers.DPMSolverMultistepScheduler, schedulers.UniPCMultistepScheduler
    with pytest.raises(ValueError, match="algorithm_type='deis' is not supported"):
        DPM(algorithm_type="deis")
    with pytest.raises(ValueError, match="solver_type='bh2' is not supported"):
        DPM(solver_type="bh2")
    with pytest.raises(ValueError, match="solver_type='midpoint' is not supported"):
        UniPC(solver_type="midpoint")
    for cls in (DPM, UniPC):
        with pytest.raises(ValueError, match="solver_order=4"):
            cls(solver_order=4)
        with pytest.raises(ValueError, match="final_sigmas_type='last'"):
            cls(final_sigmas_type="last")
    with pytest.raises(ValueError, match="algorithm_type='dpmsolver'"):
        DPM(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="predict_x0=False"):
        UniPC(predict_x0=False)
