"""``models.linear.Linear``: oneDNN (1×1 convolution) for large CPU float32 inputs, F.linear otherwise."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depth2img.models import UNet2DConditionModel, use_reference_arithmetic
from depth2img.models.linear import MIN_ONEDNN_ROWS, Linear, linear_as_conv
from model_pairs import load_config, twin


@pytest.mark.parametrize("shape", [(2, 77, 24), (300, 24), (2, 3, 40, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_same_result_as_f_linear_within_rounding(shape, bias):
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=bias)
    x = torch.randn(shape)
    got = layer(x)
    expected = F.linear(x, layer.weight, layer.bias)
    assert got.shape == expected.shape and got.is_contiguous()
    assert (got - expected).abs().max() <= 1e-5
    assert torch.allclose(
        linear_as_conv(x.double(), layer.weight.double(), None if not bias else layer.bias.double()),
        F.linear(x.double(), layer.weight.double(), None if not bias else layer.bias.double()),
        rtol=0,
        atol=1e-12,
    )  # the same map: float64 agrees to the last digits


def test_large_float32_input_takes_the_onednn_route(monkeypatch):
    import depth2img.models.linear as module

    routed = []
    monkeypatch.setattr(module, "linear_as_conv", lambda *args: routed.append(args) or linear_as_conv(*args))
    torch.manual_seed(0)
    layer, x = Linear(320, 320), torch.randn(2, 1024, 320)
    with torch.no_grad():
        fast = layer(x)
        assert len(routed) == 1
        use_reference_arithmetic(layer)
        reference = layer(x)
        assert len(routed) == 1  # reference arithmetic: F.linear, not the convolution
    # One thread (the tests' setting) gives oneDNN's and the BLAS's sums in the same order; more threads may not.
    assert (fast - reference).abs().max() <= 1e-5
    assert torch.equal(reference, F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(MIN_ONEDNN_ROWS - 1, 64),  # too few rows to pay for a convolution's setup
        torch.randn(2, 100, 64, dtype=torch.float64),  # not float32
        torch.randn(2, 64, 100).transpose(1, 2),  # features not contiguous
    ],
)
def test_other_inputs_use_f_linear_exactly(x):
    torch.manual_seed(0)
    layer = Linear(64, 16).to(x.dtype)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_still_an_nn_linear_with_the_same_parameters():
    layer = Linear(8, 4)
    assert isinstance(layer, nn.Linear)
    assert list(layer.state_dict()) == ["weight", "bias"]


def test_gradients_flow_through_the_onednn_route():
    torch.manual_seed(0)
    layer, x = Linear(16, 8), torch.randn(4, 64, 16, requires_grad=True)
    layer(x).square().sum().backward()
    reference = Linear(16, 8)
    reference.load_state_dict(layer.state_dict())
    reference.onednn = False
    x2 = x.detach().clone().requires_grad_()
    reference(x2).square().sum().backward()
    assert (x.grad - x2.grad).abs().max() <= 1e-4
    assert (layer.weight.grad - reference.weight.grad).abs().max() <= 1e-3


def test_reference_arithmetic_makes_the_unet_bit_identical_to_diffusers(diffusers):
    reference = diffusers.UNet2DConditionModel(**load_config("tiny", "unet")).eval()
    ours = twin(reference, UNet2DConditionModel)
    config = ours.config
    sample = torch.randn(2, config.in_channels, 32, 32)
    context = torch.randn(2, 77, config.cross_attention_dim)
    with torch.no_grad():
        expected = reference(sample, 10, context).sample
        default = ours(sample, 10, context).sample
        use_reference_arithmetic(ours)
        exact = ours(sample, 10, context).sample
    assert torch.equal(exact, expected)
    assert (default - expected).abs().max() <= 1e-5


def test_compiles_without_graph_breaks():
    """torch.compile (enable_cpu_speedups(compile_unet=True)) must see one graph, not a break per layer."""
    layer = Linear(64, 32)
    x = torch.randn(2, 100, 64)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    with torch.no_grad():
        assert (compiled(x) - F.linear(x, layer.weight, layer.bias)).abs().max() <= 1e-5
