"""Seed-for-seed parity with diffusers' StableDiffusionDepth2ImgPipeline on the same tiny weights.

The reference is built by diffusers and saved with its ``save_pretrained``; ours is loaded from that folder with
our ``from_pretrained`` (our UNet, VAE, schedulers and DPT preprocessing; transformers' CLIP and DPT). Images
must agree within 1e-4 in float32 with ``output_type="np"``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import require
from pipeline_tiny import load_ours, load_reference, max_diff, random_pil, seeded, tiny_folder

TOLERANCE = 1e-4
STEPS = 3


@pytest.fixture(scope="module")
def pipes():
    require("diffusers")
    folder = tiny_folder()
    return load_reference(folder), load_ours(folder)


def run_both(pipes, seed=0, **kwargs):
    reference, ours = pipes
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("image", random_pil())
    generator = kwargs.pop("generator", None)
    ref_gen = generator(seed) if callable(generator) else seeded(seed)
    our_gen = generator(seed) if callable(generator) else seeded(seed)
    expected = reference(generator=ref_gen, output_type="np", **kwargs).images
    actual = ours(generator=our_gen, output_type="np", **kwargs).images
    return expected, actual


def assert_parity(expected, actual):
    assert actual.shape == expected.shape
    assert np.isfinite(actual).all()
    assert max_diff(expected, actual) <= TOLERANCE


def test_single_prompt_non_square(pipes):
    expected, actual = run_both(pipes, prompt="a red house")
    assert actual.shape == (1, 24, 40, 3)  # 40x24 stays 40 wide, 24 high
    assert_parity(expected, actual)


def test_outputs_depend_on_prompt_and_seed(pipes):
    """Guards the parity tests against a degenerate model that ignores its inputs."""
    _, ours = pipes
    a = ours("a red house", image=random_pil(), num_inference_steps=STEPS, generator=seeded(0), output_type="np")
    b = ours("blue sky", image=random_pil(), num_inference_steps=STEPS, generator=seeded(0), output_type="np")
    c = ours("a red house", image=random_pil(), num_inference_steps=STEPS, generator=seeded(1), output_type="np")
    assert max_diff(a.images, b.images) > 1e-2
    assert max_diff(a.images, c.images) > 1e-2


def test_two_prompts_two_images(pipes):
    images = [random_pil(seed=1), random_pil(seed=2)]
    expected, actual = run_both(pipes, prompt=["a cat", "a dog"], image=images)
    assert actual.shape[0] == 2
    assert_parity(expected, actual)


def test_num_images_per_prompt(pipes):
    expected, actual = run_both(pipes, prompt="a cat", num_images_per_prompt=2)
    assert actual.shape[0] == 2
    assert max_diff(actual[0], actual[1]) > 1e-3  # different noise per image
    assert_parity(expected, actual)


def test_negative_prompt(pipes):
    assert_parity(*run_both(pipes, prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"], image=random_pil()))


def test_prompt_embeds(pipes):
    generator = torch.Generator().manual_seed(5)
    embeds = torch.randn(1, 77, 32, generator=generator)
    negative = torch.randn(1, 77, 32, generator=generator)
    assert_parity(*run_both(pipes, prompt_embeds=embeds, negative_prompt_embeds=negative))


@pytest.mark.parametrize(("strength", "steps"), [(0.3, 4), (1.0, 3)])
def test_strength(pipes, strength, steps):
    assert_parity(*run_both(pipes, prompt="a cat", strength=strength, num_inference_steps=steps))


def test_no_guidance(pipes):
    assert_parity(*run_both(pipes, prompt="a cat", guidance_scale=1.0))


def with_scheduler(pipes, name):
    """Both pipelines with scheduler class ``name``, each built from the checkpoint's scheduler_config.json."""
    import diffusers

    from depth2img.configuration import load_json
    from depth2img.schedulers import scheduler_class

    reference, ours = pipes
    config = load_json(tiny_folder() / "scheduler" / "scheduler_config.json")
    ref_pipe = diffusers.StableDiffusionDepth2ImgPipeline(
        **{**reference.components, "scheduler": getattr(diffusers, name).from_config(config)}
    )
    our_pipe = type(ours)(**{**ours.components, "scheduler": scheduler_class(name).from_config(config)})
    for pipe in (ref_pipe, our_pipe):
        pipe.set_progress_bar_config(disable=True)
    return ref_pipe, our_pipe


