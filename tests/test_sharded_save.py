"""save_pretrained(max_shard_size=...): diffusers' shard and index names, loading both ways, stale-file cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from depth2img.loading.random_model import random_component
from depth2img.loading.weights import parse_shard_size, read_state_dict
from depth2img.models import UNet2DConditionModel

INDEX = "diffusion_pytorch_model.safetensors.index.json"
SINGLE = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    return random_component("unet", "tiny", seed=1)  # 0.8 MB of float32 weights, largest tensor 74 KB


def _files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()} - {"config.json"}


def _assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], tensor) for key, tensor in expected.items())


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("10GB", 10 * 10**9),
        (" 500mb ", 500 * 10**6),
        ("5GiB", 5 * 2**30),
        ("1.5KB", 1500),
        (4096, 4096),
        (None, 10**10),
    ],
)
def test_shard_sizes(size, expected):
    assert parse_shard_size(size) == expected


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "10", "GB", "10 XB", "-1GB", "0KB", ""])
def test_bad_shard_size_is_refused_before_writing(tmp_path, unet, bad):
    with pytest.raises(ValueError, match=r"max_shard_size must be a positive number of bytes .*got "):
        unet.save_pretrained(tmp_path / "unet", max_shard_size=bad)
    assert not (tmp_path / "unet").exists()


def test_default_stays_one_file_as_in_diffusers(tmp_path, unet):
    unet.save_pretrained(tmp_path / "unet")
    assert _files(tmp_path / "unet") == {SINGLE}


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_same_files_as_diffusers_and_both_load_them(tmp_path, unet, diffusers, variant):
    expected = unet.state_dict()
    unet.save_pretrained(tmp_path / "ours", variant=variant, max_shard_size="50KB")
    reference = diffusers.UNet2DConditionModel.from_config(dict(unet.config))
    reference.load_state_dict(expected)
    reference.save_pretrained(tmp_path / "reference", variant=variant, max_shard_size="50KB")

    files = _files(tmp_path / "ours")
    assert files == _files(tmp_path / "reference")
    index = INDEX.replace(".json", f".{variant}.json") if variant else INDEX
    shard = f"diffusion_pytorch_model{'.' + variant if variant else ''}-00001-of-"
    assert index in files and any(name.startswith(shard) for name in files) and len(files) > 3
    # The index is byte for byte diffusers' (metadata.total_size, weight_map), so every shard holds the same keys.
    assert (tmp_path / "ours" / index).read_text() == (tmp_path / "reference" / index).read_text()
    assert json.loads((tmp_path / "ours" / index).read_text())["metadata"]["total_size"] == sum(
        tensor.numel() * tensor.element_size() for tensor in expected.values()
    )
    for name in files - {index}:
        ours, theirs = read_state_dict(tmp_path / "ours" / name), read_state_dict(tmp_path / "reference" / name)
        assert ours.keys() == theirs.keys()

    _assert_same_weights(UNet2DConditionModel.from_pretrained(tmp_path / "ours", variant=variant), expected)
    _assert_same_weights(UNet2DConditionModel.from_pretrained(tmp_path / "reference", variant=variant), expected)
    loaded_by_diffusers = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "ours", variant=variant)
    _assert_same_weights(loaded_by_diffusers, expected)


def test_bin_shards(tmp_path, unet, diffusers):
    unet.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="200KB")
    files = _files(tmp_path)
    assert "diffusion_pytorch_model.bin.index.json" in files
    assert {name for name in files if name.endswith(".bin")} == {
        f"diffusion_pytorch_model-{number:05d}-of-{len(files) - 1:05d}.bin" for number in range(1, len(files))
    }
    _assert_same_weights(UNet2DConditionModel.from_pretrained(tmp_path), unet.state_dict())
    loaded_by_diffusers = diffusers.UNet2DConditionModel.from_pretrained(tmp_path, use_safetensors=False)
    _assert_same_weights(loaded_by_diffusers, unet.state_dict())


def test_resaving_removes_only_stale_weights_of_that_format_and_variant(tmp_path, unet):
    folder = tmp_path / "unet"
    folder.mkdir()
    unrelated = ["notes.txt", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model-00001-of-00009.txt"]
    for name in unrelated:
        (folder / name).write_text("keep me")
    other = random_component("unet", "tiny", seed=2)

    unet.save_pretrained(folder, max_shard_size="100KB")
    many = _files(folder) - set(unrelated)
    other.save_pretrained(folder, max_shard_size="300KB")  # fewer shards: the extra old ones must go
    fewer = _files(folder) - set(unrelated)
    assert INDEX in fewer and len(fewer) < len(many)
    assert fewer == {INDEX} | set(json.loads((folder / INDEX).read_text())["weight_map"].values())
    _assert_same_weights(UNet2DConditionModel.from_pretrained(folder), other.state_dict())

    unet.save_pretrained(folder, safe_serialization=False, max_shard_size="100KB")  # another format: kept apart
    assert fewer < _files(folder)
    unet.save_pretrained(folder)  # one file: no index or shards left for diffusers to prefer
    assert {name for name in _files(folder) if name.endswith((".safetensors", ".safetensors.index.json"))} == {
        SINGLE,
        "diffusion_pytorch_model.fp16.safetensors",
    }
    other.save_pretrained(folder, max_shard_size="300KB")  # shards again: the single file would shadow them
    assert SINGLE not in _files(folder)
    _assert_same_weights(UNet2DConditionModel.from_pretrained(folder), other.state_dict())
    assert all((folder / name).read_text() == "keep me" for name in unrelated)


def test_pipeline_passes_max_shard_size_to_our_models(tmp_path):
    from depth2img import Depth2ImgPipeline
    from depth2img.components import COMPONENT_NAMES

    pipe = Depth2ImgPipeline(**{name: random_component(name, "tiny") for name in COMPONENT_NAMES})
    with pytest.raises(ValueError, match="max_shard_size must be"):
        pipe.save_pretrained(tmp_path / "bad", max_shard_size="lots")
    assert not (tmp_path / "bad").exists()

    pipe.save_pretrained(tmp_path / "pipe", max_shard_size="200KB")
    for name in ("unet", "vae"):
        assert INDEX in _files(tmp_path / "pipe" / name)
    assert _files(tmp_path / "pipe" / "text_encoder") == {"model.safetensors"}  # transformers' own default
    loaded = Depth2ImgPipeline.from_pretrained(tmp_path / "pipe")
    _assert_same_weights(loaded.unet, pipe.unet.state_dict())
    _assert_same_weights(loaded.vae, pipe.vae.state_dict())
