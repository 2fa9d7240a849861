"""``depth2img serve`` driven by gradio_client, as a script would drive it: the app on a free localhost port
with the tiny random model, the same pixels and PNG records as the Python API and the command line, Stop,
the queue limit, per-session isolation, every kind of bad upload, and the PNG Info round trip."""

from __future__ import annotations

import json
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require
from web_helpers import ROOM, load_tiny_engine, pixels, running

require("gradio")
gradio_client = require("gradio_client")

from depth2img.cli import main  # noqa: E402
from depth2img.cli.inputs import load_rgb  # noqa: E402

LIMITS = {"max_upload_bytes": 200_000, "max_pixels": 1_000_000, "queue_size": 1}
FAST = {"strength": 0.75, "steps": 4, "guidance_scale": 7.5, "size": 64}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return load_tiny_engine(tmp_path_factory.mktemp("web") / "tiny-model")


@pytest.fixture(scope="module")
def outdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outdir")


@pytest.fixture(scope="module")
def server(engine, outdir):
    with running(engine, outdir=str(outdir), **LIMITS) as server:
        yield server


def client(server, **kwargs):
    return gradio_client.Client(server.url, verbose=False, **kwargs)


def generate_args(
    image: Path | str,
    prompt: str = "a cabin in winter",
    *,
    negative: str = "",
    sampler: str = "",
    seed: int = 42,
    num_images: int = 1,
    clip_skip: int = 1,
    depth_map=None,
    **overrides,
):
    values = {**FAST, **overrides}
    return (
        gradio_client.handle_file(str(image)), prompt, negative, values["strength"], values["steps"],
        values["guidance_scale"], sampler, seed, num_images, clip_skip, values["size"],
        gradio_client.handle_file(str(depth_map)) if depth_map else None,
    )  # fmt: skip


def run(api, *args):
    gallery, status = api.predict(*args, api_name="/generate")
    return [Path(item["image"]) for item in gallery], status


def text_chunks(path: Path) -> dict:
    with Image.open(path) as image:
        return dict(image.text)


def test_generate_equals_python_api_and_cli(server, engine, outdir, tmp_path, capsys):
    """Two images, seeds 42 and 43: the pixels of pipe(...) with torch.Generator(seed + k), the command line's
    PNG records (same `parameters` text; the JSON differs only in naming the input by its name), and the
    --outdir copies byte for byte."""
    api = client(server)
    files, status = run(api, *generate_args(ROOM, "a cabin in winter", negative="blurry", num_images=2))
    assert len(files) == 2 and status.startswith("Done: 2 images")
    size = (64, 48)  # room.jpg is 4:3; longer side 64
    pipe = engine.pipe
    for k, path in enumerate(files):
        expected = pipe(
            prompt="a cabin in winter", image=load_rgb(ROOM, *size), negative_prompt="blurry", strength=0.75,
            num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(42 + k),
        ).images[0]  # fmt: skip
        assert np.array_equal(pixels(path), np.asarray(expected)), k
    cli_out = tmp_path / "cli"
    status = main([
        "generate", "-m", engine.model_label, "-i", str(ROOM), "-p", "a cabin in winter", "--negative-prompt", "blurry",
        "--strength", "0.75", "--steps", "4", "-s", "42", "-n", "2", "-W", "64", "-H", "48", "--device", "cpu",
        "--dtype", "float32", "-q", "-o", str(cli_out) + "/",
    ])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    cli_files = sorted(cli_out.glob("*.png"))
    for web_file, cli_file in zip(files, cli_files, strict=True):
        web_text, cli_text = text_chunks(web_file), text_chunks(cli_file)
        assert web_text["parameters"] == cli_text["parameters"]
        web_record, cli_record = json.loads(web_text["depth2img"]), json.loads(cli_text["depth2img"])
        assert cli_record.pop("image") == str(ROOM.resolve()) and web_record.pop("image") == ROOM.name
        assert web_record == cli_record
        assert np.array_equal(pixels(web_file), pixels(cli_file))
    kept = sorted(outdir.glob("*.png"))[-2:]
    assert [p.read_bytes() for p in kept] == [p.read_bytes() for p in files]  # the download is the kept file
    assert not list(outdir.glob(".*.tmp"))  # written atomically: no temporary left


