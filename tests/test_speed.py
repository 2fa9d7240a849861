"""Opt-in CPU speed-ups (depth2img/speed.py): close to the default images, compatible with low-memory mode where
they can be, one clear error where they cannot. (torch.compile itself is exercised by the benchmarks: compiling
takes minutes.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depth2img import Depth2ImgPipeline
from depth2img.loading.random_model import write_random_pipeline
from depth2img.speed import enable_cpu_speedups


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_random_pipeline(tmp_path_factory.mktemp("speed") / "pipe", config="tiny", seed=0)


def generate(pipe):
    pipe.set_progress_bar_config(disable=True)
    image = np.random.default_rng(0).random((64, 48, 3))
    generator = torch.Generator().manual_seed(0)
    return pipe("a house", image=image, num_inference_steps=3, generator=generator, output_type="np").images


def vae_is_channels_last(pipe):
    return pipe.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_vae_gives_the_same_images_within_rounding(folder):
    expected = generate(Depth2ImgPipeline.from_pretrained(folder))
    pipe = Depth2ImgPipeline.from_pretrained(folder)
    enable_cpu_speedups(pipe)
    assert vae_is_channels_last(pipe)
    assert float(np.abs(generate(pipe) - expected).max()) <= 1e-5


def test_channels_last_survives_low_memory_reloads(folder):
    expected = generate(Depth2ImgPipeline.from_pretrained(folder))
    pipe = Depth2ImgPipeline.from_pretrained(folder, low_memory=True)
    enable_cpu_speedups(pipe)
    seen = []
    pipe.vae.decoder.register_forward_hook(lambda *_: seen.append(vae_is_channels_last(pipe)))
    assert float(np.abs(generate(pipe) - expected).max()) <= 1e-5
    assert seen == [True]


def test_compile_is_refused_with_low_memory(folder):
    pipe = Depth2ImgPipeline.from_pretrained(folder, low_memory=True)
    with pytest.raises(ValueError, match="compile_unet=True cannot be combined with low_memory=True"):
        enable_cpu_speedups(pipe, compile_unet=True)
