"""Folded nearest-×2 upsampling + 3×3 convolution equals upsample-then-convolve, in every layout and fallback."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depth2img.models import AutoencoderKL, use_reference_arithmetic
from depth2img.models.blocks import Upsample2D
from depth2img.models.nearest_conv import fold_nearest_kernel, upsample_nearest_conv
from model_pairs import load_config, twin


def _reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (2, 5, 7, 3), (3, 2, 1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_same_map_as_upsample_then_convolve_in_float64(shape, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 6, 3, padding=1, bias=bias).double()
    x = torch.randn(shape, dtype=torch.float64)
    got = upsample_nearest_conv(x, conv)
    assert got.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
    assert torch.allclose(got, _reference(x, conv), rtol=0, atol=1e-12)  # a different map would be off by O(1)


def test_channels_last_input_gives_channels_last_output():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 5, 6).to(memory_format=torch.channels_last)
    got = upsample_nearest_conv(x, conv)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - _reference(x, conv)).abs().max() <= 1e-5


def test_folded_kernel_sums_the_taps_each_phase_sees():
    weight = torch.arange(9.0).reshape(1, 1, 3, 3)  # rows (0 1 2) (3 4 5) (6 7 8)
    folded = fold_nearest_kernel(weight)
    assert folded.shape == (4, 1, 2, 2)
    assert folded[0, 0].tolist() == [[0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]  # phase (0, 0): top-left tap alone
    assert folded[3, 0].tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]]  # phase (1, 1): bottom-right alone


def test_half_precision_weights_are_folded_in_float32():
    weight = torch.full((1, 1, 3, 3), 1 + 2**-10, dtype=torch.float16)  # 3 × this is not a float16 sum of 3 terms
    assert fold_nearest_kernel(weight)[3, 0, 0, 0] == torch.tensor(4 * (1 + 2**-10)).half()


def _module(channels: int = 4) -> Upsample2D:
    torch.manual_seed(0)
    return Upsample2D(channels).eval()


def test_upsample2d_folds_large_inputs_and_matches_within_rounding():
    module, x = _module(), torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        folded = module(x)
        use_reference_arithmetic(module)
        reference = module(x)
    assert not torch.equal(folded, reference)  # the folded route really ran (different rounding) ...
    assert (folded - reference).abs().max() <= 1e-5  # ... and computes the same map
    assert torch.equal(reference, _reference(x, module.conv))


@pytest.mark.parametrize(
    "x, output_size",
    [
        (torch.randn(1, 4, 8, 8), None),  # too small to pay for folding
        (torch.randn(1, 4, 32, 32), (63, 64)),  # not an exact ×2 (odd skip sizes in the UNet)
    ],
)
def test_upsample2d_takes_the_reference_route_when_folding_does_not_apply(x, output_size):
    module = _module()
    size = output_size or (2 * x.shape[-2], 2 * x.shape[-1])
    with torch.no_grad():
        assert torch.equal(module(x, output_size), module.conv(F.interpolate(x, size=size, mode="nearest")))


def test_lora_wrapped_conv_takes_the_reference_route():
    from depth2img.adapters.lora_layer import LoRALayer

    module, x = _module(), torch.randn(1, 4, 32, 32)
    module.conv = LoRALayer(module.conv)
    with torch.no_grad():
        assert torch.equal(module(x), module.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))


def test_reference_arithmetic_makes_the_vae_decoder_bit_identical_to_diffusers(diffusers):
    reference = diffusers.AutoencoderKL(**load_config("tiny", "vae")).eval()
    ours = twin(reference, AutoencoderKL)
    latents = torch.randn(1, 4, 32, 32)  # 32² latents: the decoder's upsampler folds at the default
    with torch.no_grad():
        expected = reference.decode(latents).sample
        default = ours.decode(latents).sample
        use_reference_arithmetic(ours)
        exact = ours.decode(latents).sample
    assert torch.equal(exact, expected)
    assert 0 < (default - expected).abs().max() <= 1e-5