def test_random_seed_is_reported_and_replays(server):
    api = client(server)
    files, status = run(api, *generate_args(ROOM, seed=-1))
    seed = json.loads(text_chunks(files[0])["depth2img"])["seed"]
    assert f"first seed {seed}" in status
    again, _ = run(api, *generate_args(ROOM, seed=seed))
    assert np.array_equal(pixels(files[0]), pixels(again[0]))


def test_sampler_and_clip_skip_use_the_cli_names(server, engine):
    api = client(server)
    files, _ = run(api, *generate_args(ROOM, sampler="euler-a", clip_skip=2, seed=7))
    record = json.loads(text_chunks(files[0])["depth2img"])
    assert record["scheduler"] == "euler-a" and record["clip_skip"] == 2
    assert "Sampler: Euler a" in text_chunks(files[0])["parameters"]
    with pytest.raises(gradio_client.exceptions.AppError, match="sampler: .*not-a-sampler"):
        run(api, *generate_args(ROOM, sampler="not-a-sampler"))


RUNNING = {
    gradio_client.utils.Status.PROCESSING,
    gradio_client.utils.Status.PROGRESS,
    gradio_client.utils.Status.ITERATING,
}


def _wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.02)


def test_stop_ends_the_run_and_keeps_finished_images(server):
    api = client(server)
    job = api.submit(*generate_args(ROOM, num_images=3, steps=150, strength=1.0, seed=3), api_name="/generate")
    _wait_until(lambda: len(job.outputs()) >= 1)  # the first image is finished (and shown)
    assert api.predict(api_name="/stop").startswith("Stopping")
    gallery, status = job.result(timeout=120)
    assert status.startswith("Stopped: kept") and 1 <= len(gallery) < 3
    for item in gallery:  # every kept image is complete, with its record
        assert json.loads(text_chunks(Path(item["image"]))["depth2img"])["steps"] == 150


def stop_directly(server, api) -> str:
    """Stop as the browser sends it (Stop has queue=False: a direct POST, never refused by a full queue)."""
    import httpx

    url = f"{server.url.rstrip('/')}/gradio_api/run/stop"
    answer = httpx.post(url, json={"data": [], "session_hash": api.session_hash}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"][0]


def test_sessions_are_isolated(server):
    """Stop in one session does not stop another's run; each session gets its own files."""
    first, second = client(server), client(server)
    job = first.submit(*generate_args(ROOM, num_images=2, steps=40, strength=1.0, seed=11), api_name="/generate")
    _wait_until(lambda: job.status().code in RUNNING)
    second.predict(api_name="/stop")
    gallery, status = job.result(timeout=120)
    assert status.startswith("Done: 2 images") and len(gallery) == 2
    sessions = server.sessions
    assert len({session.folder for session in sessions._sessions.values()}) == len(sessions._sessions) >= 2


def test_queue_full_is_refused_clearly(server):
    running_client, waiting_client, refused_client = client(server), client(server), client(server)
    busy = running_client.submit(*generate_args(ROOM, steps=150, num_images=8, strength=1.0), api_name="/generate")
    try:
        _wait_until(lambda: busy.status().code in RUNNING)
        waiting = waiting_client.submit(*generate_args(ROOM), api_name="/generate")
        _wait_until(lambda: waiting.status().code == gradio_client.utils.Status.IN_QUEUE)
        with pytest.raises(gradio_client.utils.QueueError, match="Queue is full"):
            refused_client.predict(*generate_args(ROOM), api_name="/generate")
    finally:  # Stop skips the queue, as the browser sends it: POST /run/stop for this session
        stop_directly(server, running_client)
    assert busy.result(timeout=120)[1].startswith("Stopped")
    assert waiting.result(timeout=120)[1].startswith("Done")


# ----- bad uploads ---------------------------------------------------------------------------------------------


def _png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width``×``height`` but holds almost no data: a lying, bomb-like header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "big.png")  # ~360 KB of incompressible pixels
    (folder / "notes.png").write_bytes(b"these are not the pixels you are looking for")
    (folder / "cut.jpg").write_bytes(ROOM.read_bytes()[:4000])
    Image.new("RGB", (64, 48)).save(folder / "tiny.png", format="PNG")
    Image.new("RGB", (6, 6)).save(folder / "six.png")
    return {
        "bytes": folder / "big.png",
        "pixels": _png_with_header(folder / "huge.png", 2000, 2000),
        "bomb": _png_with_header(folder / "bomb.png", 60000, 60000),
        "unreadable": folder / "notes.png",
        "truncated": folder / "cut.jpg",
        "too small": folder / "six.png",
    }


