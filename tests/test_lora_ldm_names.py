"""kohya LoRAs that name UNet layers after the original (ldm) checkpoint: same result as diffusers names."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from depth2img.adapters import LoraLoaderMixin, convert_lora_state_dict, lora_model
from depth2img.loading.keymaps import ldm_unet
from depth2img.loading.random_model import random_component
from depth2img.models import UNet2DConditionModel

RANK = 4
ALPHA = 2.0
# Original kohya name -> our layer, written out by hand from the tiny layout (layers_per_block 1; down levels
# CrossAttn, plain; up levels plain, CrossAttn): input_blocks 0 conv_in, 1 level 0, 2 its downsampler, 3 level 1;
# output_blocks 0-1 up level 0 (upsampler at .1.conv: no attention), 2-3 up level 1.
LDM_NAMES = {
    "input_blocks_0_0": "conv_in",
    "time_embed_0": "time_embedding.linear_1",
    "time_embed_2": "time_embedding.linear_2",
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",  # LoCon, 3x3
    "input_blocks_1_0_emb_layers_1": "down_blocks.0.resnets.0.time_emb_proj",
    "input_blocks_1_1_proj_in": "down_blocks.0.attentions.0.proj_in",  # stored as a 1x1 kernel below (SD1 style)
    "input_blocks_1_1_transformer_blocks_0_attn1_to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "input_blocks_1_1_transformer_blocks_0_attn2_to_out_0": (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"
    ),
    "input_blocks_2_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_3_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "middle_block_0_out_layers_3": "mid_block.resnets.0.conv2",
    "middle_block_1_proj_out": "mid_block.attentions.0.proj_out",
    "middle_block_1_transformer_blocks_0_attn2_to_k": "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "output_blocks_1_0_in_layers_2": "up_blocks.0.resnets.1.conv1",
    "output_blocks_1_1_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_3_1_transformer_blocks_0_ff_net_0_proj": (
        "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj"
    ),
    "output_blocks_3_1_transformer_blocks_0_ff_net_2": "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2",
    "out_2": "conv_out",
}
TEXT_NAMES = {
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "encoder.layers.0.self_attn.q_proj",
    "lora_te_text_model_encoder_layers_1_mlp_fc2": "encoder.layers.1.mlp.fc2",
}
ONE_BY_ONE_KERNEL = "input_blocks_1_1_proj_in"
NO_ALPHA = "time_embed_2"  # scale 1 without .alpha


class Host(LoraLoaderMixin):
    """The two components a pipeline gives the mixin."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        self.unet = unet
        self.text_encoder = text_encoder


@pytest.fixture(scope="module")
def base() -> Host:
    """Random tiny UNet and text encoder; tests copy it and never modify it."""
    return Host(random_component("unet", "tiny").eval(), random_component("text_encoder", "tiny").eval())


def _module_names(host: Host) -> dict[str, list[str]]:
    return {c: lora_model.lora_target_names(getattr(host, c)) for c in ("unet", "text_encoder")}


