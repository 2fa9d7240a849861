"""Original single-file checkpoints: readers, key maps, architecture detection, loading, and the CLIP vocabulary.

The key maps are checked three independent ways: literal (original key, our key) pairs of the real
512-depth-ema layout checked by hand; diffusers' own ldm converters as the oracle for UNet, VAE and text
encoder; and for MiDaS an enumeration of the original layout written from MiDaS/timm's module structure
(plus, in the slow test, the real key list of MiDaS v3's DPT-hybrid in ``tests/data``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import require
from depth2img.loading import keymaps
from depth2img.loading.detect import NotADepthCheckpointError
from depth2img.loading.keymaps import convert_state_dict, ldm_unet, ldm_vae, midas_dpt, open_clip, original_keys
from depth2img.loading.random_model import random_component
from depth2img.loading.single_file import architecture_folder, load_single_file, read_checkpoint
from depth2img.loading.weights import InvalidWeightsError

SD2 = architecture_folder("sd2-depth")
DATA = Path(__file__).parent / "data"

# ------------------------------------------------------------------------------------------------------------
# Hand-checked samples of the real SD2-depth layout: (original key, chunk of a fused q/k/v tensor, our key).
# UNet: 4 levels x 2 layers; input_blocks 3/6/9 are the downsamplers, level 0 of the decoder has no attention
# (upsampler at output_blocks.2.1.conv), levels 1-2 do (output_blocks.5.2.conv, 8.2.conv).
UNET_PAIRS = [
    ("model.diffusion_model.input_blocks.0.0.weight", 0, "conv_in.weight"),
    ("model.diffusion_model.time_embed.0.weight", 0, "time_embedding.linear_1.weight"),
    ("model.diffusion_model.time_embed.2.bias", 0, "time_embedding.linear_2.bias"),
    ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight", 0, "down_blocks.0.resnets.0.norm1.weight"),
    ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", 0, "down_blocks.0.resnets.0.conv1.weight"),
    ("model.diffusion_model.input_blocks.1.0.emb_layers.1.weight", 0, "down_blocks.0.resnets.0.time_emb_proj.weight"),
    ("model.diffusion_model.input_blocks.1.0.out_layers.0.bias", 0, "down_blocks.0.resnets.0.norm2.bias"),
    ("model.diffusion_model.input_blocks.1.0.out_layers.3.weight", 0, "down_blocks.0.resnets.0.conv2.weight"),
    ("model.diffusion_model.input_blocks.1.1.proj_in.weight", 0, "down_blocks.0.attentions.0.proj_in.weight"),
    (
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
        0,
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
    ),
    ("model.diffusion_model.input_blocks.3.0.op.weight", 0, "down_blocks.0.downsamplers.0.conv.weight"),
    (
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        0,
        "down_blocks.1.resnets.0.conv_shortcut.weight",
    ),
    (
        "model.diffusion_model.input_blocks.5.1.transformer_blocks.0.ff.net.0.proj.weight",
        0,
        "down_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj.weight",
    ),
    ("model.diffusion_model.input_blocks.6.0.op.bias", 0, "down_blocks.1.downsamplers.0.conv.bias"),
    ("model.diffusion_model.input_blocks.9.0.op.weight", 0, "down_blocks.2.downsamplers.0.conv.weight"),
    ("model.diffusion_model.input_blocks.10.0.in_layers.0.weight", 0, "down_blocks.3.resnets.0.norm1.weight"),
    ("model.diffusion_model.input_blocks.11.0.out_layers.3.bias", 0, "down_blocks.3.resnets.1.conv2.bias"),
    ("model.diffusion_model.middle_block.0.in_layers.2.weight", 0, "mid_block.resnets.0.conv1.weight"),
    ("model.diffusion_model.middle_block.1.proj_out.weight", 0, "mid_block.attentions.0.proj_out.weight"),
    (
        "model.diffusion_model.middle_block.1.transformer_blocks.0.norm3.weight",
        0,
        "mid_block.attentions.0.transformer_blocks.0.norm3.weight",
    ),
    ("model.diffusion_model.middle_block.2.emb_layers.1.bias", 0, "mid_block.resnets.1.time_emb_proj.bias"),
    ("model.diffusion_model.output_blocks.0.0.skip_connection.weight", 0, "up_blocks.0.resnets.0.conv_shortcut.weight"),
    ("model.diffusion_model.output_blocks.2.1.conv.weight", 0, "up_blocks.0.upsamplers.0.conv.weight"),
    ("model.diffusion_model.output_blocks.3.1.norm.weight", 0, "up_blocks.1.attentions.0.norm.weight"),
    ("model.diffusion_model.output_blocks.5.2.conv.bias", 0, "up_blocks.1.upsamplers.0.conv.bias"),
    ("model.diffusion_model.output_blocks.8.2.conv.weight", 0, "up_blocks.2.upsamplers.0.conv.weight"),
    (
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.weight",
        0,
        "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0.weight",
    ),
    ("model.diffusion_model.output_blocks.11.0.in_layers.0.weight", 0, "up_blocks.3.resnets.2.norm1.weight"),
    ("model.diffusion_model.out.0.weight", 0, "conv_norm_out.weight"),
    ("model.diffusion_model.out.2.bias", 0, "conv_out.bias"),
]
# VAE: the decoder's up.3 is the lowest resolution (our up_blocks.0); ResBlocks changing width have nin_shortcut.
VAE_PAIRS = [
    ("first_stage_model.encoder.conv_in.weight", 0, "encoder.conv_in.weight"),
    ("first_stage_model.encoder.down.0.block.0.norm1.weight", 0, "encoder.down_blocks.0.resnets.0.norm1.weight"),
    ("first_stage_model.encoder.down.0.downsample.conv.weight", 0, "encoder.down_blocks.0.downsamplers.0.conv.weight"),
    (
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        0,
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    ),
    ("first_stage_model.encoder.mid.block_1.conv1.weight", 0, "encoder.mid_block.resnets.0.conv1.weight"),
    ("first_stage_model.encoder.mid.attn_1.norm.weight", 0, "encoder.mid_block.attentions.0.group_norm.weight"),
    ("first_stage_model.encoder.mid.attn_1.q.weight", 0, "encoder.mid_block.attentions.0.to_q.weight"),
    ("first_stage_model.encoder.mid.attn_1.proj_out.bias", 0, "encoder.mid_block.attentions.0.to_out.0.bias"),
    ("first_stage_model.encoder.mid.block_2.norm2.bias", 0, "encoder.mid_block.resnets.1.norm2.bias"),
    ("first_stage_model.encoder.norm_out.weight", 0, "encoder.conv_norm_out.weight"),
    ("first_stage_model.encoder.conv_out.weight", 0, "encoder.conv_out.weight"),
    ("first_stage_model.quant_conv.weight", 0, "quant_conv.weight"),
    ("first_stage_model.post_quant_conv.bias", 0, "post_quant_conv.bias"),
    ("first_stage_model.decoder.mid.attn_1.v.weight", 0, "decoder.mid_block.attentions.0.to_v.weight"),
    ("first_stage_model.decoder.up.3.block.0.conv1.weight", 0, "decoder.up_blocks.0.resnets.0.conv1.weight"),
    ("first_stage_model.decoder.up.3.upsample.conv.weight", 0, "decoder.up_blocks.0.upsamplers.0.conv.weight"),
    (
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
        0,
        "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
    ),
    ("first_stage_model.decoder.up.0.block.2.norm2.weight", 0, "decoder.up_blocks.3.resnets.2.norm2.weight"),
    ("first_stage_model.decoder.norm_out.bias", 0, "decoder.conv_norm_out.bias"),
]
# OpenCLIP: in_proj_weight stacks query, key, value; layers 0..22 are used (23 is the unused last one).
CLIP_PAIRS = [
    ("cond_stage_model.model.token_embedding.weight", 0, "text_model.embeddings.token_embedding.weight"),
    ("cond_stage_model.model.positional_embedding", 0, "text_model.embeddings.position_embedding.weight"),
    ("cond_stage_model.model.transformer.resblocks.0.ln_1.weight", 0, "text_model.encoder.layers.0.layer_norm1.weight"),
    (
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        0,
        "text_model.encoder.layers.0.self_attn.q_proj.weight",
    ),
    (
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        1,
        "text_model.encoder.layers.0.self_attn.k_proj.weight",
    ),
    (
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_bias",
        2,
        "text_model.encoder.layers.22.self_attn.v_proj.bias",
    ),
    (
        "cond_stage_model.model.transformer.resblocks.5.attn.out_proj.weight",
        0,
        "text_model.encoder.layers.5.self_attn.out_proj.weight",
    ),
    ("cond_stage_model.model.transformer.resblocks.11.mlp.c_fc.bias", 0, "text_model.encoder.layers.11.mlp.fc1.bias"),
    ("cond_stage_model.model.transformer.resblocks.22.mlp.c_proj.weight", 0, "encoder.layers.22.mlp.fc2.weight"),
    ("cond_stage_model.model.transformer.resblocks.22.ln_2.bias", 0, "encoder.layers.22.layer_norm2.bias"),
    ("cond_stage_model.model.ln_final.weight", 0, "text_model.final_layer_norm.weight"),
]
# MiDaS DPT-hybrid: refinenet4 is the first fusion layer; act_postprocess3/4 are the ViT reassemble levels 2/3.
DPT_PAIRS = [
    ("depth_model.model.pretrained.model.cls_token", 0, "dpt.embeddings.cls_token"),
    ("depth_model.model.pretrained.model.pos_embed", 0, "dpt.embeddings.position_embeddings"),
    (
        "depth_model.model.pretrained.model.patch_embed.backbone.stem.conv.weight",
        0,
        "dpt.embeddings.backbone.bit.embedder.convolution.weight",
    ),
    (
        "depth_model.model.pretrained.model.patch_embed.backbone.stem.norm.bias",
        0,
        "dpt.embeddings.backbone.bit.embedder.norm.bias",
    ),
    (
        "depth_model.model.pretrained.model.patch_embed.backbone.stages.0.blocks.0.downsample.conv.weight",
        0,
        "dpt.embeddings.backbone.bit.encoder.stages.0.layers.0.downsample.conv.weight",
    ),
    (
        "depth_model.model.pretrained.model.patch_embed.backbone.stages.2.blocks.8.norm3.weight",
        0,
        "dpt.embeddings.backbone.bit.encoder.stages.2.layers.8.norm3.weight",
    ),
    ("depth_model.model.pretrained.model.patch_embed.proj.weight", 0, "dpt.embeddings.projection.weight"),
    (
        "depth_model.model.pretrained.model.blocks.0.attn.qkv.weight",
        0,
        "dpt.encoder.layer.0.attention.attention.query.weight",
    ),
    (
        "depth_model.model.pretrained.model.blocks.11.attn.qkv.bias",
        1,
        "dpt.encoder.layer.11.attention.attention.key.bias",
    ),
    (
        "depth_model.model.pretrained.model.blocks.3.attn.proj.weight",
        0,
        "dpt.encoder.layer.3.attention.output.dense.weight",
    ),
    ("depth_model.model.pretrained.model.blocks.3.mlp.fc1.bias", 0, "dpt.encoder.layer.3.intermediate.dense.bias"),
    ("depth_model.model.pretrained.model.blocks.3.mlp.fc2.weight", 0, "dpt.encoder.layer.3.output.dense.weight"),
    ("depth_model.model.pretrained.model.blocks.7.norm1.weight", 0, "dpt.encoder.layer.7.layernorm_before.weight"),
    ("depth_model.model.pretrained.model.blocks.7.norm2.bias", 0, "dpt.encoder.layer.7.layernorm_after.bias"),
    ("depth_model.model.pretrained.model.norm.weight", 0, "dpt.layernorm.weight"),
    (
        "depth_model.model.pretrained.act_postprocess3.0.project.0.weight",
        0,
        "neck.reassemble_stage.readout_projects.2.0.weight",
    ),
    ("depth_model.model.pretrained.act_postprocess3.3.weight", 0, "neck.reassemble_stage.layers.2.projection.weight"),
    ("depth_model.model.pretrained.act_postprocess4.4.bias", 0, "neck.reassemble_stage.layers.3.resize.bias"),
    ("depth_model.model.scratch.layer1_rn.weight", 0, "neck.convs.0.weight"),
    ("depth_model.model.scratch.layer4_rn.weight", 0, "neck.convs.3.weight"),
    ("depth_model.model.scratch.refinenet4.out_conv.weight", 0, "neck.fusion_stage.layers.0.projection.weight"),
    (
        "depth_model.model.scratch.refinenet1.resConfUnit2.conv1.bias",
        0,
        "neck.fusion_stage.layers.3.residual_layer2.convolution1.bias",
    ),
    (
        "depth_model.model.scratch.refinenet3.resConfUnit1.conv2.weight",
        0,
        "neck.fusion_stage.layers.1.residual_layer1.convolution2.weight",
    ),
    ("depth_model.model.scratch.output_conv.0.weight", 0, "head.head.0.weight"),
    ("depth_model.model.scratch.output_conv.4.bias", 0, "head.head.4.bias"),
]


def _sd2_keymaps() -> dict[str, keymaps.KeyMap]:
    from depth2img.configuration import load_json

    return {
        "unet": ldm_unet.keymap(load_json(SD2 / "unet" / "config.json")),
        "vae": ldm_vae.keymap(load_json(SD2 / "vae" / "config.json")),
        "text_encoder": open_clip.keymap(load_json(SD2 / "text_encoder" / "config.json")),
        "depth_estimator": midas_dpt.keymap(load_json(SD2 / "depth_estimator_config.derived.json")),
    }


@pytest.mark.parametrize(
    ("component", "pairs"),
    [("unet", UNET_PAIRS), ("vae", VAE_PAIRS), ("text_encoder", CLIP_PAIRS), ("depth_estimator", DPT_PAIRS)],
)
def test_maps_give_the_hand_checked_keys_of_the_real_layout(component, pairs):
    keymap = _sd2_keymaps()[component]
    for original, chunk, ours in pairs:
        source = original_keys(keymap, [ours])[ours]
        assert (source.key, source.chunk) == (original, chunk), ours
        assert source.chunks == (3 if "in_proj" in original or ".qkv." in original else 1)


def test_a_name_without_a_rule_is_reported():
    keymap = _sd2_keymaps()["unet"]
    with pytest.raises(keymaps.UnknownKeyError, match="add_embedding.linear_1.weight"):
        keymap.source("add_embedding.linear_1.weight")


# ------------------------------------------------------------------------------------------------------------
# Tiny components and their original-layout checkpoint


def _randomized(name: str, seed: int) -> torch.nn.Module:
    """A tiny component whose every tensor is distinct random numbers (so a swapped key changes values)."""
    model = random_component(name, "tiny", seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    names = ("unet", "vae", "text_encoder", "depth_estimator")
    return {name: _randomized(name, seed) for seed, name in enumerate(names)}


def _tiny_keymap(name: str, model: torch.nn.Module) -> keymaps.KeyMap:
    config = model.config if name in ("unet", "vae") else model.config.to_dict()
    module = {"unet": ldm_unet, "vae": ldm_vae, "text_encoder": open_clip, "depth_estimator": midas_dpt}[name]
    return module.keymap(config)


def _to_original(name: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The component's weights under original names: q/k/v stacked again, VAE attention as 1x1 convolutions."""
    state_dict = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict[int, torch.Tensor]] = {}
    for ours, source in original_keys(_tiny_keymap(name, model), list(state_dict)).items():
        tensor = state_dict[ours]
        if source.chunks > 1:
            stacked.setdefault(source.key, {})[source.chunk] = tensor
            continue
        if ".mid.attn_1." in source.key and tensor.ndim == 2:  # the original's attention layers are Conv2d(1x1)
            tensor = tensor[:, :, None, None]
        out[source.key] = tensor.clone()
    for key, parts in stacked.items():
        out[key] = torch.cat([parts[index] for index in sorted(parts)])
    return out


