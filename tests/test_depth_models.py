"""Any transformers depth model as the estimator: tiny random Depth Anything (relative and metric), ZoeDepth and
GLPN built from small configs (no download). Our depth equals transformers' own processor + model +
post-processing after the documented conversion; a generation with an external estimator equals the same
generation given that depth as ``depth_map``; sign detection, overrides, batch normalisation, licences."""

from __future__ import annotations

import shutil
import types
import warnings

import numpy as np
import pytest
import torch

from depth_models_tiny import KINDS, build, saved
from pipeline_tiny import load_ours, max_diff, random_pil, seeded, tiny_folder

CPU = torch.device("cpu")
METRIC_KINDS = {"depth_anything_metric", "zoedepth", "glpn"}


def images(count: int = 2) -> list[np.ndarray]:
    return [np.asarray(random_pil(seed=k)) for k in range(count)]


def transformers_depth(kind, model, processor, pixels, monkeypatch) -> torch.Tensor:
    """transformers' own way: processor, model, ``post_process_depth_estimation`` (sources sizes for ZoeDepth)."""
    inputs = processor(images=pixels, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    options = {}
    if kind == "zoedepth":
        # transformers' ZoeDepth post-processing resizes with torchvision, which this project never installs;
        # torchvision's tensor resize (bicubic, antialias=False) is torch's bicubic interpolation, supplied here.
        import transformers.models.zoedepth.image_processing_pil_zoedepth as zoe

        def resize(tensor, size, interpolation, antialias):
            assert interpolation == "bicubic" and antialias is False
            return torch.nn.functional.interpolate(tensor[None], size=size, mode="bicubic", align_corners=False)[0]

        shim = types.SimpleNamespace(resize=resize, InterpolationMode=types.SimpleNamespace(BICUBIC="bicubic"))
        monkeypatch.setattr(zoe, "tvF", shim, raising=False)
        options["source_sizes"] = [p.shape[:2] for p in pixels]
    results = processor.post_process_depth_estimation(outputs, **options)
    return torch.stack([r["predicted_depth"] for r in results])


@pytest.mark.parametrize("kind", KINDS)
def test_our_depth_equals_transformers_after_the_documented_conversion(kind, monkeypatch):
    from depth2img.depth import estimate_depth
    from depth2img.depth_models import to_inverse_depth

    model, processor = build(kind)
    pixels = images()
    expected = transformers_depth(kind, model, processor, pixels, monkeypatch)
    if kind in METRIC_KINDS:
        expected = to_inverse_depth(expected)
    with torch.no_grad():
        ours = estimate_depth(model, processor, pixels, CPU, torch.float32)
    assert ours.shape == expected.shape
    assert float(expected.std()) > 0  # the map has structure: the comparison means something
    assert max_diff(ours, expected) <= 1e-6 * float(expected.abs().max())


def test_the_conversion_is_near_equals_large():
    from depth2img.depth_models import to_inverse_depth

    distance = torch.tensor([0.5, 2.0, 10.0, 0.0])
    assert to_inverse_depth(distance).tolist() == pytest.approx([2.0, 0.5, 0.1, 1e4])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("depth_anything", "inverse"),
        ("depth_anything_metric", "metric"),
        ("zoedepth", "metric"),
        ("glpn", "metric"),
        ("depth_pro", "inverse"),  # its own output is a canonical inverse depth (metres only after post-processing)
    ],  # fmt: skip
)
def test_the_kind_of_depth_is_read_from_the_config(kind, expected):
    from depth2img.depth_models import depth_output_kind

    assert depth_output_kind(build(kind)[0]) == expected


def test_the_checkpoints_dpt_is_inverse_depth_and_unknown_models_warn():
    from depth2img.depth_models import depth_output_kind, needs_inversion

    pipe = load_ours(tiny_folder())
    assert depth_output_kind(pipe.depth_estimator) == "inverse"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert needs_inversion(pipe.depth_estimator) is False
    unknown = types.SimpleNamespace(config=types.SimpleNamespace(model_type="new_depth"))
    with pytest.warns(UserWarning, match="'new_depth' is not in depth2img's table.*invert=True"):
        assert needs_inversion(unknown) is False
    assert needs_inversion(unknown, invert=True) is True


def test_invert_overrides_the_detection():
    from depth2img.depth import estimate_depth

    model, processor = build("glpn")
    pixels = images(1)
    with torch.no_grad():
        raw = model(**processor(images=pixels, return_tensors="pt")).predicted_depth
        kept = estimate_depth(model, processor, pixels, CPU, torch.float32, invert=False)
    assert max_diff(kept, raw) == 0


# ---------------------------------------------------------------------------------------------- in the pipeline
def generate(pipe, **kwargs):
    return pipe(
        ["a cat", "a dog"], image=[random_pil(), random_pil(seed=1)], num_inference_steps=2, generator=seeded(3),
        output_type="np", **kwargs,
    ).images  # fmt: skip


@pytest.mark.parametrize("kind", ["depth_anything", "zoedepth", "depth_pro"])
def test_an_external_estimator_equals_its_depth_given_as_depth_map(kind):
    from depth2img.depth import estimate_depth

    model, processor = build(kind)
    pipe = load_ours(tiny_folder(), depth_estimator=model, feature_extractor=processor)
    with torch.no_grad():
        depth = estimate_depth(model, processor, images(), CPU, torch.float32)
    estimated = generate(pipe)
    given = generate(pipe, depth_map=depth)
    assert max_diff(estimated, given) == 0
    default = generate(load_ours(tiny_folder()))
    assert max_diff(estimated, default) > 1e-3  # the external estimator was really used


