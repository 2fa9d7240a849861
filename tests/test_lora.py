"""LoRA: our layer and loaders against diffusers + peft on tiny components (same base weights, same files)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import require
from depth2img.adapters import LoRALayer, LoraLoaderMixin, convert_lora_state_dict, lora_model
from depth2img.models import UNet2DConditionModel
from model_pairs import CONFIGS, jitter_vectors, load_config, max_diff, twin

TOL = 1e-5
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "conv1", "conv_shortcut"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


class Host(LoraLoaderMixin):
    """The two components a pipeline gives the mixin."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        self.unet = unet
        self.text_encoder = text_encoder


def _text_encoder() -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(CONFIGS / "tiny" / "text_encoder"))
    return jitter_vectors(CLIPTextModel(config)).eval()


@pytest.fixture
def base(diffusers):
    """Reference UNet and text encoder with random weights (copied, never modified by a test)."""
    unet = jitter_vectors(diffusers.UNet2DConditionModel(**load_config("tiny", "unet"))).eval()
    return unet, _text_encoder()


def _inputs():
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 5, 16, 16, generator=generator)
    context = torch.randn(2, 7, 32, generator=generator)
    ids = torch.randint(0, 1000, (2, 9), generator=generator)
    return sample, context, ids


def _randomize_lora(model: nn.Module, seed: int) -> None:
    """peft starts lora_B at zero; give every LoRA matrix random, clearly non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _diffusers_lora_file(diffusers, base, folder, rank=4, alpha=None, seed=0, metadata=False):
    """A LoRA file written by diffusers' save_lora_weights from peft adapters on the reference components."""
    peft = require("peft")
    from peft.utils import get_peft_model_state_dict

    unet, text_encoder = (copy.deepcopy(m) for m in base)
    unet_config = peft.LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=UNET_TARGETS)
    text_config = peft.LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=TEXT_TARGETS)
    unet.add_adapter(unet_config)
    text_encoder.add_adapter(text_config)
    _randomize_lora(unet, seed)
    _randomize_lora(text_encoder, seed + 1)
    extra = {}
    if metadata:
        extra = {
            "unet_lora_adapter_metadata": unet_config.to_dict(),
            "text_encoder_lora_adapter_metadata": text_config.to_dict(),
        }
    diffusers.StableDiffusionDepth2ImgPipeline.save_lora_weights(
        folder,
        unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(text_encoder),
        **extra,
    )
    return folder / "pytorch_lora_weights.safetensors"


def _reference_with_lora(diffusers, base, source, adapter_name=None):
    """diffusers' own loading path (what its load_lora_weights does) on copies of the base components."""
    unet, text_encoder = (copy.deepcopy(m) for m in base)
    mixin = diffusers.StableDiffusionDepth2ImgPipeline
    state_dict, alphas, metadata = mixin.lora_state_dict(source, return_lora_metadata=True)
    mixin.load_lora_into_unet(state_dict, alphas, unet, adapter_name=adapter_name, metadata=metadata)
    mixin.load_lora_into_text_encoder(state_dict, alphas, text_encoder, adapter_name=adapter_name, metadata=metadata)
    return unet, text_encoder


def _ours(base) -> Host:
    return Host(twin(base[0], UNet2DConditionModel), copy.deepcopy(base[1]))


@torch.no_grad()
def _reference_outputs(diffusers, unet, text_encoder, scale=None):
    sample, context, ids = _inputs()
    kwargs = None if scale is None else {"scale": scale}
    noise = unet(sample, 10, context, cross_attention_kwargs=kwargs).sample
    diffusers.utils.scale_lora_layers(text_encoder, scale if scale is not None else 1.0)
    try:
        text = text_encoder(ids)[0]
    finally:
        diffusers.utils.unscale_lora_layers(text_encoder, scale)
    return noise, text


@torch.no_grad()
def _our_outputs(host: Host, scale=None):
    sample, context, ids = _inputs()
    kwargs = None if scale is None else {"scale": scale}
    noise = host.unet(sample, 10, context, cross_attention_kwargs=kwargs).sample
    with host.text_encoder_lora_scale(scale):
        text = host.text_encoder(ids)[0]
    return noise, text


def _assert_close(ours, reference, tol=TOL):
    for got, expected in zip(ours, reference):
        assert max_diff(got, expected) <= tol


# ---------------------------------------------------------------------------------------------------------------
# The layer on its own