@pytest.mark.parametrize(
    "case, message",
    [
        ("bytes", r"big\.png (exceeds the maximum file size of 200000 bytes|is .* MiB; uploads can be at most)"),
        ("pixels", r"^image: huge\.png is 2000x2000 = 4,000,000 pixels, more than the limit of 1,000,000 "),
        ("bomb", r"^image: bomb\.png is 60000x60000 = 3,600,000,000 pixels; the limit is 1,000,000|more than"),
        ("unreadable", r"^image: notes\.png is not an image file that PIL can read$"),
        ("truncated", r"^image: cut\.jpg is damaged or truncated \("),
        ("too small", r"^image: six\.png is 6x6 pixels; images need at least 8 pixels per side$"),
    ],
)
def test_bad_uploads_get_one_sentence(server, bad_files, case, message):
    api = client(server)
    with pytest.raises((gradio_client.exceptions.AppError, ValueError, Exception)) as caught:
        run(api, *generate_args(bad_files[case]))
    text = getattr(caught.value, "message", None) or str(caught.value)
    assert re.search(message, text.strip()), text
    if case == "bytes":  # gradio_client refuses it before sending; the server refuses it at the door too
        import httpx

        with open(bad_files[case], "rb") as handle:
            answer = httpx.post(f"{server.url.rstrip('/')}/gradio_api/upload", files={"files": handle}, timeout=30)
        assert answer.status_code == 413, answer.text
    else:
        assert "Traceback" not in text and "/tmp/" not in text  # no stack trace, no server path


def _odd_inputs(folder: Path) -> dict[str, Path]:
    """Images the command line converts: 16-bit gray, CMYK, RGBA, and an EXIF-rotated JPEG."""
    with Image.open(ROOM) as room:
        rgb = room.convert("RGB").resize((64, 48))
    gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    rgb.save(folder / "rotated.jpg", exif=exif.tobytes())
    return {path.stem: path for path in folder.iterdir()}


def test_odd_images_are_read_as_the_cli_reads_them(server, engine, tmp_path, capsys):
    """16-bit, CMYK, RGBA and EXIF-rotated uploads make the pixels `depth2img generate` makes from the file."""
    api = client(server)
    for name, path in _odd_inputs(tmp_path).items():
        files, _ = run(api, *generate_args(path, seed=5))
        out = tmp_path / f"cli-{name}"
        size_flags = ["-H", "64"] if name == "rotated" else ["-W", "64"]  # the longer side, once upright
        status = main([
            "generate", "-m", engine.model_label, "-i", str(path), "-p", "a cabin in winter", "--strength", "0.75",
            "--steps", "4", "-s", "5", *size_flags, "--device", "cpu", "--dtype", "float32", "-q", "-o", str(out) + "/",
        ])  # fmt: skip
        assert status == 0, capsys.readouterr().err
        (cli_file,) = out.glob("*.png")
        assert np.array_equal(pixels(files[0]), pixels(cli_file)), name
        if name == "rotated":
            assert pixels(files[0]).shape[:2] == (64, 48)  # upright: portrait


