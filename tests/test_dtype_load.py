"""from_pretrained(torch_dtype=...): converted values exact, the float32 file not kept mapped; same dtype: zero-copy."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

from depth2img.loading import weights
from depth2img.loading.random_model import random_component
from depth2img.loading.weights import read_state_dict, read_stored
from depth2img.models import UNet2DConditionModel

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads the process's mappings from /proc/self/maps")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dtype-load")
    unet = random_component("unet", "tiny", seed=5)
    with torch.no_grad():  # values that bfloat16 and float16 must round (random bits below their precision)
        for parameter in unet.parameters():
            parameter.add_(torch.rand_like(parameter) * 1e-3)
    unet.save_pretrained(folder / "single")
    unet.save_pretrained(folder / "sharded", max_shard_size="200KB")
    unet.save_pretrained(folder / "bin", safe_serialization=False)
    return folder


def _file_ranges(folder: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from files in ``folder``."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(str(folder.resolve()) + "/"):
            start, end = (int(address, 16) for address in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _expected(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    files = [path for path in folder.iterdir() if path.suffix in (".safetensors", ".bin")]
    return {key: tensor.to(dtype) for path in files for key, tensor in read_state_dict(path).items()}


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_converted_values_equal_tensor_to(saved, layout, dtype):
    model = UNet2DConditionModel.from_pretrained(saved / layout, torch_dtype=dtype)
    expected = _expected(saved / layout, dtype)
    state = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(state[key].dtype == dtype and torch.equal(state[key], expected[key]) for key in expected)
    floating = [tensor for tensor in [*model.parameters(), *model.buffers()] if tensor.is_floating_point()]
    assert all(tensor.dtype == dtype for tensor in floating)


def test_conversion_through_many_small_chunks(saved, monkeypatch):
    monkeypatch.setattr(weights, "_READ_CHUNK_BYTES", 100)  # 25 float32 values: most tensors need many chunks
    model = UNet2DConditionModel.from_pretrained(saved / "sharded", torch_dtype="bfloat16")
    expected = _expected(saved / "sharded", torch.bfloat16)
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())


@linux_only
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_converting_load_keeps_no_float32_file_mapped(saved, layout, monkeypatch):
    gc.collect()  # mappings of earlier tests' tensors
    mapped_while_converting = []

    def spy(stored, dtype=None, buffer=None):
        mapped_while_converting.append(bool(_file_ranges(saved / layout)))
        return read_stored(stored, dtype, buffer)

    monkeypatch.setattr(weights, "read_stored", spy)
    model = UNet2DConditionModel.from_pretrained(saved / layout, torch_dtype=torch.bfloat16)
    # Tensor by tensor, with the files unmapped all along: the peak is the bfloat16 model, not the file on top.
    assert len(mapped_while_converting) == len(model.state_dict()) and not any(mapped_while_converting)
    assert _file_ranges(saved / layout) == []
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    sizes = [p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in model.parameters()]
    assert all(sizes)  # each parameter owns exactly its bfloat16 data: no view into a larger float32 buffer


@linux_only
def test_same_dtype_load_stays_zero_copy(saved):
    model = UNet2DConditionModel.from_pretrained(saved / "single", torch_dtype=torch.float32)
    ranges = _file_ranges(saved / "single")
    assert ranges  # positive control for the test above: the file is memory-mapped...
    inside = [any(start <= p.data_ptr() < end for start, end in ranges) for p in model.parameters()]
    assert all(inside)  # ...and every parameter is a view of it, not a copy


def test_converting_load_renames_legacy_attention_keys(tmp_path):
    from safetensors.torch import save_file

    from depth2img.models import AutoencoderKL

    vae = random_component("vae", "tiny", seed=3)
    vae.save_pretrained(tmp_path)
    legacy = {key.replace(".to_q.", ".query."): tensor.clone() for key, tensor in vae.state_dict().items()}
    assert legacy.keys() != vae.state_dict().keys()
    save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    loaded = AutoencoderKL.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert all(torch.equal(loaded.state_dict()[key], t.half()) for key, t in vae.state_dict().items())
