"""``depth2img batch`` end to end on a tiny random-weights model: folders with bad files, kill and resume,
manifests, batching, video and the journal. (Ray: tests/test_batch_ray.py.)"""

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

from conftest import require
from depth2img.batch import read_journal
from depth2img.cli import main
from depth2img.cli.errors import EXIT_SOME_FAILED, EXIT_USAGE
from depth2img.cli.pngmeta import read_png_record
from depth2img.loading.random_model import write_random_pipeline

FAST = ["--steps", "3", "-q", "--device", "cpu"]  # CPU float32 on any machine: bit-for-bit repeatable
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as conftest gives this process
BOOKKEEPING = {"batch.jsonl", ".batch.lock"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_random_pipeline(tmp_path_factory.mktemp("batch") / "tiny", config="tiny")


def _noise_image(seed: int, size=(40, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory) -> Path:
    """A corrupt file, a 16-bit PNG, an EXIF-rotated JPEG, a unicode file name, and two plain images."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    levels = (np.arange(40 * 32, dtype=np.uint32).reshape(32, 40) * 50).astype(np.uint16)
    Image.fromarray(levels).save(folder / "deep-16bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the upright image is 32 wide, 40 high
    Image.fromarray(_noise_image(1)).save(folder / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(_noise_image(2)).save(folder / "café ☕ ü.png")
    for k in (3, 4):
        Image.fromarray(_noise_image(k)).save(folder / f"plain{k}.png")
    return folder


def batch(*argv: str) -> int:
    return main(["batch", *argv])


def outputs(outdir: Path) -> dict[str, bytes]:
    """Every file of OUTDIR except the journal and lock (relative name -> bytes)."""
    return {
        str(p.relative_to(outdir)): p.read_bytes()
        for p in outdir.rglob("*")
        if p.is_file() and p.name not in BOOKKEEPING and ".frames" not in p.parts
    }


def test_folder_kill_and_resume(tiny_model, awkward_folder, tmp_path, capsys):
    reference = tmp_path / "reference"
    args = [str(awkward_folder), "-m", str(tiny_model), "-p", "a cosy cabin", "-n", "2", *FAST]
    assert batch(*args, "-o", str(reference)) == EXIT_SOME_FAILED
    report = capsys.readouterr().err
    assert "10 done, 0 skipped" in report and "1 failed" in report and "corrupt.png" in report
    expected = outputs(reference)
    assert len(expected) == 10 and not [n for n in expected if n.endswith(".tmp")]
    with Image.open(next(reference / n for n in expected if n.startswith("rotated"))) as rotated:
        assert rotated.size == (32, 40)  # EXIF orientation applied before generating
    assert any(name.startswith("café ☕ ü-") for name in expected)
    journal = read_journal(reference / "batch.jsonl")
    (failed,) = [r for r in journal if r["status"] == "failed"]
    assert failed["input"].endswith("corrupt.png") and "not an image" in failed["error"]
    assert sorted(r["name"] for r in journal if r["status"] == "done") == sorted(expected)

    # The same batch, killed (SIGKILL) once it has written its first image, then resumed.
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "depth2img", "batch", *args, "-o", str(killed)]
    child = subprocess.Popen(command, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(killed.glob("*.png")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    written_before = set(outputs(killed))
    assert 0 < len(written_before) < 10
    # What a kill in the middle of a write leaves: the killed run's temporary file (its process is gone: cleaned
    # up) and one whose writer cannot be told to be gone (no pid, and new: kept, see depth2img.utils.files).
    missing = sorted(set(expected) - written_before)[0]
    (killed / f".{missing}.{child.pid}-a1b2c3d4.tmp").write_bytes(b"half a png")
    (killed / ".someone-else.png.a1b2c3d4.tmp").write_bytes(b"not ours")

    assert batch(*args, "-o", str(killed)) == EXIT_SOME_FAILED
    report = capsys.readouterr().err
    assert f"{len(written_before)} skipped" in report and "corrupt.png" in report
    assert sorted(p.name for p in killed.iterdir() if p.name.endswith(".tmp")) == [".someone-else.png.a1b2c3d4.tmp"]
    (killed / ".someone-else.png.a1b2c3d4.tmp").unlink()
    assert outputs(killed) == expected  # each output once, byte for byte the uninterrupted run's
    resumed = read_journal(killed / "batch.jsonl")
    assert any(r["status"] == "failed" and r["input"].endswith("corrupt.png") for r in resumed)
    assert {r["name"] for r in resumed if r["status"] == "done"} >= set(expected) - written_before

    # Nothing left to do: no model is loaded, and --overwrite redoes every job.
    assert batch(*args, "-o", str(killed)) == EXIT_SOME_FAILED
    assert "0 done, 10 skipped" in capsys.readouterr().err
    assert batch(*args, "-o", str(killed), "--overwrite") == EXIT_SOME_FAILED
    assert "10 done, 0 skipped" in capsys.readouterr().err
    assert outputs(killed) == expected


def test_exit_status_zero_and_unique_names(tiny_model, tmp_path, capsys):
    """All good: exit 0. Two prompts x two copies: four names, seeds 5..8, the same names on a re-run."""
    image = tmp_path / "one.png"
    Image.fromarray(_noise_image(7)).save(image)
    args = [str(image), "-m", str(tiny_model), "-p", "a", "-p", "b", "-n", "2", "-s", "5", *FAST]
    assert batch(*args, "-o", str(tmp_path / "out")) == 0
    names = sorted(outputs(tmp_path / "out"))
    seeds = sorted(read_png_record(tmp_path / "out" / name)["seed"] for name in names)
    assert seeds == [5, 6, 7, 8] and len(set(names)) == 4
    assert "4 done, 0 skipped (already made), 0 failed" in capsys.readouterr().err


def test_batch_size_matches_one_at_a_time(tiny_model, tmp_path, capsys):
    """--batch-size 3 and 1 give the same images (8-bit pixels within one level, see docs/batch.md); and batch
    size 1 gives exactly what ``generate`` gives for the same seed."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(_noise_image(10 + k)).save(folder / f"i{k}.png")
    args = [str(folder), "-m", str(tiny_model), "-p", "a", "-p", "b", *FAST]
    assert batch(*args, "-o", str(tmp_path / "one"), "--batch-size", "1") == 0
    assert batch(*args, "-o", str(tmp_path / "three"), "--batch-size", "3") == 0
    one, three = outputs(tmp_path / "one"), outputs(tmp_path / "three")
    assert sorted(one) == sorted(three) and len(one) == 6
    for name in one:
        a = np.asarray(Image.open(tmp_path / "one" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "three" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, name
        assert read_png_record(tmp_path / "one" / name) == read_png_record(tmp_path / "three" / name)
    name = sorted(n for n in one if n.startswith("i0-"))[0]
    record = read_png_record(tmp_path / "one" / name)
    single = tmp_path / "generate.png"
    seed, prompt = str(record["seed"]), record["prompt"]
    assert main(["generate", "-i", str(folder / "i0.png"), "-p", prompt, "-s", seed, "-m", str(tiny_model), *FAST,
                 "-o", str(single)]) == 0  # fmt: skip
    capsys.readouterr()
    assert np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(tmp_path / "one" / name)))


def test_manifests_with_row_overrides(tiny_model, tmp_path, capsys):
    for k in range(2):
        Image.fromarray(_noise_image(20 + k)).save(tmp_path / f"m{k}.png")
    depth = np.linspace(0, 1, 40 * 32, dtype=np.float32).reshape(32, 40)
    np.save(tmp_path / "ramp.npy", depth)
    (tmp_path / "jobs.csv").write_text(
        "image,prompt,seed,strength,steps,guidance,sampler,name\n"
        "m0.png,a red house,7,0.5,4,3,euler-a,custom/red.png\n"
        "m1.png,,9,,,,,\n"
        "m1.png,bad row,1,2.0,,,,\n",
        encoding="utf-8",
    )
    rows = [
        {"image": "m0.png", "prompt": "a blue boat", "negative_prompt": "fog", "depth_map": "ramp.npy"},
        {"image": "m1.png", "seed": 3, "name": "json-row"},
    ]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["-m", str(tiny_model), "-p", "the default prompt", "-s", "100", *FAST, "-o", str(out)]
    assert batch(str(tmp_path / "jobs.csv"), str(tmp_path / "jobs.jsonl"), *args) == EXIT_SOME_FAILED
    assert "4 done" in capsys.readouterr().err
    red = read_png_record(out / "custom" / "red.png")
    assert (red["prompt"], red["seed"], red["strength"], red["steps"]) == ("a red house", 7, 0.5, 4)
    assert (red["guidance_scale"], red["scheduler"]) == (3.0, "euler-a")
    (plain,) = [p for p in out.glob("m1-9-*.png")]
    record = read_png_record(plain)
    assert (record["prompt"], record["seed"], record["strength"], record["steps"]) == ("the default prompt", 9, 0.8, 3)
    boat = read_png_record(next(out.glob("m0-100-*.png")))
    assert (boat["prompt"], boat["negative_prompt"]) == ("a blue boat", "fog")
    assert boat["depth_map"] == str(tmp_path / "ramp.npy") and boat["depth_map_sha256"]
    assert read_png_record(out / "json-row.png")["seed"] == 3
    (bad,) = [r for r in read_journal(out / "batch.jsonl") if r["status"] == "failed"]
    assert "row 4" in bad["input"] and "strength" in bad["error"] and "outside [0, 1]" in bad["error"]

    # A row's overrides give what the same flags give on the command line.
    assert batch(str(tmp_path / "m0.png"), "-p", "a red house", "-s", "7", "--strength", "0.5", "--steps", "4",
                 "--guidance-scale", "3", "--sampler", "euler-a", "-m", str(tiny_model), "-q", "--device", "cpu",
                 "-o", str(tmp_path / "flags")) == 0  # fmt: skip
    (flags,) = (tmp_path / "flags").glob("m0-7-*.png")
    assert np.array_equal(np.asarray(Image.open(flags)), np.asarray(Image.open(out / "custom" / "red.png")))

    (tmp_path / "typo.csv").write_text("image,promt\nm0.png,x\n", encoding="utf-8")
    assert batch(str(tmp_path / "typo.csv"), *args) == EXIT_USAGE
    assert "unknown column 'promt'" in capsys.readouterr().err


def test_prompt_and_depth_computed_once(tiny_model, tmp_path):
    """Three prompts (two equal) x two copies of one image: the text encoder sees each distinct text once, and
    the depth estimator runs once."""
    from depth2img.batch import JobRunner, RunConfig, expand_inputs, open_store, plan_jobs
    from depth2img.cli.pipeline_setup import ModelSource
    from depth2img.cli.settings import GENERATION_DEFAULTS, GenerateSettings

    Image.fromarray(_noise_image(30)).save(tmp_path / "x.png")
    values = {**GENERATION_DEFAULTS, "steps": 2, "seed": 0, "num_images": 2, "device": "cpu", "dtype": "float32"}
    settings = GenerateSettings(prompts=["a", "b", "a"], images=[], **values)
    store = open_store(str(tmp_path / "out"))
    plan = plan_jobs(expand_inputs([str(tmp_path / "x.png")], False, None), settings, False, store)
    assert len(plan.jobs) == 6 and len({job.id for job in plan.jobs}) == 6  # seeds 0..5
    runner = JobRunner(RunConfig(settings, ModelSource("folder", str(tiny_model)), store.root, batch_size=2))
    records = runner.run(plan.jobs)
    assert [r["status"] for r in records] == ["done"] * 6
    assert runner.prompt_encodings == 3  # "a", "b" and the empty negative prompt
    assert runner.depth_estimates == 1


def test_video_frames_and_audio(tiny_model, tmp_path, capsys):
    av = require("av")
    source = tmp_path / "clip.mp4"
    _write_video(av, source, frames=4, fps=12, size=(32, 24))
    out = tmp_path / "out"
    args = [str(source), "-m", str(tiny_model), "-p", "a painting", *FAST, "-o", str(out)]
    assert batch(*args) == 0
    (video,) = out.glob("clip-*.mp4")
    frames = sorted(p for p in out.glob("clip-*/*.png"))
    assert len(frames) == 4
    assert [read_png_record(p)["seed"] for p in frames] == [0, 1, 2, 3]
    with av.open(str(video)) as produced:
        stream = produced.streams.video[0]
        assert stream.average_rate == 12
        assert sum(1 for _ in produced.decode(stream)) == 4
    assert _audio_packets(av, video) == _audio_packets(av, source)  # copied, not re-encoded
    capsys.readouterr()
    assert batch(*args, "--same-seed") == 0
    (steady,) = [p for p in out.glob("clip-*") if p.is_dir() and p not in {f.parent for f in frames}]
    assert [read_png_record(p)["seed"] for p in sorted(steady.glob("*.png"))] == [0, 0, 0, 0]
    assert len(list(out.glob("clip-*.mp4"))) == 2


def _audio_packets(av, path: Path) -> tuple[str, list[bytes]]:
    with av.open(str(path)) as container:
        (audio,) = container.streams.audio
        return audio.codec_context.name, [bytes(packet) for packet in container.demux(audio) if packet.size]


def _write_video(av, path: Path, frames: int, fps: int, size: tuple[int, int]) -> None:
    """A tiny MPEG-4 video with a moving bar and an AAC sine tone."""
    from fractions import Fraction

    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = out.add_stream("aac", rate=8000)
        audio.layout = "mono"
        for index in range(frames):
            pixels = np.full((size[1], size[0], 3), 40 * index, dtype=np.uint8)
            pixels[:, : 4 * index] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = int(8000 * frames / fps)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 8000)).astype(np.float32)[None]
        sound = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 8000, 0
        out.mux(audio.encode(sound))
        out.mux(audio.encode(None))