def test_depth_preview_is_cached_and_downloadable_as_16_bit(server, engine):
    api = client(server)
    preview, png16 = api.predict(gradio_client.handle_file(str(ROOM)), None, 64, api_name="/depth_preview")
    with Image.open(png16) as depth:
        assert depth.mode in ("I;16", "I") and depth.size == (64, 48)
        levels = np.asarray(depth)
    assert levels.min() == 0 and levels.max() == 65535  # min..max spread over the 16 bits
    with Image.open(preview) as colour:
        assert colour.mode == "RGB" and colour.size == (64, 48)
    keys = engine.cached_depth_keys()
    assert any(size == (64, 48) for _, size in keys)
    api.predict(gradio_client.handle_file(str(ROOM)), None, 64, api_name="/depth_preview")
    assert engine.cached_depth_keys().count(keys[-1]) == 1  # computed once per image and size


def test_uploaded_depth_map_is_used(server, engine, tmp_path):
    depth = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray((depth * 65535).astype(np.uint16)).save(tmp_path / "ramp.png")
    files, _ = run(client(server), *generate_args(ROOM, seed=9, depth_map=tmp_path / "ramp.png"))
    expected = engine.pipe(
        prompt="a cabin in winter", image=load_rgb(ROOM, 64, 48), depth_map=torch.from_numpy(
            np.asarray(Image.open(tmp_path / "ramp.png")).astype(np.float32))[None],
        strength=0.75, num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(9),
    ).images[0]  # fmt: skip
    assert np.array_equal(pixels(files[0]), np.asarray(expected))
    assert json.loads(text_chunks(files[0])["depth2img"])["depth_map"] == "ramp.png"


def test_png_info_round_trip(server):
    """PNG Info shows the stored parameters; Send to Generate fills the controls so the run repeats exactly."""
    api = client(server)
    first, _ = run(api, *generate_args(ROOM, "a red barn", negative="fog", sampler="ddim", seed=123, clip_skip=2,
                                       strength=0.5, steps=6, guidance_scale=4.0))  # fmt: skip
    parameters, record = api.predict(gradio_client.handle_file(str(first[0])), api_name="/png_info")
    assert parameters == text_chunks(first[0])["parameters"] and record["seed"] == 123
    values = api.predict(gradio_client.handle_file(str(first[0])), api_name="/send_to_generate")
    prompt, negative, strength, steps, guidance, sampler, seed, num_images, clip_skip, size = values[:10]
    assert (prompt, negative, strength, steps, guidance, sampler, seed, num_images, clip_skip, size) == (
        "a red barn",
        "fog",
        0.5,
        6,
        4.0,
        "ddim",
        123,
        1,
        2,
        64,
    )
    again, _ = run(api, gradio_client.handle_file(str(ROOM)), prompt, negative, strength, steps, guidance, sampler,
                   seed, num_images, clip_skip, size, None)  # fmt: skip
    assert np.array_equal(pixels(first[0]), pixels(again[0]))


def test_png_info_refuses_pngs_without_parameters(server, tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "plain.png")
    with pytest.raises(gradio_client.exceptions.AppError, match=r"^PNG: plain\.png holds no generation parameters"):
        client(server).predict(gradio_client.handle_file(str(tmp_path / "plain.png")), api_name="/png_info")