def _matrices(layer: nn.Module, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(layer, nn.Conv2d):
        down_shape, up_shape = (RANK, layer.in_channels, *layer.kernel_size), (layer.out_channels, RANK, 1, 1)
    else:
        down_shape, up_shape = (RANK, layer.in_features), (layer.out_features, RANK)
    return torch.randn(down_shape, generator=generator) * 0.3, torch.randn(up_shape, generator=generator) * 0.3


def _files(host: Host) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The same LoRA twice: UNet layers named after the original checkpoint, and after diffusers."""
    generator = torch.Generator().manual_seed(0)
    ldm, diffusers_names = {}, {}
    entries = [
        (f"lora_unet_{name}", "unet", ours, f"lora_unet_{ours.replace('.', '_')}") for name, ours in LDM_NAMES.items()
    ]
    entries += [(name, "text_encoder", ours, name) for name, ours in TEXT_NAMES.items()]
    for ldm_key, component, ours, diffusers_key in entries:
        down, up = _matrices(getattr(host, component).get_submodule(ours), generator)
        diffusers_names[f"{diffusers_key}.lora_down.weight"] = down
        diffusers_names[f"{diffusers_key}.lora_up.weight"] = up
        if ldm_key.endswith(ONE_BY_ONE_KERNEL):
            down, up = down[:, :, None, None], up[:, :, None, None]
        ldm[f"{ldm_key}.lora_down.weight"] = down
        ldm[f"{ldm_key}.lora_up.weight"] = up
        if not ldm_key.endswith(NO_ALPHA):
            diffusers_names[f"{diffusers_key}.alpha"] = ldm[f"{ldm_key}.alpha"] = torch.tensor(ALPHA)
    return ldm, diffusers_names


def _outputs(host: Host) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 5, 16, 16, generator=generator)
    context = torch.randn(2, 7, 32, generator=generator)
    ids = torch.randint(0, 1000, (2, 9), generator=generator)
    with torch.no_grad():
        return host.unet(sample, 10, context).sample, host.text_encoder(ids).last_hidden_state


def _loaded(base: Host, state_dict: dict[str, torch.Tensor]) -> Host:
    host = copy.deepcopy(base)
    host.load_lora_weights(dict(state_dict))
    return host


def test_hand_written_ldm_names_map_to_our_layers_with_their_alphas(base):
    ldm, diffusers_names = _files(base)
    converted = convert_lora_state_dict(ldm, _module_names(base))
    scales = {c: {name: lora.scale for name, lora in part.items()} for c, part in converted.items()}
    expected_unet = {ours: 1.0 if name == NO_ALPHA else ALPHA / RANK for name, ours in LDM_NAMES.items()}
    assert scales == {"unet": expected_unet, "text_encoder": dict.fromkeys(TEXT_NAMES.values(), ALPHA / RANK)}

    same = convert_lora_state_dict(diffusers_names, _module_names(base))
    assert {c: set(part) for c, part in same.items()} == {c: set(part) for c, part in converted.items()}


def test_ldm_and_diffusers_named_files_give_identical_outputs(base):
    ldm, diffusers_names = _files(base)
    unet_out, text_out = _outputs(_loaded(base, ldm))
    unet_ref, text_ref = _outputs(_loaded(base, diffusers_names))
    assert torch.equal(unet_out, unet_ref)
    assert torch.equal(text_out, text_ref)  # the lora_te_ part reads the same either way
    unet_base, text_base = _outputs(base)
    assert (unet_out - unet_base).abs().max() > 1e-3
    assert (text_out - text_base).abs().max() > 1e-3


@pytest.mark.parametrize(
    "ldm_name", ["input_blocks_1_1_transformer_blocks_0_attn1_to_q", "input_blocks_1_0_in_layers_2", ONE_BY_ONE_KERNEL]
)
def test_fused_weight_is_base_plus_up_down_times_alpha_over_rank(base, ldm_name):
    ldm, _ = _files(base)
    host = _loaded(base, ldm)
    layer = host.unet.get_submodule(LDM_NAMES[ldm_name])
    before = layer.weight.detach().clone()
    host.fuse_lora()
    down, up = ldm[f"lora_unet_{ldm_name}.lora_down.weight"], ldm[f"lora_unet_{ldm_name}.lora_up.weight"]
    by_hand = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) if down.ndim == 4 else up @ down
    expected = before + by_hand.reshape(before.shape) * ALPHA / RANK
    assert torch.allclose(layer.weight.detach(), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(before, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "layout",
    [
        {},  # the tiny layout
        {  # two resnets per level, attention on the other levels: the upsampler moves to output_blocks.2.2
            "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        },
    ],
)
def test_every_unet_layer_is_found_under_its_checkpoint_name(base, layout):
    config = {**base.unet.config, **layout}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNet2DConditionModel.extract_init_kwargs(config))
    names = lora_model.lora_target_names(unet)
    keymap = ldm_unet.keymap(config)  # the checkpoint loader's map, from the real config
    state_dict = {}
    for name in names:
        kohya = "lora_unet_" + keymap.source(f"{name}.weight").key.removesuffix(".weight").replace(".", "_")
        state_dict[f"{kohya}.lora_down.weight"] = torch.zeros(1, 1)
        state_dict[f"{kohya}.lora_up.weight"] = torch.zeros(1, 1)
    if layout:
        assert "lora_unet_output_blocks_2_2_conv.lora_down.weight" in state_dict
    converted = convert_lora_state_dict(state_dict, {"unet": names})
    assert sorted(converted["unet"]) == sorted(names)


def test_an_unknown_block_index_gets_one_clear_error(base):
    ldm, _ = _files(base)
    ldm["lora_unet_input_blocks_9_1_proj_in.lora_down.weight"] = torch.zeros(RANK, 16)
    ldm["lora_unet_input_blocks_9_1_proj_in.lora_up.weight"] = torch.zeros(16, RANK)
    with pytest.raises(ValueError, match=r"1 kohya LoRA entries match no layer .*ldm names.*input_blocks_9_1_proj_in"):
        convert_lora_state_dict(ldm, _module_names(base))


def test_a_file_mixing_both_namings_is_refused(base):
    ldm, diffusers_names = _files(base)
    mixed = {**ldm, **{k: v for k, v in diffusers_names.items() if "down_blocks_0_resnets_0_conv1" in k}}
    with pytest.raises(ValueError, match="mixes original .* with diffusers names"):
        convert_lora_state_dict(mixed, _module_names(base))
