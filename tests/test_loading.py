"""Model folders: save/load round trips, variants, formats, the Hub path offline, and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from depth2img.loading import InvalidWeightsError, ModelFilesNotFoundError
from depth2img.loading.weights import read_state_dict
from depth2img.models.modeling import ModelMixin

WEIGHTS = "diffusion_pytorch_model.safetensors"


class Toy(ModelMixin):
    """A small model with the features loading must handle: nested modules, norms, a non-persistent buffer."""

    def __init__(self, width: int = 4, depth: int = 2):
        super().__init__()
        if width % 2:
            raise ValueError(f"width must be even, got {width}")
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.norm = nn.GroupNorm(2, width)
        # Not in checkpoints: must keep the value computed here even though parameters start on meta.
        self.register_buffer("scale", torch.arange(1, width + 1, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x) * self.scale


class Other(Toy):
    pass


@pytest.fixture
def toy() -> Toy:
    return Toy(width=4, depth=2)


def test_round_trip_keeps_config_weights_and_buffers(tmp_path, toy):
    folder = toy.save_pretrained(tmp_path / "toy")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS]  # no temp files left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "Toy" and config["width"] == 4 and config["depth"] == 2

    loaded = Toy.from_pretrained(folder)
    assert not loaded.training
    assert loaded.config == toy.config
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.scale, torch.arange(1.0, 5.0))  # the non-persistent buffer is real, not meta
    for key, value in toy.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), toy.eval()(x))


def test_loading_skips_random_initialisation(tmp_path, toy, monkeypatch):
    folder = toy.save_pretrained(tmp_path / "toy")
    calls = []
    original = nn.Linear.reset_parameters

    def counting_reset(self):
        calls.append(self.weight.device.type)
        original(self)

    monkeypatch.setattr(nn.Linear, "reset_parameters", counting_reset)
    Toy.from_pretrained(folder)
    assert calls == ["meta", "meta"]  # initialisers ran on storage-less tensors only


def test_variant_file_names_and_dtypes(tmp_path, toy):
    folder = toy.half().save_pretrained(tmp_path / "toy", variant="fp16")
    assert (folder / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert read_state_dict(folder / "diffusion_pytorch_model.fp16.safetensors")["norm.weight"].dtype == torch.float16

    assert Toy.from_pretrained(folder, variant="fp16").dtype == torch.float32  # default: keep float32
    half = Toy.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    assert half.dtype == torch.float16 and half.scale.dtype == torch.float16
    assert Toy.from_pretrained(folder, variant="fp16", torch_dtype="bfloat16").dtype == torch.bfloat16

    with pytest.raises(FileNotFoundError, match=r"expected diffusion_pytorch_model\.safetensors.*variants there: fp16"):
        Toy.from_pretrained(folder)


def test_bin_files_load_with_weights_only(tmp_path, toy):
    folder = toy.save_pretrained(tmp_path / "toy", safe_serialization=False)
    assert (folder / "diffusion_pytorch_model.bin").is_file()
    assert torch.equal(Toy.from_pretrained(folder).layers[0].weight, toy.layers[0].weight)
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        Toy.from_pretrained(folder, use_safetensors=True)

    # The legacy (pre-zip) torch.save format cannot be memory-mapped but still loads.
    torch.save(toy.state_dict(), folder / "diffusion_pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(Toy.from_pretrained(folder).norm.bias, toy.norm.bias)


def test_bin_with_pickled_objects_is_refused(tmp_path, toy):
    folder = toy.save_pretrained(tmp_path / "toy", safe_serialization=False)
    torch.save({"layers.0.weight": Path("not a tensor")}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(InvalidWeightsError, match=r"diffusion_pytorch_model\.bin.*weights_only=True"):
        Toy.from_pretrained(folder)


def test_safetensors_preferred_over_bin(tmp_path, toy):
    folder = toy.save_pretrained(tmp_path / "toy", safe_serialization=False)
    other = Toy(width=4, depth=2)
    other.save_pretrained(folder)  # adds the .safetensors file beside the .bin
    assert torch.equal(Toy.from_pretrained(folder).layers[1].weight, other.layers[1].weight)
    assert torch.equal(Toy.from_pretrained(folder, use_safetensors=False).layers[1].weight, toy.layers[1].weight)


def test_sharded_checkpoint(tmp_path, toy):
    folder = tmp_path / "sharded"
    folder.mkdir()
    toy.save_config(folder)
    state = toy.state_dict()
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": ["layers.0.weight", "layers.0.bias"]}
    shards["diffusion_pytorch_model-00002-of-00002.safetensors"] = [k for k in state if not k.startswith("layers.0")]
    weight_map = {}
    for name, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = Toy.from_pretrained(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())

    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="names shard files that do not exist.*00002-of-00002"):
        Toy.from_pretrained(folder)


def _rewrite_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, folder / WEIGHTS)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, toy):
    folder = toy.save_pretrained(tmp_path / "toy")
    state = toy.state_dict()
    del state["layers.0.weight"]
    state["layers.0.bias"] = torch.zeros(5)
    for i in range(7):
        state[f"extra.{i}"] = torch.zeros(1)
    _rewrite_weights(folder, state)
    with pytest.raises(InvalidWeightsError) as caught:
        Toy.from_pretrained(folder)
    message = str(caught.value)
    assert str(folder / WEIGHTS) in message and "does not match Toy" in message
    assert "1 missing keys: layers.0.weight" in message
    assert "7 unexpected keys: extra.0, extra.1, extra.2, extra.3, extra.4, ... (2 more)" in message
    assert "1 wrong shapes: layers.0.bias (file (5,), model (4,))" in message


def test_missing_files_name_the_file(tmp_path, toy):
    folder = toy.save_pretrained(tmp_path / "toy")
    (folder / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=f"no weights file in {folder}: expected {WEIGHTS}"):
        Toy.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config file not found: .*config.json"):
        Toy.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="has no subfolder 'unet'"):
        Toy.from_pretrained(tmp_path, subfolder="unet")
    with pytest.raises(FileNotFoundError, match="neither an existing local folder nor a Hugging Face Hub repo id"):
        Toy.from_pretrained(str(tmp_path / "no" / "such" / "folder"))


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"\xff" * 8 + data[8:], id="garbage-header-length"),
        pytest.param(lambda data: data[:8] + b"{not json" + data[17:], id="garbage-header"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_corrupt_safetensors_names_the_file(tmp_path, toy, corrupt):
    folder = toy.save_pretrained(tmp_path / "toy")
    path = folder / WEIGHTS
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(InvalidWeightsError, match=f"{path} is not a valid safetensors file"):
        Toy.from_pretrained(folder)


def test_wrong_class_and_invalid_config(tmp_path, toy):
    folder = toy.save_pretrained(tmp_path / "toy")
    with pytest.raises(ValueError, match="describes class Toy, not Other: is this the right subfolder"):
        Other.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "width": 3}))
    with pytest.raises(ValueError, match="config.json does not describe a valid Toy: width must be even"):
        Toy.from_pretrained(folder)
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        Toy.from_pretrained(folder)


def test_argument_errors(tmp_path, toy):
    folder = toy.save_pretrained(tmp_path / "toy")
    with pytest.raises(ValueError, match="torch_dtype must be a floating torch dtype"):
        Toy.from_pretrained(folder, torch_dtype=torch.int8)
    with pytest.raises(ValueError, match="torch_dtype must be a floating torch dtype"):
        Toy.from_pretrained(folder, torch_dtype="half-ish")
    with pytest.raises(TypeError, match="unknown argument.*low_memory"):
        Toy.from_pretrained(folder, low_memory=True)
    with pytest.raises(ValueError, match="variant must be a short name"):
        Toy.from_pretrained(folder, variant="")


def test_offline_repo_id_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFilesNotFoundError) as caught:
        Toy.from_pretrained("sd2-community/stable-diffusion-2-depth", subfolder="unet", cache_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith("sd2-community/stable-diffusion-2-depth (unet/config.json")
    assert "HF_HUB_OFFLINE is set" in message
    assert "`hf download sd2-community/stable-diffusion-2-depth`" in message and "local folder" in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # no stack of HTTP errors


def test_local_files_only_names_the_cause(tmp_path):
    with pytest.raises(ModelFilesNotFoundError, match=r"downloads are off \(local_files_only=True\)"):
        Toy.from_pretrained("someone/some-model", local_files_only=True, cache_dir=tmp_path)


def _fake_hub_cache(cache: Path, repo_id: str) -> Path:
    """A snapshot laid out as huggingface_hub caches it, so the repo-id path runs without network."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_repo_id_loads_from_the_hub_cache_offline(tmp_path, toy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _fake_hub_cache(tmp_path, "someone/toy-model")
    toy.save_pretrained(snapshot / "unet")
    loaded = Toy.from_pretrained("someone/toy-model", subfolder="unet", cache_dir=tmp_path)
    assert torch.equal(loaded.layers[0].weight, toy.layers[0].weight)

    # Cached snapshot without the weights: the missing file is named, with the download hint.
    (snapshot / "unet" / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="no weights file in .*unet.*`hf download someone/toy-model`"):
        Toy.from_pretrained("someone/toy-model", subfolder="unet", cache_dir=tmp_path)


