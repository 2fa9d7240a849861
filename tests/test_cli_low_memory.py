"""--low-memory gives the same pixels as a normal run, and refuses what it cannot serve before loading."""

from __future__ import annotations

import numpy as np
import pytest

from depth2img.cli import main
from test_cli import generate, photo, pixels, tiny_model  # noqa: F401 (session fixtures shared with test_cli)


def test_low_memory_gives_the_same_pixels(capsys, tiny_model, photo, tmp_path):  # noqa: F811
    normal = generate(capsys, tiny_model, "-i", str(photo), "-p", "a cat", "-s", "7", "-o", str(tmp_path / "a.png"))
    low = generate(
        capsys, tiny_model, "-i", str(photo), "-p", "a cat", "-s", "7", "--low-memory", "-o", str(tmp_path / "b.png")
    )
    assert np.array_equal(pixels(normal[0]), pixels(low[0]))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora", "{lora}"], "--low-memory cannot be combined with --lora or --embedding"),
        (["-m", "{ckpt}"], "--low-memory works with a model folder or repo id, not a single-file checkpoint"),
    ],
)
def test_low_memory_refusals_are_one_line(capsys, tiny_model, photo, tmp_path, flags, message):  # noqa: F811
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"not used: refused before reading")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not used: refused before reading")
    flags = [flag.format(lora=lora, ckpt=ckpt) for flag in flags]
    argv = ["generate", "-m", str(tiny_model), "-i", str(photo), "-p", "x", "--low-memory", *flags]
    status = main([*argv, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1
