"""Property-based tests of the argument checks (Hypothesis): random values for every argument of
``Depth2ImgPipeline.__call__`` and every flag of ``depth2img generate``.

Every case must end in a correct result or in one of our errors (``depth2img.errors``) with a one-line message —
never a raw exception from deep inside torch, PIL or numpy, never a hang. HYPOTHESIS_PROFILE=long runs many more.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import require
from fuzz_support import outcome
from pipeline_tiny import ModelsMustNotRun, load_ours, random_pil, tiny_folder

hypothesis = require("hypothesis")
st = hypothesis.strategies
given = hypothesis.given

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "depth2img" / "configs" / "tiny"


@pytest.fixture(scope="module")
def pipe():
    loaded = load_ours(tiny_folder())
    loaded.set_progress_bar_config(disable=True)
    return loaded


# ---------------------------------------------------------------------------------------------- strategies
JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.just(object()), st.lists(st.integers(), max_size=2))
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 0.5, 1e-9, 7.5, -1.0, 100.0, 101.0]),
    st.builds(np.float32, st.floats(width=32)),
)
DTYPES = st.sampled_from([np.uint8, np.float32, np.float64, np.float16, np.int64, np.bool_, np.int16])


@st.composite
def arrays(draw, min_side: int = 1, max_side: int = 48) -> np.ndarray:
    """A small numpy array of a random layout, dtype and values (NaN, infinities and huge values included)."""
    ndim = draw(st.integers(1, 5))
    shape = tuple(draw(st.integers(min_side, max_side if i >= ndim - 3 else 3)) for i in range(ndim))
    dtype = draw(DTYPES)
    fill = draw(st.sampled_from(["random", "nan", "inf", "huge", "zeros", "in_range"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = {
        "random": rng.normal(0, 100, shape),
        "nan": np.full(shape, np.nan),
        "inf": np.full(shape, np.inf),
        "huge": np.full(shape, 1e30),
        "zeros": np.zeros(shape),
        "in_range": rng.random(shape),
    }[fill]
    with np.errstate(all="ignore"):
        return values.astype(dtype)


IMAGES = st.one_of(
    st.just(None),
    st.builds(random_pil, st.integers(1, 40), st.integers(1, 40)),
    arrays(),
    arrays().map(torch.from_numpy),
    st.lists(st.builds(random_pil), min_size=0, max_size=3),
    JUNK,
    st.sampled_from(["I;16", "I", "F", "1", "P", "LA", "CMYK"]).map(lambda mode: random_pil().convert(mode)),
)
EMBEDS = st.one_of(
    st.none(),
    st.tuples(st.integers(0, 3), st.integers(0, 80), st.sampled_from([0, 7, 32, 33])).map(
        lambda shape: torch.randn(shape)
    ),
    arrays().map(torch.from_numpy),
    JUNK,
)
ARGUMENTS = {
    "prompt": st.one_of(st.text(max_size=30), st.lists(st.text(max_size=5), max_size=3), JUNK),
    "image": IMAGES,
    "depth_map": st.one_of(st.none(), arrays(), arrays().map(torch.from_numpy), st.lists(arrays(), max_size=2), JUNK),
    "strength": st.one_of(NUMBERS, JUNK),
    "num_inference_steps": st.one_of(st.integers(-3, 3000), NUMBERS, JUNK),
    "guidance_scale": st.one_of(NUMBERS, JUNK),
    "negative_prompt": st.one_of(st.text(max_size=10), st.lists(st.text(max_size=5), max_size=3), JUNK),
    "num_images_per_prompt": st.one_of(st.integers(-2, 3), NUMBERS, JUNK),
    "eta": st.one_of(NUMBERS, JUNK),
    "generator": st.one_of(
        st.none(), st.builds(torch.Generator), st.lists(st.builds(torch.Generator), max_size=3), JUNK
    ),
    "prompt_embeds": EMBEDS,
    "negative_prompt_embeds": EMBEDS,
    "output_type": st.one_of(st.sampled_from(["pil", "np", "pt", "latent"]), JUNK),
    "cross_attention_kwargs": st.one_of(st.none(), st.fixed_dictionaries({"scale": st.one_of(NUMBERS, JUNK)}), JUNK),
    "clip_skip": st.one_of(st.none(), st.integers(-2, 30), NUMBERS, JUNK),
    "callback_on_step_end": st.one_of(st.none(), st.just(lambda *a: {}), JUNK),
    "callback_on_step_end_tensor_inputs": st.one_of(
        st.lists(st.sampled_from(["latents", "prompt_embeds", "depth_mask", "noise"]), max_size=3), st.just(["x"])
    ),
}
VALID = {  # one valid value each; a case replaces some of them with drawn values
    "prompt": "a cat",
    "image": random_pil(),
    "depth_map": None,
    "strength": 0.8,
    "num_inference_steps": 3,
    "guidance_scale": 7.5,
    "negative_prompt": None,
    "num_images_per_prompt": 1,
    "eta": 0.0,
    "generator": None,
    "prompt_embeds": None,
    "negative_prompt_embeds": None,
    "output_type": "np",
    "cross_attention_kwargs": None,
    "clip_skip": None,
    "callback_on_step_end": None,
    "callback_on_step_end_tensor_inputs": ["latents"],
}


@st.composite
def call_arguments(draw) -> dict:
    """The valid call with 1 to 4 of its arguments replaced by drawn values (one bad value at a time is how
    users meet the checks; several at once exercise their order)."""
    names = draw(st.lists(st.sampled_from(sorted(ARGUMENTS)), min_size=1, max_size=4, unique=True))
    arguments = dict(VALID)
    for name in names:
        arguments[name] = draw(ARGUMENTS[name])
    return arguments


# ---------------------------------------------------------------------------------------------- properties
@given(arguments=call_arguments())
def test_every_call_argument_is_checked_into_our_error_or_a_plan(pipe, arguments):
    """The check path alone (no model runs): a plan, or a UserError naming the problem in one line."""
    with ModelsMustNotRun(pipe), warnings_ignored():
        ended = outcome("api check_inputs", lambda: pipe.check_inputs(**arguments))
    assert ended == "accepted" or ended.startswith("refused: User") or ended.startswith("refused: Input"), ended


@st.composite
def pixel_arrays(draw) -> np.ndarray:
    """Valid (H, W, 3) images: uint8, or floats in [0, 1] or [-1, 1]."""
    height, width = draw(st.integers(8, 32)), draw(st.integers(8, 32))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["uint8", "unit", "signed"]))
    if kind == "uint8":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    values = rng.random((height, width, 3), dtype=np.float32)
    return values if kind == "unit" else 2 * values - 1


@given(
    strength=st.floats(0.3, 1.0) | NUMBERS,
    steps=st.integers(2, 4) | st.integers(-1, 5),
    guidance=st.floats(0, 20) | NUMBERS,
    eta=st.floats(0, 1) | NUMBERS,
    image=st.one_of(st.builds(random_pil, st.integers(8, 32), st.integers(8, 32)), pixel_arrays()),
)
def test_a_checked_call_runs_to_finite_images(pipe, strength, steps, guidance, eta, image):
    """Whatever passes the checks gives finite images in [0, 1] (never NaN or silently black)."""

    def check(images):
        assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1

    def run():
        return pipe(
            prompt="a cat", image=image, strength=strength, num_inference_steps=steps, guidance_scale=guidance,
            eta=eta, generator=torch.Generator().manual_seed(0), output_type="np",
        ).images  # fmt: skip

    with warnings_ignored():
        outcome("api full call", run, check)


@contextlib.contextmanager
def warnings_ignored():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------------------------- command line
FLAG_TEXT = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    st.sampled_from(["0", "1", "-1", "nan", "inf", "-inf", "1e9", "1e-9", "0.5", "7.5", "100", "2**63", "8", "99"]),
    st.integers(-(2**65), 2**65).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
VALUE_FLAGS = [
    "--strength", "--steps", "--guidance-scale", "--eta", "--seed", "-n", "--clip-skip", "-W", "-H",
    "--scheduler", "--device", "--dtype", "--max-pixels", "--negative-prompt", "-p",
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    """A photo and a stand-in model with the tiny configs but nothing loadable: a case that passes every check
    ends at "cannot load model" (exit 1), which proves all checks ran before loading."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    model = root / "model"
    for component in ("unet", "text_encoder", "scheduler"):
        shutil.copytree(CONFIGS / component, model / component)
    (model / "model_index.json").write_text("not json: nothing to load")
    photo = root / "photo.png"
    random_pil(48, 64).save(photo)
    return root, model, photo


