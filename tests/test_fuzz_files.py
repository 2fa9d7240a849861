"""A mutation corpus of input files (Hypothesis): images, depth maps, safetensors LoRAs and embeddings, ``.ckpt``
zips, ``.pt`` embeddings and PNG parameter records — truncated, bit-flipped, with lying headers and huge declared
sizes — plus zip bombs. Every file must be read correctly or refused with one of our errors in one line; never a
raw exception, a crash or a hang.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from conftest import require
from fuzz_support import outcome
from pipeline_tiny import random_pil

hypothesis = require("hypothesis")
st = hypothesis.strategies
given = hypothesis.given

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "depth2img" / "configs" / "tiny"
LORA_KEY = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


# ---------------------------------------------------------------------------------------------- seeds
def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _torch_save(obj, zipped: bool = True) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zipped)
    return buffer.getvalue()


def _safetensors(tensors: dict, tmp: Path) -> bytes:
    save_file(tensors, str(tmp))
    return tmp.read_bytes()


def _record_png(record: dict) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 2")
    info.add_text("depth2img", json.dumps(record))
    return _png(Image.new("RGB", (8, 8)), pnginfo=info)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """kind -> (file suffix, seed bytes)."""
    scratch = tmp_path_factory.mktemp("seeds") / "t.safetensors"
    photo = random_pil(24, 40)
    width = json.loads((CONFIGS / "unet" / "config.json").read_text())["block_out_channels"][0]
    hidden = json.loads((CONFIGS / "text_encoder" / "config.json").read_text())["hidden_size"]
    lora = {f"{LORA_KEY}.lora_A.weight": torch.randn(2, width), f"{LORA_KEY}.lora_B.weight": torch.randn(width, 2)}
    levels = (np.random.default_rng(0).random((24, 40)) * 65535).astype(np.uint16)
    return {
        "image png": (".png", _png(photo)),
        "image jpeg": (".jpg", _encoded(photo, "JPEG")),
        "image 16-bit png": (".png", _png(Image.fromarray(levels))),
        "image palette png": (".png", _png(photo.convert("P"))),
        "image bmp": (".bmp", _encoded(photo, "BMP")),
        "image tiff": (".tif", _encoded(photo, "TIFF")),
        "depth npy": (".npy", _npy(np.random.default_rng(1).random((24, 40), dtype=np.float32))),
        "depth 16-bit png": (".png", _png(Image.fromarray(levels))),
        "lora safetensors": (".safetensors", _safetensors(lora, scratch)),
        "lora bin": (".bin", _torch_save(lora)),
        "embedding safetensors": (".safetensors", _safetensors({"<cat>": torch.randn(2, hidden)}, scratch)),
        "embedding pt (A1111)": (
            ".pt",
            _torch_save({"string_to_param": {"*": torch.randn(1, hidden)}, "name": "cat"}, zipped=False),
        ),
        "ckpt zip": (".ckpt", _torch_save({"state_dict": {"model.w": torch.randn(3, 3)}, "global_step": 1})),
        "png record": (".png", _record_png({"prompt": "a cat", "steps": 2, "strength": 0.5, "seed": 3})),
    }


def _meta_models() -> dict:
    from transformers import CLIPTextConfig, CLIPTextModel

    from depth2img.loading.empty_init import parameters_on_meta
    from depth2img.models.unet import UNet2DConditionModel

    unet_config = json.loads((CONFIGS / "unet" / "config.json").read_text())
    text_config = json.loads((CONFIGS / "text_encoder" / "config.json").read_text())
    with parameters_on_meta():
        return {
            "unet": UNet2DConditionModel(**UNet2DConditionModel.extract_init_kwargs(unet_config)),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text_config)),
        }


@pytest.fixture(scope="module")
def readers(tmp_path_factory) -> dict:
    """kind -> (read(path) -> result, check(result)): the reader each kind of file meets in depth2img."""
    from depth2img.adapters.lora_pipeline import fitting_lora_weights
    from depth2img.adapters.textual_inversion import read_embedding_file
    from depth2img.cli.inputs import check_image, load_depth_map, load_rgb
    from depth2img.loading.single_file import read_checkpoint

    models = _meta_models()
    stand_in = tmp_path_factory.mktemp("stand-in") / "model"
    for component in ("unet", "text_encoder", "scheduler"):
        shutil.copytree(CONFIGS / component, stand_in / component)
    (stand_in / "model_index.json").write_text("not json: nothing to load")
    photo = stand_in.parent / "photo.png"
    random_pil(24, 40).save(photo)

    def image(path: Path):
        size = check_image(path)
        rgb = load_rgb(path)
        assert rgb.mode == "RGB" and rgb.size == size
        return rgb

    def depth(path: Path):
        array = load_depth_map(path)
        assert array.ndim == 2 and array.dtype == np.float32 and np.isfinite(array).all()
        return array

    def embedding(path: Path):
        token, tensor = read_embedding_file(path)
        assert isinstance(tensor, torch.Tensor)
        return tensor

    def from_png(path: Path):
        from depth2img.cli import main
        from depth2img.errors import UserInputError

        err = io.StringIO()
        argv = ["generate", "-m", str(stand_in), "--from-png", str(path), "-i", str(photo), "-q"]
        argv += ["--device", "cpu", "-o", str(stand_in.parent / "out")]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)
        lines = [line for line in err.getvalue().splitlines() if line.startswith("depth2img: error: ")]
        assert len(lines) == 1 and "run with --debug" not in lines[0], err.getvalue()
        if status == 2:
            raise UserInputError(lines[0])  # refused before loading: tallied as our error
        assert status == 1 and "cannot load model" in lines[0], (status, lines[0])

    return {
        "image": image,
        "depth": depth,
        "lora": lambda path: fitting_lora_weights(path, models),
        "embedding": embedding,
        "ckpt": read_checkpoint,
        "png record": from_png,
    }


# ---------------------------------------------------------------------------------------------- mutations
def _apply(data: bytes, mutation: tuple) -> bytes:
    kind, where, value = mutation
    if not data:
        return data
    at = int(where * (len(data) - 1))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << (value % 8))]) + data[at + 1 :]
    if kind == "overwrite":
        return data[:at] + bytes([value % 256]) * 4 + data[at + 4 :]
    if kind == "lie":  # a huge declared size where a header keeps sizes (PNG IHDR, safetensors length, zip sizes)
        at = int(where * min(len(data) - 1, 63))
        number = struct.pack(">I" if value % 2 else "<Q", 0xFFFFFFF0 if value % 2 else 2**62)
        return data[:at] + number + data[at + len(number) :]
    return data + bytes(value % 256 for _ in range(int(where * 64)))  # "append": trailing junk


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "flip", "overwrite", "lie", "append"]),
        st.floats(0, 1),
        st.integers(0, 2**16),
    ),
    min_size=1,
    max_size=3,
)
SEEDS = [
    "image png", "image jpeg", "image 16-bit png", "image palette png", "image bmp", "image tiff", "depth npy",
    "depth 16-bit png", "lora safetensors", "lora bin", "embedding safetensors", "embedding pt (A1111)", "ckpt zip",
    "png record",
]  # fmt: skip


def _reader(readers: dict, seed: str):
    """The reader of a seed's kind: the seed's name starts with it ("image jpeg" -> "image")."""
    return next(reader for kind, reader in readers.items() if seed.startswith(kind))


@given(seed=st.sampled_from(SEEDS), mutations=MUTATIONS)
def test_mutated_files_are_read_or_refused_in_one_line(corpus, readers, tmp_path_factory, seed, mutations):
    suffix, data = corpus[seed]
    for mutation in mutations:
        data = _apply(data, mutation)
    path = tmp_path_factory.mktemp("case") / f"input{suffix}"
    path.write_bytes(data)
    outcome(f"file: {seed}", lambda: _reader(readers, seed)(path))


def test_unmutated_seeds_are_all_accepted(corpus, readers, tmp_path):
    """The corpus's seeds are valid files: every reader accepts its own (so refusals above come from mutations;
    a PNG record is accepted when the run gets as far as loading the stand-in model)."""
    for seed in SEEDS:
        suffix, data = corpus[seed]
        path = tmp_path / f"{seed.replace(' ', '_').replace('(', '').replace(')', '')}{suffix}"
        path.write_bytes(data)
        read = _reader(readers, seed)
        assert outcome(f"seed: {seed}", lambda read=read, path=path: read(path)) == "accepted", seed


@given(record=st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
), keys=st.lists(st.sampled_from(["prompt", "image", "steps", "strength", "seed", "loras", "embeddings", "eta",
    "guidance_scale", "clip_skip", "width", "scheduler", "device", "dtype", "vae_tiling", "num_images"]),
    max_size=4, unique=True))  # fmt: skip
def test_png_records_with_any_json_are_read_or_refused_in_one_line(readers, tmp_path_factory, record, keys):
    """--from-png with a depth2img record whose values are any JSON (a tampered PNG)."""
    base = {"prompt": "a cat", "steps": 2, "strength": 0.5, "seed": 3}
    if isinstance(record, dict):
        base.update(record)
    for key in keys:
        base[key] = record
    path = tmp_path_factory.mktemp("record") / "made.png"
    path.write_bytes(_record_png(base))
    outcome("file: png record (json)", lambda: readers["png record"](path))


# ---------------------------------------------------------------------------------------------- zip bombs
def _zip_bomb(path: Path, member: str, size: int) -> None:
    block = b"\x00" * (1 << 20)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open(member, "w", force_zip64=True) as handle,
    ):
        for _ in range(size >> 20):
            handle.write(block)


@pytest.mark.parametrize("member", ["archive/data.pkl", "archive/data/0"])
def test_zip_bombs_are_refused_without_inflating_them(readers, tmp_path, member):
    path = tmp_path / "bomb.ckpt"
    _zip_bomb(path, member, 256 << 20)  # 256 MB of zeros in well under 1 MB
    assert path.stat().st_size < 1 << 20
    ended = outcome("file: zip bomb ckpt", lambda: readers["ckpt"](path))
    assert ended.startswith("refused"), ended
