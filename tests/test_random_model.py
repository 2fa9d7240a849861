"""Random-weight components and the tiny random pipeline folder (published layout, loadable by all)."""

from __future__ import annotations

import json

import pytest
import torch

from depth2img.loading.random_model import (
    clip_vocabulary,
    dpt_image_processor_class,
    random_component,
    write_random_pipeline,
)
from depth2img.loading.single_file import architecture_folder
from depth2img.models import AutoencoderKL, UNet2DConditionModel

PIPELINE_FILES = [
    "README.txt",
    "depth_estimator/config.json",
    "depth_estimator/model.safetensors",
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return write_random_pipeline(tmp_path_factory.mktemp("random") / "tiny-sd2-depth", config="tiny", seed=0)


def test_random_weights_are_seeded_and_structured():
    unet = random_component("unet", "tiny", seed=3)
    again = random_component("unet", "tiny", seed=3)
    other = random_component("unet", "tiny", seed=4)
    assert isinstance(unet, UNet2DConditionModel) and not unet.training
    for (name, a), b in zip(unet.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(unet.conv_in.weight, other.conv_in.weight)
    assert not any(p.is_meta for p in unet.parameters())
    assert torch.count_nonzero(unet.conv_in.bias) == 0
    assert torch.all(unet.conv_norm_out.weight == 1)
    std = unet.conv_in.weight.std().item()
    assert 0.015 < std < 0.025  # uniform with the standard deviation of the usual 0.02 initialiser


def test_random_components_run(tmp_path):
    vae = random_component("vae", "tiny", dtype=torch.float16)
    assert isinstance(vae, AutoencoderKL) and vae.dtype == torch.float16
    unet = random_component("unet", "tiny")
    with torch.no_grad():
        out = unet(torch.randn(1, 5, 8, 8), 999, torch.randn(1, 77, 32)).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all() and out.abs().max() > 0

    tokenizer = random_component("tokenizer", "tiny")
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, 0] == 998 and 999 in ids[0] and int(ids.max()) < 1000
    text_encoder = random_component("text_encoder", "tiny")
    with torch.no_grad():
        hidden = text_encoder(ids).last_hidden_state
    assert hidden.shape == (1, 77, 32) and torch.isfinite(hidden).all()

    processor = random_component("feature_extractor", "tiny")
    pixels = processor(images=torch.rand(3, 50, 70), return_tensors="pt", do_rescale=False).pixel_values
    assert pixels.shape == (1, 3, 32, 32)
    depth_estimator = random_component("depth_estimator", "tiny")
    with torch.no_grad():
        depth = depth_estimator(pixels).predicted_depth
    assert depth.shape == (1, 32, 32) and torch.isfinite(depth).all() and depth.max() > depth.min()

    assert type(random_component("scheduler", "tiny")).__name__ == "PNDMScheduler"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown component 'safety_checker'; choose one of unet, vae"):
        random_component("safety_checker")
    with pytest.raises(ValueError, match="config must be one of tiny, sd2-depth or a folder of configs"):
        random_component("unet", config="sd3")


def test_tiny_tokenizer_is_the_clip_bpe_cut_to_1000_tokens():
    vocab, merges = clip_vocabulary(1000)
    folder = architecture_folder("tiny") / "tokenizer"
    assert json.loads((folder / "vocab.json").read_text(encoding="utf-8")) == vocab
    assert (folder / "merges.txt").read_text(encoding="utf-8").splitlines() == ["#version: 0.2", *merges]
    full_vocab, full_merges = clip_vocabulary()
    assert len(full_vocab) == 49408 and full_vocab["<|endoftext|>"] == 49407 and len(full_merges) == 48894
    assert vocab["<|startoftext|>"] == 998 and vocab["<|endoftext|>"] == 999
    assert all(full_vocab[token] == index for token, index in vocab.items() if index < 998)
    with pytest.raises(ValueError, match="vocab_size must be between 514 and 49408"):
        clip_vocabulary(100)


def test_pipeline_folder_layout(tiny_pipeline):
    files = sorted(str(p.relative_to(tiny_pipeline)) for p in tiny_pipeline.rglob("*") if p.is_file())
    assert files == PIPELINE_FILES
    published = json.loads((architecture_folder("sd2-depth") / "model_index.json").read_text())
    assert json.loads((tiny_pipeline / "model_index.json").read_text()) == published
    assert "RANDOM WEIGHTS" in (tiny_pipeline / "README.txt").read_text()
    assert not [p for p in tiny_pipeline.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_pipeline_components_load_back(tiny_pipeline):
    from transformers import CLIPTextModel, CLIPTokenizer, DPTForDepthEstimation

    from depth2img.schedulers import PNDMScheduler

    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline, subfolder="unet")
    expected = random_component("unet", "tiny", seed=0)  # the writer seeds components seed, seed + 1, ...
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), expected.state_dict().values()))
    vae = AutoencoderKL.from_pretrained(tiny_pipeline / "vae")
    assert torch.equal(vae.encoder.conv_in.weight, random_component("vae", "tiny", seed=1).encoder.conv_in.weight)

    text_encoder = CLIPTextModel.from_pretrained(tiny_pipeline / "text_encoder")
    assert text_encoder.config.vocab_size == 1000
    assert torch.equal(
        text_encoder.get_input_embeddings().weight,
        random_component("text_encoder", "tiny", seed=2).get_input_embeddings().weight,
    )
    assert len(CLIPTokenizer.from_pretrained(tiny_pipeline / "tokenizer")) == 1000
    assert DPTForDepthEstimation.from_pretrained(tiny_pipeline / "depth_estimator").config.is_hybrid
    processor = dpt_image_processor_class().from_pretrained(tiny_pipeline / "feature_extractor")
    assert processor.size == {"height": 32, "width": 32}
    assert PNDMScheduler.from_pretrained(tiny_pipeline, subfolder="scheduler").config.skip_prk_steps


def test_reference_pipeline_loads_the_folder(tiny_pipeline, diffusers):
    pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(tiny_pipeline)
    names = {name: type(component).__name__ for name, component in pipe.components.items()}
    assert names["unet"] == "UNet2DConditionModel" and names["depth_estimator"] == "DPTForDepthEstimation"
    assert names["scheduler"] == "PNDMScheduler" and names["tokenizer"] == "CLIPTokenizer"
    ours = UNet2DConditionModel.from_pretrained(tiny_pipeline / "unet")
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), ours.state_dict().values()))


def test_existing_folder_is_not_overwritten_unless_asked(tmp_path):
    target = tmp_path / "pipe"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not empty; pass overwrite=True"):
        write_random_pipeline(target)
    assert (target / "keep.txt").read_text() == "mine"
    write_random_pipeline(target, overwrite=True, seed=5)
    assert not (target / "keep.txt").exists() and (target / "unet" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, parameters", [("unet", 865.9e6), ("vae", 83.7e6), ("text_encoder", 340.4e6), ("depth_estimator", 122.4e6)]
)
def test_full_size_components(name, parameters):
    module = random_component(name, "sd2-depth")
    assert abs(sum(p.numel() for p in module.parameters()) - parameters) < 0.1e6
    if name == "unet":
        with torch.no_grad():
            out = module(torch.randn(1, 5, 32, 32), 500, torch.randn(1, 77, 1024)).sample
        assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()


@pytest.mark.slow
def test_full_size_tokenizer_is_the_real_clip_bpe():
    tokenizer = random_component("tokenizer", "sd2-depth")
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