@given(
    flags=st.lists(st.tuples(st.sampled_from(VALUE_FLAGS), FLAG_TEXT), min_size=1, max_size=4),
    output=st.text(alphabet="abc{}._-/", max_size=10),
    adapter=st.sampled_from([[], ["--lora", "gone.safetensors:x"], ["--embedding", "gone.pt:"], ["--lora", ":1"]]),
)
def test_every_generate_flag_value_is_checked_before_loading(cli_inputs, flags, output, adapter):
    from depth2img.cli import main

    root, model, photo = cli_inputs
    argv = ["generate", "-m", str(model), "-i", str(photo), "-p", "x", "-q", "--device", "cpu"]
    argv += ["-o", str(root / "out" / output)] + adapter
    for flag, value in flags:
        argv += [flag, value] if not value.startswith("-") else [f"{flag}={value}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("depth2img: error: ")]
    assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    assert "run with --debug" not in lines[0], lines[0]  # a raw exception would say this
    assert status == 2 or (status == 1 and "cannot load model" in lines[0]), (status, lines[0])
    ended = "exit 2 (refused)" if status == 2 else "exit 1 (all checks passed)"
    from fuzz_support import TALLY

    TALLY[("cli generate flags", ended)] += 1
    assert not math.isnan(status)


@given(
    flags=st.lists(
        st.tuples(st.sampled_from(["-W", "-H", "--device", "--dtype", "--max-pixels", "-o"]), FLAG_TEXT),
        min_size=1,
        max_size=3,
    )
)
def test_every_depth_flag_value_is_checked_before_loading(cli_inputs, flags):
    from depth2img.cli import main
    from fuzz_support import TALLY

    root, model, photo = cli_inputs
    argv = ["depth", "-m", str(model), "-i", str(photo), "-q"]
    for flag, value in flags:
        value = str(root / "depth-out" / value) if flag == "-o" else value
        argv += [flag, value] if not value.startswith("-") else [f"{flag}={value}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("depth2img: error: ")]
    assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    assert "run with --debug" not in lines[0], lines[0]
    assert status == 2 or (status == 1 and "cannot load model" in lines[0]), (status, lines[0])
    TALLY[("cli depth flags", "exit 2 (refused)" if status == 2 else "exit 1 (all checks passed)")] += 1


def test_the_strategies_cover_every_call_argument():
    import inspect

    from depth2img import Depth2ImgPipeline

    parameters = set(inspect.signature(Depth2ImgPipeline.__call__).parameters) - {"self", "kwargs", "return_dict"}
    assert parameters <= set(ARGUMENTS), parameters - set(ARGUMENTS)
    assert PIL.Image.new("I;16", (2, 2)).mode == "I;16"  # the 16-bit modes drawn above exist in this Pillow
