"""The short-name registry: names, normalisation, config handling, and parity of every named sampler with the
diffusers scheduler built the way diffusers users build it (``Cls.from_config(pipe.scheduler.config, **options)``).
"""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch

import depth2img
from conftest import require
from depth2img import schedulers
from depth2img.configuration import load_json
from depth2img.schedulers import SCHEDULER_MODULES, SCHEDULER_PRESETS, get_scheduler, scheduler_names
from depth2img.schedulers.registry import _normalise, resolve_scheduler_name

SD2_DEPTH_SCHEDULER = Path(depth2img.__file__).parent / "configs" / "sd2-depth" / "scheduler" / "scheduler_config.json"


def sd2_config() -> dict:
    return load_json(SD2_DEPTH_SCHEDULER)


def test_names_are_unique_and_every_class_has_one():
    names = scheduler_names()
    assert names == [preset.name for preset in SCHEDULER_PRESETS]
    assert len(set(names)) == len(names)
    assert {preset.class_name for preset in SCHEDULER_PRESETS} == set(SCHEDULER_MODULES)
    for must in ("pndm", "ddim", "ddpm", "lms", "lms-karras", "euler", "euler-a", "heun", "dpm++2m-karras", "unipc"):
        assert must in names


def test_no_spelling_of_one_preset_collides_with_another():
    owner: dict[str, str] = {}
    for preset in SCHEDULER_PRESETS:
        for spelling in (preset.name, preset.label, *preset.aliases):
            if spelling:
                key = _normalise(spelling)
                assert owner.setdefault(key, preset.name) == preset.name, (spelling, owner[key])


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("DPM++ 2M Karras", "dpm++2m-karras"),  # A1111
        ("dpmpp_2m_karras", "dpm++2m-karras"),  # ComfyUI style
        ("dpmpp-2m", "dpm++2m"),
        ("DPM++ 2M SDE Karras", "dpm++2m-sde-karras"),
        ("Euler a", "euler-a"),
        ("euler_ancestral", "euler-a"),
        ("Euler-Ancestral", "euler-a"),
        ("uni_pc", "unipc"),
        ("PLMS", "pndm"),
        ("LMS Karras", "lms-karras"),
        ("  DDIM ", "ddim"),
    ],
)
def test_spellings_normalise_to_one_name(spelling, name):
    assert resolve_scheduler_name(spelling).name == name


def test_a_diffusers_class_name_is_accepted():
    preset = resolve_scheduler_name("EulerAncestralDiscreteScheduler")
    assert preset.class_name == "EulerAncestralDiscreteScheduler"
    assert dict(preset.options) == {}
    assert isinstance(get_scheduler("ddimscheduler", sd2_config()), schedulers.DDIMScheduler)


def test_unknown_names_get_one_sentence_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown scheduler 'dpm\+\+3m'; choose one of pndm, .*unipc-karras"):
        get_scheduler("dpm++3m")
    with pytest.raises(ValueError, match="scheduler name must be a non-empty string"):
        get_scheduler("  ")
    with pytest.raises(ValueError, match="DDIMScheduler does not take option\\(s\\) use_karras_sigmas"):
        get_scheduler("ddim", sd2_config(), use_karras_sigmas=True)
    with pytest.raises(TypeError, match="base_config must be a scheduler config mapping or a scheduler"):
        get_scheduler("ddim", 42)


def test_checkpoint_keys_are_kept_and_foreign_ones_dropped_silently():
    config = {**sd2_config(), "prediction_type": "v_prediction", "some_future_key": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropping the base class's keys is expected, not worth a warning
        ddim = get_scheduler("ddim", config)
        lms = get_scheduler("lms-karras", config)
    for scheduler in (ddim, lms):
        assert scheduler.config.beta_schedule == "scaled_linear"
        assert scheduler.config.beta_start == 0.00085
        assert scheduler.config.steps_offset == 1
        assert scheduler.config.prediction_type == "v_prediction"
        assert "skip_prk_steps" not in scheduler.config and "some_future_key" not in scheduler.config
    assert ddim.config.set_alpha_to_one is False  # DDIM knows this PNDM key: kept, as diffusers keeps it
    assert lms.config.use_karras_sigmas is True


def test_preset_options_win_over_the_base_config_and_overrides_over_both():
    karras_base = get_scheduler("lms-karras", sd2_config()).config
    assert get_scheduler("lms", karras_base).config.use_karras_sigmas is False
    assert get_scheduler("pndm-prk", sd2_config()).config.skip_prk_steps is False
    ddim = get_scheduler("ddim", sd2_config(), timestep_spacing="trailing")
    assert ddim.config.timestep_spacing == "trailing"


def test_a_scheduler_works_as_base_config_and_its_defaults_do_not_leak():
    pndm = schedulers.PNDMScheduler.from_config(sd2_config())  # timestep_spacing: PNDM's default, "leading"
    from_object = get_scheduler("lms", pndm)
    from_dict = get_scheduler("lms", sd2_config())
    assert from_object.config == from_dict.config
    assert from_object.config.timestep_spacing == "linspace"  # LMS's own default, as in diffusers


def _run(scheduler, steps: int, seed: int) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(seed)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        output = 0.9 * model_input + 0.2 * torch.sin(0.37 * model_input + float(t) / 97.0)
        kwargs = {"generator": generator} if takes_generator else {}
        sample = scheduler.step(output, t, sample, **kwargs).prev_sample
    return sample


@pytest.mark.parametrize("name", scheduler_names())
def test_every_name_samples_like_the_reference_built_the_diffusers_way(diffusers, name):
    preset = resolve_scheduler_name(name)
    if preset.class_name == "LMSDiscreteScheduler":
        require("scipy")  # the reference LMS needs it; ours does not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint_scheduler = diffusers.PNDMScheduler.from_config(sd2_config())
        reference = getattr(diffusers, preset.class_name).from_config(checkpoint_scheduler.config, **preset.options)
    ours = get_scheduler(name, sd2_config())
    assert type(ours).__name__ == preset.class_name
    shared = set(ours.config) & set(reference.config)
    assert {"beta_schedule", "steps_offset", "prediction_type", *preset.options} <= shared
    for key in shared:
        assert ours.config[key] == reference.config[key], key
    final_ours, final_reference = _run(ours, 10, seed=5), _run(reference, 10, seed=5)
    assert torch.equal(ours.timesteps, reference.timesteps.to(ours.timesteps.dtype))
    assert (final_ours - final_reference).abs().max().item() <= 1e-5


def test_the_docs_examples_run():
    """docs/schedulers.md promises runnable examples: run every python block of it."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "schedulers.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the SD2-depth config's clip_sample is not a PNDM key
            exec(compile(block, str(docs), "exec"), {"__name__": "docs_example"})
