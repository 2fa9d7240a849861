"""Bad input gets one clear error before any model runs; accepted input kinds; where we do better than the reference."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import require
from pipeline_tiny import ModelsMustNotRun, load_ours, load_reference, max_diff, random_pil, seeded, tiny_folder

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return load_ours(tiny_folder())


@pytest.fixture(scope="module")
def reference():
    require("diffusers")
    return load_reference(tiny_folder())


def run(pipe, **kwargs):
    kwargs.setdefault("prompt", "a cat")
    kwargs.setdefault("image", random_pil())
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("generator", seeded(0))
    kwargs.setdefault("output_type", "np")
    return pipe(**kwargs).images


# ---------------------------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    ({"strength": -0.1}, ValueError, "strength must be a number in \\[0.0, 1.0\\], got -0.1"),
    ({"strength": 1.5}, ValueError, "strength"),
    ({"prompt_embeds": torch.zeros(1, 77, 32)}, ValueError, "either prompt or prompt_embeds, not both"),
    ({"prompt": None}, ValueError, "a prompt is required"),
    ({"prompt": 3}, TypeError, "prompt must be a string or a list of strings"),
    ({"prompt": []}, ValueError, "prompt is an empty list"),
    (
        {"prompt": None, "prompt_embeds": torch.zeros(1, 77, 32), "negative_prompt_embeds": torch.zeros(1, 76, 32)},
        ValueError,
        "must have the same shape, got \\(1, 77, 32\\) and \\(1, 76, 32\\)",
    ),
    ({"prompt": None, "prompt_embeds": torch.zeros(77, 32)}, ValueError, "prompt_embeds must be a \\(batch"),
    ({"negative_prompt": "x", "negative_prompt_embeds": torch.zeros(1, 77, 32)}, ValueError, "not both"),
    ({"prompt": ["a", "b"], "negative_prompt": ["x"], "image": [random_pil()] * 2}, ValueError, "1 entries but"),
    ({"negative_prompt": ["x"]}, TypeError, "negative_prompt must be of the same type as prompt"),
    ({"callback_on_step_end_tensor_inputs": ["latents", "noise"]}, ValueError, "unknown name\\(s\\) \\['noise'\\]"),
    ({"callback_on_step_end": "not callable"}, TypeError, "callback_on_step_end must be callable"),
    ({"callback_steps": 0}, ValueError, "callback_steps must be a positive integer, got 0"),
    ({"callback_steps": -2}, ValueError, "callback_steps must be a positive integer"),
    ({"image": None}, ValueError, "image is required"),
    ({"image": "photo.png"}, TypeError, "image must be a PIL image, a numpy array, a torch tensor or a list"),
    ({"image": []}, ValueError, "image is an empty list"),
    ({"image": [random_pil(), np.zeros((24, 40, 3))]}, TypeError, "mixes numpy and pil"),
    ({"image": [random_pil(), random_pil(32, 32)]}, ValueError, "same size"),
    ({"image": np.zeros((24, 40, 5), np.float32)}, ValueError, "numpy images must have 1, 3 channels"),
    ({"image": torch.zeros(1, 2, 24, 40)}, ValueError, "torch images must have 1, 3, 4 channels"),
    ({"image": np.zeros((2, 2, 2, 24, 40, 3))}, ValueError, "2-D, 3-D or 4-D"),
    ({"image": PIL.Image.new("RGB", (40, 1))}, ValueError, "image is 40x1 pixels; it must be at least 2x2"),
    ({"image": torch.zeros(1, 4, 12, 20)}, ValueError, "taken as latents.*pass depth_map"),
    (
        {"image": [random_pil(), random_pil(seed=1)], "prompt": ["a", "b"], "depth_map": torch.rand(3, 24, 40)},
        ValueError,
        "depth_map holds 3 maps but there are 2 images",
    ),
    (
        {"image": [random_pil()] * 3, "prompt": ["a", "b"], "num_images_per_prompt": 2},
        ValueError,
        "got 3 images for 2 prompt\\(s\\) x num_images_per_prompt=2; pass one image, one per prompt, or one per",
    ),
    ({"image": [random_pil(), random_pil(seed=1)]}, ValueError, "got 2 images for 1 prompt"),
    ({"depth_map": torch.rand(1, 2, 24, 40)}, ValueError, "depth_map must have shape \\(H, W\\), \\(B, H, W\\)"),
    ({"depth_map": "depth.png"}, TypeError, "depth_map must be a torch tensor, numpy array, PIL image"),
    ({"depth_map": torch.full((24, 40), float("nan"))}, ValueError, "depth_map contains NaN"),
    ({"generator": [seeded(0), seeded(1)]}, ValueError, "list of 2 generators for 1 images"),
    ({"generator": 42}, TypeError, "generator must be a torch.Generator"),
    ({"num_inference_steps": 2, "strength": 0.3}, ValueError, "2 x 0.3 = 0.6"),
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps must be between 1 and 1000, got 0"),
    ({"num_inference_steps": 2.5}, TypeError, "num_inference_steps must be an integer"),
    ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt must be a positive integer, got 0"),
    ({"guidance_scale": "high"}, TypeError, "guidance_scale must be a number"),
    ({"output_type": "jpeg"}, ValueError, "output_type='jpeg' is not supported; choose one of pil, np, pt, latent"),
    ({"cross_attention_kwargs": 0.5}, TypeError, "cross_attention_kwargs must be a dict"),
    ({"clip_skip": -1}, ValueError, "clip_skip must be a non-negative integer"),
    ({"clip_skip": 9}, ValueError, "clip_skip=9 is too large: the text encoder has only 4 layers"),
    ({"num_inference_step": 10}, TypeError, "unexpected keyword argument\\(s\\): num_inference_step"),
]


@pytest.mark.parametrize(("overrides", "error", "message"), BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_input_is_rejected_before_any_model_runs(pipe, overrides, error, message):
    with ModelsMustNotRun(pipe), pytest.raises(error, match=message):
        run(pipe, **overrides)


def test_missing_depth_estimator_asks_for_a_depth_map(pipe):
    bare = type(pipe)(**{**pipe.components, "depth_estimator": None})
    with ModelsMustNotRun(bare), pytest.raises(ValueError, match="no depth_estimator, so pass depth_map"):
        run(bare)
    assert run(bare, depth_map=torch.rand(24, 40)).shape == (1, 24, 40, 3)


# ---------------------------------------------------------------------------------------------- accepted kinds
def test_image_kinds_agree(pipe):
    """PIL, uint8 numpy, float numpy (HWC and BHWC), torch in [0, 1] and [-1, 1]: the same picture, the same result."""
    picture = random_pil()
    array = np.asarray(picture)
    expected = run(pipe, image=picture)
    tensor01 = torch.from_numpy(array.astype(np.float32) / 255).permute(2, 0, 1)
    for image in (
        array,
        array.astype(np.float32) / 255,
        (array.astype(np.float32) / 255)[None],
        [array.astype(np.float32) / 255],
        tensor01[None],
        tensor01 * 2 - 1,
        [tensor01],
    ):
        assert max_diff(expected, run(pipe, image=image)) <= 1e-5


def test_grayscale_images_are_used_as_rgb(pipe):
    gray = random_pil().convert("L")
    expected = run(pipe, image=gray.convert("RGB"))
    assert max_diff(expected, run(pipe, image=gray)) <= 1e-6
    assert max_diff(expected, run(pipe, image=np.asarray(gray))) <= 1e-5  # memory layout: last-bit differences


def test_depth_map_layouts_agree(pipe):
    depth = torch.rand(24, 40, generator=torch.Generator().manual_seed(2))
    expected = run(pipe, depth_map=depth[None])
    for layout in (depth, depth[None, None], depth.numpy(), [depth.numpy()], PIL.Image.fromarray(depth.numpy())):
        assert max_diff(expected, run(pipe, depth_map=layout)) <= 1e-6


def test_one_depth_map_serves_every_image(pipe):
    depth = torch.rand(24, 40, generator=torch.Generator().manual_seed(2))
    images = [random_pil(), random_pil(seed=1)]
    shared = run(pipe, prompt=["a", "b"], image=images, depth_map=depth)
    per_image = run(pipe, prompt=["a", "b"], image=images, depth_map=[depth, depth])
    assert max_diff(shared, per_image) == 0


def test_one_image_serves_every_prompt(pipe):
    result = run(pipe, prompt=["a cat", "a dog"], image=random_pil())
    assert result.shape == (2, 24, 40, 3)
    assert max_diff(result[0], result[1]) > 1e-3


def test_one_image_per_output(pipe):
    images = [random_pil(), random_pil(seed=1)]
    both = run(pipe, image=images, num_images_per_prompt=2, generator=[seeded(0), seeded(1)])
    second = run(pipe, image=images[1], generator=[seeded(1)])
    assert max_diff(both[1:], second) <= 1e-4


def test_image_size_is_floored_to_the_vae_multiple(pipe):
    assert run(pipe, image=random_pil(25, 41)).shape == (1, 24, 40, 3)


# -------------------------------------------------------------------------------- better than the reference
def test_numpy_hwc_non_square_keeps_height_and_width(pipe, reference):
    """The reference reads a numpy batch's (H, W) as (W, H) when sizing the depth map, so non-square input fails
    (and a single (H, W, C) array fails for any size: it is split into rows)."""
    array = np.asarray(random_pil()).astype(np.float32) / 255
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        run(reference, image=array[None])
    with pytest.raises(ValueError):
        run(reference, image=array)
    expected = run(pipe, image=random_pil())
    for image in (array, array[None]):
        ours = run(pipe, image=image)
        assert ours.shape == (1, 24, 40, 3)
        assert max_diff(ours, expected) <= 1e-5


def test_image_k_goes_with_prompt_k_for_all_its_images(pipe, reference):
    """With one image per prompt and several images per prompt, every image of prompt k starts from image k. The
    reference tiles the images instead ([i0, i1, i0, i1] against prompts [p0, p0, p1, p1])."""
    images = [random_pil(seed=1), random_pil(seed=2)]

    def arguments():
        return {"prompt": ["a cat", "a dog"], "image": images, "num_images_per_prompt": 2,
                "generator": [seeded(k) for k in range(4)]}  # fmt: skip

    ours = run(pipe, **arguments())
    dog_alone = run(pipe, prompt="a dog", image=images[1], num_images_per_prompt=2, generator=[seeded(2), seeded(3)])
    assert max_diff(ours[2:], dog_alone) <= 1e-4
    theirs = run(reference, **arguments())
    assert max_diff(theirs[[0, 3]], ours[[0, 3]]) <= 1e-4  # where the pairings coincide, the images agree
    assert max_diff(theirs[2], ours[2]) > 1e-3  # the reference's third image is "a dog" on image 0


def test_constant_depth_map_gives_no_nan(pipe, reference):
    flat = torch.ones(1, 24, 40)
    assert np.isnan(run(reference, depth_map=flat)).all()  # 0 / 0 in its min/max scaling
    ours = run(pipe, depth_map=flat)
    assert np.isfinite(ours).all()
    # a flat map means "no depth structure": the same result as an all-zero conditioning channel
    assert max_diff(ours, run(pipe, depth_map=torch.full((1, 24, 40), 5.0))) == 0


def test_latents_as_image_with_depth_map(pipe, reference):
    """4-channel latents plus a depth map: the reference sizes the depth map from the latents as if they were
    pixels and fails; ours equals running on the pixels with the same generator stream."""
    from depth2img.images import describe_images, images_to_tensor

    depth = torch.rand(1, 24, 40, generator=torch.Generator().manual_seed(6))
    from_pixels = run(pipe, depth_map=depth, generator=seeded(3))

    generator = seeded(3)
    pixels = images_to_tensor(describe_images(random_pil()), pipe.vae_scale_factor)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
    with pytest.raises(RuntimeError):
        run(reference, image=latents, depth_map=depth, generator=seeded(3))
    from_latents = run(pipe, image=latents, depth_map=depth, generator=generator)
    assert max_diff(from_pixels, from_latents) <= 1e-6


def test_torch_image_without_depth_map(pipe, reference):
    """The reference's depth preprocessing cannot take a [-1, 1] tensor; ours treats it like the same picture."""
    tensor = torch.from_numpy(np.asarray(random_pil()).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with pytest.raises(ValueError):
        run(reference, image=tensor)
    assert max_diff(run(pipe, image=tensor), run(pipe, image=random_pil())) <= 1e-5
