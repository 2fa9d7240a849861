"""Step callbacks (``callback_on_step_end`` and the deprecated ``callback``/``callback_steps``) and the progress bar."""

from __future__ import annotations

import io

import pytest
import torch

from conftest import require
from pipeline_tiny import load_ours, load_reference, max_diff, random_pil, seeded, tiny_folder

ALL_TENSORS = ["latents", "prompt_embeds", "negative_prompt_embeds", "depth_mask"]


@pytest.fixture(scope="module")
def pipe():
    """With DDIM: one UNet call per step (PNDM's PLMS repeats its first timestep), so counts are plain."""
    from depth2img.schedulers import DDIMScheduler

    pipe = load_ours(tiny_folder())
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def run(pipe, **kwargs):
    kwargs.setdefault("prompt", "a cat")
    kwargs.setdefault("image", random_pil())
    kwargs.setdefault("num_inference_steps", 4)
    kwargs.setdefault("strength", 0.75)  # 3 steps
    kwargs.setdefault("generator", seeded(0))
    kwargs.setdefault("output_type", "np")
    return pipe(**kwargs).images


class UNetInputs:
    """Records what the UNet receives at each step."""

    def __init__(self, unet):
        self.samples, self.contexts = [], []
        self.handle = unet.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.samples.append(args[0].clone())
        self.contexts.append(kwargs["encoder_hidden_states"].clone())

    def close(self):
        self.handle.remove()


def test_called_once_per_step_with_the_requested_tensors(pipe):
    calls = []

    def callback(p, step, timestep, tensors):
        calls.append((p, step, int(timestep), {name: t.shape for name, t in tensors.items()}))
        return {}

    run(pipe, num_images_per_prompt=2, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=ALL_TENSORS)
    assert [c[1] for c in calls] == [0, 1, 2]
    assert [c[2] for c in calls] == [int(t) for t in pipe.scheduler.timesteps[-3:]]
    assert all(c[0] is pipe for c in calls)
    shapes = calls[0][3]
    assert shapes["latents"] == (2, 4, 12, 20)
    assert shapes["prompt_embeds"] == (4, 77, 32)  # negative and positive, concatenated for guidance
    assert shapes["negative_prompt_embeds"] == (2, 77, 32)
    assert shapes["depth_mask"] == (4, 1, 12, 20)


def test_only_the_requested_tensors_are_passed(pipe):
    seen = []
    run(pipe, callback_on_step_end=lambda p, i, t, tensors: seen.append(sorted(tensors)) or {})
    assert seen == [["latents"]] * 3


def test_same_calls_as_the_reference():
    """With the checkpoint's PNDM (PLMS): its repeated first timestep, warm-up and order as the reference."""
    require("diffusers")
    reference, ours = load_reference(tiny_folder()), load_ours(tiny_folder())
    records = []
    for target in (reference, ours):
        record = []

        def callback(p, step, timestep, tensors, record=record):
            record.append((step, int(timestep), tensors["latents"].clone(), tensors["depth_mask"].clone()))
            return {}

        run(target, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "depth_mask"])
        records.append(record)
    assert len(records[1]) == 4  # 3 steps, PLMS's first timestep twice
    assert [r[:2] for r in records[0]] == [r[:2] for r in records[1]]
    for expected, actual in zip(*records):
        assert max_diff(expected[2], actual[2]) <= 1e-4
        assert max_diff(expected[3], actual[3]) <= 1e-5


def test_returned_latents_replace_the_current_ones(pipe):
    def callback(p, step, timestep, tensors):
        return {"latents": torch.full_like(tensors["latents"], 0.25)} if step == 2 else {}

    latents = run(pipe, output_type="latent", callback_on_step_end=callback)
    assert torch.all(latents == 0.25)


def test_returned_depth_mask_and_prompt_embeds_reach_the_unet(pipe):
    def callback(p, step, timestep, tensors):
        if step != 0:
            return {}
        return {
            "depth_mask": torch.full_like(tensors["depth_mask"], 0.5),
            "prompt_embeds": torch.zeros_like(tensors["prompt_embeds"]),
        }

    inputs = UNetInputs(pipe.unet)
    try:
        run(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=ALL_TENSORS)
    finally:
        inputs.close()
    assert not torch.all(inputs.samples[0][:, 4:] == 0.5)
    assert all(torch.all(sample[:, 4:] == 0.5) for sample in inputs.samples[1:])
    assert inputs.contexts[0].abs().sum() > 0
    assert all(torch.all(context == 0) for context in inputs.contexts[1:])


def test_depth_mask_changed_in_place_reaches_the_unet(pipe):
    def callback(p, step, timestep, tensors):
        tensors["depth_mask"].fill_(-0.75)
        return {}

    inputs = UNetInputs(pipe.unet)
    try:
        run(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["depth_mask"])
    finally:
        inputs.close()
    assert all(torch.all(sample[:, 4:] == -0.75) for sample in inputs.samples[1:])


def test_callback_can_switch_guidance_off(pipe):
    """diffusers' documented pattern: set ``_guidance_scale`` to 0 and keep the conditional halves."""

    def callback(p, step, timestep, tensors):
        if step == 0:
            p._guidance_scale = 0.0
            return {name: tensors[name].chunk(2)[-1] for name in ("prompt_embeds", "depth_mask")}
        return {}

    inputs = UNetInputs(pipe.unet)
    try:
        result = run(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=ALL_TENSORS)
    finally:
        inputs.close()
    assert [s.shape[0] for s in inputs.samples] == [2, 1, 1]
    assert result.shape == (1, 24, 40, 3)


def test_deprecated_callback_warns_and_is_called_every_callback_steps(pipe):
    calls = []
    with pytest.warns(FutureWarning, match="callback_on_step_end"):
        run(pipe, num_inference_steps=5, strength=1.0, callback=lambda *a: calls.append(a), callback_steps=2)
    assert [c[0] for c in calls] == [0, 2, 4]
    assert [int(c[1]) for c in calls] == [int(t) for t in pipe.scheduler.timesteps[::2]]
    assert calls[0][2].shape == (1, 4, 12, 20)


def test_deprecated_callback_as_the_reference():
    """With PNDM the reference calls it only after the warm-up step; the same here."""
    require("diffusers")
    reference, ours = load_reference(tiny_folder()), load_ours(tiny_folder())
    steps = []
    for target in (reference, ours):
        calls = []
        with pytest.warns(FutureWarning):
            run(target, num_inference_steps=5, strength=1.0, callback=lambda i, t, x, c=calls: c.append((i, int(t))),
                callback_steps=2)  # fmt: skip
        steps.append(calls)
    assert steps[0] == steps[1]
    assert len(steps[1]) == 2


def test_deprecated_callback_without_steps_runs_every_step(pipe):
    """The reference fails here (``i % None``); every step is the sensible default."""
    calls = []
    with pytest.warns(FutureWarning):
        run(pipe, callback=lambda *a: calls.append(a[0]))
    assert calls == [0, 1, 2]


def test_progress_bar_counts_the_steps_and_can_be_configured(pipe):
    shown = io.StringIO()
    pipe.set_progress_bar_config(file=shown, desc="denoising", ascii=True)
    try:
        run(pipe)
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "denoising" in shown.getvalue()
    assert "3/3" in shown.getvalue()
    quiet = io.StringIO()
    pipe.set_progress_bar_config(file=quiet, disable=True)
    run(pipe)
    assert quiet.getvalue() == ""
    assert pipe.num_timesteps == 3