def _extras(original: dict[str, torch.Tensor], text_layers: int, width: int) -> dict[str, torch.Tensor]:
    """Keys every real SD2-depth checkpoint also holds, which loading must ignore or know to be unused."""
    prefix = "cond_stage_model.model."
    layer = f"{prefix}transformer.resblocks.{text_layers}."  # the extra last layer SD2 skips
    extra = {
        "betas": torch.linspace(0.1, 0.2, 10),
        "alphas_cumprod": torch.linspace(0.9, 0.1, 10),
        "model_ema.decay": torch.tensor(0.9999),
        f"{prefix}text_projection": torch.randn(width, width),
        f"{prefix}logit_scale": torch.tensor(4.6),
        f"{layer}ln_1.weight": torch.randn(width),
        f"{layer}attn.in_proj_weight": torch.randn(3 * width, width),
        f"{layer}mlp.c_fc.weight": torch.randn(4 * width, width),
        "depth_model.model.pretrained.model.head.weight": torch.randn(10, 4),
        "depth_model.model.pretrained.model.head.bias": torch.randn(10),
    }
    return {**original, **extra}


@pytest.fixture(scope="module")
def tiny_original(tiny):
    original: dict[str, torch.Tensor] = {}
    for name, model in tiny.items():
        original.update(_to_original(name, model))
    config = tiny["text_encoder"].config
    return _extras(original, config.num_hidden_layers, config.hidden_size)


