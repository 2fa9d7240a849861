"""``depth2img generate``: new images from photos and prompts, keeping each photo's depth.

Every image of a run is made by its own pipeline call with its own ``torch.Generator(seed + k)`` (k counts the
images of the run: input images, then prompts, then ``-n`` copies), so any one image can be made again alone
from its seed. This differs from a single ``generator`` over a batch of N in diffusers, whose second image
depends on the first. The depth map is estimated once per input image and passed to each call, which gives the
same pixels as letting the pipeline estimate it (and is what ``--save-depth`` writes).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import argtypes
from .component_options import ComponentChoice, add_component_arguments
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, CliError, route_library_warnings, warn
from .precision import add_precision_arguments
from .settings import DEFAULT_MODEL, GenerateSettings, a1111_fields, image_record, resolve_settings

__all__ = [
    "add_generation_arguments",
    "add_parser",
    "check_model_options",
    "check_settings",
    "run",
    "sampler_label",
    "save_image",
]

DEFAULT_OUTPUT = "outputs"


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``generate`` and its flags (names as in stable-diffusion.cpp, A1111 and diffusers)."""
    parser = subparsers.add_parser(
        "generate",
        parents=parents,
        help="make images from a photo and a prompt, keeping the photo's depth",
        description="Make images from photos and prompts, keeping each photo's depth (layout, shapes).",
        epilog="Example: depth2img generate -i examples/room.jpg -p 'a cosy cabin interior, winter' -s 42",
    )
    what, output = add_generation_arguments(parser)
    what.add_argument(
        "-i", "--image", dest="images", action="append", metavar="PATH", help="input image or folder (repeatable)"
    )
    output.add_argument(
        "-o", "--output", metavar="PATH",
        help=f"folder (default: {DEFAULT_OUTPUT}/) or a name pattern like 'out/{{stem}}-{{seed}}.png'",
    )  # fmt: skip
    parser.set_defaults(run=run)


