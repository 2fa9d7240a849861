"""``--depth-model``, ``--depth-invert`` and ``--depth-normalize`` in ``generate`` and ``depth`` (tiny models, in
process), and the one shared helper that defines them for every command."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from depth2img.cli import main
from depth_models_tiny import saved
from pipeline_tiny import random_pil, tiny_folder

FAST = ["--steps", "2", "-q", "--device", "cpu"]


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"photo{seed}.png"
        random_pil(48, 64, seed=seed).save(path)
        paths.append(path)
    return paths


def run(capsys, *argv: str) -> tuple[list[Path], str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return [Path(line) for line in captured.out.splitlines()], captured.err


def levels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)


def test_depth_command_with_a_depth_model_writes_that_models_depth(capsys, photos, tmp_path):
    from depth2img import load_depth_estimator
    from depth2img.cli.depthmaps import resize_depth
    from depth2img.depth import estimate_depth

    folder = saved("glpn")  # metric: inverted by default
    run(capsys, "depth", "-m", tiny_folder(), "--depth-model", folder, "-i", photos[0], "-o", tmp_path / "d.png",
        "--npy", "-q", "--device", "cpu")  # fmt: skip
    model, processor = load_depth_estimator(folder)
    pixels = [np.asarray(Image.open(photos[0]).convert("RGB"))]
    with torch.no_grad():
        expected = resize_depth(estimate_depth(model, processor, pixels, torch.device("cpu"), torch.float32), (64, 48))
    written = np.load(tmp_path / "d.npy")
    assert np.abs(written - expected).max() <= 1e-6 * np.abs(expected).max()

    run(capsys, "depth", "-m", tiny_folder(), "--depth-model", folder, "--depth-invert", "no", "-i", photos[0],
        "-o", tmp_path / "raw.png", "--npy", "-q", "--device", "cpu")  # fmt: skip
    raw = np.load(tmp_path / "raw.npy")
    assert np.corrcoef(raw.ravel(), written.ravel())[0, 1] < 0  # inverting turns near into far


def test_depth_normalize_batch_uses_one_range_for_all_images(capsys, photos, tmp_path):
    common = ["depth", "-m", tiny_folder(), "--depth-model", saved("depth_anything"), "-i", photos[0], "-i",
              photos[1], "--no-preview", "-q", "--device", "cpu"]  # fmt: skip
    run(capsys, *common, "-o", tmp_path / "each")
    run(capsys, *common, "-o", tmp_path / "all", "--depth-normalize", "batch")
    each = [levels(tmp_path / "each" / f"photo{k}-depth.png") for k in (0, 1)]
    together = [levels(tmp_path / "all" / f"photo{k}-depth.png") for k in (0, 1)]
    assert all(m.min() == 0 and m.max() == 65535 for m in each)  # per image: each spans the whole range
    assert min(m.min() for m in together) == 0 and max(m.max() for m in together) == 65535
    assert any(m.min() > 0 or m.max() < 65535 for m in together)  # one range: not every map spans it


def test_generate_with_a_depth_model_is_recorded_and_replayed(capsys, photos, tmp_path):
    base = ["generate", "-m", tiny_folder(), *FAST, "-i", photos[0], "-p", "a house", "-s", "5"]
    (default,), _ = run(capsys, *base, "-o", tmp_path / "default.png")
    (external,), _ = run(capsys, *base, "--depth-model", saved("zoedepth"), "-o", tmp_path / "zoe.png")
    assert not np.array_equal(levels(default), levels(external))
    with Image.open(external) as image:
        stored = json.loads(image.text["depth2img"])
    assert stored["depth_model"] == str(saved("zoedepth").resolve()) and stored["depth_invert"] == "auto"
    (replay,), _ = run(capsys, "generate", "-m", tiny_folder(), *FAST, "--from-png", external, "-o", tmp_path / "r")
    np.testing.assert_array_equal(levels(replay), levels(external))


def test_generate_depth_normalize_batch_with_one_image_is_per_image(capsys, photos, tmp_path):
    """One input: the run's range is that image's own, so batch and image normalisation make the same picture."""
    base = ["generate", "-m", tiny_folder(), *FAST, "-i", photos[1], "-p", "a house", "-s", "5"]
    (each,), _ = run(capsys, *base, "-o", tmp_path / "each.png")
    (batch,), _ = run(capsys, *base, "--depth-normalize", "batch", "-o", tmp_path / "batch.png")
    np.testing.assert_array_equal(levels(each), levels(batch))


def test_generate_depth_normalize_batch_changes_images_of_a_larger_run(capsys, photos, tmp_path):
    base = ["generate", "-m", tiny_folder(), *FAST, "-i", photos[0], "-i", photos[1], "-p", "a", "-s", "5"]
    each, _ = run(capsys, *base, "-o", tmp_path / "each")
    batch, _ = run(capsys, *base, "--depth-normalize", "batch", "-o", tmp_path / "batch")
    assert any(not np.array_equal(levels(a), levels(b)) for a, b in zip(each, batch))


def test_a_non_commercial_depth_model_is_one_warning_line(capsys, photos, tmp_path):
    folder = tmp_path / "Depth-Anything-V2-Large-hf"
    shutil.copytree(saved("depth_anything"), folder)
    _, err = run(capsys, "depth", "-m", tiny_folder(), "--depth-model", folder, "-i", photos[0],
                 "-o", tmp_path / "d.png", "-q", "--device", "cpu")  # fmt: skip
    notices = [line for line in err.splitlines() if "CC-BY-NC-4.0" in line]
    assert len(notices) == 1 and notices[0].startswith("depth2img: warning: depth model")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--depth-model", "/no/such/folder"], "--depth-model: /no/such/folder not found"),
        (["--depth-model", "not-a-repo-id"], "--depth-model: not-a-repo-id not found"),
        (["--depth-normalize", "video"], "argument --depth-normalize: invalid choice: 'video'"),
        (["--depth-invert", "maybe"], "argument --depth-invert: invalid choice: 'maybe'"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "depth"])
def test_bad_depth_flags_are_one_line_before_loading(capsys, photos, tmp_path, command, flags, message):
    extra = ["-p", "x"] if command == "generate" else []
    status = main([command, "-m", str(tiny_folder()), "-i", str(photos[0]), *extra, "-o", str(tmp_path / "o.png"),
                   *flags])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_one_helper_adds_the_flags_to_any_parser():
    from depth2img.cli.component_options import add_component_arguments, component_choice

    parser = argparse.ArgumentParser()
    add_component_arguments(parser)
    choice = component_choice(parser.parse_args(["--depth-invert", "yes", "--depth-normalize", "batch"]))
    assert (choice.depth_model, choice.depth_invert, choice.depth_normalize) == (None, True, "batch")
    assert component_choice(parser.parse_args([])).depth_invert is None


# ---------------------------------------------------------------------------------------------- --vae
def test_generate_with_vae_path_decodes_with_that_vae(capsys, photos, tmp_path):
    (folder,), err = run(capsys, "random-model", "--config", "taesd-tiny", tmp_path / "taesd")
    assert "RANDOM-WEIGHTS TAESD" in err and (folder / "diffusion_pytorch_model.safetensors").is_file()
    base = ["generate", "-m", tiny_folder(), *FAST, "-i", photos[0], "-p", "a house", "-s", "5"]
    (default,), _ = run(capsys, *base, "-o", tmp_path / "default.png")
    (tiny,), _ = run(capsys, *base, "--vae", folder, "-o", tmp_path / "taesd.png")
    assert levels(tiny).shape == levels(default).shape == (48, 64, 3)
    assert not np.array_equal(levels(tiny), levels(default))
    with Image.open(tiny) as image:
        assert json.loads(image.text["depth2img"])["vae"] == str(folder.resolve())
    (replay,), _ = run(capsys, "generate", "-m", tiny_folder(), *FAST, "--from-png", tiny, "-o", tmp_path / "r")
    np.testing.assert_array_equal(levels(replay), levels(tiny))


def test_vae_taesd_offline_and_not_cached_is_one_line_naming_the_repo(capsys, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = main(["generate", "-m", str(tiny_folder()), *FAST, "-i", str(photos[0]), "-p", "x", "--vae", "taesd",
                   "-o", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "--vae: madebyollin/taesd" in err and "hf download madebyollin/taesd" in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "is neither 'taesd' nor a folder"),
        (lambda tmp: tmp, "has no config.json"),
        (lambda tmp: saved("glpn"), "describes GLPNForDepthEstimation, not a VAE; supported: AutoencoderTiny"),
    ],
)
def test_bad_vae_is_a_usage_error_before_loading(capsys, photos, tmp_path, make, message):
    status = main(["generate", "-m", str(tiny_folder()), *FAST, "-i", str(photos[0]), "-p", "x", "--vae",
                   str(make(tmp_path)), "-o", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_depth_command_has_no_vae_flag(capsys, photos):
    status = main(["depth", "-m", str(tiny_folder()), "-i", str(photos[0]), "--vae", "taesd"])
    assert status == 2 and "unrecognized arguments: --vae taesd" in capsys.readouterr().err


def test_vae_tiling_with_taesd_is_refused_before_loading(capsys, photos, tmp_path):
    from depth2img.loading.random_taesd import write_random_taesd

    folder = write_random_taesd(tmp_path / "taesd", config="taesd-tiny")
    status = main(["generate", "-m", str(tiny_folder()), *FAST, "-i", str(photos[0]), "-p", "x", "--vae",
                   str(folder), "--vae-tiling", "-o", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "--vae-tiling does not work with TAESD" in err and len(err.strip().splitlines()) == 1
