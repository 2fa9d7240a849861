"""TAESD (``AutoencoderTiny``): our implementation against diffusers' (state dict copied, random weights), loading
the published folder layout with strict keys, as the pipeline's VAE (seed for seed with diffusers' pipeline), and as
a preview decoder from callbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import require
from pipeline_tiny import build_reference, load_ours, max_diff, random_pil, seeded, tiny_folder

TINY = {  # a TAESD with the published layout, small enough for the default suite
    "encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8],
    "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [1, 1, 1, 1],
}  # fmt: skip


def reference_taesd(**config):
    diffusers = require("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderTiny(**config).eval()


def ours_from(reference):
    from depth2img import AutoencoderTiny

    ours = AutoencoderTiny.from_config(
        {k: v for k, v in reference.config.items() if not k.startswith("_") and k != "block_out_channels"}
    ).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("config", [{}, TINY], ids=["published", "tiny"])
def test_parity_with_diffusers(config):
    """The published architecture (2.4M parameters) and a tiny one: encode, decode and the 8-bit round trip."""
    reference = reference_taesd(**config)
    ours = ours_from(reference)
    assert set(ours.state_dict()) == set(reference.state_dict())
    images = torch.rand(2, 3, 24, 40, generator=seeded(1)) * 2 - 1
    with torch.no_grad():
        latents = reference.encode(images).latents
        assert latents.shape == (2, 4, 3, 5)
        assert max_diff(ours.encode(images).latents, latents) <= 1e-5 * max(1.0, float(latents.abs().max()))
        decoded = reference.decode(latents).sample
        assert max_diff(ours.decode(latents).sample, decoded) <= 1e-5
        assert max_diff(ours(images).sample, reference(images).sample) <= 1e-5
        assert max_diff(ours.encode(images, return_dict=False)[0], latents) <= 1e-5


def test_published_folder_layout_loads_unchanged(tmp_path):
    """diffusers writes the layout of madebyollin/taesd (config.json + diffusion_pytorch_model.safetensors); we read
    it with strict key matching, and diffusers reads what we write."""
    diffusers = require("diffusers")
    from depth2img import AutoencoderTiny

    reference = reference_taesd(**TINY)
    reference.save_pretrained(tmp_path / "taesd")
    ours = AutoencoderTiny.from_pretrained(tmp_path / "taesd")
    assert ours.config.scaling_factor == 1.0 and ours.config.latent_magnitude == 3 and ours.config.latent_shift == 0.5
    latents = torch.randn(1, 4, 4, 4, generator=seeded(2))
    with torch.no_grad():
        assert max_diff(ours.decode(latents).sample, reference.decode(latents).sample) <= 1e-5
    ours.save_pretrained(tmp_path / "ours")
    again = diffusers.AutoencoderTiny.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        assert max_diff(again.decode(latents).sample, reference.decode(latents).sample) <= 1e-5


def test_published_config_is_the_default_architecture():
    from depth2img import AutoencoderTiny
    from depth2img.loading.random_taesd import random_taesd

    published = random_taesd("taesd")
    assert dict(published.config) == dict(AutoencoderTiny().config) | {"block_out_channels": None}
    assert 2.4e6 < published.num_parameters() < 2.5e6


def test_random_taesd_writes_a_loadable_folder(tmp_path):
    from depth2img import AutoencoderTiny
    from depth2img.loading.random_taesd import random_taesd, write_random_taesd

    folder = write_random_taesd(tmp_path / "taesd", config="taesd-tiny", seed=3)
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AutoencoderTiny.from_pretrained(folder)
    latents = torch.randn(2, 4, 3, 5, generator=seeded(0))
    with torch.no_grad():
        decoded = loaded.decode(latents).sample
        assert max_diff(decoded, random_taesd("taesd-tiny", seed=3).decode(latents).sample) == 0
    assert float(decoded.std()) > 1e-3  # not a flat image: the random decoder still depends on the latents


# ---------------------------------------------------------------------------------------------- in the pipeline
def generate(pipe, **kwargs):
    kwargs.setdefault("generator", seeded(4))
    return pipe(
        ["a cat", "a dog"], image=[random_pil(), random_pil(seed=1)], num_inference_steps=3, output_type="np",
        **kwargs,
    ).images  # fmt: skip


def test_taesd_as_the_pipelines_vae_matches_diffusers_seed_for_seed():
    """The reference pipeline with diffusers' AutoencoderTiny against ours with our AutoencoderTiny (same weights):
    ``encode`` gives ``.latents`` (nothing drawn from the generator), decode uses scaling_factor 1.0."""
    diffusers = require("diffusers")
    reference_vae = reference_taesd(**TINY)
    reference = build_reference()
    reference = diffusers.StableDiffusionDepth2ImgPipeline(**{**reference.components, "vae": reference_vae})
    reference.set_progress_bar_config(disable=True)
    pipe = load_ours(tiny_folder(), vae=ours_from(reference_vae))
    assert pipe.vae_scale_factor == 8
    expected = generate(reference)
    ours = generate(pipe)
    assert ours.shape == (2, 24, 40, 3)
    assert max_diff(ours, expected) <= 1e-4  # the project's parity bound for whole pipeline runs (DESIGN.md)
    # one generator per image works too (no VAE sample is drawn from them)
    generators = [seeded(4), seeded(5)]
    assert max_diff(generate(pipe, generator=generators), generate(reference, generator=[seeded(4), seeded(5)])) <= 1e-4


def test_a_pipeline_with_taesd_saves_and_loads(tmp_path):
    from depth2img import AutoencoderTiny
    from depth2img.loading.random_taesd import random_taesd

    pipe = load_ours(tiny_folder(), vae=random_taesd("taesd-tiny"))
    pipe.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderTiny"]
    again = load_ours(tmp_path / "p")
    assert isinstance(again.vae, AutoencoderTiny)
    assert max_diff(generate(again), generate(pipe)) == 0


def test_vae_tiling_is_refused_for_taesd_with_the_pipeline_unchanged():
    from depth2img.loading.random_taesd import random_taesd

    pipe = load_ours(tiny_folder(), vae=random_taesd("taesd-tiny"))
    with pytest.raises(NotImplementedError, match="the vae \\(AutoencoderTiny\\) does not support enable_tiling"):
        pipe.enable_vae_tiling()
    pipe.enable_vae_slicing()
    assert pipe.vae.use_slicing
    sliced = generate(pipe)
    pipe.disable_vae_slicing()
    assert max_diff(sliced, generate(pipe)) <= 1e-6


def two_stage_taesd():
    """A TAESD whose 2x upsampling matches the tiny pipeline VAE's (the published one is 8x, as SD's VAE)."""
    from depth2img import AutoencoderTiny

    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=[8, 8], decoder_block_out_channels=[8, 8], num_encoder_blocks=[1, 1],
        num_decoder_blocks=[1, 1],
    ).eval()  # fmt: skip


def test_decode_preview_from_a_callback_uses_the_preview_vae():
    pipe = load_ours(tiny_folder())
    pipe.preview_vae = two_stage_taesd()
    previews, seen = [], []

    def show(pipe, step, timestep, tensors):
        seen.append(tensors["latents"].clone())
        previews.append(pipe.decode_preview(tensors["latents"], output_type="np"))
        return {}

    final = generate(pipe, callback_on_step_end=show)
    assert len(previews) == len(seen) >= 2 and previews[0].shape == (2, 24, 40, 3)
    with torch.no_grad():
        expected = (pipe.preview_vae.decode(seen[-1]).sample * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert max_diff(previews[-1], expected) == 0
    assert max_diff(previews[-1], final) > 1e-2  # the preview came from TAESD, not from the full VAE

    pipe.preview_vae = None  # without a preview VAE, the pipeline's own decodes: the last preview is the output
    full = []
    generate(pipe, callback_on_step_end=lambda p, i, t, x: full.append(p.decode_preview(x["latents"], "np")) or {})
    assert max_diff(full[-1], final) <= 1e-6
    images = pipe.decode_preview(seen[-1])
    assert len(images) == 2 and images[0].size == (40, 24)


def test_decode_preview_refuses_bad_arguments():
    pipe = load_ours(tiny_folder())
    with pytest.raises(ValueError, match="output_type='latent' is not supported for previews"):
        pipe.decode_preview(torch.zeros(1, 4, 3, 5), output_type="latent")
    with pytest.raises(ValueError, match="needs \\(batch, channels, height, width\\) latents, got shape \\(4, 3, 5\\)"):
        pipe.decode_preview(torch.zeros(4, 3, 5))


def test_preview_vae_follows_the_pipeline_to_a_dtype():
    pipe = load_ours(tiny_folder())
    pipe.preview_vae = two_stage_taesd()
    pipe.to(torch.bfloat16)
    assert pipe.preview_vae.dtype == torch.bfloat16
    preview = pipe.decode_preview(torch.zeros(1, 4, 12, 20), output_type="np")
    assert preview.dtype == np.float32 and preview.shape == (1, 24, 40, 3)


def test_write_random_taesd_refuses_a_non_empty_folder_unless_told(tmp_path):
    from depth2img.loading.random_taesd import write_random_taesd

    (tmp_path / "taesd").mkdir()
    (tmp_path / "taesd" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty; pass overwrite=True"):
        write_random_taesd(tmp_path / "taesd", config="taesd-tiny")
    assert (tmp_path / "taesd" / "keep.txt").read_text() == "mine"
    write_random_taesd(tmp_path / "taesd", config="taesd-tiny", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "taesd").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