def test_load_depth_estimator_reads_a_folder_into_the_pipeline():
    from depth2img import Depth2ImgPipeline, load_depth_estimator

    model, processor = load_depth_estimator(saved("depth_anything"))
    assert type(model).__name__ == "DepthAnythingForDepthEstimation" and not model.training
    pipe = Depth2ImgPipeline.from_pretrained(tiny_folder(), depth_estimator=model, feature_extractor=processor)
    pipe.set_progress_bar_config(disable=True)
    reference_model, reference_processor = build("depth_anything")
    reference = load_ours(tiny_folder(), depth_estimator=reference_model, feature_extractor=reference_processor)
    assert max_diff(generate(pipe), generate(reference)) == 0


def test_load_depth_estimator_refuses_what_is_neither_folder_nor_repo_id(tmp_path):
    from depth2img import load_depth_estimator

    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub repo id"):
        load_depth_estimator(tmp_path / "missing" / "deeper" / "still")
    with pytest.raises(TypeError, match="unknown argument.*variant"):
        load_depth_estimator(saved("glpn"), variant="fp16")


def test_a_non_commercial_model_is_announced_once(tmp_path):
    from depth2img import load_depth_estimator
    from depth2img.depth_models import licence_notice

    assert licence_notice("depth-anything/Depth-Anything-V2-Small-hf") is None
    assert "CC-BY-NC-4.0" in licence_notice("depth-anything/Depth-Anything-V2-Large-hf")
    assert "CC-BY-NC-4.0" in licence_notice("depth-anything/Depth-Anything-V2-Metric-Indoor-Base-hf")
    folder = tmp_path / "Depth-Anything-V2-Base-hf"
    shutil.copytree(saved("depth_anything"), folder)
    with pytest.warns(UserWarning, match="CC-BY-NC-4.0 \\(non-commercial use only\\)") as caught:
        load_depth_estimator(folder)
    assert len([w for w in caught if "CC-BY-NC" in str(w.message)]) == 1


# ---------------------------------------------------------------------------------------------- normalisation
def depth_masks(pipe, **kwargs):
    seen = {}

    def grab(pipe, step, timestep, tensors):
        seen.setdefault("depth_mask", tensors["depth_mask"].clone())
        return {}

    generate(pipe, callback_on_step_end=grab, callback_on_step_end_tensor_inputs=["depth_mask"], guidance_scale=1)
    return seen["depth_mask"]


def test_batch_normalisation_uses_one_range_for_the_whole_batch():
    from depth2img.depth import estimate_depth

    model, processor = build("depth_anything")
    pipe = load_ours(tiny_folder(), depth_estimator=model, feature_extractor=processor)
    per_image = depth_masks(pipe)
    assert torch.allclose(per_image.amin(dim=(1, 2, 3)), torch.tensor(-1.0))
    assert torch.allclose(per_image.amax(dim=(1, 2, 3)), torch.tensor(1.0))

    pipe.set_depth_options(normalize="batch")
    batch = depth_masks(pipe)
    with torch.no_grad():
        depth = estimate_depth(model, processor, images(), CPU, torch.float32)
    resized = torch.nn.functional.interpolate(depth[:, None], size=batch.shape[2:], mode="bicubic")
    low, high = resized.min(), resized.max()
    expected = 2 * (resized - low) / (high - low) - 1
    assert max_diff(batch, expected) <= 1e-6
    assert float(batch.min()) == -1.0 and float(batch.max()) == 1.0
    assert max_diff(batch, per_image) > 1e-2  # the two images' ranges differ: batch mode changes the maps


def test_depth_options_are_checked():
    pipe = load_ours(tiny_folder())
    for bad in ("video", (1.0, 1.0), (0, float("nan")), (0, 1, 2), (False, 1)):
        with pytest.raises(ValueError, match="normalize=.* is not allowed; use 'image' \\(per image\\), 'batch'"):
            pipe.set_depth_options(normalize=bad)
    with pytest.raises(TypeError, match="invert must be True, False or None"):
        pipe.set_depth_options(invert="yes")
    assert (pipe.depth_invert, pipe.depth_normalize) == (None, "image")


def test_a_fixed_range_scales_every_call_alike():
    """Two calls, one image each, with the range of both: together they equal one batch-normalised call."""
    from depth2img.depth import estimate_depth, normalize_depth

    model, processor = build("depth_anything")
    with torch.no_grad():
        depth = estimate_depth(model, processor, images(), CPU, torch.float32)
    batch = normalize_depth(depth, (3, 5), torch.float32, "batch")
    resized = torch.nn.functional.interpolate(depth[:, None], size=(3, 5), mode="bicubic")
    fixed = (float(resized.min()), float(resized.max()))
    one_by_one = torch.cat([normalize_depth(depth[k : k + 1], (3, 5), torch.float32, fixed) for k in range(2)])
    assert max_diff(one_by_one, batch) <= 1e-6


@pytest.mark.parametrize("kind", ["depth_anything", "zoedepth", "glpn"])
def test_a_pipeline_with_an_external_estimator_saves_and_loads_back(kind, tmp_path):
    model, processor = build(kind)
    pipe = load_ours(tiny_folder(), depth_estimator=model, feature_extractor=processor)
    pipe.save_pretrained(tmp_path / "p")
    again = load_ours(tmp_path / "p")
    assert type(again.depth_estimator) is type(model)
    assert max_diff(generate(again), generate(pipe)) == 0


def test_depth_pro_output_is_used_as_it_is():
    from depth2img.depth import estimate_depth

    model, processor = build("depth_pro")
    pixels = images()
    with torch.no_grad():
        raw = model(**processor(images=pixels, return_tensors="pt")).predicted_depth
        ours = estimate_depth(model, processor, pixels, CPU, torch.float32)
    assert float(raw.std()) > 0 and max_diff(ours, raw) == 0
