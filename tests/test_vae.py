"""Our AutoencoderKL against diffusers' on identical weights: encode (mean, seeded samples), decode, slicing,
tiling; plus config and input errors."""

from __future__ import annotations

import pytest
import torch

from depth2img.models import AutoencoderKL
from model_pairs import jitter_vectors, load_config, max_diff, twin

TOL = 1e-5

CASES = {
    # The shipped tiny config, square images, batch 2.
    "tiny": ({}, (2, 3, 32, 32)),
    # Three levels, two resnets per stage, no mid attention, no quant convs, non-square, batch 3.
    "deep-no-attention-nonsquare": (
        {
            "block_out_channels": [8, 16, 16],
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "layers_per_block": 2,
            "mid_block_add_attention": False,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "latent_channels": 3,
        },
        (3, 3, 24, 40),
    ),
}


def _reference_and_ours(diffusers, overrides: dict):
    reference = jitter_vectors(diffusers.AutoencoderKL(**{**load_config("tiny", "vae"), **overrides})).eval()
    return reference, twin(reference, AutoencoderKL)


@pytest.mark.parametrize("case", list(CASES))
def test_encode_sample_decode_match_reference(diffusers, case):
    overrides, shape = CASES[case]
    reference, ours = _reference_and_ours(diffusers, overrides)
    images = torch.rand(shape) * 2 - 1
    with torch.no_grad():
        expected, got = reference.encode(images).latent_dist, ours.encode(images).latent_dist
        assert max_diff(got.mean, expected.mean) <= TOL
        assert max_diff(got.std, expected.std) <= TOL
        assert max_diff(got.var, expected.var) <= TOL
        assert torch.equal(got.mode(), got.mean)
        seeded = [dist.sample(torch.Generator().manual_seed(42)) for dist in (got, expected)]
        assert max_diff(*seeded) <= TOL
        generators = [[torch.Generator().manual_seed(s) for s in range(shape[0])] for _ in range(2)]
        per_item = [dist.sample(gens) for dist, gens in zip((got, expected), generators)]
        assert max_diff(*per_item) <= TOL
        assert not torch.allclose(seeded[0], per_item[0])  # the generators really drive the noise

        latents = torch.randn(shape[0], reference.config.latent_channels, shape[2] // 4, shape[3] // 4)
        decoded = ours.decode(latents).sample
        assert decoded.shape[1:] == (3, shape[2] // 4 * ours.downscale, shape[3] // 4 * ours.downscale)
        assert max_diff(decoded, reference.decode(latents).sample) <= TOL


def test_pipeline_call_shapes():
    vae = AutoencoderKL(**load_config("tiny", "vae")).eval()
    with torch.no_grad():
        latents = vae.encode(torch.rand(1, 3, 16, 16)).latent_dist.sample(torch.Generator().manual_seed(0))
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        (dist,) = vae.encode(torch.rand(1, 3, 16, 16), return_dict=False)
    assert latents.shape == (1, 4, 8, 8) and image.shape == (1, 3, 16, 16)
    assert dist.mean.shape == (1, 4, 8, 8)
    assert vae.config.scaling_factor == 0.18215


def test_sd2_depth_keys_and_shapes_match_reference_on_meta(diffusers):
    config = load_config("sd2-depth", "vae")
    with torch.device("meta"):
        reference = diffusers.AutoencoderKL(**config)
        ours = AutoencoderKL(**config)
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    assert got == expected and list(got) == list(expected)
    assert ours.num_parameters() == 83_653_863


def test_slicing_gives_the_same_result():
    vae = AutoencoderKL(**load_config("tiny", "vae")).eval()
    images, latents = torch.rand(3, 3, 16, 24), torch.randn(3, 4, 8, 12)
    with torch.no_grad():
        whole = vae.encode(images).latent_dist.mean, vae.decode(latents).sample
        vae.enable_slicing()
        sliced = vae.encode(images).latent_dist.mean, vae.decode(latents).sample
        vae.disable_slicing()
    assert max_diff(sliced[0], whole[0]) <= TOL and max_diff(sliced[1], whole[1]) <= TOL


def test_tiling_matches_the_reference_tiling(diffusers):
    """Same tiles, same blend: our tiled encode/decode equals diffusers' (including edge tiles)."""
    reference, ours = _reference_and_ours(diffusers, {"sample_size": 16})
    reference.enable_tiling()
    ours.enable_tiling()
    assert (ours.tile_sample_min_size, ours.tile_latent_min_size) == (16, 8)
    images, latents = torch.rand(2, 3, 40, 56) * 2 - 1, torch.randn(2, 4, 20, 28)
    with torch.no_grad():
        assert max_diff(ours.encode(images).latent_dist.mean, reference.encode(images).latent_dist.mean) <= TOL
        assert max_diff(ours.decode(latents).sample, reference.decode(latents).sample) <= TOL


def _tamed_tiny_vae() -> AutoencoderKL:
    """The tiny VAE with its residual branches scaled down, as a trained network's are small updates.

    A freshly initialised VAE is far from smooth, so tiles (each normalised with its own statistics and cut
    off from context beyond its border) give very different outputs; damping the branches makes the test
    measure the tiling itself (overlap, blend, stitch) rather than the chaos of random weights.
    """
    vae = AutoencoderKL(**load_config("tiny", "vae")).eval()
    with torch.no_grad():
        for name, module in vae.named_modules():
            if name.endswith(("conv2", "to_out.0")):
                module.weight.mul_(0.1)
                module.bias.mul_(0.1)
    return vae


def _tiled_relative_errors(vae: AutoencoderKL, image: torch.Tensor, tile: int) -> tuple[float, float]:
    """Mean |tiled - untiled| / mean |untiled|, for the encoder's mean and for the decoded image."""
    with torch.no_grad():
        vae.disable_tiling()
        latents = vae.encode(image).latent_dist.mean
        decoded = vae.decode(latents).sample
        vae.enable_tiling(tile_sample_size=tile)
        tiled_latents = vae.encode(image).latent_dist.mean
        tiled_decoded = vae.decode(latents).sample
        vae.disable_tiling()
    assert tiled_latents.shape == latents.shape and tiled_decoded.shape == decoded.shape
    relative = [(a - b).abs().mean() / b.abs().mean() for a, b in ((tiled_latents, latents), (tiled_decoded, decoded))]
    return relative[0].item(), relative[1].item()


def test_tiling_stays_close_to_untiled():
    """96×128 image, 64-pixel tiles (2×3 tiles): measured ~2% (latents) and ~15% (image) mean relative error;
    bounds ~1.5× that. Smaller tiles must be worse (less context per tile). See docs/models.md."""
    vae = _tamed_tiny_vae()
    image = torch.rand(1, 3, 96, 128) * 2 - 1
    latent_error, image_error = _tiled_relative_errors(vae, image, 64)
    small_latent_error, small_image_error = _tiled_relative_errors(vae, image, 32)
    assert 0 < latent_error < 0.03 and 0 < image_error < 0.22
    assert small_latent_error > latent_error and small_image_error > image_error


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"down_block_types": ["DownBlock2D", "DownEncoderBlock2D"]}, "down_block_types.*'DownBlock2D'"),
        ({"up_block_types": ["UpDecoderBlock2D"]}, "up_block_types has 1 entries"),
        ({"block_out_channels": [16, 32, 32]}, "down_block_types has 2 entries"),
        ({"norm_num_groups": 3}, "norm_num_groups=3"),
        ({"act_fn": "relu"}, "act_fn='relu'"),
        ({"layers_per_block": 0}, "layers_per_block=0"),
    ],
)
def test_bad_config_gets_one_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderKL(**{**load_config("tiny", "vae"), **overrides})


def test_bad_inputs_and_tile_settings_get_a_clear_error():
    vae = AutoencoderKL(**load_config("tiny", "vae"))
    with pytest.raises(ValueError, match=r"x must be a \(batch, 3, height, width\)"):
        vae.encode(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"z must be a \(batch, 4, height, width\)"):
        vae.decode(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="tile_sample_size=13 must be a positive multiple of 2"):
        vae.enable_tiling(tile_sample_size=13)
    with pytest.raises(ValueError, match="overlap_factor=1.0"):
        vae.enable_tiling(overlap_factor=1.0)
    with pytest.raises(ValueError, match="generators for a batch of 2"):
        vae.encode(torch.rand(2, 3, 8, 8)).latent_dist.sample([torch.Generator()] * 3)
