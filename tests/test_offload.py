"""Low-memory mode (depth2img/offload.py): the same images as the default mode, at most one large model resident at
a time, released models reporting the right device/dtype, and clear behaviour when weights change after loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from depth2img import Depth2ImgPipeline
from depth2img.loading.random_model import write_random_pipeline

MODELS = ("text_encoder", "depth_estimator", "vae", "unet")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_random_pipeline(tmp_path_factory.mktemp("low-memory") / "pipe", config="tiny", seed=0)


def load(folder, **kwargs):
    pipe = Depth2ImgPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed=0):
    image = np.random.default_rng(0).random((64, 48, 3))
    generator = torch.Generator().manual_seed(seed)
    return pipe("a house", image=image, num_inference_steps=3, generator=generator, output_type="np").images


def resident(pipe):
    return {name for name in MODELS if not next(getattr(pipe, name).parameters()).is_meta}


def test_same_images_as_the_default_mode(folder):
    expected = generate(load(folder))
    pipe = load(folder, low_memory=True)
    assert np.array_equal(generate(pipe), expected)
    assert np.array_equal(generate(pipe), expected)  # models released and reloaded in between


def test_models_start_released_and_run_one_at_a_time(folder):
    pipe = load(folder, low_memory=True)
    assert resident(pipe) == set()
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    seen = []  # the resident models after each model ran (the VAE runs through its encoder and decoder)
    for module in (pipe.text_encoder, pipe.depth_estimator, pipe.vae.encoder, pipe.vae.decoder, pipe.unet):
        module.register_forward_hook(lambda *_: seen.append(resident(pipe)))
    generate(pipe)
    assert [sorted(models) for models in seen] == [
        ["text_encoder"],
        ["text_encoder"],  # negative prompt
        ["depth_estimator"],
        ["vae"],
        *[["unet"]] * (len(seen) - 5),
        ["vae"],
    ]


def test_to_dtype_while_released(folder):
    expected = generate(load(folder).to(torch.float64))
    pipe = load(folder, low_memory=True).to(torch.float64)
    assert pipe.dtype == torch.float64 and resident(pipe) == set()
    assert np.array_equal(generate(pipe), expected)


def test_weights_changed_in_place_stay_resident(folder):
    pipe = load(folder, low_memory=True)
    generate(pipe)  # the VAE decoded last, so it is resident
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.add_(0.25)
    with pytest.warns(UserWarning, match="the vae stays in memory"):
        changed = generate(pipe)  # releasing the VAE for the text encoder would lose the change: it is kept instead
    assert "vae" in resident(pipe)
    assert not np.array_equal(changed, generate(load(folder)))
    assert np.array_equal(generate(pipe), changed)


def test_parameters_added_after_loading_are_a_clear_error(folder):
    pipe = load(folder, low_memory=True)
    pipe.unet.conv_out.extra = nn.Parameter(torch.empty(3, device="meta"))  # as an adapter on a released model
    with pytest.raises(ValueError, match="low_memory=True does not support adapters added after loading"):
        generate(pipe)


def test_low_memory_must_be_a_bool(folder):
    with pytest.raises(TypeError, match="low_memory must be True or False"):
        load(folder, low_memory="yes")


def test_save_pretrained_writes_every_weight_then_releases(folder, tmp_path):
    pipe = load(folder, low_memory=True)
    pipe.save_pretrained(tmp_path / "saved")
    assert resident(pipe) == set()
    assert np.array_equal(generate(load(tmp_path / "saved")), generate(load(folder)))


def test_torch_dtype_is_applied_when_each_model_loads(folder):
    expected = generate(load(folder, torch_dtype=torch.float64))
    pipe = load(folder, low_memory=True, torch_dtype=torch.float64)
    assert pipe.dtype == torch.float64 and pipe.text_encoder.dtype == torch.float64 and resident(pipe) == set()
    assert np.array_equal(generate(pipe), expected)


def test_the_docs_examples_run(tmp_path, monkeypatch, capsys):
    """docs/benchmarks.md promises runnable examples: its python blocks run in order, in a scratch folder."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example"}
    for block in blocks:
        exec(compile(block, str(docs), "exec"), namespace)
    assert capsys.readouterr().out.split() == ["0.0", "True"]


def test_the_loader_records_the_files_of_each_model_it_read(folder):
    from depth2img.components import LARGE_MODELS
    from depth2img.loading.pipeline_folder import load_components

    loaded = load_components(folder, unet=None)
    assert sorted(loaded.files) == sorted(set(LARGE_MODELS) - {"unet"})  # a given component has no files
    for name, record in loaded.files.items():
        assert record.folder == folder / name and record.variant is None and record.dtype is None
        assert record.format == "safetensors" and all(path.is_file() for path in record.weights)
        assert {path.name for path in record.weights} <= {"diffusion_pytorch_model.safetensors", "model.safetensors"}


def test_where_the_weights_live_is_an_explicit_state(folder):
    from depth2img.offload import Residence

    assert load(folder).low_memory is None
    pipe = load(folder, low_memory=True)
    assert {name: pipe.low_memory.weights_of(getattr(pipe, name)).residence for name in MODELS} == dict.fromkeys(
        MODELS, Residence.RELEASED
    )
    generate(pipe)  # the VAE decodes last
    assert pipe.low_memory.weights_of(pipe.vae).residence is Residence.RESIDENT
    assert pipe.low_memory.weights_of(pipe.unet).residence is Residence.RELEASED
    assert pipe.low_memory.weights_of(pipe.tokenizer) is None
    assert pipe.low_memory.weights_of(pipe.unet).files.folder == folder / "unet"


def test_given_models_stay_resident_and_unwatched(folder):
    given = load(folder).unet
    pipe = load(folder, low_memory=True, unet=given)
    assert pipe.unet is given and pipe.low_memory.weights_of(given) is None
    assert "unet" in resident(pipe) and resident(pipe) == {"unet"}
