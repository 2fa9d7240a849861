"""Our UNet against diffusers' UNet2DConditionModel on identical weights, plus config and input errors."""

from __future__ import annotations

import time

import pytest
import torch

from depth2img.models import UNet2DConditionModel
from model_pairs import jitter_vectors, load_config, max_diff, twin

TOL = 1e-5

# (config overrides on top of the shipped tiny config, input shape, tokens, timestep)
CASES = {
    # The shipped tiny config: linear projections, per-block head counts, 5 input channels (depth).
    "tiny-linear-list-heads": ({}, (2, 5, 16, 16), 7, 10),
    # Conv projections, one head count for all blocks, 3 levels, sizes not divisible by the total
    # downsampling (exercises the upsamplers' explicit output sizes), batch 3, other time features.
    "conv-int-heads-odd-size": (
        {
            "block_out_channels": [16, 16, 32],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "attention_head_dim": 2,
            "use_linear_projection": False,
            "cross_attention_dim": 24,
            "in_channels": 4,
            "flip_sin_to_cos": False,
            "freq_shift": 1,
        },
        (3, 4, 10, 14),
        5,
        999.5,
    ),
    # Deeper blocks, two transformer layers, centred input, scaled mid block, non-square input.
    "deep-nonsquare": (
        {
            "layers_per_block": 2,
            "transformer_layers_per_block": 2,
            "attention_head_dim": [1, 2],
            "center_input_sample": True,
            "mid_block_scale_factor": 2.0,
            "norm_eps": 1e-6,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        },
        (2, 5, 8, 16),
        4,
        torch.tensor(321),
    ),
}


def _reference_and_ours(diffusers, overrides: dict):
    reference = jitter_vectors(diffusers.UNet2DConditionModel(**{**load_config("tiny", "unet"), **overrides})).eval()
    return reference, twin(reference, UNet2DConditionModel)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_reference(diffusers, case):
    overrides, shape, tokens, timestep = CASES[case]
    reference, ours = _reference_and_ours(diffusers, overrides)
    sample = torch.randn(shape)
    context = torch.randn(shape[0], tokens, reference.config.cross_attention_dim)
    with torch.no_grad():
        expected = reference(sample, timestep, encoder_hidden_states=context).sample
        got = ours(sample, timestep, encoder_hidden_states=context).sample
    assert got.shape == (shape[0], reference.config.out_channels, *shape[2:])
    assert max_diff(got, expected) <= TOL


def test_sd2_depth_keys_and_shapes_match_reference_on_meta(diffusers):
    config = load_config("sd2-depth", "unet")
    with torch.device("meta"):
        reference = diffusers.UNet2DConditionModel(**config)
        ours = UNet2DConditionModel(**config)
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order too, so saved files list keys like the reference's
    assert ours.num_parameters() == 865_913_604


def test_timestep_forms_agree():
    model = UNet2DConditionModel(**load_config("tiny", "unet")).eval()
    sample, context = torch.randn(2, 5, 8, 8), torch.randn(2, 3, 32)
    with torch.no_grad():
        outputs = [
            model(sample, t, context).sample
            for t in (7, 7.0, torch.tensor(7), torch.tensor([7]), torch.tensor([7, 7]), torch.tensor([7.0, 7.0]))
        ]
        other = model(sample, torch.tensor([7, 500]), context).sample
    for output in outputs[1:]:
        assert torch.equal(output, outputs[0])
    assert torch.equal(other[0], outputs[0][0]) and not torch.allclose(other[1], outputs[0][1])


def test_return_dict_false_gives_a_tuple_like_the_pipeline_uses():
    model = UNet2DConditionModel(**load_config("tiny", "unet")).eval()
    sample, context = torch.randn(1, 5, 8, 8), torch.randn(1, 3, 32)
    with torch.no_grad():
        out = model(sample, 3, encoder_hidden_states=context, cross_attention_kwargs=None, return_dict=False)
        named = model(sample, 3, context)
    assert isinstance(out, tuple) and len(out) == 1
    assert torch.equal(out[0], named.sample) and torch.equal(named[0], named.sample)


