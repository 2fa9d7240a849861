"""``--precision``: the choice per device and CPU (flags mocked), the PNG record and its replay, and a tiny
bfloat16 generation whose models really compute in the dtypes chosen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from depth2img import precision as precision_module
from depth2img.cli import main
from depth2img.cli.errors import CliError
from depth2img.cli.precision import requested_precision, resolve_precision
from depth2img.precision import apply_precision, choose_precision, cpu_flags, precision_from_record

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7: the relative rounding of one bfloat16 value
F32_EPS = torch.finfo(torch.float32).eps


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512f", "avx512_bf16"}, "bfloat16"),  # Zen 4, Cooper Lake
        ({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"}, "bfloat16"),  # Sapphire Rapids
        ({"avx2", "fma"}, "float32"),  # no bfloat16 dot products: it would be emulated, slower
        ({"avx512f", "avx512_vnni"}, "float32"),  # int8 dot products only
        (set(), "float32"),
    ],
)
def test_auto_on_cpu_follows_the_bfloat16_flags(flags, expected):
    chosen = choose_precision("auto", "cpu", flags=flags)
    assert chosen.name == expected and chosen.requested == "auto"
    assert chosen.dtypes["unet"] == chosen.dtypes["vae"] == chosen.dtypes["text_encoder"] == getattr(torch, expected)
    assert chosen.dtypes["depth_estimator"] == torch.float32  # DPT stays float32 whatever the others use
    assert chosen.uniform == (expected == "float32")


def test_auto_on_gpus_and_explicit_choices():
    cuda = choose_precision("auto", "cuda", flags={"amx_bf16"})
    assert cuda.name == "float16" and cuda.uniform
    assert choose_precision("auto", "mps", flags={"amx_bf16"}).name == "float32"
    for name in ("float32", "bfloat16", "float16"):
        chosen = choose_precision(name, "cpu", flags={"amx_bf16"})
        assert chosen.uniform and chosen.dtype == getattr(torch, name)  # asked for: every model, DPT too
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        choose_precision("int8", "cpu")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx512f avx512_bf16\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16"}
    assert isinstance(cpu_flags(tmp_path / "missing"), frozenset)  # falls back to torch's probe


def test_flag_and_alias_resolution():
    assert requested_precision(None, None) == "auto"
    assert requested_precision("BF16", None) == "bfloat16"
    assert requested_precision(None, "half") == "float16"  # --dtype: deprecated alias, same values
    assert requested_precision("float32", "fp32") == "float32"
    with pytest.raises(CliError, match="--precision bfloat16 and --dtype float32 disagree"):
        requested_precision("bfloat16", "float32")
    with pytest.raises(CliError, match="--precision: unknown precision 'int4'"):
        requested_precision("int4", None)


def test_record_round_trip_and_old_records():
    chosen = choose_precision("auto", "cpu", flags={"avx512_bf16"})
    replayed = precision_from_record(json.loads(json.dumps(chosen.record())))
    assert replayed is not None and dict(replayed.dtypes) == dict(chosen.dtypes) and replayed.name == "bfloat16"
    # a record from before --precision: its dtype is replayed as a uniform precision
    assert resolve_precision(None, None, torch.device("cpu"), {"dtype": "float16"}).dtypes["vae"] == torch.float16
    # typed flags win over the record
    assert resolve_precision("float32", None, torch.device("cpu"), chosen.record()).name == "float32"
    with pytest.raises(CliError, match="--from-png: the recorded precision is not readable"):
        resolve_precision(None, None, torch.device("cpu"), {**chosen.record(), "model_dtypes": {"unet": "int8"}})


def test_tiny_pipeline_in_auto_bfloat16_computes_in_the_chosen_dtypes():
    from pipeline_tiny import load_ours, random_pil, seeded, tiny_folder

    def generate(pipe):
        seen: dict[str, torch.dtype] = {}

        def spy(name):
            def record_input_dtype(module, args):
                seen.setdefault(name, args[0].dtype)  # returns None: the inputs stay as they are

            return record_input_dtype

        hooks = [getattr(pipe, name).register_forward_pre_hook(spy(name)) for name in ("unet", "depth_estimator")]
        images = pipe(
            prompt="a room", image=random_pil(), num_inference_steps=3, generator=seeded(1), output_type="np"
        ).images
        for hook in hooks:
            hook.remove()
        return np.asarray(images, dtype=np.float64), seen

    exact, seen32 = generate(load_ours(tiny_folder()))
    auto = apply_precision(load_ours(tiny_folder()), choose_precision("auto", "cpu", flags={"avx512_bf16"}))
    approximate, seen = generate(auto)
    assert seen32 == {"unet": torch.float32, "depth_estimator": torch.float32}
    assert seen == {"unet": torch.bfloat16, "depth_estimator": torch.float32}
    relative = np.linalg.norm(approximate - exact) / np.linalg.norm(exact)
    # bfloat16 rounds every weight and activation by up to eps/2; through the tiny models' few layers the
    # errors stay within a few eps, far above float32's rounding (so bfloat16 really ran)
    assert 100 * F32_EPS < relative < 8 * BF16_EPS, relative


def _record(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["depth2img"])


def test_cli_records_the_precision_and_replays_it_elsewhere(capsys, tmp_path, monkeypatch):
    from pipeline_tiny import random_pil, tiny_folder

    photo = tmp_path / "photo.png"
    random_pil().save(photo)
    monkeypatch.setattr(precision_module, "cpu_flags", lambda *args: frozenset({"avx512_bf16"}))
    flags = ["-m", str(tiny_folder()), "-i", str(photo), "-p", "a room", "--steps", "2", "-q", "--device", "cpu"]
    assert main(["generate", *flags, "-s", "3", "-o", str(tmp_path / "a.png"), "--precision", "auto"]) == 0
    record = _record(tmp_path / "a.png")
    assert record["precision"] == "auto" and record["precision_resolved"] == "bfloat16"
    assert record["dtype"] == "bfloat16"
    assert record["model_dtypes"] == {
        "unet": "bfloat16", "vae": "bfloat16", "text_encoder": "bfloat16", "depth_estimator": "float32"
    }  # fmt: skip
    # replayed on a CPU without bfloat16 instructions: the recorded dtypes, not a new "auto", so the same pixels
    monkeypatch.setattr(precision_module, "cpu_flags", lambda *args: frozenset())
    argv = ["generate", "--from-png", str(tmp_path / "a.png"), "-q", "-o", str(tmp_path / "b.png")]
    assert main(argv) == 0
    assert _record(tmp_path / "b.png")["model_dtypes"] == record["model_dtypes"]
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # a typed flag overrides the record; --dtype still works, with a deprecation warning
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "c.png"), "--dtype", "float32"]) == 0
    assert "--dtype is deprecated" in capsys.readouterr().err
    assert _record(tmp_path / "c.png")["precision_resolved"] == "float32"
