"""Memory and speed switches: attention slicing, xformers, VAE slicing and tiling (delegated to the models)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import require
from pipeline_tiny import load_ours, load_reference, max_diff, random_pil, seeded, tiny_folder

STEPS = 3


@pytest.fixture
def pipe():
    """A fresh pipeline per test: switches must not leak into other tests."""
    return load_ours(tiny_folder())


def run(pipe, **kwargs):
    kwargs.setdefault("prompt", ["a cat", "a dog"])
    kwargs.setdefault("image", [random_pil(), random_pil(seed=1)])
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("generator", seeded(0))
    kwargs.setdefault("output_type", "np")
    return pipe(**kwargs).images


@pytest.mark.parametrize("slice_size", ["auto", "max", 1])
def test_attention_slicing_keeps_the_output(pipe, slice_size, monkeypatch):
    expected = run(pipe)
    pieces = spy_on_sliced_attention(monkeypatch)
    pipe.enable_attention_slicing(slice_size)
    assert any(layer.slice_size is not None for layer in pipe.unet.attention_layers())
    assert max_diff(run(pipe), expected) <= 1e-5
    assert pieces and max(pieces) > 1  # attention really ran in slices, some of them in several pieces
    pieces.clear()
    pipe.disable_attention_slicing()
    assert all(layer.slice_size is None for layer in pipe.unet.attention_layers())
    assert max_diff(run(pipe), expected) <= 1e-6
    assert pieces == []


def spy_on_sliced_attention(monkeypatch) -> list[int]:
    """Record, for each sliced attention call, how many pieces its (batch x heads) rows were computed in."""
    from depth2img.models import attention

    pieces = []
    original = attention.sliced_attention

    def spy(query, key, value, slice_size):
        pieces.append(-(-query.shape[0] * query.shape[1] // slice_size))
        return original(query, key, value, slice_size)

    monkeypatch.setattr(attention, "sliced_attention", spy)
    return pieces


def test_vae_slicing_keeps_the_output(pipe, monkeypatch):
    expected = run(pipe)
    batches = spy_on_vae_passes(monkeypatch, pipe.vae)
    pipe.enable_vae_slicing()
    assert pipe.vae.use_slicing
    assert max_diff(run(pipe), expected) <= 1e-5
    assert batches == {"encode": [1, 1], "decode": [1, 1]}  # two images, one at a time
    for sizes in batches.values():
        sizes.clear()
    pipe.disable_vae_slicing()
    assert not pipe.vae.use_slicing
    run(pipe)
    assert batches == {"encode": [2], "decode": [2]}


def spy_on_vae_passes(monkeypatch, vae) -> dict[str, list[int]]:
    """Record the batch size of each pass through the VAE's encoder and decoder."""
    batches = {"encode": [], "decode": []}
    for name in batches:
        original = getattr(vae, f"_{name}_batch")

        def spy(x, original=original, sizes=batches[name]):
            sizes.append(x.shape[0])
            return original(x)

        monkeypatch.setattr(vae, f"_{name}_batch", spy)
    return batches


def test_vae_tiling_matches_the_reference_tiling(pipe):
    """40x24 images are larger than the tiny VAE's 16-pixel tiles, so encode and decode really run tiled."""
    require("diffusers")
    reference = load_reference(tiny_folder())
    untiled = run(pipe)
    pipe.enable_vae_tiling()
    reference.vae.enable_tiling()
    tiled = run(pipe)
    assert pipe.vae.use_tiling
    assert max_diff(tiled, untiled) > 1e-4  # tiles blend differently from one pass: tiling is in effect
    assert max_diff(tiled, run(reference)) <= 1e-4
    pipe.disable_vae_tiling()
    assert max_diff(run(pipe), untiled) == 0


def test_vae_tiling_options_reach_the_vae(pipe):
    pipe.enable_vae_tiling(tile_sample_size=8, overlap_factor=0.5)
    assert pipe.vae.tile_sample_min_size == 8 and pipe.vae.tile_overlap_factor == 0.5
    assert run(pipe).shape == (2, 24, 40, 3)


def test_xformers(pipe):
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ImportError, match="xformers"):
            pipe.enable_xformers_memory_efficient_attention()
    pipe.disable_xformers_memory_efficient_attention()  # always possible: back to SDPA
    assert not any(layer.use_xformers for layer in pipe.unet.attention_layers())
    assert run(pipe).shape == (2, 24, 40, 3)
