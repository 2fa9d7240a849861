"""The error contract (docs/errors.md) in the Python API: our error classes, one sentence naming the argument, the
value and what is allowed, raised before any model runs; nothing silently wrong; outputs never half-written."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import subprocess
import sys
import time
import warnings
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from depth2img.call_checks import DepthAspectWarning
from depth2img.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Depth2ImgError,
    InputFileError,
    MissingFileError,
    ModelUnavailableError,
    OutputWriteError,
    UnsafeFileError,
    UserError,
    UserInputError,
    UserTypeError,
    as_user_errors,
    exit_status,
)
from depth2img.images import describe_images, images_to_tensor, to_rgb
from depth2img.loading.torch_files import pickle_globals, safe_torch_load
from depth2img.utils.files import STALE_TEMP_SECONDS, atomic_path, remove_stale_temp_files
from pipeline_tiny import ModelsMustNotRun, load_ours, random_pil, seeded, tiny_folder


@pytest.fixture(scope="module")
def pipe():
    loaded = load_ours(tiny_folder())
    loaded.set_progress_bar_config(disable=True)
    return loaded


def call(pipe, **kwargs):
    kwargs.setdefault("prompt", "a cat")
    kwargs.setdefault("image", random_pil())
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("generator", seeded(0))
    kwargs.setdefault("output_type", "np")
    return pipe(**kwargs).images


# ---------------------------------------------------------------------------------------------- the hierarchy
def test_user_errors_are_also_the_builtin_types_callers_expect():
    assert issubclass(UserInputError, ValueError) and issubclass(UserTypeError, TypeError)
    assert issubclass(UserTypeError, UserInputError) and issubclass(InputFileError, UserInputError)
    assert issubclass(UnsafeFileError, InputFileError) and issubclass(MissingFileError, FileNotFoundError)
    assert issubclass(ModelUnavailableError, FileNotFoundError) and issubclass(OutputWriteError, OSError)
    for user in (UserInputError, UserTypeError, InputFileError, UnsafeFileError, MissingFileError):
        assert issubclass(user, UserError) and exit_status(user("x")) == EXIT_USAGE
    for failure in (ModelUnavailableError, OutputWriteError, Depth2ImgError):
        assert not issubclass(failure, UserError) and exit_status(failure("x")) == EXIT_FAILURE
    assert exit_status(RuntimeError("a bug")) == EXIT_FAILURE


def test_as_user_errors_keeps_the_message_and_the_builtin_type():
    def check(value):
        if value == "type":
            raise TypeError("value must be a number, got 'type'")
        raise ValueError(f"value must be positive, got {value}")

    with pytest.raises(UserTypeError, match="must be a number") as raised:
        as_user_errors(check)("type")
    assert isinstance(raised.value, TypeError)
    with pytest.raises(UserInputError, match="got -1"):
        as_user_errors(check)(-1)


# ---------------------------------------------------------------------------------------------- silently wrong before
@pytest.mark.parametrize("name", ["strength", "guidance_scale", "eta"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_argument_refuses_nan_and_infinity(pipe, name, value):
    with ModelsMustNotRun(pipe), pytest.raises(UserInputError, match=name):
        call(pipe, **{name: value})


def test_lora_scale_must_be_finite(pipe):
    with ModelsMustNotRun(pipe), pytest.raises(UserInputError, match=r"cross_attention_kwargs\['scale'\]"):
        call(pipe, cross_attention_kwargs={"scale": float("nan")})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eta": 1.5}, r"eta must be a number in \[0.0, 1.0\]"),
        ({"guidance_scale": 1e6}, "guidance_scale must be at most 100"),
        ({"image": np.full((24, 40, 3), np.nan, np.float32)}, "numpy image contains NaN"),
        ({"image": torch.full((1, 3, 24, 40), float("inf"))}, "torch image contains NaN or infinite"),
        ({"image": np.full((24, 40, 3), 200.0, np.float32)}, r"must hold values in \[0, 1\] \(or \[-1, 1\]\).*uint8"),
        ({"image": np.zeros((24, 40, 3), np.int64)}, "uint8 .* or floating point"),
        ({"image": torch.full((1, 4, 3, 5), float("nan")), "depth_map": torch.rand(3, 5)}, "latents contains NaN"),
        ({"depth_map": np.random.rand(7, 5, 3)}, r"shape \(7, 5, 3\) looks like an \(H, W, 3\) image"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 3, 7)}, r"width 7 .* 32-wide embeddings"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 0, 32)}, "prompt_embeds is empty"),
        ({"prompt": None, "prompt_embeds": torch.full((1, 77, 32), float("nan"))}, "prompt_embeds contains NaN"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 80, 32)}, "80 tokens.*at most 77"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 77, 32, dtype=torch.long)}, "floating-point"),
        ({"clip_skip": 99}, r"clip_skip=99 is too large: .* 4 layers; use 0 to 4"),
        ({"depth_map": np.full((12, 20), 3e38, np.float32)}, r"values as large as 3e\+38; keep them within"),
        ({"cross_attention_kwargs": {"foo": 1}}, r"cross_attention_kwargs keys \['foo'\] are not supported"),
        ({"image": PIL.Image.fromarray(np.full((24, 40), 70000, np.int32), mode="I")}, "0..65535"),
    ],
)
def test_values_that_used_to_pass_silently_are_refused_before_any_model_runs(pipe, overrides, message):
    with ModelsMustNotRun(pipe), pytest.raises(UserInputError, match=message):
        call(pipe, **overrides)


def test_embeddings_of_the_right_width_still_work(pipe):
    embeds = torch.randn(1, 77, 32)
    images = call(pipe, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds))
    assert np.isfinite(images).all()


def test_sixteen_bit_images_are_scaled_by_their_range_not_clipped_white():
    levels = np.arange(24 * 40, dtype=np.uint16).reshape(24, 40) * 60  # 0 .. 57540
    for image in (PIL.Image.fromarray(levels), PIL.Image.fromarray(levels.astype(np.int32), mode="I")):
        assert image.mode in ("I;16", "I")
        rgb = np.asarray(to_rgb(image))
        expected = np.round(levels / 65535 * 255).astype(np.uint8)
        assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    # big-endian 16-bit (I;16B, as some TIFFs) gives the same picture
    big = PIL.Image.frombytes("I;16B", (40, 24), levels.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(to_rgb(big))[..., 1], expected)
    # the pipeline sees the same pixels as from the equivalent 8-bit image
    eight_bit = PIL.Image.fromarray(np.repeat(expected[..., None], 3, axis=-1))
    sixteen = images_to_tensor(describe_images(PIL.Image.fromarray(levels)), 8)
    assert torch.equal(sixteen, images_to_tensor(describe_images(eight_bit), 8))


def test_a_depth_map_of_another_aspect_ratio_is_warned_about(pipe):
    with pytest.warns(DepthAspectWarning, match=r"10x10 .* 40x24 .* at most 10%") as caught:
        call(pipe, depth_map=np.random.rand(10, 10))
    assert caught[0].filename == __file__  # the warning points at the user's call, not inside depth2img
    with warnings.catch_warnings():
        warnings.simplefilter("error", DepthAspectWarning)
        call(pipe, depth_map=np.random.rand(12, 20))  # the image's own aspect ratio
        size = pipe.feature_extractor.output_size(24, 40)  # what the estimator itself makes: no warning
        call(pipe, depth_map=np.random.rand(*size))


def test_to_a_missing_device_is_one_sentence(pipe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserInputError, match="cannot move the pipeline to cuda: CUDA is not available here"):
        pipe.to("cuda")
    with pytest.raises(UserInputError, match="unknown device 'tpu'"):
        pipe.to("tpu")
    assert pipe.device.type == "cpu"


def test_a_very_long_prompt_warns_in_one_short_line(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="depth2img.text"):
        call(pipe, prompt="word " * 10000)
    (record,) = [r for r in caplog.records if "tokens were dropped" in r.getMessage()]
    message = record.getMessage()
    assert len(message) < 300 and "\n" not in message
    tokens = len(pipe.tokenizer("word " * 10000).input_ids)  # with the start and end tokens
    assert f"the prompt is {tokens} tokens long" in message and "CLIP reads at most 77" in message
    assert f"so {tokens - 77} tokens were dropped" in message


# ---------------------------------------------------------------------------------------------- files
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_malicious_checkpoint_names_the_global_and_never_advises_weights_only_false(tmp_path):
    for container in ("zip", "legacy"):
        path = tmp_path / f"evil-{container}.ckpt"
        torch.save(
            {"state_dict": {"w": torch.zeros(1)}, "x": _RunsCode()},
            path,
            _use_new_zipfile_serialization=container == "zip",
        )
        with pytest.raises(UnsafeFileError) as raised:
            safe_torch_load(path, "checkpoint")
        message = str(raised.value)
        assert "is unsafe" in message and "posix.system" in message and str(path) in message
        assert "weights_only=False" not in message and "\n" not in message


def test_pickle_globals_reads_names_without_unpickling():
    data = pickle.dumps({"a": _RunsCode()}, protocol=2) + pickle.dumps(_RunsCode(), protocol=4)
    assert pickle_globals(data).count("posix.system") == 2
    assert pickle_globals(b"\x80\x02garbage") == []


def test_a_text_file_is_not_a_weights_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello\n")
    with pytest.raises(InputFileError, match="notes.pt is not a textual-inversion embedding: it is neither"):
        safe_torch_load(path, "textual-inversion embedding")


def test_a_missing_lora_file_is_reported_as_a_missing_file(pipe, tmp_path):
    for name in (tmp_path / "style.safetensors", "style.safetensors", "./loras/style"):
        with pytest.raises(MissingFileError, match="LoRA file not found"):
            pipe.load_lora_weights(str(name))


def test_a_full_disk_is_one_sentence_naming_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    target = tmp_path / "out.png"
    expected = f"cannot write {target}: no space left on the device"
    with pytest.raises(OutputWriteError, match=expected) as raised, atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_of_ours_are_removed_and_nothing_else(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".00001-7.png.{dead}-abcd_123.tmp"  # writer killed mid-save
    in_progress = tmp_path / f".00002-8.png.{alive}-abcd_123.tmp"  # a writer still running
    old_format_fresh = tmp_path / ".00003-9.png.abcdefgh.tmp"  # no pid: kept until it is old
    old_format_old = tmp_path / ".00004-9.png.abcdefgh.tmp"
    others = [tmp_path / ".notes.tmp", tmp_path / "00005-1.png", tmp_path / ".x.png.12-ABCDEFGH.tmp"]
    for path in (stale, in_progress, old_format_fresh, old_format_old, *others):
        path.write_bytes(b"partial")
    past = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(old_format_old, (past, past))
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted([stale, old_format_old])
    assert all(p.exists() for p in (in_progress, old_format_fresh, *others))


def test_atomic_writes_put_the_writers_pid_in_the_temp_name(tmp_path):
    with atomic_path(tmp_path / "a.png") as tmp:
        assert tmp.name.startswith(f".a.png.{os.getpid()}-") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"done")
    assert (tmp_path / "a.png").read_bytes() == b"done"


def test_a_symlink_as_output_is_replaced_not_written_through(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    link = tmp_path / "out.png"
    link.symlink_to(outside)
    with atomic_path(link) as tmp:
        tmp.write_bytes(b"image")
    assert outside.read_text() == "keep me"
    assert not link.is_symlink() and link.read_bytes() == b"image"


def test_a_zip_that_claims_to_be_a_checkpoint_but_is_not_one(tmp_path):
    path = tmp_path / "fake.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")  # an empty dict, but no torch layout
        archive.writestr("archive/version", b"3\n")
    try:
        loaded = safe_torch_load(path, "checkpoint")
    except InputFileError as error:
        assert str(path) in str(error) and "\n" not in str(error)
    else:
        assert loaded == {}
