"""The shared attention module: its maths, the sliced backend (equal to SDPA) and the backend switches."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from depth2img.models import Attention, AutoencoderKL, UNet2DConditionModel
from model_pairs import load_config, max_diff

TOL = 1e-5


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q kᵀ / √d) v written out, on (batch, tokens, heads * d) tensors."""
    batch, tokens, inner = q.shape
    d = inner // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, t.shape[1], heads, d).permute(0, 2, 1, 3)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d**0.5, dim=-1)
    return (weights @ split(v)).permute(0, 2, 1, 3).reshape(batch, tokens, inner)


def test_cross_attention_computes_multi_head_attention():
    attention = Attention(16, heads=4, dim_head=6, cross_attention_dim=10).eval()
    x, context = torch.randn(3, 7, 16), torch.randn(3, 5, 10)
    with torch.no_grad():
        got = attention(x, context)
        q, k, v = attention.to_q(x), attention.to_k(context), attention.to_v(context)
        expected = attention.to_out[0](naive_attention(q, k, v, heads=4))
    assert got.shape == (3, 7, 16)
    assert max_diff(got, expected) <= TOL
    assert attention.to_q.bias is None and attention.to_out[0].bias is not None  # the UNet checkpoint's layout


def test_spatial_attention_normalises_attends_over_pixels_and_adds_the_input():
    attention = Attention(8, heads=1, dim_head=8, bias=True, norm_num_groups=4, eps=1e-6, residual_connection=True)
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        got = attention(x)
        tokens = F.group_norm(x, 4, attention.group_norm.weight, attention.group_norm.bias, 1e-6)
        tokens = tokens.flatten(2).transpose(1, 2)
        q, k, v = attention.to_q(tokens), attention.to_k(tokens), attention.to_v(tokens)
        out = attention.to_out[0](naive_attention(q, k, v, heads=1))
        expected = out.transpose(1, 2).reshape(2, 8, 3, 5) + x
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("slice_size", [1, 5, 12])
def test_sliced_attention_equals_sdpa(slice_size):
    attention = Attention(16, heads=4, dim_head=4, cross_attention_dim=8).eval()
    x, context = torch.randn(3, 9, 16), torch.randn(3, 6, 8)  # 3 × 4 = 12 rows: 5 leaves a remainder
    with torch.no_grad():
        expected = attention(x, context)
        attention.slice_size = slice_size
        got = attention(x, context)
    assert max_diff(got, expected) <= TOL


def _unet_output(model: UNet2DConditionModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 5, 8, 8, generator=generator)
    context = torch.randn(2, 3, 32, generator=generator)
    with torch.no_grad():
        return model(sample, 10, context).sample


def test_model_slicing_modes_equal_sdpa_and_none_restores_it():
    model = UNet2DConditionModel(**load_config("tiny", "unet")).eval()
    layers = model.attention_layers()
    expected = _unet_output(model)
    for mode, sizes in [
        ("auto", [max(1, layer.heads // 2) for layer in layers]),
        ("max", [1] * len(layers)),
        (2, [2] * len(layers)),
        ([1, None] * (len(layers) // 2), [1, None] * (len(layers) // 2)),
    ]:
        model.set_attention_slice(mode)
        assert [layer.slice_size for layer in layers] == sizes
        assert max_diff(_unet_output(model), expected) <= TOL
    model.set_attention_slice(None)
    assert all(layer.slice_size is None for layer in layers)
    assert torch.equal(_unet_output(model), expected)


def test_vae_attention_slices_too():
    vae = AutoencoderKL(**load_config("tiny", "vae")).eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mean
        vae.set_attention_slice("max")
        got = vae.encode(images).latent_dist.mean
    assert [layer.slice_size for layer in vae.attention_layers()] == [1, 1]
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize(
    ("slice_size", "message"),
    [
        (3, "slice_size=3 is larger than a layer's 2 heads"),
        (0, "slice_size=0 is not allowed"),
        (True, "slice_size=True is not allowed"),
        ("half", "slice_size='half' is not allowed"),
        ([1, 1], "slice_size has 2 entries but the model has"),
    ],
)
def test_bad_slice_size_gets_a_clear_error(slice_size, message):
    model = UNet2DConditionModel(**load_config("tiny", "unet"))
    with pytest.raises(ValueError, match=message):
        model.set_attention_slice(slice_size)
    assert all(layer.slice_size is None for layer in model.attention_layers())  # nothing half-applied


def test_xformers_backend_is_explicit_about_what_it_needs():
    model = UNet2DConditionModel(**load_config("tiny", "unet"))
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ImportError, match="pip install xformers"):
            model.enable_xformers_memory_efficient_attention()
        assert not any(layer.use_xformers for layer in model.attention_layers())
    elif not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA only"):
            model.enable_xformers_memory_efficient_attention()
    else:
        model = model.cuda().eval()
        expected = _unet_output(model.cpu()).cuda()
        model.cuda().enable_xformers_memory_efficient_attention()
        assert all(layer.use_xformers for layer in model.attention_layers())
        generator = torch.Generator().manual_seed(1)
        sample = torch.randn(2, 5, 8, 8, generator=generator).cuda()
        context = torch.randn(2, 3, 32, generator=generator).cuda()
        with torch.no_grad():
            got = model(sample, 10, context).sample
        assert max_diff(got, expected) <= 1e-4
    model.disable_xformers_memory_efficient_attention()
    assert not any(layer.use_xformers for layer in model.attention_layers())