# ---------------------------------------------------------------- real models against the reference's files


def _tiny_config(component: str) -> dict:
    from depth2img.loading.single_file import architecture_folder

    config = json.loads((architecture_folder("tiny") / component / "config.json").read_text())
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _jitter(model: nn.Module) -> nn.Module:
    """Random values everywhere (diffusers initialises biases and norms to constants that would hide swaps)."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def test_unet_folder_written_by_diffusers_loads(tmp_path, diffusers):
    from depth2img.models import UNet2DConditionModel

    reference = _jitter(diffusers.UNet2DConditionModel(**_tiny_config("unet")))
    reference.save_pretrained(tmp_path / "unet")
    ours = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet")
    sample, context = torch.randn(2, 5, 8, 12), torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = reference(sample, 10, context).sample
        got = ours(sample, 10, context).sample
    assert (got - expected).abs().max().item() <= 1e-5


def test_vae_folder_written_by_diffusers_loads(tmp_path, diffusers):
    from depth2img.models import AutoencoderKL

    reference = _jitter(diffusers.AutoencoderKL(**_tiny_config("vae")))
    reference.save_pretrained(tmp_path / "vae", variant="fp16")
    ours = AutoencoderKL.from_pretrained(tmp_path / "vae", variant="fp16")
    image, latents = torch.randn(2, 3, 16, 24), torch.randn(2, 4, 4, 6)
    with torch.no_grad():
        mean_diff = reference.encode(image).latent_dist.mean - ours.encode(image).latent_dist.mean
        decode_diff = reference.decode(latents).sample - ours.decode(latents).sample
    assert mean_diff.abs().max().item() <= 1e-5 and decode_diff.abs().max().item() <= 1e-5


def test_real_models_reject_wrong_folders_and_bad_configs(tmp_path):
    from depth2img.models import AutoencoderKL, UNet2DConditionModel

    AutoencoderKL(**_tiny_config("vae")).save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="vae/config.json describes class AutoencoderKL, not UNet2DConditionModel"):
        UNet2DConditionModel.from_pretrained(tmp_path, subfolder="vae")
    config = {**_tiny_config("unet"), "down_block_types": ["FancyDownBlock2D", "DownBlock2D"]}
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unet/config.json does not describe a valid UNet2DConditionModel: .*Fancy"):
        UNet2DConditionModel.from_pretrained(tmp_path / "unet")


def test_diffusers_loads_our_folder(tmp_path, diffusers):
    from depth2img.models import UNet2DConditionModel

    ours = _jitter(UNet2DConditionModel(**_tiny_config("unet")))
    ours.save_pretrained(tmp_path / "unet")
    reference = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    sample, context = torch.randn(1, 5, 8, 8), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert torch.allclose(reference(sample, 3, context).sample, ours(sample, 3, context).sample, atol=1e-5)