def test_ddim_eta_with_generator_list(pipes):
    def generators(seed):
        return [seeded(seed), seeded(seed + 1)]

    ddim = with_scheduler(pipes, "DDIMScheduler")
    expected, actual = run_both(ddim, prompt="a cat", num_images_per_prompt=2, eta=0.5, generator=generators)
    assert_parity(expected, actual)
    # eta > 0 draws noise in every step: another seed for the list must change the result
    _, other = run_both(ddim, seed=7, prompt="a cat", num_images_per_prompt=2, eta=0.5, generator=generators)
    assert max_diff(actual, other) > 1e-3


def test_replacing_scheduler_from_the_pipeline_config(pipes):
    """The documented pattern ``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``."""
    import diffusers

    from depth2img.schedulers import DDIMScheduler

    reference, ours = pipes
    ref_pipe = diffusers.StableDiffusionDepth2ImgPipeline(**reference.components)
    ref_pipe.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
    our_pipe = type(ours)(**ours.components)
    our_pipe.scheduler = DDIMScheduler.from_config(our_pipe.scheduler.config)
    for pipe in (ref_pipe, our_pipe):
        pipe.set_progress_bar_config(disable=True)
    assert_parity(*run_both((ref_pipe, our_pipe), prompt="a cat"))


def test_user_depth_map(pipes):
    depth = torch.rand(1, 24, 40, generator=torch.Generator().manual_seed(3))
    expected, actual = run_both(pipes, prompt="a cat", depth_map=depth)
    assert_parity(expected, actual)
    _, estimated = run_both(pipes, prompt="a cat")
    assert max_diff(actual, estimated) > 1e-3  # the depth map is really used


@pytest.mark.parametrize(
    "name",
    [
        "EulerDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "EulerAncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "HeunDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DDPMScheduler",
    ],
)
def test_schedulers(pipes, name):
    assert_parity(*run_both(with_scheduler(pipes, name), prompt="a cat", num_inference_steps=4, strength=0.75))


def test_clip_skip(pipes):
    """clip_skip=1 uses the penultimate CLIP layer (through the final layer norm) for the prompt only.

    diffusers' own clip_skip reads ``text_encoder.text_model``, which transformers 5 removed, so there the
    reference is diffusers given the same embeddings computed straight from transformers' hidden states.
    """
    import transformers

    reference, ours = pipes
    tokens = reference.tokenizer(
        "a cat", padding="max_length", max_length=reference.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )  # fmt: skip
    encoder = reference.text_encoder
    hidden = encoder(tokens.input_ids, output_hidden_states=True).hidden_states[-2]
    norm = encoder.text_model.final_layer_norm if hasattr(encoder, "text_model") else encoder.final_layer_norm
    with torch.no_grad():
        skipped = norm(hidden)
    if int(transformers.__version__.split(".")[0]) >= 5:
        with pytest.raises(AttributeError):
            reference("a cat", image=random_pil(), num_inference_steps=STEPS, clip_skip=1, output_type="np")
    expected = reference(
        prompt_embeds=skipped, image=random_pil(), num_inference_steps=STEPS, generator=seeded(0), output_type="np"
    ).images
    actual = ours("a cat", image=random_pil(), num_inference_steps=STEPS, clip_skip=1, generator=seeded(0),
                  output_type="np").images  # fmt: skip
    assert_parity(expected, actual)
    plain = ours("a cat", image=random_pil(), num_inference_steps=STEPS, generator=seeded(0), output_type="np").images
    assert max_diff(actual, plain) > 1e-4  # clip skip changes the conditioning


def test_torch_image_with_depth_map_non_square(pipes):
    """A (B, C, H, W) tensor in [-1, 1] (the reference can only take tensors when a depth map is given)."""
    pixels = torch.from_numpy(np.asarray(random_pil(), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    depth = torch.rand(1, 24, 40, generator=torch.Generator().manual_seed(4))
    expected, actual = run_both(pipes, prompt="a cat", image=pixels, depth_map=depth)
    assert actual.shape == (1, 24, 40, 3)
    assert_parity(expected, actual)


def test_cross_attention_kwargs_scale_without_lora(pipes):
    """``{"scale": s}`` is accepted (it scales LoRA layers; without any it changes nothing)."""
    expected, actual = run_both(pipes, prompt="a cat", cross_attention_kwargs={"scale": 0.5})
    assert_parity(expected, actual)
