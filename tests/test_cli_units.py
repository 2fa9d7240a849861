"""The command's helpers, without any model: argument errors, PNG metadata, output names, inputs, colours."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth2img.cli import main
from depth2img.cli.colormap import viridis
from depth2img.cli.depthmaps import normalized, write_depth_png16
from depth2img.cli.errors import CliError
from depth2img.cli.inputs import collect_images, load_depth_map, load_rgb, target_size
from depth2img.cli.outputs import OutputNamer
from depth2img.cli.pngmeta import JSON_KEY, PARAMETERS_KEY, a1111_parameters, read_png_record, write_png

ROOT = Path(__file__).resolve().parents[1]


def error_of(capsys, *argv: str) -> tuple[int, str]:
    """Run the command in-process; return its exit status and its stderr (which must be ONE line)."""
    status = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("depth2img: error: ")
    return status, err


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (120, 80, 40)).save(path)
    return path


# ------------------------------------------------------------------------------------------ argument errors
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strength", "1.5"], "argument --strength: 1.5 is outside [0, 1]"),
        (["--strength", "-0.1"], "argument --strength: -0.1 is outside [0, 1]"),
        (["--strength", "abc"], "'abc' is not a number"),
        (["--steps", "0"], "argument --steps/--num-inference-steps: 0 is less than 1"),
        (["-n", "0"], "0 is less than 1"),
        (["--seed", "-2"], "use -1 (random)"),
        (["--cfg-scale", "-1"], "is negative"),
        (["--lora", "style.safetensors:strong"], "the scale after ':' must be a number"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_flag_values_are_one_line_usage_errors(capsys, photo, flags, message):
    status, err = error_of(capsys, "generate", "-i", str(photo), "-p", "x", *flags)
    assert status == 2
    assert message in err
    assert "generate --help" in err


def test_bad_inputs_are_found_before_any_model_is_loaded(capsys, tmp_path, photo):
    # Each of these fails while checking arguments: the model named here is an empty stand-in that cannot load.
    (tmp_path / "fake-model").mkdir()
    (tmp_path / "fake-model" / "model_index.json").write_text("{}")
    model = ["-m", str(tmp_path / "fake-model"), "-q"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    cases = [
        (["-i", str(tmp_path / "missing.jpg"), "-p", "x"], "--image: image not found: "),
        (["-i", str(tmp_path / "notes.txt"), "-p", "x"], "is not an image file that PIL can read"),
        (["-i", str(tmp_path / "empty"), "-p", "x"], "has no images (looked for .png, .jpg"),
        (["-i", str(tiny), "-p", "x"], "images need at least 8 pixels per side"),
        (["-i", str(photo)], "generate needs a prompt: -p/--prompt TEXT"),
        (["-p", "x"], "generate needs an input image"),
        (["-i", str(photo), "-p", "x", "--scheduler", "warp-drive"], "unknown scheduler 'warp-drive'; choose one of"),
        (["-i", str(photo), "-i", str(photo), "-p", "x", "--depth-map", str(photo)], "exactly one input image"),
        (["-i", str(photo), "-p", "x", "-o", str(tmp_path / "out.jpg")], "must end in .png"),
        (["-i", str(photo), "-p", "x", "-o", str(tmp_path / "{colour}.png")], "bad field 'colour'"),
        (["-i", str(photo), "-p", "x", "-o", str(tmp_path / "notes.txt" / "sub/")], "cannot write to folder"),
        (["-i", str(photo), "-p", "x", "--device", "tpu"], "--device: unknown device 'tpu'"),
        (["-i", str(photo), "-p", "x", "--dtype", "int8"], "--dtype: unknown precision 'int8'"),
        (["-i", str(photo), "-p", "x", "--from-png", str(photo)], "has no depth2img parameters"),
        (["-i", str(photo), "-p", "x", "-m", str(tmp_path / "x.safetensors")], "--model: "),
        (["-i", str(photo), "-p", "x", "--lora", str(tmp_path / "gone.safetensors:0.7")], "--lora: file not found"),
        (["-i", str(photo), "-p", "x", "--embedding", str(tmp_path / "gone.pt")], "--embedding: file not found"),
    ]
    for flags, message in cases:
        status, err = error_of(capsys, "generate", *model, "-o", str(tmp_path / "out"), *flags)
        assert status == 2, (flags, err)
        assert message in err, (flags, err)
    status, err = error_of(capsys, "generate", "-i", str(photo), "-p", "x", "-m", str(tmp_path / "no-model-here"))
    assert status == 2 and "not found" in err


def test_depth_and_random_model_argument_errors(capsys, tmp_path, photo):
    cases = [
        (
            ["depth", "-i", str(photo), "-i", str(photo), "-o", str(tmp_path / "d.png")],
            "names one file, but there are 2",
        ),
        (["depth", "-i", str(photo), "-o", str(tmp_path / "d.jpg")], "must be a folder or end in .png"),
        (["depth", "-i", str(tmp_path / "none.png")], "image not found"),
        (["random-model", str(photo)], "exists and is not a folder"),
        (["random-model", "--config", "huge", str(tmp_path / "m")], "invalid choice: 'huge'"),
    ]
    for argv, message in cases:
        status, err = error_of(capsys, *argv)
        assert status == 2 and message in err, (argv, err)


def test_unknown_scheduler_lists_the_valid_ones(capsys, photo):
    status, err = error_of(capsys, "generate", "-i", str(photo), "-p", "x", "--scheduler", "nope")
    assert status == 2
    for name in ("euler-a", "dpm++2m-karras", "ddim", "pndm"):
        assert name in err


def test_help_and_version_exit_zero(capsys):
    assert main(["--version"]) == 0
    assert "depth2img 0." in capsys.readouterr().out
    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--cfg-scale", "--negative-prompt", "--depth-map", "--lora", "--from-png", "--vae-tiling", "-W"):
        assert flag in out
    assert main([]) == 2  # no command: help on stderr, usage status


def test_debug_shows_the_traceback(capsys, tmp_path):
    assert main(["generate", "--debug", "-i", str(tmp_path / "missing.png"), "-p", "x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("image not found: " + str(tmp_path / "missing.png"))


def test_console_script_reports_errors_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("depth2img")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "depth2img"]
    done = subprocess.run(
        [*command, "generate", "-i", "x.png", "-p", "x", "--strength", "2"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "depth2img: error: argument --strength: 2 is outside [0, 1] (see: depth2img generate --help)"
    )


# ------------------------------------------------------------------------------------------ PNG metadata
def test_png_carries_a1111_parameters_and_json_and_writes_atomically(tmp_path):
    text = a1111_parameters(
        "two tigers, photo",
        "blurry",
        {"Steps": 20, "Sampler": "Euler a", "CFG scale": "7.5", "Seed": 42, "Size": "64x48", "Model": "a/b", "X": None},
    )
    assert text == (
        "two tigers, photo\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x48, Model: a/b"
    )
    assert a1111_parameters("p", "", {"Model": "C:\\m, v2"}).splitlines()[-1] == 'Model: "C:\\\\m, v2"'
    record = {"prompt": "zwei Tiger — 虎", "seed": 42, "steps": 20}
    path = tmp_path / "sub" / "out.png"
    write_png(path, Image.new("RGB", (8, 8), "red"), {PARAMETERS_KEY: text, JSON_KEY: json.dumps(record)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temporary file left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # readable like any new file, not mkstemp's 0600
    with Image.open(path) as image:
        assert image.format == "PNG" and image.text[PARAMETERS_KEY] == text
    assert read_png_record(path) == record


def test_read_png_record_errors(tmp_path):
    jpeg = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    broken = tmp_path / "broken.png"
    write_png(broken, Image.new("RGB", (8, 8)), {JSON_KEY: "{not json"})
    for path, message in [
        (tmp_path / "none.png", "file not found"),
        (jpeg, "is a JPEG image, not a PNG"),
        (broken, "not valid JSON"),
    ]:
        with pytest.raises(CliError, match=message):
            read_png_record(path)


# ------------------------------------------------------------------------------------------ output names
def test_output_folder_numbers_on_without_overwriting(tmp_path):
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "00007-123.png").write_bytes(b"")
    namer = OutputNamer(str(folder), total=2)
    namer.prepare()
    assert namer.path_for(0, 5, Path("a.jpg"), "p") == folder / "00008-5.png"
    assert namer.path_for(1, 6, Path("a.jpg"), "p") == folder / "00009-6.png"
    fresh = OutputNamer(str(tmp_path / "new") + "/", total=1)
    fresh.prepare()
    assert fresh.path_for(0, 1, Path("a.jpg"), "p") == tmp_path / "new" / "00000-1.png"


def test_output_patterns(tmp_path):
    pattern = OutputNamer(str(tmp_path / "{stem}-{seed}-{prompt}.png"), total=3)
    pattern.prepare()
    assert (
        pattern.path_for(2, 9, Path("room.jpg"), "a cosy cabin, winter!") == tmp_path / "room-9-a_cosy_cabin_winter.png"
    )
    single = OutputNamer(str(tmp_path / "result.png"), total=1)
    assert single.path_for(0, 9, Path("x.jpg"), "p") == tmp_path / "result.png"
    several = OutputNamer(str(tmp_path / "result.png"), total=2)  # no {index}/{seed}: one is added
    assert several.path_for(1, 9, Path("x.jpg"), "p") == tmp_path / "result-1.png"


# ------------------------------------------------------------------------------------------ inputs
def test_collect_images_from_folder_in_name_order(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            Image.new("RGB", (9, 9)).save(tmp_path / name)
    assert [p.name for p in collect_images([str(tmp_path)])] == ["a.jpg", "b.png"]


def test_load_rgb_resizes_to_multiples_of_eight_keeping_aspect(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (100, 50)).save(path)
    assert load_rgb(path).size == (100, 50) and load_rgb(path).mode == "RGB"
    assert load_rgb(path, width=64).size == (64, 32)
    assert target_size((100, 50), None, 20) == (40, 16)
    assert target_size((100, 50), None, None) is None


def test_depth_map_files_round_trip(tmp_path):
    depth = np.linspace(0.0, 3.0, 12 * 10, dtype=np.float32).reshape(10, 12)
    write_depth_png16(tmp_path / "d.png", depth)
    with Image.open(tmp_path / "d.png") as image:
        assert image.mode in ("I;16", "I") and image.size == (12, 10)
    loaded = load_depth_map(tmp_path / "d.png")
    np.testing.assert_allclose(normalized(loaded), normalized(depth), atol=1 / 65535)
    np.save(tmp_path / "d.npy", depth)
    np.testing.assert_array_equal(load_depth_map(tmp_path / "d.npy"), depth)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(CliError, match=r"expected \(H, W\)"):
        load_depth_map(tmp_path / "bad.npy")
    assert not normalized(np.ones((9, 9))).any()  # a flat map: zeros, not NaN


# ------------------------------------------------------------------------------------------ colours, example
def test_viridis_matches_matplotlib_anchor_colours():
    # matplotlib's viridis table at 0, 0.5 and 1 (_cm_listed._viridis_data rows 0, 128, 255)
    table = np.array([[0.267004, 0.004874, 0.329415], [0.127568, 0.566949, 0.550556], [0.993248, 0.906157, 0.143936]])
    ours = viridis(np.array([0.0, 128 / 255, 1.0])) / 255
    np.testing.assert_allclose(ours, table, atol=0.02)
    assert viridis(np.zeros((3, 4))).shape == (3, 4, 3)


def test_example_photo_is_shipped_and_rendered_by_our_script():
    photo = ROOT / "examples" / "room.jpg"
    assert photo.stat().st_size < 60_000
    with Image.open(photo) as image:
        assert image.size == (512, 384) and image.mode == "RGB"
        shipped = np.asarray(image, dtype=np.float32)
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from make_example import render
    finally:
        sys.path.pop(0)
    rendered = render(512, 384, seed=0).astype(np.float32)
    assert np.abs(rendered - shipped).mean() < 3.0  # equal up to JPEG compression