def test_fsspec_url_output(tiny_model, tmp_path, capsys):
    Image.fromarray(_noise_image(40)).save(tmp_path / "u.png")
    url = (tmp_path / "remote").as_uri()
    args = [str(tmp_path / "u.png"), "-m", str(tiny_model), "-p", "x", *FAST, "-o", url]
    assert batch(*args) == 0
    (written,) = (tmp_path / "remote").glob("u-0-*.png")
    assert read_png_record(written)["prompt"] == "x"
    assert len(read_journal(tmp_path / "remote" / "batch.jsonl")) == 1
    assert batch(*args) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().err


def test_fsspec_store_removes_only_its_own_stale_temp_files(tmp_path):
    """At a URL no process can be asked whether it is alive: the temporary files of this batch's targets go
    (named as depth2img.utils.files names them), a stranger's stays."""
    from depth2img.batch import open_store
    from depth2img.utils.files import temp_file_target, temp_name

    store = open_store((tmp_path / "remote").as_uri())
    ours, other = temp_name("u.png", "a1b2c3d4"), temp_name("someone-else.png", "a1b2c3d4")
    assert temp_file_target(ours) == "u.png" and temp_file_target("u.png") is None
    for name in (ours, other):
        (tmp_path / "remote" / name).write_bytes(b"half")
    assert store.remove_stale_temps(["u.png"]) == 1
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == [other]