def test_ldm_unet_and_vae_maps_agree_with_diffusers_converters(tiny, tiny_original):
    require("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    for name, convert in (("unet", convert_ldm_unet_checkpoint), ("vae", convert_ldm_vae_checkpoint)):
        theirs = convert(dict(tiny_original), dict(tiny[name].config))
        ours = tiny[name].state_dict()
        assert set(theirs) == set(ours), name
        for key, tensor in ours.items():
            assert torch.equal(theirs[key].reshape(tensor.shape), tensor), key


def test_open_clip_map_agrees_with_diffusers_converter(tiny, tiny_original):
    require("diffusers")
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    model = tiny["text_encoder"]
    # diffusers ignores SD2's unused layer 23 by name; the tiny model's unused layer has another number
    layers = model.config.num_hidden_layers
    checkpoint = {k: v for k, v in tiny_original.items() if f"resblocks.{layers}." not in k}
    theirs = {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(model, checkpoint).items()}
    ours = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    assert set(theirs) == set(ours)
    for key, tensor in ours.items():
        assert torch.equal(theirs[key], tensor), key


def _midas_original_keys(depth_config) -> set[str]:
    """Every key of a MiDaS DPT-hybrid of this size, enumerated from the structure of MiDaS v3 and timm's
    ``vit_base_resnet50_384`` (written independently of ``keymaps.midas_dpt``)."""
    backbone = depth_config.backbone_config
    vit, scratch = "pretrained.model", "scratch"
    keys = {f"{vit}.cls_token", f"{vit}.pos_embed", f"{vit}.head.weight", f"{vit}.head.bias"}
    stem = f"{vit}.patch_embed.backbone.stem"
    keys |= {f"{stem}.conv.weight", f"{stem}.norm.weight", f"{stem}.norm.bias"}
    keys |= {f"{vit}.patch_embed.proj.weight", f"{vit}.patch_embed.proj.bias", f"{vit}.norm.weight", f"{vit}.norm.bias"}
    for stage, depth in enumerate(backbone.depths):
        for block in range(depth):
            prefix = f"{vit}.patch_embed.backbone.stages.{stage}.blocks.{block}"
            keys |= {f"{prefix}.conv{i}.weight" for i in (1, 2, 3)}
            keys |= {f"{prefix}.norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
            if block == 0:  # timm's ResNetStage gives the first block of every stage a projection shortcut
                keys |= {f"{prefix}.downsample.conv.weight", f"{prefix}.downsample.norm.weight"}
                keys |= {f"{prefix}.downsample.norm.bias"}
    for index in range(depth_config.num_hidden_layers):
        for layer in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            keys |= {f"{vit}.blocks.{index}.{layer}.weight", f"{vit}.blocks.{index}.{layer}.bias"}
    post = "pretrained.act_postprocess"
    # the hybrid reads levels 1-2 from the ResNet stages (no parameters), levels 3-4 from the ViT
    for layer in ("3.0.project.0", "3.3", "4.0.project.0", "4.3", "4.4"):
        keys |= {f"{post}{layer}.weight", f"{post}{layer}.bias"}
    keys |= {f"{scratch}.layer{i}_rn.weight" for i in (1, 2, 3, 4)}
    for i in (1, 2, 3, 4):
        for layer in (
            "out_conv",
            "resConfUnit1.conv1",
            "resConfUnit1.conv2",
            "resConfUnit2.conv1",
            "resConfUnit2.conv2",
        ):
            keys |= {f"{scratch}.refinenet{i}.{layer}.weight", f"{scratch}.refinenet{i}.{layer}.bias"}
    keys |= {f"{scratch}.output_conv.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    return keys


def test_midas_map_covers_every_key_of_a_tiny_dpt_hybrid_and_back(tiny):
    model = tiny["depth_estimator"]
    names = list(model.state_dict())
    sources = original_keys(midas_dpt.keymap(model.config.to_dict()), names)
    # every key of transformers' DPT is produced, and no two take the same slice of the same original tensor
    assert len({(s.key, s.chunk) for s in sources.values()}) == len(names)
    produced = {s.key.removeprefix(midas_dpt.PREFIX) for s in sources.values()}
    original = _midas_original_keys(model.config)
    # ... and every original key is used, except the explicitly listed unused ones (timm's classifier head)
    assert produced <= original
    assert original - produced == {"pretrained.model.head.weight", "pretrained.model.head.bias"}
    assert original - produced == midas_dpt.UNUSED_KEYS


def test_open_clip_leaves_only_the_listed_keys_unused(tiny, tiny_original):
    model = tiny["text_encoder"]
    keymap = open_clip.keymap(model.config.to_dict())
    produced = {s.key for s in original_keys(keymap, list(model.state_dict())).values()}
    left = {k for k in tiny_original if k.startswith(open_clip.PREFIX)} - produced
    left = {k.removeprefix(open_clip.PREFIX) for k in left}
    layer = model.config.num_hidden_layers
    assert left == {"text_projection", "logit_scale"} | {
        f"transformer.resblocks.{layer}.{p}" for p in ("ln_1.weight", "attn.in_proj_weight", "mlp.c_fc.weight")
    }
    assert all(keymap.unused(key) for key in left)


def test_a_fused_qkv_tensor_is_read_once(tiny, tiny_original):
    reads: dict[str, int] = {}

    class CountingCheckpoint(dict):
        def __getitem__(self, key):
            reads[key] = reads.get(key, 0) + 1
            return super().__getitem__(key)

    model = tiny["text_encoder"]
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted = convert_state_dict(
        CountingCheckpoint(tiny_original), open_clip.keymap(model.config.to_dict()), expected, "tiny"
    )
    assert reads and max(reads.values()) == 1
    q, v = converted["encoder.layers.0.self_attn.q_proj.weight"], converted["encoder.layers.0.self_attn.v_proj.weight"]
    assert q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()  # views of one tensor, no copies


# ------------------------------------------------------------------------------------------------------------
# Loading the components from a file


def _write(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:  # an original .ckpt: a PyTorch Lightning checkpoint with other entries beside the weights
        torch.save({"state_dict": state_dict, "global_step": 875000, "epoch": 3}, path)
    return path


def _outputs(name: str, model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if name == "unet":
            sample = torch.randn(1, 5, 8, 8, generator=generator)
            context = torch.randn(1, 7, model.config.cross_attention_dim, generator=generator)
            return model(sample, 10, context).sample
        if name == "vae":
            return model.decode(torch.randn(1, 4, 4, 4, generator=generator)).sample
        if name == "text_encoder":
            return model(torch.tensor([[0, 5, 17, 2]])).last_hidden_state
        return model(torch.randn(1, 3, 32, 32, generator=generator)).predicted_depth


@pytest.mark.parametrize("file_name", ["tiny.safetensors", "tiny.ckpt"])
def test_loads_every_component_equal_to_the_source(tmp_path, tiny, tiny_original, file_name):
    path = _write(tmp_path / file_name, tiny_original)
    loaded = load_single_file(dict, path, config="tiny")  # any callable taking the seven components
    assert set(loaded) == {
        "vae",
        "text_encoder",
        "tokenizer",
        "unet",
        "scheduler",
        "depth_estimator",
        "feature_extractor",
    }
    for name, model in tiny.items():
        ours = loaded[name]
        assert type(ours) is type(model)
        assert not ours.training
        expected, got = model.state_dict(), ours.state_dict()
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
        # equal weights; kernels may round differently on memory-mapped (differently aligned) tensors
        assert (_outputs(name, ours) - _outputs(name, model)).abs().max() <= 1e-6, name
    assert type(loaded["scheduler"]).__name__ == "PNDMScheduler"
    assert loaded["tokenizer"]("a photo").input_ids[0] == loaded["tokenizer"].bos_token_id


def test_pipeline_from_single_file_gives_the_images_of_the_folder_loaded_one(tmp_path, tiny, tiny_original):
    import numpy as np
    import PIL.Image

    from depth2img.pipeline import Depth2ImgPipeline

    others = {name: random_component(name, "tiny") for name in ("tokenizer", "scheduler", "feature_extractor")}
    Depth2ImgPipeline(**tiny, **others).save_pretrained(tmp_path / "folder")
    from_folder = Depth2ImgPipeline.from_pretrained(tmp_path / "folder", local_files_only=True)
    from_file = Depth2ImgPipeline.from_single_file(_write(tmp_path / "tiny.ckpt", tiny_original), config="tiny")
    assert isinstance(from_file, Depth2ImgPipeline)
    pixels = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8")
    call = {"prompt": "a red house", "image": PIL.Image.fromarray(pixels), "num_inference_steps": 3, "strength": 0.7}
    expected = from_folder(**call, output_type="np", generator=torch.Generator().manual_seed(0)).images
    images = from_file(**call, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert expected.std() > 0.01  # a real image, not a constant
    assert np.abs(images - expected).max() <= 1e-6


def test_torch_dtype_casts_the_models(tmp_path, tiny_original):
    path = _write(tmp_path / "tiny.safetensors", tiny_original)
    loaded = load_single_file(dict, path, config="tiny", torch_dtype=torch.float16, unet=None, vae=None)
    assert loaded["text_encoder"].dtype == torch.float16
    assert next(loaded["depth_estimator"].parameters()).dtype == torch.float16
    assert loaded["unet"] is None and loaded["vae"] is None  # given components are used as they are


def test_given_depth_estimator_replaces_a_missing_one(tmp_path, tiny, tiny_original):
    without_depth = {k: v for k, v in tiny_original.items() if not k.startswith("depth_model.")}
    path = _write(tmp_path / "no-depth.safetensors", without_depth)
    with pytest.raises(NotADepthCheckpointError, match="no depth estimator weights"):
        load_single_file(dict, path, config="tiny")
    loaded = load_single_file(dict, path, config="tiny", depth_estimator=tiny["depth_estimator"])
    assert loaded["depth_estimator"] is tiny["depth_estimator"]


def test_a_different_architecture_is_named_in_the_error(tmp_path, tiny_original):
    path = _write(tmp_path / "tiny.safetensors", tiny_original)
    with pytest.raises(InvalidWeightsError, match="wrong shape.*conv_in.weight"):
        load_single_file(dict, path)  # the full-size SD2-depth configs
    extra = dict(tiny_original)
    extra["model.diffusion_model.input_blocks.1.1.transformer_blocks.1.norm1.weight"] = torch.ones(16)
    with pytest.raises(InvalidWeightsError, match="unexpected tensors.*transformer_blocks.1.norm1.weight"):
        load_single_file(dict, _write(tmp_path / "extra.safetensors", extra), config="tiny")


def test_unknown_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="safety_checker"):
        load_single_file(dict, tmp_path / "x.ckpt", safety_checker=None)


# ------------------------------------------------------------------------------------------------------------
# Readers


def test_format_is_detected_from_the_content_not_the_suffix(tmp_path):
    weights = {"a": torch.arange(6.0).reshape(2, 3)}
    safetensors_named_ckpt = tmp_path / "weights.ckpt"
    save_file(weights, str(safetensors_named_ckpt))
    torch_named_safetensors = tmp_path / "weights.safetensors"
    torch.save({"state_dict": weights, "global_step": 1}, torch_named_safetensors)
    legacy = tmp_path / "legacy.pt"
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)
    for path in (safetensors_named_ckpt, torch_named_safetensors, legacy):
        read = read_checkpoint(path)
        assert list(read) == ["a"] and torch.equal(read["a"], weights["a"]), path.name
    # a safetensors header length whose first byte is 0x80, the byte that also opens a pickle
    padded = tmp_path / "padded.safetensors"
    for pad in range(256):
        save_file(weights, str(padded), metadata={"pad": "x" * pad})
        if padded.read_bytes()[0] == 0x80:
            break
    assert padded.read_bytes()[0] == 0x80
    assert torch.equal(read_checkpoint(padded)["a"], weights["a"])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InvalidWeightsError, match="neither a safetensors file nor a PyTorch checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        read_checkpoint(tmp_path / "missing.ckpt")


class _Payload:
    """Unpickling this would create a file: the proof that code from the checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["zip", "legacy", "raw-pickle"])
def test_a_pickle_with_code_is_refused_not_executed(tmp_path, container):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"x": torch.zeros(2)}, "callbacks": _Payload(marker)}
    if container == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=container == "zip")
    with pytest.raises(InvalidWeightsError, match="weights_only=True"):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(InvalidWeightsError):
        load_single_file(dict, path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------------------
# Architecture detection


def _unet_stub(in_channels: int, context: int) -> dict[str, torch.Tensor]:
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, in_channels, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, context),
    }


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (_unet_stub(4, 768), "Stable Diffusion 1.x text-to-image checkpoint .*4 input channels.*not a depth model"),
        (_unet_stub(4, 1024), "Stable Diffusion 2.x text-to-image checkpoint .*not a depth model"),
        (_unet_stub(9, 1024), "Stable Diffusion 2.x inpainting checkpoint .*9 input channels.*not a depth model"),
        (_unet_stub(9, 768), "Stable Diffusion 1.x inpainting"),
        (_unet_stub(8, 768), "instruct-pix2pix"),
        ({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(4)}, "XL"),
        ({"conv_in.weight": torch.zeros(8, 5, 3, 3)}, "diffusers layout.*from_pretrained"),
        ({"something.else": torch.zeros(1)}, "not an original Stable Diffusion checkpoint"),
    ],
)
def test_a_checkpoint_that_is_not_sd2_depth_is_named(tmp_path, weights, message):
    path = _write(tmp_path / "other.safetensors", weights)
    with pytest.raises(NotADepthCheckpointError, match=message):
        load_single_file(dict, path)


# ------------------------------------------------------------------------------------------------------------
# The shipped CLIP vocabulary


def test_shipped_clip_tokenizer_matches_open_clip_ids():
    from depth2img.loading.clip_vocab import clip_tokenizer

    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("!", 0)  # SD2's special_tokens_map.json
    # ids produced by open_clip's own SimpleTokenizer on the same text
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    painting = "a painting of a fox sitting in a field at sunrise in the style of claude monet"
    assert tokenizer(painting).input_ids[:12] == [49406, 320, 3086, 539, 320, 3240, 4919, 530, 320, 1570, 536, 5610]
    assert tokenizer("a cat", padding="max_length").input_ids[3:6] == [49407, 0, 0]


# ------------------------------------------------------------------------------------------------------------
# Full-size key coverage (meta device: shapes only)


def _read_midas_keys() -> dict[str, torch.Tensor]:
    lines = (DATA / "midas_dpt_hybrid_keys.txt").read_text().splitlines()
    out = {}
    for line in lines:
        if line and not line.startswith("#"):
            key, shape = line.split()
            out[midas_dpt.PREFIX + key] = torch.empty(tuple(map(int, shape.split(","))), device="meta")
    return out


def _meta_original(keymap: keymaps.KeyMap, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    for ours, source in original_keys(keymap, list(expected)).items():
        shape = tuple(expected[ours])
        if source.chunks > 1:
            rows[source.key] = rows.get(source.key, 0) + shape[0]
            out[source.key] = torch.empty((rows[source.key], *shape[1:]), device="meta")
        else:
            if ".mid.attn_1." in source.key and len(shape) == 2:
                shape = (*shape, 1, 1)
            out[source.key] = torch.empty(shape, device="meta")
    return out


@pytest.mark.slow
def test_full_size_key_coverage():
    from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation

    from depth2img.configuration import load_json
    from depth2img.loading.empty_init import parameters_on_meta
    from depth2img.models import AutoencoderKL, UNet2DConditionModel

    require("diffusers")
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    maps = _sd2_keymaps()
    with parameters_on_meta():
        models = {
            "unet": UNet2DConditionModel.from_config(load_json(SD2 / "unet" / "config.json")),
            "vae": AutoencoderKL.from_config(load_json(SD2 / "vae" / "config.json")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(load_json(SD2 / "text_encoder" / "config.json"))),
            "depth_estimator": DPTForDepthEstimation(
                DPTConfig.from_dict(load_json(SD2 / "depth_estimator_config.derived.json"))
            ),
        }
    expected = {name: {k: v.shape for k, v in model.state_dict().items()} for name, model in models.items()}
    assert [len(expected[n]) for n in ("unet", "vae", "text_encoder", "depth_estimator")] == [686, 248, 372, 414]

    # MiDaS: the real key list (timm 0.4.12 + MiDaS v3) converts with every key used but timm's classifier head
    midas = _read_midas_keys()
    assert len(midas) == 368
    converted = convert_state_dict(midas, maps["depth_estimator"], expected["depth_estimator"], "MiDaS keys")
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v) for k, v in expected["depth_estimator"].items()
    }

    # UNet / VAE / text encoder: diffusers' converters take the original keys our maps name back to our names
    for name, convert in (("unet", convert_ldm_unet_checkpoint), ("vae", convert_ldm_vae_checkpoint)):
        original = _meta_original(maps[name], expected[name])
        theirs = convert(dict(original), dict(models[name].config))
        assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v) for k, v in expected[name].items()}
        sources = original_keys(maps[name], list(expected[name]))
        moved = [k for k in expected[name] if theirs[k] is original[sources[k].key]]
        reshaped = [k for k in expected[name] if k not in moved]  # only the VAE's 1x1-conv attention weights
        assert all(".attentions.0.to_" in k and k.endswith("weight") for k in reshaped), reshaped
        assert len(convert_state_dict(original, maps[name], expected[name], name)) == len(expected[name])
    original = _meta_original(maps["text_encoder"], expected["text_encoder"])
    original[open_clip.PREFIX + "text_projection"] = torch.empty(1024, 1024, device="meta")
    theirs = convert_open_clip_checkpoint(models["text_encoder"], original)
    strip = {k.removeprefix("text_model."): tuple(v.shape) for k, v in theirs.items()}
    assert strip == {k.removeprefix("text_model."): tuple(v) for k, v in expected["text_encoder"].items()}
    converted = convert_state_dict(original, maps["text_encoder"], expected["text_encoder"], "text encoder")
    assert len(converted) == 372


def test_from_single_file_takes_from_pretrained_dtype_and_device_keywords(tmp_path, tiny_original):
    """``dtype=`` (diffusers' newer name), a per-component mapping and a single-device ``device_map``."""
    from depth2img.pipeline import Depth2ImgPipeline

    path = _write(tmp_path / "tiny.safetensors", tiny_original)
    pipe = Depth2ImgPipeline.from_single_file(
        path, config="tiny", dtype={"text_encoder": torch.bfloat16, "default": torch.float16}, device_map="cpu"
    )
    assert (pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype) == (torch.float16, torch.float16, torch.bfloat16)
    assert pipe.device == torch.device("cpu")
    with pytest.raises(ValueError, match="disagree"):
        Depth2ImgPipeline.from_single_file(path, config="tiny", torch_dtype=torch.float16, dtype=torch.float32)
    with pytest.raises(ValueError, match="device_map='balanced' is not supported"):
        Depth2ImgPipeline.from_single_file(path, config="tiny", device_map="balanced")
