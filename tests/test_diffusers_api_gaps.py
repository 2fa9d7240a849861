"""What running diffusers' own fast tests against our pipeline found: attention slicing of the UNet only,
all-or-nothing switches, ``save_pretrained(safe_serialization=...)``, ``dtype=`` / per-component dtypes,
single-device ``device_map``, and the error for a missing variant."""

from __future__ import annotations

import pytest
import torch

from pipeline_tiny import load_ours, max_diff, random_pil, seeded, tiny_folder


@pytest.fixture
def pipe():
    return load_ours(tiny_folder())


def slice_sizes(model):
    return [layer.slice_size for layer in model.attention_layers()]


def run(pipe, **kwargs):
    return pipe(
        "a cat", image=random_pil(), num_inference_steps=2, generator=seeded(0), output_type="np", **kwargs
    ).images


# ---------------------------------------------------------------------------------------------- switches
def test_attention_slicing_slices_the_unet_only(pipe):
    pipe.enable_attention_slicing(2)  # the UNet's layers have 2 and 4 heads; the VAE's one attention has 1
    assert set(slice_sizes(pipe.unet)) == {2}
    assert set(slice_sizes(pipe.vae)) == {None}
    pipe.enable_attention_slicing("max")
    assert set(slice_sizes(pipe.unet)) == {1} and set(slice_sizes(pipe.vae)) == {None}


def test_a_refused_slice_size_changes_nothing(pipe):
    pipe.enable_attention_slicing("max")
    with pytest.raises(ValueError, match="larger than a layer's 2 heads"):
        pipe.enable_attention_slicing(3)
    assert set(slice_sizes(pipe.unet)) == {1}


def test_a_switch_that_fails_on_a_later_model_restores_the_earlier_ones(pipe, monkeypatch):
    """xformers switches the UNet then the VAE; if the VAE refuses, the UNet must not stay on xformers."""

    def unet_switch(attention_op=None):
        for layer in pipe.unet.attention_layers():
            layer.use_xformers, layer.slice_size = True, None

    def vae_refuses(attention_op=None):
        raise RuntimeError("the VAE refused")

    pipe.enable_attention_slicing("max")
    monkeypatch.setattr(pipe.unet, "enable_xformers_memory_efficient_attention", unet_switch)
    monkeypatch.setattr(pipe.vae, "enable_xformers_memory_efficient_attention", vae_refuses)
    with pytest.raises(RuntimeError, match="the VAE refused"):
        pipe.enable_xformers_memory_efficient_attention()
    assert not any(layer.use_xformers for layer in pipe.unet.attention_layers())
    assert set(slice_sizes(pipe.unet)) == {1}


def test_a_missing_required_switch_is_refused_before_any_change(pipe):
    class NoTiling:
        config = pipe.vae.config

    pipe.enable_attention_slicing("max")
    pipe.vae = NoTiling()
    with pytest.raises(NotImplementedError, match="vae .*NoTiling.* does not support enable_tiling"):
        pipe.enable_vae_tiling()


# ---------------------------------------------------------------------------------------------- saving
@pytest.mark.parametrize("safe", [True, False])
def test_save_pretrained_safe_serialization(pipe, tmp_path, safe):
    pipe.save_pretrained(tmp_path / "p", safe_serialization=safe)
    suffix = "safetensors" if safe else "bin"
    for name in ("unet", "vae"):
        assert (tmp_path / "p" / name / f"diffusion_pytorch_model.{suffix}").is_file()
        other = "bin" if safe else "safetensors"
        assert not (tmp_path / "p" / name / f"diffusion_pytorch_model.{other}").exists()
    again = load_ours(tmp_path / "p")
    assert max_diff(run(again), run(pipe)) == 0


def test_save_pretrained_refuses_a_non_bool_safe_serialization(pipe, tmp_path):
    with pytest.raises(TypeError, match="safe_serialization must be True or False, got 'no'"):
        pipe.save_pretrained(tmp_path / "p", safe_serialization="no")
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------------- dtypes
def model_dtypes(pipe):
    return {name: next(getattr(pipe, name).parameters()).dtype for name in ("unet", "vae", "text_encoder")}