def test_errors_before_the_model_loads(tmp_path, capsys):
    Image.fromarray(_noise_image(50)).save(tmp_path / "a.png")
    assert batch(str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "no-model"), "-p", "x") == 2
    assert "--model" in capsys.readouterr().err
    assert batch(str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--workers", "2", "-p", "x") == 2
    assert "--engine ray" in capsys.readouterr().err
    assert batch(str(tmp_path / "a.png"), "-o", str(tmp_path / "o")) == 2
    assert "batch needs a prompt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was written for a mistake found up front


def test_component_flags_reach_the_runner_and_the_job_ids(tiny_model, tmp_path, capsys):
    """--vae (like --depth-model) is loaded into the batch's pipeline as `generate` loads it, recorded in the PNG
    and part of the job id (a re-run with it into the same OUTDIR makes a new image, not a skip); the combinations
    `generate` refuses are refused the same way, and --depth-normalize batch has no meaning here."""
    assert main(["random-model", "--config", "taesd-tiny", str(tmp_path / "taesd")]) == 0
    taesd = tmp_path / "taesd"
    Image.fromarray(_noise_image(60)).save(tmp_path / "v.png")
    out = tmp_path / "out"
    args = [str(tmp_path / "v.png"), "-m", str(tiny_model), "-p", "x", "-s", "3", *FAST, "-o", str(out)]
    assert batch(*args) == 0
    (default,) = outputs(out)
    capsys.readouterr()
    assert batch(*args, "--vae", str(taesd)) == 0
    assert "1 done, 0 skipped" in capsys.readouterr().err
    (with_taesd,) = set(outputs(out)) - {default}
    assert read_png_record(out / with_taesd)["vae"] == str(taesd.resolve())
    assert read_png_record(out / default)["vae"] is None
    assert outputs(out)[with_taesd] != outputs(out)[default]
    assert batch(*args, "--vae", str(taesd), "--vae-tiling") == EXIT_USAGE
    assert "--vae-tiling does not work with TAESD" in capsys.readouterr().err
    assert batch(*args, "--depth-normalize", "batch") == EXIT_USAGE
    assert "--depth-normalize batch is not available in depth2img batch" in capsys.readouterr().err


def test_max_pixels_refuses_an_input_by_its_header(tiny_model, tmp_path, capsys):
    Image.fromarray(_noise_image(61, size=(64, 48))).save(tmp_path / "big.png")
    out = tmp_path / "out"
    args = [str(tmp_path / "big.png"), "-m", str(tiny_model), "-p", "x", *FAST, "-o", str(out)]
    assert batch(*args, "--max-pixels", "3000") == EXIT_SOME_FAILED
    (failed,) = read_journal(out / "batch.jsonl")
    assert failed["status"] == "failed" and "big.png" in failed["input"] and "3,000" in failed["error"]
    assert not outputs(out)
    capsys.readouterr()
    assert batch(*args, "--max-pixels", str(64 * 48)) == 0
    assert "1 done" in capsys.readouterr().err


def test_engine_ray_without_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    Image.fromarray(_noise_image(60)).save(tmp_path / "a.png")
    assert batch(str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "-p", "x", "--engine", "ray") == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert (
        error
        == "depth2img: error: --engine ray needs Ray Data: pip install 'depth2img[ray]' (or: pip install 'ray[data]')"
    )


def test_pipeline_list_of_generators_is_per_image(tiny_model):
    """What --batch-size relies on: with one generator per image, image i of a batch depends on its own seed only
    — equal to its one-at-a-time run up to float32 rounding (the project's 1e-4 contract), in any batch order."""
    import torch

    from depth2img.pipeline import Depth2ImgPipeline

    pipe = Depth2ImgPipeline.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    images = [Image.fromarray(_noise_image(70 + k)) for k in range(3)]
    prompts, seeds = ["a cat", "a dog", "a boat"], [11, 12, 13]

    def run(order):
        embeds = torch.cat([pipe.encode_prompt(prompts[i], pipe.device, 1, False)[0] for i in order])
        negative = torch.cat([pipe.encode_prompt("", pipe.device, 1, False)[0] for _ in order])
        return pipe(
            image=[images[i] for i in order], prompt_embeds=embeds, negative_prompt_embeds=negative,
            num_inference_steps=4, generator=[torch.Generator().manual_seed(seeds[i]) for i in order], output_type="np",
        ).images  # fmt: skip

    single = np.concatenate([run([i]) for i in range(3)])
    assert np.abs(run([0, 1, 2]) - single).max() <= 1e-4
    assert np.abs(run([2, 0, 1]) - single[[2, 0, 1]]).max() <= 1e-4
    seeds.reverse()  # other seeds, other images: the comparison above could fail
    assert np.abs(run([0, 1, 2]) - single).max() > 1e-2


def test_journal_survives_a_torn_line(tmp_path):
    from depth2img.batch import open_store
    from depth2img.batch.journal import Journal

    (tmp_path / "batch.jsonl").write_text('{"id": "a", "status": "done"}\n{"id": "b", "sta', encoding="utf-8")
    journal = Journal(open_store(str(tmp_path)))
    journal.append({"id": "c", "status": "failed", "error": "x"})
    journal.close()
    assert [r["id"] for r in read_journal(tmp_path / "batch.jsonl")] == ["a", "c"]


def test_ctrl_c_exits_130_with_a_summary_and_whole_files(tiny_model, tmp_path):
    Image.fromarray(_noise_image(80)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "depth2img", "batch", str(tmp_path / "a.png"), "-m", str(tiny_model), "-p", "x"]
    child = subprocess.Popen([*command, "-n", "200", *FAST, "-o", str(out)], env=CHILD_ENV, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    lines = stderr.decode().strip().splitlines()
    assert lines[-1] == "depth2img: error: interrupted; no file was left half-written, run the same command to go on"
    assert any(line.startswith("depth2img: batch: ") and "skipped" in line for line in lines)
    written = sorted(out.glob("*.png"))
    assert 1 <= len(written) < 200 and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert all(read_png_record(path)["prompt"] == "x" for path in written)  # whole PNGs, metadata and all