def add_generation_arguments(parser: argparse.ArgumentParser) -> tuple[Any, Any]:
    """Add every generation flag (prompt, sampling, model, components, device and memory, --save-depth, -q) to
    ``parser``; shared by ``generate`` and ``batch``. Returns the "what to generate" and "output" argument groups,
    for the caller's own input and output flags."""
    # Defaults are None here so that --from-png can tell typed flags from defaults (see settings.py).
    what = parser.add_argument_group("what to generate")
    what.add_argument("-p", "--prompt", dest="prompts", action="append", metavar="TEXT", help="prompt (repeatable)")
    what.add_argument("--negative-prompt", metavar="TEXT", help="what to keep out of the image")
    what.add_argument("--depth-map", metavar="PATH", help="use this depth map (image or .npy; white = near)")
    what.add_argument("--from-png", metavar="PNG", help="repeat the run that made this PNG (typed flags override)")
    what.add_argument(
        "--max-pixels", type=argtypes.int_at_least(64), metavar="N",
        help="refuse input images larger than N pixels, read from their headers (default: 8192x8192)",
    )  # fmt: skip

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--strength", type=argtypes.fraction, metavar="S", help="how much to change the image, 0..1 (0.8)"
    )
    sampling.add_argument(
        "--steps",
        "--num-inference-steps",
        dest="steps",
        type=argtypes.int_at_least(1),
        metavar="N",
        help="denoising steps (50)",
    )
    sampling.add_argument(
        "--guidance-scale", "--cfg-scale", dest="guidance_scale", type=argtypes.non_negative_float, metavar="CFG",
        help="how strongly to follow the prompt, up to 100 (7.5; 1 or less turns guidance off)",
    )  # fmt: skip
    sampling.add_argument(
        "--scheduler", "--sampler", dest="scheduler", metavar="NAME",
        help="sampler, e.g. euler-a, dpm++2m-karras, ddim (default: the model's own); see 'depth2img info'",
    )  # fmt: skip
    sampling.add_argument(
        "-s",
        "--seed",
        type=argtypes.seed,
        metavar="SEED",
        help="seed of the first image; image k uses seed+k (-1: random)",
    )
    sampling.add_argument(
        "-n",
        "--num-images",
        dest="num_images",
        type=argtypes.int_at_least(1),
        metavar="N",
        help="images per prompt and input (1)",
    )
    sampling.add_argument(
        "--clip-skip", type=argtypes.int_at_least(1), metavar="N",
        help="as in A1111: 1 uses the text encoder's last layer, 2 the one before it, ...",
    )  # fmt: skip
    sampling.add_argument("--eta", type=argtypes.non_negative_float, metavar="ETA", help="DDIM eta, 0..1 (0)")
    sampling.add_argument(
        "-W", "--width", type=argtypes.int_at_least(8), metavar="PX", help="resize inputs to this width"
    )
    sampling.add_argument(
        "-H", "--height", type=argtypes.int_at_least(8), metavar="PX", help="resize inputs to this height"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "-m", "--model", help=f"Hub repo id, model folder or .safetensors/.ckpt file (default: {DEFAULT_MODEL})"
    )
    model.add_argument(
        "--lora", dest="loras", action="append", type=argtypes.lora_spec, metavar="PATH[:SCALE]",
        help="LoRA file and its weight (repeatable)",
    )  # fmt: skip
    model.add_argument(
        "--embedding", dest="embeddings", action="append", type=argtypes.embedding_spec, metavar="PATH[:TOKEN]",
        help="textual-inversion embedding (repeatable)",
    )  # fmt: skip
    model.add_argument("--offline", action="store_true", help="never download; use the local cache or folders")

    hardware = parser.add_argument_group("device and memory")
    hardware.add_argument("--device", metavar="DEVICE", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    add_precision_arguments(hardware)
    hardware.add_argument(
        "--attention-slicing", action=argparse.BooleanOptionalAction, help="compute attention in slices (less memory)"
    )
    hardware.add_argument(
        "--vae-tiling", action=argparse.BooleanOptionalAction, help="decode in tiles (large images, less memory)"
    )
    hardware.add_argument(
        "--low-memory", action="store_true",
        help="hold each model in memory only while it runs (about 40%% less peak memory, same images)",
    )  # fmt: skip

    add_component_arguments(parser)

    output = parser.add_argument_group("output")
    output.add_argument("--save-depth", action="store_true", help="also write each image's depth map (16-bit PNG)")
    output.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return what, output


@dataclass
class _Plan:
    """A run, checked: everything that can be wrong with the arguments was found before loading a model."""

    settings: GenerateSettings
    images: list[Path]
    user_depth: Any  # numpy (H, W) from --depth-map, or None
    seed: int
    total: int
    namer: Any
    device: Any
    precision: Any  # depth2img.precision.Precision: the dtype of each model
    source: Any
    components: ComponentChoice


def run(args: argparse.Namespace) -> int:
    """Check everything, load the model, then make and save the images one by one."""
    plan = _plan(args)
    route_library_warnings()
    written: list[Path] = []
    try:
        _load_and_generate(plan, args, written)
    finally:
        if not written:
            plan.namer.discard_if_unused()
    return 0


def _load_and_generate(plan: _Plan, args: argparse.Namespace, written: list[Path]) -> None:
    import torch

    from .component_options import apply_component_options, load_components
    from .model_check import check_clip_skip_flag
    from .pipeline_setup import apply_options
    from .precision import load_pipeline_in, loading_dtype

    settings = plan.settings
    components = load_components(plan.components, dtype=loading_dtype(plan.precision), offline=args.offline)
    pipe = load_pipeline_in(
        plan.source, plan.precision, offline=args.offline, quiet=args.quiet, low_memory=args.low_memory,
        components=components,
    )  # fmt: skip
    apply_component_options(pipe, plan.components)
    pipe = pipe.to(plan.device)
    layers = getattr(getattr(pipe.text_encoder, "config", None), "num_hidden_layers", None)
    check_clip_skip_flag(settings.clip_skip, layers)  # when the config could not be read before loading
    apply_options(
        pipe,
        scheduler=settings.scheduler,
        attention_slicing=settings.attention_slicing,
        vae_tiling=settings.vae_tiling,
        loras=settings.loras,
        embeddings=settings.embeddings,
    )
    if settings.seed < 0 and not args.quiet:
        print(f"depth2img: random seed {plan.seed}", file=sys.stderr)
    try:
        _generate(pipe, plan, args, written)
    except KeyboardInterrupt:
        raise CliError(
            f"interrupted: {len(written)} of {plan.total} images were written; none was left half-written",
            EXIT_INTERRUPTED,
        ) from None
    except torch.OutOfMemoryError:
        raise CliError(
            f"out of memory on {plan.device} after {len(written)} of {plan.total} images; try --attention-slicing, "
            "--vae-tiling, smaller -W/-H, or --precision float16",
            EXIT_FAILURE,
        ) from None


def _plan(args: argparse.Namespace) -> _Plan:
    from .inputs import announce_size_rounding, check_resized_sizes, load_depth_map
    from .outputs import OutputNamer

    settings = resolve_settings(args)
    components = check_settings(settings)
    images = _input_images(settings, args.max_pixels)
    announce_size_rounding(settings.width, settings.height)
    check_resized_sizes(images, settings.width, settings.height, args.max_pixels)
    user_depth = None
    if settings.depth_map:
        if len(images) != 1:
            raise CliError(f"--depth-map goes with exactly one input image, but {len(images)} were given")
        user_depth = load_depth_map(Path(settings.depth_map).expanduser(), max_pixels=args.max_pixels)
        _check_depth_fits(user_depth, images[0], settings)
        settings.depth_map = str(Path(settings.depth_map).expanduser().resolve())
    settings.images = [str(path.resolve()) for path in images]
    total = len(images) * len(settings.prompts) * settings.num_images
    seed = settings.seed if settings.seed >= 0 else secrets.randbelow(2**32)
    if seed + total > 2**63:
        raise CliError(f"--seed: {seed} + {total} images runs past the largest seed (2**63 - 1)")
    namer = OutputNamer(args.output or DEFAULT_OUTPUT, total)
    source, device, precision = check_model_options(settings, args, before_model=namer.prepare)
    return _Plan(settings, images, user_depth, seed, total, namer, device, precision, source, components)


def check_settings(settings: GenerateSettings) -> ComponentChoice:
    """The checks that need nothing but the flags (and a --from-png record): the component flags (their choice is
    recorded in ``settings`` as resolved, and returned) and the pipeline's own number checks."""
    from .component_options import component_choice

    components = component_choice(settings)
    settings.depth_model, settings.vae = components.depth_model, components.vae  # recorded as resolved
    if settings.vae_tiling and not components.vae_can_tile:
        raise CliError("--vae-tiling does not work with TAESD (--vae): it has no tiled decoding; drop one of them")
    _check_numbers(settings)
    return components


def check_model_options(
    settings: GenerateSettings, args: argparse.Namespace, before_model: Callable[[], Any] | None = None
) -> tuple[Any, Any, Any]:
    """Check the scheduler, adapters, model (and what its configs tell), device and dtype of ``settings`` (made
    absolute and canonical in place); ``generate`` and ``batch`` share them. ``before_model`` runs last, after
    every check (so a refused run creates no output folder). Returns (source, device, dtype)."""
    from .pipeline_setup import check_adapter_support, check_model

    if settings.scheduler:
        settings.scheduler = _check_scheduler(settings.scheduler)
    settings.loras = [(str(Path(p).expanduser().resolve()), scale) for p, scale in settings.loras]
    settings.embeddings = [(str(Path(p).expanduser().resolve()), token) for p, token in settings.embeddings]
    check_adapter_support(settings.loras, settings.embeddings)
    source = check_model(settings.model, args.offline)
    if args.low_memory:  # flag combinations first: no file needs reading to refuse them
        _check_low_memory(source, settings)
    _check_against_model(source, settings)
    if source.kind != "repo":
        settings.model = source.location
    from .precision import resolve_precision  # imports torch: after the cheap checks

    device = _device(settings)
    precision = resolve_precision(args.precision, args.dtype, device, settings.record)
    settings.device, settings.dtype = str(device), precision.name
    if before_model is not None:
        before_model()  # last: a run refused by any check above creates no output folder
    return source, device, precision


def _check_numbers(settings: GenerateSettings) -> None:
    """The pipeline's own checks of strength, steps, guidance and eta, run on the flags (and a --from-png record)
    before anything loads: the same sentences as the Python API."""
    from ..call_checks import check_finite_numbers, check_steps_and_strength
    from ..errors import as_user_errors

    as_user_errors(check_finite_numbers)(
        strength=settings.strength, guidance_scale=settings.guidance_scale, eta=settings.eta
    )
    as_user_errors(check_steps_and_strength)(settings.steps, settings.strength, None)


def _check_against_model(source: Any, settings: GenerateSettings) -> None:
    """What the model's configs can tell before it loads: --steps within its training steps, --clip-skip within
    its text encoder, LoRAs and embeddings that fit its shapes."""
    from ..call_checks import check_steps_and_strength
    from ..errors import as_user_errors
    from .model_check import check_adapters_fit, check_clip_skip_flag, text_encoder_layers, train_steps

    as_user_errors(check_steps_and_strength)(settings.steps, settings.strength, train_steps(source))
    check_clip_skip_flag(settings.clip_skip, text_encoder_layers(source))
    check_adapters_fit(source, settings.loras, settings.embeddings)


def _check_depth_fits(depth: Any, image: Path, settings: GenerateSettings) -> None:
    """A --depth-map file must have about the aspect ratio of the image it goes with (see call_checks)."""
    import torch

    from ..call_checks import check_depth_magnitude, depth_aspect_mismatch
    from ..errors import as_user_errors
    from .inputs import check_image, target_size

    as_user_errors(check_depth_magnitude)(torch.from_numpy(depth))

    size = check_image(image)
    size = target_size(size, settings.width, settings.height) or size
    message = depth_aspect_mismatch(depth.shape[:2], (size[1], size[0]))
    if message:
        raise CliError(f"--depth-map: {settings.depth_map}: {message}")


def _input_images(settings: GenerateSettings, max_pixels: int | None = None) -> list[Path]:
    from .inputs import collect_images, file_sha256

    if "images" not in settings.from_record:
        return collect_images(settings.images, max_pixels=max_pixels)
    recorded = Path(settings.images[0])
    if not recorded.is_file():
        raise CliError(f"--from-png: the input image it was made from, {recorded}, is gone; pass it with -i PATH")
    images = collect_images([str(recorded)], max_pixels=max_pixels)
    if settings.record.get("image_sha256") not in (None, file_sha256(recorded)):
        warn(f"{recorded} has changed since the PNG was made; the result will differ")
    return images


def _check_scheduler(name: str) -> str:
    """The registry's short name for ``name`` (aliases and A1111 labels accepted), or a clear error."""
    from ..schedulers.registry import resolve_scheduler_name

    try:
        return resolve_scheduler_name(name).name
    except ValueError as error:
        raise CliError(f"--scheduler: {error}") from None


def _device(settings: GenerateSettings) -> Any:
    from .devices import resolve_device

    try:
        return resolve_device(settings.device)
    except CliError:
        if "device" not in settings.from_record:
            raise
        warn(f"the PNG was made on {settings.device}, which is not available here; pixels will differ slightly")
        return resolve_device("auto")


def _generate(pipe: Any, plan: _Plan, args: argparse.Namespace, written: list[Path]) -> None:
    """Each input image (its depth estimated once), each prompt, ``-n`` times: one call, one seed, one file."""
    import torch

    from .depthmaps import estimate_depth, resize_depth, write_depth_png16
    from .inputs import file_sha256, load_rgb

    settings = plan.settings
    sampler = sampler_label(pipe, settings.scheduler)
    depth_sha = file_sha256(Path(settings.depth_map)) if settings.depth_map else None
    estimated = _depths_of_the_run(pipe, plan) if plan.components.depth_normalize == "batch" else {}
    index = 0
    for image_path in plan.images:
        image = load_rgb(image_path, settings.width, settings.height)
        user_depth = plan.user_depth
        if user_depth is not None:
            depth = torch.from_numpy(user_depth)[None]
        else:
            depth = estimated[image_path] if image_path in estimated else estimate_depth(pipe, image)
        image_sha = file_sha256(image_path)
        for prompt in settings.prompts:
            for _ in range(settings.num_images):
                seed = plan.seed + index
                if not args.quiet:
                    print(f"depth2img: [{index + 1}/{plan.total}] seed {seed}, {image_path.name}", file=sys.stderr)
                result = _one_image(pipe, settings, image, depth, prompt, seed)
                record = image_record(
                    settings, prompt=prompt, image=image_path.resolve(), seed=seed, image_sha256=image_sha,
                    depth_map_sha256=depth_sha, size=list(result.size), **plan.precision.record(),
                )  # fmt: skip
                path = plan.namer.path_for(index, seed, image_path, prompt)
                save_image(path, result, record, sampler)
                written.append(path)
                print(path, flush=True)  # stdout: one written file per line, for scripts
                if args.save_depth:
                    write_depth_png16(path.with_name(path.stem + "-depth.png"), resize_depth(depth, result.size))
                index += 1


def _depths_of_the_run(pipe: Any, plan: _Plan) -> dict[Path, Any]:
    """--depth-normalize batch: every input's depth first, then one range for all of them (each call has one
    image, so the pipeline's own "batch" mode would see one map at a time)."""
    from .component_options import apply_component_options
    from .depthmaps import estimate_depth, shared_range
    from .inputs import load_rgb

    if plan.user_depth is not None:
        return {}
    settings = plan.settings
    depths, latent_sizes = {}, []
    for path in plan.images:
        image = load_rgb(path, settings.width, settings.height)
        depths[path] = estimate_depth(pipe, image)
        latent_sizes.append((image.height // pipe.vae_scale_factor, image.width // pipe.vae_scale_factor))
    apply_component_options(pipe, plan.components, shared_range(depths.values(), latent_sizes))
    return depths


def _one_image(
    pipe: Any, settings: GenerateSettings, image: Any, depth: Any, prompt: str, seed: int, **pipe_options: Any
) -> Any:
    """One pipeline call with its own generator, so this image depends on ``seed`` alone.

    ``pipe_options`` go to the call as they are (the web app passes ``callback_on_step_end`` for progress/stop).
    """
    import torch

    # A1111 counts clip skip from 1 (= the last layer); the pipeline, like diffusers, counts layers skipped.
    clip_skip = settings.clip_skip - 1 if settings.clip_skip and settings.clip_skip > 1 else None
    return pipe(
        prompt=prompt,
        image=image,
        depth_map=depth,
        strength=settings.strength,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        negative_prompt=settings.negative_prompt or None,
        eta=settings.eta,
        generator=torch.Generator("cpu").manual_seed(seed),  # CPU noise: the same on every device
        clip_skip=clip_skip,
        output_type="pil",
        **pipe_options,
    ).images[0]


def save_image(path: Path, image: Any, record: dict[str, Any], sampler: str) -> None:
    """Write the PNG atomically with its A1111 ``parameters`` and JSON ``depth2img`` chunks."""
    from .pngmeta import JSON_KEY, PARAMETERS_KEY, a1111_parameters, write_png

    parameters = a1111_parameters(
        record["prompt"], record["negative_prompt"], a1111_fields(record, sampler, image.size)
    )
    write_png(path, image, {PARAMETERS_KEY: parameters, JSON_KEY: json.dumps(record)})


# A1111's sampler names for the schedulers a model folder may name itself.
_A1111_SAMPLERS = {
    "PNDMScheduler": "PLMS",
    "DDIMScheduler": "DDIM",
    "DDPMScheduler": "DDPM",
    "LMSDiscreteScheduler": "LMS",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "UniPCMultistepScheduler": "UniPC",
}


def sampler_label(pipe: Any, name: str | None) -> str:
    """The ``Sampler:`` value: A1111's name for the --scheduler preset, or for the model's own scheduler."""
    if name:
        from ..schedulers.registry import resolve_scheduler_name

        preset = resolve_scheduler_name(name)
        return preset.label or preset.name
    class_name = type(pipe.scheduler).__name__
    return _A1111_SAMPLERS.get(class_name, class_name)


def _check_low_memory(source: Any, settings: Any) -> None:
    """--low-memory reloads each model from its folder's files when it runs: it needs such files, and models
    whose weights stay as loaded (adapters change them after loading)."""
    if source.kind == "file":
        raise CliError("--low-memory works with a model folder or repo id, not a single-file checkpoint")
    if settings.loras or settings.embeddings:
        raise CliError("--low-memory cannot be combined with --lora or --embedding (adapters change loaded models)")