def test_cross_attention_scale_reaches_lora_layers_and_is_restored():
    model = UNet2DConditionModel(**load_config("tiny", "unet")).eval()
    to_q = model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    to_q.lora_scale = 1.0  # what a LoRA layer carries
    seen = []
    to_q.register_forward_hook(lambda module, args, out: seen.append(module.lora_scale))
    with torch.no_grad():
        model(torch.randn(1, 5, 8, 8), 1, torch.randn(1, 3, 32), cross_attention_kwargs={"scale": 0.5})
        model(torch.randn(1, 5, 8, 8), 1, torch.randn(1, 3, 32))
    assert seen == [0.5, 1.0]
    assert to_q.lora_scale == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"down_block_types": ["AttnDownBlock2D", "DownBlock2D"]}, "down_block_types.*'AttnDownBlock2D'"),
        ({"up_block_types": ["UpBlock2D", "Nope"]}, "up_block_types.*'Nope'"),
        ({"up_block_types": ["UpBlock2D"]}, "up_block_types has 1 entries"),
        ({"block_out_channels": [16, 32, 64]}, r"block_out_channels=\[16, 32, 64\]"),
        ({"attention_head_dim": [2, 4, 8]}, r"attention_head_dim=\[2, 4, 8\]"),
        ({"attention_head_dim": 3}, "attention_head_dim entry 3"),
        ({"layers_per_block": [1]}, r"layers_per_block=\[1\]"),
        ({"norm_num_groups": 5}, "norm_num_groups=5"),
        ({"cross_attention_dim": [32, 32]}, "cross_attention_dim"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep' is not supported"),
        ({"num_attention_heads": 4}, "num_attention_heads=4 is not supported"),
        ({"only_cross_attention": True}, "only_cross_attention=True"),
        ({"dual_cross_attention": True}, "dual_cross_attention=True"),
        ({"act_fn": "gelu"}, "act_fn='gelu'"),
        ({"mid_block_type": None}, "mid_block_type=None"),
    ],
)
def test_bad_config_gets_one_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet2DConditionModel(**{**load_config("tiny", "unet"), **overrides})


@pytest.mark.parametrize(
    ("sample_shape", "context_shape", "timestep", "kwargs", "message"),
    [
        ((1, 4, 8, 8), (1, 3, 32), 1, None, r"sample must be a \(batch, 5, height, width\)"),
        ((5, 8, 8), (1, 3, 32), 1, None, "sample must be"),
        ((1, 5, 8, 8), (1, 3, 16), 1, None, r"encoder_hidden_states must be a \(batch, tokens, 32\)"),
        ((2, 5, 8, 8), (1, 3, 32), 1, None, "batch 1 but sample has 2"),
        ((2, 5, 8, 8), (2, 3, 32), torch.tensor([1, 2, 3]), None, "timestep tensor"),
        ((1, 5, 8, 8), (1, 3, 32), "5", None, "timestep must be"),
        ((1, 5, 8, 8), (1, 3, 32), 1, {"foo": 1}, r"cross_attention_kwargs keys \['foo'\]"),
    ],
)
def test_bad_inputs_get_a_clear_error(sample_shape, context_shape, timestep, kwargs, message):
    model = UNet2DConditionModel(**load_config("tiny", "unet"))
    with pytest.raises(ValueError, match=message):
        model(torch.randn(sample_shape), timestep, torch.randn(context_shape), cross_attention_kwargs=kwargs)


def test_builds_on_meta_device_without_touching_data():
    with torch.device("meta"):
        model = UNet2DConditionModel(**load_config("sd2-depth", "unet"))
    assert all(p.is_meta for p in model.parameters())
    assert model.config.attention_head_dim == [5, 10, 20, 20]


@pytest.mark.slow
def test_full_size_sd2_depth_forward_matches_reference(diffusers):
    """The real architecture (random weights) at 32×32 latents, batch 2 as with guidance."""
    config = load_config("sd2-depth", "unet")
    reference = diffusers.UNet2DConditionModel(**config).eval()
    sample, context = torch.randn(2, 5, 32, 32), torch.randn(2, 77, 1024)
    with torch.no_grad():
        start = time.perf_counter()
        expected = reference(sample, 500, context).sample
        reference_seconds = time.perf_counter() - start
    weights = reference.state_dict()
    del reference
    with torch.device("meta"):
        ours = UNet2DConditionModel(**config)
    ours.load_state_dict(weights, strict=True, assign=True)  # shares the tensors: one copy in memory
    with torch.no_grad():
        start = time.perf_counter()
        got = ours.eval()(sample, 500, context).sample
        ours_seconds = time.perf_counter() - start
    diff = max_diff(got, expected)
    print(
        f"full-size UNet 32x32 batch 2: max abs diff {diff:.3g}; "
        f"reference {reference_seconds:.2f}s, ours {ours_seconds:.2f}s"
    )
    assert diff <= TOL