def test_dtype_is_torch_dtype_spelled_the_new_way():
    assert set(model_dtypes(load_ours(tiny_folder(), dtype=torch.bfloat16)).values()) == {torch.bfloat16}
    same = load_ours(tiny_folder(), dtype="bfloat16", torch_dtype=torch.bfloat16)  # agreeing: fine
    assert same.unet.dtype == torch.bfloat16


def test_dtype_and_torch_dtype_disagreeing_is_an_error():
    with pytest.raises(ValueError, match="torch_dtype=torch.float16 and dtype=torch.bfloat16 disagree"):
        load_ours(tiny_folder(), torch_dtype=torch.float16, dtype=torch.bfloat16)


def test_per_component_dtypes():
    pipe = load_ours(tiny_folder(), torch_dtype={"unet": torch.bfloat16, "default": torch.float16})
    assert model_dtypes(pipe) == {"unet": torch.bfloat16, "vae": torch.float16, "text_encoder": torch.float16}
    without_default = load_ours(tiny_folder(), torch_dtype={"vae": "bfloat16"})
    expected = {"unet": torch.float32, "vae": torch.bfloat16, "text_encoder": torch.float32}
    assert model_dtypes(without_default) == expected


def test_per_component_dtypes_with_low_memory():
    pipe = load_ours(tiny_folder(), torch_dtype={"unet": torch.bfloat16}, low_memory=True)
    assert pipe.dtype == torch.bfloat16
    assert run(pipe.to(torch.float32)).shape == (1, 24, 40, 3)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"unett": torch.float16}, "unknown component.* unett; the keys may be unet, vae, text_encoder"),
        ({"unet": torch.int8}, "floating torch dtype"),
        ({"tokenizer": torch.float16}, "unknown component.* tokenizer"),
    ],
)
def test_bad_per_component_dtypes_are_refused_before_loading(mapping, message):
    from depth2img import Depth2ImgPipeline

    with pytest.raises(ValueError, match=message):
        Depth2ImgPipeline.from_pretrained("/nonexistent/folder", torch_dtype=mapping)


# ---------------------------------------------------------------------------------------------- device_map
def test_device_map_cpu_loads_onto_the_cpu():
    pipe = load_ours(tiny_folder(), device_map="cpu")
    assert pipe.device == torch.device("cpu")
    assert pipe.unet.device.type == "cpu"


@pytest.mark.parametrize("device_map", ["balanced", "auto", {"unet": 0}, -1, "no-such-device"])
def test_multi_device_maps_are_refused_with_the_supported_forms(device_map):
    from depth2img import Depth2ImgPipeline

    with pytest.raises(ValueError, match="device_map=.* is not supported.*'cpu', 'cuda' or 'cuda:N'.*low_memory"):
        Depth2ImgPipeline.from_pretrained("/nonexistent/folder", device_map=device_map)


def test_device_map_names_the_device():
    from depth2img.loading.load_options import resolve_device_map

    assert resolve_device_map("cuda") == torch.device("cuda")
    assert resolve_device_map("cuda:1") == torch.device("cuda", 1)
    assert resolve_device_map(0) == torch.device("cuda", 0)
    assert resolve_device_map(None) is None


# ---------------------------------------------------------------------------------------------- variants
def test_a_missing_variant_is_both_a_value_error_and_a_file_not_found_error():
    """diffusers raises ValueError, depth2img used to raise FileNotFoundError: the error is both."""
    from depth2img.loading.weights import VariantNotFoundError

    with pytest.raises(VariantNotFoundError, match="expected diffusion_pytorch_model.fp16.safetensors") as caught:
        load_ours(tiny_folder(), variant="fp16")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, FileNotFoundError)


def test_a_missing_variant_of_a_transformers_component_is_the_same_error(pipe):
    """The VAE and UNet given as objects: the text encoder (transformers) is the first to look for the variant."""
    from depth2img.loading.weights import VariantNotFoundError

    with pytest.raises(VariantNotFoundError, match="no 'fp16' variant of the text_encoder.*model.fp16.safetensors"):
        load_ours(tiny_folder(), variant="fp16", vae=pipe.vae, unet=pipe.unet)