def test_a_server_path_from_the_client_is_refused(server):
    """A FileData naming a server file (not an upload) never reaches the handlers."""
    import httpx

    secret = {"path": str(ROOM.resolve()), "meta": {"_type": "gradio.FileData"}, "orig_name": "room.jpg"}
    data = [secret, "a cabin", "", 0.75, 2, 7.5, "", 1, 1, 1, 64, None]
    base = server.url.rstrip("/")
    event = httpx.post(f"{base}/gradio_api/call/generate", json={"data": data}, timeout=30).json()["event_id"]
    stream = httpx.get(f"{base}/gradio_api/call/generate/{event}", timeout=60).text
    assert "event: error" in stream and "event: complete" not in stream, stream


def test_bad_values_get_one_sentence(server):
    api = client(server)
    with pytest.raises(gradio_client.exceptions.AppError, match=r"^prompt: type what the new image should show$"):
        run(api, *generate_args(ROOM, ""))
    with pytest.raises(gradio_client.exceptions.AppError, match=r"^Value 4096 is greater than maximum value 2048\.$"):
        run(api, *generate_args(ROOM, size=4096))


def test_auth_is_required_when_set(engine):
    with running(engine, auth=("ada", "lovelace")) as server:
        with pytest.raises(Exception, match="(?i)login|auth|credentials|401"):
            gradio_client.Client(server.url, verbose=False)
        api = gradio_client.Client(server.url, verbose=False, auth=("ada", "lovelace"))
        files, _ = run(api, *generate_args(ROOM, steps=2))
        assert len(files) == 1


def test_serve_command_prints_the_url_and_serves(engine, tmp_path):
    """`depth2img serve` as a user starts it: the URL on stdout, the page served, Ctrl-C ends it cleanly."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from web_helpers import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "depth2img", "serve", "-m", engine.model_label, "--port", str(port),
               "--device", "cpu", "--outdir", str(tmp_path / "kept")]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            url = process.stdout.readline().strip()
            assert url == f"http://127.0.0.1:{port}/", url or process.stderr.read()
            assert httpx.get(url, timeout=30).status_code == 200
            assert (tmp_path / "kept").is_dir()  # --outdir is checked (created, writable) before the model loads
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    assert process.returncode in (0, -signal.SIGINT, 130)


def test_serve_flags_are_checked_before_loading(capsys, tmp_path):
    assert main(["serve", "--auth", "nopassword"]) == 2
    assert "--auth" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["serve", "-m", str(tmp_path / "missing-model"), "--outdir", str(tmp_path / "file")]) == 2
    error = capsys.readouterr().err
    assert "--outdir" in error and "is not a folder" in error


def test_depth_model_flags_reach_the_web_like_the_command_line(tmp_path, capsys):
    """`serve --depth-model` loads that estimator once; the web's image and PNG record equal `generate
    --depth-model`'s (the flags come from the same helper, cli/component_options.py)."""
    from depth_models_tiny import saved

    depth_model = saved("zoedepth")
    engine = load_tiny_engine(tmp_path / "tiny-model", depth_model=str(depth_model))
    assert type(engine.pipe.depth_estimator).__name__ == "ZoeDepthForDepthEstimation"
    with running(engine, **LIMITS) as server:
        files, _ = run(client(server), *generate_args(ROOM, seed=7))
    status = main([
        "generate", "-m", engine.model_label, "-i", str(ROOM), "-p", "a cabin in winter", "--strength", "0.75",
        "--steps", "4", "-s", "7", "-W", "64", "-H", "48", "--device", "cpu", "--dtype", "float32", "-q",
        "--depth-model", str(depth_model), "-o", str(tmp_path / "cli.png"),
    ])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    web_record = json.loads(text_chunks(files[0])["depth2img"])
    cli_record = json.loads(text_chunks(tmp_path / "cli.png")["depth2img"])
    assert web_record["depth_model"] == cli_record["depth_model"] == str(depth_model.resolve())
    assert np.array_equal(pixels(files[0]), pixels(tmp_path / "cli.png"))


def test_serve_refuses_a_bad_depth_model_flag_before_loading(tmp_path):
    assert main(["serve", "-m", str(tmp_path / "missing-model"), "--depth-normalize", "sideways"]) == 2