def _layer(kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(6, 5)
    if kind == "conv3x3":
        return nn.Conv2d(4, 6, 3, stride=2, padding=1)
    return nn.Conv2d(4, 6, 1)


def _layer_input(kind: str) -> torch.Tensor:
    return torch.randn(3, 6) if kind == "linear" else torch.randn(2, 4, 9, 7)


def _adapter(base: nn.Module, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(base, nn.Linear):
        return torch.randn(rank, base.in_features, generator=generator), torch.randn(
            base.out_features, rank, generator=generator
        )
    down = torch.randn(rank, base.in_channels, *base.kernel_size, generator=generator)
    return down, torch.randn(base.out_channels, rank, 1, 1, generator=generator)


@pytest.mark.parametrize("kind", ["linear", "conv3x3", "conv1x1"])
def test_layer_output_is_base_plus_scaled_low_rank_and_fusing_round_trips_exactly(kind):
    base = _layer(kind)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    layer = LoRALayer(base)
    (down_a, up_a), (down_b, up_b) = _adapter(base, 2, 0), _adapter(base, 3, 1)
    layer.add_adapter("a", down_a, up_a, scale=0.5)
    layer.add_adapter("b", down_b, up_b, scale=2.0)
    layer.active_adapters = ["a", "b"]
    layer.adapter_weight["b"] = 0.25
    layer.lora_scale = 0.8
    x = _layer_input(kind)

    def low_rank(down, up):
        if kind == "linear":
            return x @ down.T @ up.T
        return F.conv2d(F.conv2d(x, down, stride=base.stride, padding=base.padding), up)

    with torch.no_grad():
        expected = base(x) + 0.8 * (0.5 * low_rank(down_a, up_a) + 0.25 * 2.0 * low_rank(down_b, up_b))
        got = layer(x)
        assert max_diff(got, expected) <= TOL

        fused = layer.fuse(lora_scale=0.8)
        assert sorted(fused) == ["a", "b"]
        assert not torch.equal(base.weight, original["weight"])
        assert max_diff(layer(x), expected) <= TOL  # the fused weight gives the same output, LoRA not added twice
        layer.unfuse()
    assert torch.equal(base.weight, original["weight"]) and torch.equal(base.bias, original["bias"])
    assert layer.fused_adapters == []
    with torch.no_grad():
        assert torch.equal(layer(x), got)


def test_layer_rejects_shapes_that_do_not_fit():
    layer = LoRALayer(nn.Linear(6, 5))
    with pytest.raises(ValueError, match=r"A \(2, 7\), B \(5, 2\) do not fit a Linear that needs A \(2, 6\)"):
        layer.add_adapter("a", torch.zeros(2, 7), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="nn.Linear and nn.Conv2d"):
        LoRALayer(nn.Embedding(3, 4))


# ---------------------------------------------------------------------------------------------------------------
# diffusers / peft files: parity with diffusers' own loading


@pytest.mark.parametrize("scale", [None, 1.0, 0.5])
def test_diffusers_file_matches_reference(diffusers, base, tmp_path, scale):
    path = _diffusers_lora_file(diffusers, base, tmp_path)
    reference = _reference_with_lora(diffusers, base, str(path))
    ours = _ours(base)
    ours.load_lora_weights(str(tmp_path))  # the folder: pytorch_lora_weights.safetensors is found by name
    assert ours.get_list_adapters() == {"unet": ["default_0"], "text_encoder": ["default_0"]}
    ours_out = _our_outputs(ours, scale)
    _assert_close(ours_out, _reference_outputs(diffusers, *reference, scale))
    base_out = _our_outputs(_ours(base), scale)
    assert all(max_diff(o, b) > 1e-3 for o, b in zip(ours_out, base_out))  # the LoRA does change both outputs


def test_scale_half_is_halfway_and_restored_after_the_call(diffusers, base, tmp_path):
    ours = _ours(base)
    ours.load_lora_weights(_diffusers_lora_file(diffusers, base, tmp_path))
    plain = _our_outputs(_ours(base))
    full = _our_outputs(ours)
    half = _our_outputs(ours, 0.5)
    # Each layer's LoRA term is halved; the model is not linear in it, but the result lies between.
    for p, f, h in zip(plain, full, half):
        assert max_diff(h, p) > 1e-4 and max_diff(h, f) > 1e-4
    _assert_close(_our_outputs(ours), full, tol=0.0)  # the scale does not stick
    assert all(layer.lora_scale == 1.0 for _, layer in lora_model.lora_layers(ours.unet))


def test_metadata_alpha_is_honoured_like_diffusers(diffusers, base, tmp_path):
    path = _diffusers_lora_file(diffusers, base, tmp_path, rank=4, alpha=2, metadata=True)
    reference = _reference_with_lora(diffusers, base, str(path))
    ours = _ours(base)
    ours.load_lora_weights(path)
    layer = ours.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.file_scale["default_0"] == 0.5
    _assert_close(_our_outputs(ours, 0.5), _reference_outputs(diffusers, *reference, 0.5))


def test_several_adapters_and_their_weights_match_reference(diffusers, base, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    file_a = _diffusers_lora_file(diffusers, base, tmp_path / "a", seed=0)
    file_b = _diffusers_lora_file(diffusers, base, tmp_path / "b", rank=2, seed=5)
    ref_unet, ref_text = _reference_with_lora(diffusers, base, str(file_a), adapter_name="a")
    mixin = diffusers.StableDiffusionDepth2ImgPipeline
    state_dict, alphas = mixin.lora_state_dict(str(file_b))
    mixin.load_lora_into_unet(state_dict, alphas, ref_unet, adapter_name="b")
    mixin.load_lora_into_text_encoder(state_dict, alphas, ref_text, adapter_name="b")

    ours = _ours(base)
    ours.load_lora_weights(file_a, adapter_name="a")
    ours.load_lora_weights(file_b, adapter_name="b")
    assert ours.get_active_adapters() == ["b"]  # like diffusers: the last one loaded is the one in use
    _assert_close(_our_outputs(ours), _reference_outputs(diffusers, ref_unet, ref_text))

    ref_unet.set_adapters(["a", "b"], [0.5, 1.5])
    diffusers.loaders.lora_base.set_adapters_for_text_encoder(["a", "b"], ref_text, [0.5, 1.5])
    ours.set_adapters(["a", "b"], [0.5, 1.5])
    assert ours.get_active_adapters() == ["a", "b"]
    _assert_close(_our_outputs(ours, 0.5), _reference_outputs(diffusers, ref_unet, ref_text, 0.5))

    ours.set_adapters(["a", "b"], [{"unet": 0.0, "text_encoder": 1.0}, 0.0])
    unet_off, text_a = _our_outputs(ours)
    assert max_diff(unet_off, _our_outputs(_ours(base))[0]) <= TOL
    ours.delete_adapters("b")
    ours.set_adapters("a")
    assert ours.get_list_adapters() == {"unet": ["a"], "text_encoder": ["a"]}
    assert max_diff(_our_outputs(ours)[1], text_a) <= TOL


def test_our_saved_file_loads_in_diffusers_with_the_same_outputs(diffusers, base, tmp_path):
    source = _diffusers_lora_file(diffusers, base, tmp_path / "in", rank=4, alpha=8, metadata=True)
    ours = _ours(base)
    ours.load_lora_weights(source, adapter_name="style")
    saved = Host.save_lora_weights(tmp_path / "out", **ours.get_lora_state_dict("style"))
    assert saved == tmp_path / "out" / "pytorch_lora_weights.safetensors"
    reference = _reference_with_lora(diffusers, base, str(saved))  # no metadata: alpha is folded into lora_B
    _assert_close(_our_outputs(ours, 0.5), _reference_outputs(diffusers, *reference, 0.5))

    again = _ours(base)
    again.load_lora_weights(saved)
    _assert_close(_our_outputs(again), _our_outputs(ours))


# ---------------------------------------------------------------------------------------------------------------
# kohya / A1111 files


def _kohya_file(unet: nn.Module, text_encoder: nn.Module, alphas: dict[str, float | None], rank=4, seed=0):
    """A kohya state dict for the named layers (kohya name -> our module name, written out by hand below)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for kohya_name, (component, module_name) in KOHYA_NAMES.items():
        model = unet if component == "unet" else text_encoder
        module = model.get_submodule(module_name)
        if isinstance(module, nn.Conv2d):
            down_shape, up_shape = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        else:
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        state_dict[f"{kohya_name}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * 0.3
        state_dict[f"{kohya_name}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.3
        if alphas.get(kohya_name, alphas.get("*")) is not None:
            state_dict[f"{kohya_name}.alpha"] = torch.tensor(float(alphas.get(kohya_name, alphas.get("*"))))
    return state_dict


KOHYA_NAMES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (
        "unet",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0": (
        "unet",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
    ),
    "lora_unet_down_blocks_0_attentions_0_proj_in": ("unet", "down_blocks.0.attentions.0.proj_in"),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k": (
        "unet",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    ),
    "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj": (
        "unet",
        "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
    ),
    "lora_unet_down_blocks_0_resnets_0_conv1": ("unet", "down_blocks.0.resnets.0.conv1"),  # LoCon, 3x3
    # kohya trains all six linears of a text-encoder layer (and diffusers only recognises such files).
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ("text_encoder", "encoder.layers.0.self_attn.q_proj"),
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj": ("text_encoder", "encoder.layers.0.self_attn.k_proj"),
    "lora_te_text_model_encoder_layers_0_self_attn_v_proj": ("text_encoder", "encoder.layers.0.self_attn.v_proj"),
    "lora_te_text_model_encoder_layers_0_self_attn_out_proj": ("text_encoder", "encoder.layers.0.self_attn.out_proj"),
    "lora_te_text_model_encoder_layers_0_mlp_fc1": ("text_encoder", "encoder.layers.0.mlp.fc1"),
    "lora_te_text_model_encoder_layers_0_mlp_fc2": ("text_encoder", "encoder.layers.0.mlp.fc2"),
    "lora_te_text_model_encoder_layers_3_mlp_fc1": ("text_encoder", "encoder.layers.3.mlp.fc1"),
}


def test_kohya_names_map_to_our_modules_and_alpha_sets_the_scale(base):
    unet, text_encoder = base
    alphas = {"*": 1.0, "lora_unet_down_blocks_0_attentions_0_proj_in": None}
    state_dict = _kohya_file(unet, text_encoder, alphas, rank=4)
    names = {c: lora_model.lora_target_names(m) for c, m in (("unet", unet), ("text_encoder", text_encoder))}
    converted = convert_lora_state_dict(state_dict, names)
    expected = {}
    for kohya_name, (component, module) in KOHYA_NAMES.items():
        expected.setdefault(component, {})[module] = 1.0 if kohya_name.endswith("proj_in") else 0.25
    assert {c: {m: w.scale for m, w in part.items()} for c, part in converted.items()} == expected

    # The effective update of one weight, by hand: up @ down * alpha / rank.
    ours = _ours(base)
    ours.load_lora_weights(state_dict)
    to_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    before = ours.unet.get_submodule(to_q).weight.detach().clone()
    ours.fuse_lora()
    delta = ours.unet.get_submodule(to_q).weight.detach() - before
    by_hand = state_dict[f"{prefix}.lora_up.weight"] @ state_dict[f"{prefix}.lora_down.weight"] * 1.0 / 4
    assert max_diff(delta, by_hand) <= 1e-6


def test_kohya_file_matches_reference(diffusers, base, tmp_path):
    from safetensors.torch import save_file

    state_dict = _kohya_file(*base, {"*": 2.0}, rank=4)  # one alpha for all: diffusers mis-assigns mixed alphas
    save_file(state_dict, tmp_path / "style_v1.safetensors")
    reference = _reference_with_lora(diffusers, base, dict(state_dict))
    ours = _ours(base)
    ours.load_lora_weights(tmp_path, weight_name="style_v1.safetensors")
    ours_out = _our_outputs(ours, 0.5)
    _assert_close(ours_out, _reference_outputs(diffusers, *reference, 0.5))
    assert all(max_diff(o, b) > 1e-3 for o, b in zip(ours_out, _our_outputs(_ours(base), 0.5)))


def test_older_diffusers_layout_maps_to_the_same_modules():
    down, up = torch.zeros(2, 32), torch.zeros(32, 2)
    state_dict = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": down,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": up,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": down,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": up,
        "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.down.weight": down,
        "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.up.weight": up,
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.down.weight": down,
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.up.weight": up,
    }
    names = {
        "unet": [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
        ],
        "text_encoder": ["encoder.layers.0.self_attn.out_proj", "encoder.layers.1.mlp.fc1"],  # transformers 5 names
    }
    converted = convert_lora_state_dict(state_dict, names)
    assert {c: sorted(part) for c, part in converted.items()} == {c: sorted(n) for c, n in names.items()}


# ---------------------------------------------------------------------------------------------------------------
# Fusing, unloading, errors


def test_fuse_unfuse_round_trip_is_exact_and_fused_outputs_match(diffusers, base, tmp_path):
    ours = _ours(base)
    ours.load_lora_weights(_kohya_file(*base, {"*": 3.0}))  # includes a 3x3 conv
    ours.load_lora_weights(_diffusers_lora_file(diffusers, base, tmp_path), adapter_name="second")
    ours.set_adapters(["default_0", "second"], [0.7, 1.2])
    before = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in ours._lora_models().items()}
    expected = _our_outputs(ours, 0.6)

    ours.fuse_lora(lora_scale=0.6)
    assert ours.fused_loras == {"default_0", "second"}
    fused = _our_outputs(ours)  # no call scale: the fused weights already hold it
    _assert_close(fused, expected, tol=1e-4)
    ours.unfuse_lora()
    for component, model in ours._lora_models().items():
        after = model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before[component].items())
    assert ours.fused_loras == set()
    _assert_close(_our_outputs(ours, 0.6), expected, tol=0.0)


def test_unload_restores_plain_modules_and_fuse_then_unload_bakes_the_lora_in(diffusers, base, tmp_path):
    path = _diffusers_lora_file(diffusers, base, tmp_path)
    plain = _ours(base)
    keys = list(plain.unet.state_dict())

    ours = _ours(base)
    ours.load_lora_weights(path)
    with_lora = _our_outputs(ours)
    ours.unload_lora_weights()
    assert list(ours.unet.state_dict()) == keys and not lora_model.lora_layers(ours.text_encoder)
    _assert_close(_our_outputs(ours), _our_outputs(plain), tol=0.0)

    ours.load_lora_weights(path)
    ours.fuse_lora()
    ours.unload_lora_weights()
    assert list(ours.unet.state_dict()) == keys
    _assert_close(_our_outputs(ours), with_lora, tol=1e-4)


def test_safe_fusing_refuses_non_finite_weights_and_changes_nothing(base):
    state_dict = _kohya_file(*base, {})
    state_dict["lora_te_text_model_encoder_layers_3_mlp_fc1.lora_up.weight"][0, 0] = float("nan")
    ours = _ours(base)
    ours.load_lora_weights(state_dict)
    before = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in ours._lora_models().items()}
    with pytest.raises(ValueError, match=r"encoder.layers.3.mlp.fc1 gives non-finite weights; nothing was fused"):
        ours.fuse_lora(safe_fusing=True)
    assert ours.fused_loras == set()
    for component, model in ours._lora_models().items():  # the LoRA itself holds the NaN: compare NaN as equal
        after = model.state_dict()
        assert all(torch.allclose(after[k], v, rtol=0, atol=0, equal_nan=True) for k, v in before[component].items())


def test_disable_and_enable(diffusers, base, tmp_path):
    ours = _ours(base)
    ours.load_lora_weights(_diffusers_lora_file(diffusers, base, tmp_path))
    with_lora = _our_outputs(ours)
    ours.disable_lora()
    _assert_close(_our_outputs(ours), _our_outputs(_ours(base)), tol=0.0)
    ours.enable_lora()
    _assert_close(_our_outputs(ours), with_lora, tol=0.0)


def test_a_lora_for_another_model_is_refused_before_anything_changes(base):
    unet, text_encoder = base
    state_dict = _kohya_file(unet, text_encoder, {})
    # An SD 1.x LoRA: its cross-attention keys take 768-wide text embeddings.
    state_dict["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"] = torch.zeros(
        4, 768
    )
    ours = _ours(base)
    with pytest.raises(ValueError, match=r"mid_block.*to_k does not fit.*another base model"):
        ours.load_lora_weights(state_dict)
    assert not lora_model.lora_layers(ours.unet) and not lora_model.lora_layers(ours.text_encoder)


@pytest.mark.parametrize(
    ("state_dict", "message"),
    [
        (
            {
                "lora_unet_no_such_layer.lora_down.weight": torch.zeros(1, 1),
                "lora_unet_no_such_layer.lora_up.weight": torch.zeros(1, 1),
            },
            "1 kohya LoRA entries match no layer.*lora_unet_no_such_layer",
        ),
        ({"unet.conv_in.lora_A.weight": torch.zeros(1, 5, 3, 3)}, r"unet.conv_in has no lora_B \(up\) weight"),
        ({"unet.conv_in.lora_A.weight": torch.zeros(1), "unet.conv_in.lora_magnitude_vector": torch.zeros(1)}, "DoRA"),
        ({"lora_unet_x.hada_w1_a": torch.zeros(1)}, "LyCORIS"),
        ({"lora_te2_x.lora_down.weight": torch.zeros(1)}, "SDXL"),
        ({"unet.conv_in.weight": torch.zeros(1)}, "unrecognised LoRA key 'unet.conv_in.weight'"),
        ({}, "empty"),
    ],
)
def test_bad_files_get_one_clear_error(base, state_dict, message):
    with pytest.raises(ValueError, match=message):
        _ours(base).load_lora_weights(state_dict)


def test_bad_arguments_get_one_clear_error(base):
    ours = _ours(base)
    state_dict = _kohya_file(*base, {})
    ours.load_lora_weights(state_dict, adapter_name="a")
    with pytest.raises(ValueError, match="adapter_name 'a' is already loaded"):
        ours.load_lora_weights(state_dict, adapter_name="a")
    with pytest.raises(ValueError, match="without '.'"):
        ours.load_lora_weights(state_dict, adapter_name="a.b")
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['z'\]"):
        ours.set_adapters(["a", "z"])
    with pytest.raises(ValueError, match="adapter_weights has 2 entries for 1 adapter_names"):
        ours.set_adapters(["a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="block-wise"):
        ours.set_adapters(["a"], [{"down": 1.0}])
    with pytest.raises(ValueError, match="components must be"):
        ours.fuse_lora(components=["vae"])
    with pytest.raises(TypeError, match="unexpected arguments"):
        ours.load_lora_weights(state_dict, adapter_name="b", hotswap=True)
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['z'\]"):
        ours.delete_adapters("z")
    ours.fuse_lora()
    with pytest.raises(ValueError, match="unfuse_lora"):
        ours.delete_adapters("a")
    with pytest.raises(ValueError, match="unfuse_lora"):
        ours.disable_lora()
    with pytest.raises(ValueError, match="pass at least one"):
        Host.save_lora_weights("unused")


# ---------------------------------------------------------------------------------------------------------------
# End to end: Depth2ImgPipeline against diffusers' StableDiffusionDepth2ImgPipeline with the same LoRA


def _pipelines():
    from pipeline_tiny import load_ours, load_reference, tiny_folder

    folder = tiny_folder()
    return load_reference(folder), load_ours(folder)


def _images(pipe, scale=None):
    from pipeline_tiny import random_pil, seeded

    kwargs = None if scale is None else {"scale": scale}
    return pipe(
        "a red house",
        image=random_pil(),
        num_inference_steps=2,
        generator=seeded(0),
        output_type="np",
        cross_attention_kwargs=kwargs,
    ).images


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_pipeline_images_match_reference_with_a_diffusers_lora(diffusers, tmp_path, scale):
    reference, ours = _pipelines()
    plain = _images(ours, scale)
    path = _diffusers_lora_file(diffusers, (reference.unet, reference.text_encoder), tmp_path)
    reference.load_lora_weights(str(path))
    ours.load_lora_weights(path)
    expected, actual = _images(reference, scale), _images(ours, scale)
    assert max_diff(torch.from_numpy(actual), torch.from_numpy(expected)) <= 1e-4
    assert max_diff(torch.from_numpy(actual), torch.from_numpy(plain)) > 1e-3


def test_pipeline_saved_lora_loads_in_diffusers_with_the_same_images(diffusers, tmp_path):
    reference, ours = _pipelines()
    ours.load_lora_weights(_kohya_file(reference.unet, reference.text_encoder, {"*": 1.0}), adapter_name="kohya")
    ours.save_lora_weights(tmp_path, **ours.get_lora_state_dict())
    reference.load_lora_weights(str(tmp_path))
    expected, actual = _images(reference, 0.5), _images(ours, 0.5)
    assert max_diff(torch.from_numpy(actual), torch.from_numpy(expected)) <= 1e-4


def test_the_docs_examples_run(tmp_path, monkeypatch):
    """docs/adapters.md promises runnable examples: run its python blocks in order, in a scratch folder."""
    import re
    import warnings
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in blocks:
            exec(compile(block, str(docs), "exec"), namespace)
    assert namespace["pipe"].get_list_adapters() == {"unet": ["style"]}
    assert (tmp_path / "style-lora" / "pytorch_lora_weights.safetensors").is_file()
