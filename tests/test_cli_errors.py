"""The error contract on the command line: every bad input found before any model loads (exit 2, one line), every
input file fully checked (the second file of a folder too), and no empty output folder after a failed run.

The model here is a stand-in folder with the tiny architecture's configs and no weights: anything that gets past
the checks fails to load it (exit 1, "cannot load model"), which proves the check ran before loading.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from depth2img.cli import main
from test_cli import tiny_model  # noqa: F401 (a fixture: the tiny random-weights model)

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "depth2img" / "configs" / "tiny"


def run(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    err = capsys.readouterr().err.strip()
    return status, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("depth2img: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "run with --debug" not in err, err
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """Configs only: enough for every pre-load check, nothing to load."""
    folder = tmp_path / "configs-only-model"
    for component in ("unet", "text_encoder", "scheduler"):
        shutil.copytree(CONFIGS / component, folder / component)
    (folder / "model_index.json").write_text("not json: this stand-in cannot load")
    return folder


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def generate(capsys, model: Path, tmp_path: Path, *flags: str) -> tuple[int, str]:
    return run(capsys, "generate", "-m", str(model), "-q", "--device", "cpu", "-o", str(tmp_path / "out"), *flags)


def test_a_truncated_second_file_of_a_folder_fails_before_loading_and_writes_nothing(capsys, model, photo, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo, folder / "a.jpg")
    data = photo.read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 2])
    status, err = generate(capsys, model, tmp_path, "-i", str(folder), "-p", "x")
    line = error_line(err)
    assert status == 2 and f"{folder / 'b.jpg'}" in line and "truncated" in line
    assert not (tmp_path / "out").exists()


def test_decompression_bombs_are_refused_from_the_header_naming_file_and_limit(capsys, model, photo, tmp_path):
    bomb = tmp_path / "folder" / "huge.png"
    bomb.parent.mkdir()
    shutil.copy(photo, bomb.parent / "a.jpg")
    Image.new("1", (20000, 20000)).save(bomb)  # 400 M pixels in a small file
    assert bomb.stat().st_size < 5_000_000
    status, err = generate(capsys, model, tmp_path, "-i", str(bomb.parent), "-p", "x")
    line = error_line(err)
    assert status == 2 and str(bomb) in line and "400,000,000 pixels" in line and "--max-pixels" in line
    status, err = generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x", "--max-pixels", "1000")
    line = error_line(err)
    assert status == 2 and "64x48 = 3,072 pixels, more than the limit of 1,000" in line
    status, err = run(capsys, "depth", "-i", str(photo), "--max-pixels", "1000", "-o", str(tmp_path / "d.png"))
    assert status == 2 and "more than the limit of 1,000" in error_line(err)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strength", "0"], "num_inference_steps x strength must be at least 1"),
        (["--steps", "1000000000"], "num_inference_steps must be between 1 and 1000, got 1000000000"),
        (["--steps", "1e9"], "'1e9' is not an integer"),
        (["--eta", "3"], r"eta must be a number in [0.0, 1.0]"),
        (["--guidance-scale", "1e9"], "guidance_scale must be at most 100"),
        (["--guidance-scale", "inf"], "is not a finite number"),
        (["--clip-skip", "99"], "--clip-skip: 99 is too large: this model's text encoder has 4 layers, so use 1 to 5"),
        (["-W", "100000"], "-W/-H: the resized "),
    ],
)
def test_numbers_are_checked_against_the_model_before_it_loads(capsys, model, photo, tmp_path, flags, message):
    status, err = generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x", *flags)
    assert status == 2 and message in error_line(err)
    assert not (tmp_path / "out").exists()


def _lora(path: Path, width: int) -> Path:
    """A diffusers-layout LoRA for one attention projection of the tiny UNet, ``width`` wide."""
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"{key}.lora_A.weight": torch.zeros(2, width), f"{key}.lora_B.weight": torch.zeros(width, 2)}, str(path))
    return path


def test_adapter_files_are_read_and_fitted_to_the_model_before_it_loads(capsys, model, photo, tmp_path):
    unet_config = json.loads((model / "unet" / "config.json").read_text())
    good = _lora(tmp_path / "good.safetensors", unet_config["block_out_channels"][0])
    status, err = generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x", "--lora", str(good))
    assert status == 1 and "cannot load model" in error_line(err)  # the LoRA fits: the run got as far as loading
    wrong = _lora(tmp_path / "sd1-style.safetensors", 320)
    notes = tmp_path / "notes.pt"
    notes.write_text("hello, this is text\n")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(good.read_bytes()[:40])
    width = json.loads((model / "text_encoder" / "config.json").read_text())["hidden_size"]
    narrow = tmp_path / "narrow.safetensors"
    save_file({"<cat>": torch.zeros(1, width + 1)}, str(narrow))
    cases = [
        (["--lora", str(wrong)], "--lora: ", "does not fit"),
        (["--lora", str(broken)], "--lora: ", "is not a valid safetensors file"),
        (["--lora", str(tmp_path / "gone.safetensors")], "--lora: file not found", ""),
        (["--embedding", str(notes)], "--embedding: ", "is not a textual-inversion embedding"),
        (["--embedding", str(narrow)], "--embedding: ", f"has width {width + 1} but this text encoder's is {width}"),
    ]
    for flags, start, reason in cases:
        status, err = generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x", *flags)
        line = error_line(err)
        assert status == 2 and start in line and reason in line, (flags, line)
        assert line.count(str(tmp_path)) <= 1, line  # the file is named once


def test_a_tampered_from_png_is_refused_naming_the_key(capsys, model, photo, tmp_path):
    base = {"prompt": "x", "image": str(photo), "steps": 2, "strength": 0.5, "seed": 1}
    cases = [
        ({"steps": "many"}, "bad 'steps'"),
        ({"strength": [1]}, "bad 'strength'"),
        ({"seed": -5}, "bad 'seed'"),
        ({"loras": [["x.safetensors", "strong"]]}, "bad 'loras'"),
        ({"attention_slicing": "yes"}, "bad 'attention_slicing'"),
        ({"prompt": 3}, "bad 'prompts'"),
        ({"strength": 7.0}, r"strength must be a number in [0.0, 1.0], got 7.0"),
        ({"eta": float("nan")}, "eta must be a finite number"),
    ]
    for change, message in cases:
        png = tmp_path / "made.png"
        info = PngImagePlugin.PngInfo()
        info.add_text("depth2img", json.dumps({**base, **change}))
        Image.new("RGB", (8, 8)).save(png, pnginfo=info)
        status, err = generate(capsys, model, tmp_path, "--from-png", str(png))
        line = error_line(err)
        assert status == 2 and message in line, (change, line)


def test_depth_maps_with_channels_or_another_aspect_are_refused(capsys, model, photo, tmp_path):
    rgb_like = tmp_path / "rgb.npy"
    np.save(rgb_like, np.random.rand(7, 5, 3))
    square = tmp_path / "square.npy"
    np.save(square, np.random.rand(10, 10))
    lying = tmp_path / "lying.npy"
    lying.write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"
        + b" " * 44
        + b"\n"
    )
    huge = tmp_path / "huge.npy"
    np.save(huge, np.full((48, 64), 1e35, np.float32))
    for path, message in (
        (huge, "values as large as 1e+35"),
        (rgb_like, "shape (7, 5, 3); expected (H, W)"),
        (square, "the depth map is 10x10 (aspect 1) but the image is 64x48 (aspect 1.33)"),
        (lying, "cannot read"),
    ):
        status, err = generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x", "--depth-map", str(path))
        assert status == 2 and message in error_line(err), (path, err)


def test_width_not_a_multiple_of_eight_says_which_is_used(capsys, model, photo, tmp_path):
    status, err = generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x", "-W", "100")
    assert status == 1  # got as far as loading the stand-in model
    assert "depth2img: warning: --width 100 is not a multiple of 8 (the VAE works in 8-pixel blocks); using 96" in err


def test_a_failed_load_leaves_no_empty_output_folder_but_keeps_existing_ones(capsys, model, photo, tmp_path):
    status, err = generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x", "-o", str(tmp_path / "new" / "sub"))
    assert status == 1 and "cannot load model" in error_line(err)
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    status, _ = generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x", "-o", str(tmp_path / "kept"))
    assert status == 1 and (tmp_path / "kept").is_dir()


def test_an_uncached_repo_points_to_random_model_for_offline_trying(capsys, photo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    status, err = run(
        capsys, "generate", "-m", "someone/not-cached-here", "--offline", "-i", str(photo), "-p", "x",
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    line = error_line(err)
    assert status == 1 and "depth2img random-model DIR" in line and "-m DIR" in line
    assert not (tmp_path / "out").exists()


def test_stale_temp_files_of_a_killed_run_are_cleaned_by_the_next_run(capsys, model, photo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    leftover = out / f".00000-1.png.{child.pid}-k1ll3d_x.tmp"  # as atomic_path names it, writer gone
    leftover.write_bytes(b"half a png")
    foreign = out / ".notes.tmp"
    foreign.write_bytes(b"not ours")
    generate(capsys, model, tmp_path, "-i", str(photo), "-p", "x")
    assert not leftover.exists() and foreign.exists()


def test_a_very_long_prompt_is_one_short_warning_line(capsys, tiny_model, photo, tmp_path):  # noqa: F811
    status, err = run(
        capsys, "generate", "-m", str(tiny_model), "-i", str(photo), "-p", "word " * 10000, "--steps", "2", "-q",
        "--device", "cpu", "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert status == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("depth2img: warning: the prompt is ") and len(lines[0]) < 300
    assert "tokens were dropped" in lines[0]


def test_a_full_disk_is_one_line_naming_the_output(capsys, tiny_model, photo, tmp_path, monkeypatch):  # noqa: F811
    import errno
    import os

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    out = tmp_path / "out"
    status, err = run(
        capsys, "generate", "-m", str(tiny_model), "-i", str(photo), "-p", "x", "--steps", "2", "-q",
        "--device", "cpu", "-o", str(out / "result.png"),
    )  # fmt: skip
    line = error_line(err)
    assert status == 1 and f"cannot write {out / 'result.png'}: no space left on the device" in line
    assert not any(out.iterdir()) if out.exists() else True  # no temporary file, no half-written image
