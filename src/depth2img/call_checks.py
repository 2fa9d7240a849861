"""The checks of a pipeline call: every argument validated, one clear sentence per mistake, before any model runs.

``__call__`` gathers its arguments once into a ``CallArguments``; ``check_call`` runs the checks below on it, one
small function per argument or group, in a fixed order (so the first mistake is the one reported), and returns
what it derives on the way (batch sizes, the image batch, the user's depth maps, the latent size), so the call
does not work them out twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .depth import depth_map_to_tensor
from .errors import as_user_errors
from .images import LATENT_CHANNELS, OUTPUT_TYPES, ImageBatch, check_image_values, describe_images
from .text import check_clip_skip, negative_texts, prompt_batch_size

__all__ = [
    "CALLBACK_TENSOR_INPUTS",
    "CallArguments",
    "DEPTH_ASPECT_TOLERANCE",
    "MAX_DEPTH_MAGNITUDE",
    "MAX_GUIDANCE_SCALE",
    "CallPlan",
    "DepthAspectWarning",
    "check_call",
    "check_depth_aspect",
    "check_depth_magnitude",
    "check_finite_numbers",
    "check_steps_and_strength",
    "depth_aspect_mismatch",
]

CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds", "depth_mask")


@dataclass
class CallPlan:
    """Everything derived from the arguments while checking them."""

    batch_size: int  # number of prompts
    total: int  # batch_size x num_images_per_prompt
    images: ImageBatch
    depth: torch.Tensor | None  # the user's depth maps as (B, H, W), or None to estimate them
    latent_size: tuple[int, int]
    callback_steps: int


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CallArguments:
    """The arguments of one ``Depth2ImgPipeline.__call__`` (see its docstring), as the caller gave them: the types
    are what the call accepts, and ``check_call`` is what makes sure of them."""

    prompt: str | list[str] | None
    image: Any  # PIL, numpy, torch, or a list of them
    depth_map: Any  # None, or a tensor, array, PIL image or a list of them
    strength: float
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str | list[str] | None
    num_images_per_prompt: int
    eta: float
    generator: torch.Generator | list[torch.Generator] | None
    prompt_embeds: torch.Tensor | None
    negative_prompt_embeds: torch.Tensor | None
    output_type: str
    cross_attention_kwargs: dict[str, Any] | None
    clip_skip: int | None
    callback_on_step_end: Callable[..., dict[str, Any]] | None
    callback_on_step_end_tensor_inputs: Sequence[str]
    callback: Callable[..., None] | None = None  # deprecated
    callback_steps: int | None = None  # deprecated

    @classmethod
    def from_locals(cls, values: Mapping[str, Any]) -> CallArguments:
        """The fields picked by name from ``__call__``'s ``locals()``, so the argument list is written only in its
        signature and here (tests/test_pipeline_inputs.py checks that the two agree)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@as_user_errors  # a ValueError/TypeError raised here is the user's mistake: UserInputError/UserTypeError
def check_call(pipe: Any, args: CallArguments) -> CallPlan:
    """Check every argument of ``pipe(...)``, raising one clear error before any model runs; returns what was
    derived on the way (batch sizes, the described images, the user's depth maps, the latent size)."""
    check_finite_numbers(strength=args.strength, guidance_scale=args.guidance_scale, eta=args.eta)
    train_steps = getattr(getattr(pipe.scheduler, "config", None), "num_train_timesteps", None)
    check_steps_and_strength(args.num_inference_steps, args.strength, train_steps)
    _check_guidance_scale(args.guidance_scale)
    _check_eta(args.eta)
    _check_num_images_per_prompt(args.num_images_per_prompt)
    _check_output_type(args.output_type)
    _check_cross_attention_kwargs(args.cross_attention_kwargs)
    check_clip_skip(args.clip_skip, pipe.text_encoder)
    callback_steps = _check_callbacks(
        args.callback_on_step_end, args.callback_on_step_end_tensor_inputs, args.callback, args.callback_steps
    )
    batch_size = _check_prompts(
        pipe, args.prompt, args.negative_prompt, args.prompt_embeds, args.negative_prompt_embeds, args.guidance_scale
    )
    total = batch_size * int(args.num_images_per_prompt)
    _check_embeddings_fit(pipe, args.prompt_embeds, args.negative_prompt_embeds, args.guidance_scale)

    images = describe_images(args.image)
    check_image_values(images)
    _check_depth_layout(args.depth_map)
    depth = _check_images_and_depth(pipe, images, args.depth_map, batch_size, total)
    check_depth_magnitude(depth)
    _warn_on_depth_aspect(pipe, images, depth)
    _check_generators(args.generator, total, batch_size, args.num_images_per_prompt)

    if images.is_latents:
        latent_size = (images.height, images.width)
    else:
        factor = pipe.vae_scale_factor
        latent_size = (images.height // factor, images.width // factor)
    return CallPlan(batch_size, total, images, depth, latent_size, callback_steps)


def _check_guidance_scale(guidance_scale: Any) -> None:
    if not _is_number(guidance_scale):
        raise TypeError(f"guidance_scale must be a number, got {guidance_scale!r}")


def _check_eta(eta: Any) -> None:
    if not _is_number(eta):
        raise TypeError(f"eta must be a number, got {eta!r}")


def _check_num_images_per_prompt(num_images_per_prompt: Any) -> None:
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, (int, np.integer)):
        raise TypeError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt}")


def _check_output_type(output_type: Any) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not supported; choose one of {', '.join(OUTPUT_TYPES)}")


def _check_generators(generator: Any, total: int, batch_size: int, num_images_per_prompt: Any) -> None:
    if isinstance(generator, list):
        if len(generator) != total:
            raise ValueError(
                f"got a list of {len(generator)} generators for {total} images ({batch_size} prompt(s) x "
                f"num_images_per_prompt={num_images_per_prompt}); pass one generator per image, or a single one"
            )
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise TypeError("generator lists must hold torch.Generator objects only")
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def _check_callbacks(on_step_end: Any, tensor_inputs: Any, callback: Any, callback_steps: Any) -> int:
    if on_step_end is not None and not callable(on_step_end):
        raise TypeError(f"callback_on_step_end must be callable, got {type(on_step_end).__name__}")
    if tensor_inputs is not None:
        unknown = [name for name in tensor_inputs if name not in CALLBACK_TENSOR_INPUTS]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has unknown name(s) {unknown}; choose from "
                f"{list(CALLBACK_TENSOR_INPUTS)}"
            )
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if callback_steps is not None and (
        isinstance(callback_steps, bool) or not isinstance(callback_steps, int) or callback_steps <= 0
    ):
        raise ValueError(f"callback_steps must be a positive integer, got {callback_steps!r}")
    return 1 if callback_steps is None else callback_steps


def _check_prompts(
    pipe: Any, prompt: Any, negative_prompt: Any, prompt_embeds: Any, negative_prompt_embeds: Any, guidance_scale: Any
) -> int:
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass either prompt or prompt_embeds, not both")
    if prompt is None and prompt_embeds is None:
        raise ValueError("a prompt is required: pass prompt (a string or a list of strings) or prompt_embeds")
    if prompt is not None:
        if not isinstance(prompt, (str, list)) or (
            isinstance(prompt, list) and not all(isinstance(p, str) for p in prompt)
        ):
            raise TypeError(f"prompt must be a string or a list of strings, got {prompt!r:.80}")
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt is an empty list; pass at least one prompt")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
    for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if embeds is not None and (not isinstance(embeds, torch.Tensor) or embeds.ndim != 3):
            shown = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"{name} must be a (batch, tokens, width) tensor, got {shown}")
    both = prompt_embeds is not None and negative_prompt_embeds is not None
    if both and prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(
            f"prompt_embeds and negative_prompt_embeds must have the same shape, got "
            f"{tuple(prompt_embeds.shape)} and {tuple(negative_prompt_embeds.shape)}"
        )
    if pipe.text_encoder is None and (prompt_embeds is None or (guidance_scale > 1 and negative_prompt_embeds is None)):
        raise ValueError("this pipeline has no text encoder: pass prompt_embeds (and negative_prompt_embeds)")
    batch_size = prompt_batch_size(prompt, prompt_embeds)
    if guidance_scale > 1 and negative_prompt_embeds is None:
        if negative_prompt is not None and not (
            isinstance(negative_prompt, str)
            or (isinstance(negative_prompt, list) and all(isinstance(p, str) for p in negative_prompt))
        ):
            raise TypeError(f"negative_prompt must be a string or a list of strings, got {negative_prompt!r:.80}")
        negative_texts(prompt, negative_prompt, batch_size)  # raises if it does not fit the prompts
    return batch_size


def _check_images_and_depth(
    pipe: Any, images: ImageBatch, depth_map: Any, batch_size: int, total: int
) -> torch.Tensor | None:
    if images.is_latents and depth_map is None:
        raise ValueError(
            f"image has {LATENT_CHANNELS} channels, so it is taken as latents, and a depth map cannot be estimated "
            "from latents; pass depth_map too (or pass the RGB image)"
        )
    factor = pipe.vae_scale_factor
    if not images.is_latents and (images.height < factor or images.width < factor):
        raise ValueError(
            f"image is {images.width}x{images.height} pixels; it must be at least {factor}x{factor} "
            f"(the VAE's scale factor)"
        )
    if images.count not in (1, batch_size, total):
        raise ValueError(
            f"got {images.count} images for {batch_size} prompt(s) x num_images_per_prompt={total // batch_size}; "
            "pass one image, one per prompt, or one per output image"
        )
    if depth_map is None:
        if pipe.depth_estimator is None or pipe.feature_extractor is None:
            missing = "depth_estimator" if pipe.depth_estimator is None else "feature_extractor"
            raise ValueError(f"this pipeline has no {missing}, so pass depth_map to every call")
        return None
    depth = depth_map_to_tensor(depth_map)
    if depth.shape[0] not in (1, images.count):
        raise ValueError(
            f"depth_map holds {depth.shape[0]} maps but there are {images.count} images; pass one depth map per "
            "image, or a single one for all"
        )
    if not (depth.is_floating_point() or depth.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"depth_map must hold numbers, got dtype {depth.dtype}")
    if not bool(torch.isfinite(depth.float()).all()):
        raise ValueError("depth_map contains NaN or infinite values")
    return depth


# ---------------------------------------------------------------------------------------------- shared checks
# Small functions, callable without a pipeline, so the command line (and the web app, batch jobs) run the very
# same checks before any model is loaded, and say the same sentences.

MAX_DEPTH_MAGNITUDE = 1e30  # beyond, max - min of a map overflows float32 and the normalised map becomes NaN
MAX_GUIDANCE_SCALE = 100.0  # A1111 stops at 30; far beyond, guidance overflows float16 into NaN images
DEPTH_ASPECT_TOLERANCE = 0.10  # a depth map may differ from its image's aspect ratio by 10% before we say so


class DepthAspectWarning(UserWarning):
    """A depth map whose aspect ratio differs from its image's: it is stretched to the image, distorting depth."""


def check_finite_numbers(**numbers: Any) -> None:
    """Every given number must be finite (NaN and infinities are refused); non-numbers are left to the type
    checks. ``guidance_scale`` must also be at most ``MAX_GUIDANCE_SCALE`` and ``eta`` within [0, 1] (an eta
    above 1 asks DDIM for a negative variance, which gives NaN images)."""
    for name, value in numbers.items():
        if _is_number(value) and not np.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    guidance = numbers.get("guidance_scale")
    if _is_number(guidance) and guidance > MAX_GUIDANCE_SCALE:
        raise ValueError(
            f"guidance_scale must be at most {MAX_GUIDANCE_SCALE:g} (7.5 is usual; 1 or less turns guidance off), "
            f"got {guidance!r}"
        )
    eta = numbers.get("eta")
    if _is_number(eta) and not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number in [0.0, 1.0] (DDIM's noise: 0 none, 1 as DDPM), got {eta!r}")


def check_steps_and_strength(num_inference_steps: Any, strength: Any, train_steps: int | None) -> None:
    """``strength`` in [0, 1], ``num_inference_steps`` an integer in [1, ``train_steps``] (the scheduler's training
    steps, 1000 for SD2; None: no upper bound known), and at least one denoising step between them."""
    if not _is_number(strength) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0.0, 1.0], got {strength!r}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
    if num_inference_steps < 1 or (train_steps is not None and num_inference_steps > train_steps):
        raise ValueError(
            f"num_inference_steps must be between 1 and {train_steps or 'the training steps'}, "
            f"got {num_inference_steps}"
        )
    if int(num_inference_steps * strength) < 1:
        raise ValueError(
            f"num_inference_steps x strength must be at least 1 for any denoising to happen, got "
            f"{num_inference_steps} x {strength} = {num_inference_steps * strength:g}; increase one of them"
        )


def depth_aspect_mismatch(depth_size: tuple[int, int], image_size: tuple[int, int]) -> str | None:
    """A sentence when a depth map of ``depth_size`` = (height, width) differs from an image of ``image_size``
    = (height, width) in aspect ratio by more than ``DEPTH_ASPECT_TOLERANCE``, else None."""
    depth_aspect = depth_size[1] / depth_size[0]
    image_aspect = image_size[1] / image_size[0]
    if max(depth_aspect, image_aspect) / min(depth_aspect, image_aspect) <= 1 + DEPTH_ASPECT_TOLERANCE:
        return None
    return (
        f"the depth map is {depth_size[1]}x{depth_size[0]} (aspect {depth_aspect:.3g}) but the image is "
        f"{image_size[1]}x{image_size[0]} (aspect {image_aspect:.3g}); depth maps are stretched to the image, so "
        f"their aspect ratios may differ by at most {DEPTH_ASPECT_TOLERANCE:.0%}; resize or crop the depth map to "
        "the image"
    )


def check_depth_aspect(depth_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    """Raise ``ValueError`` with :func:`depth_aspect_mismatch`'s sentence (the command line's --depth-map)."""
    message = depth_aspect_mismatch(depth_size, image_size)
    if message:
        raise ValueError(message)


def _warn_on_depth_aspect(pipe: Any, images: ImageBatch, depth: torch.Tensor | None) -> None:
    """The API warns (``DepthAspectWarning``) rather than refusing: a map at the depth estimator's own input
    size (square for SD2's DPT) is what the pipeline makes itself and is not warned about."""
    if depth is None:
        return
    depth_size = tuple(depth.shape[-2:])
    output_size = getattr(pipe.feature_extractor, "output_size", None)
    if callable(output_size) and depth_size == tuple(output_size(images.height, images.width)):
        return
    message = depth_aspect_mismatch(depth_size, (images.height, images.width))
    if message:
        import warnings

        warnings.warn(message, DepthAspectWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's call: the first frame outside depth2img and outside
    torch's ``no_grad`` wrapper around ``__call__``."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        os.path.abspath(frame.f_code.co_filename).startswith(package)
        or frame.f_code.co_filename.endswith(os.path.join("torch", "utils", "_contextlib.py"))
    ):
        frame, level = frame.f_back, level + 1
    return level


def check_depth_magnitude(depth: torch.Tensor | None) -> None:
    """Depth values must be finite (checked before) and at most ``MAX_DEPTH_MAGNITUDE``: any scale is fine, as
    each map is normalised, but one that overflows on the way would give NaN images."""
    if depth is None or depth.numel() == 0:
        return
    largest = float(depth.float().abs().max())
    if largest > MAX_DEPTH_MAGNITUDE:
        raise ValueError(
            f"depth_map holds values as large as {largest:g}; keep them within ±{MAX_DEPTH_MAGNITUDE:g} (any scale "
            "works: each map is rescaled to [-1, 1])"
        )


def _check_depth_layout(depth_map: Any) -> None:
    """A 3-D depth map whose last axis is 1, 3 or 4 and smaller than the others is an (H, W, C) image, not
    a batch of very narrow maps: say so instead of counting its rows as maps."""
    for entry in depth_map if isinstance(depth_map, (list, tuple)) else [depth_map]:
        shape = tuple(getattr(entry, "shape", ()))
        if len(shape) == 3 and shape[2] in (1, 3, 4) and shape[2] < min(shape[0], shape[1]):
            raise ValueError(
                f"depth_map of shape {shape} looks like an (H, W, {shape[2]}) image with channels last; depth maps "
                "have one channel: pass (H, W), (B, H, W) or (B, 1, H, W), e.g. depth[..., 0]"
            )


def _check_embeddings_fit(pipe: Any, prompt_embeds: Any, negative_prompt_embeds: Any, guidance_scale: Any) -> None:
    """Embeddings must be float, non-empty, finite, as wide as the UNet's cross-attention (the text encoder's
    hidden size), and no longer than the text encoder can match with a negative prompt it encodes itself."""
    unet_config = getattr(pipe.unet, "config", None)
    encoder_config = getattr(pipe.text_encoder, "config", None)
    width = getattr(unet_config, "cross_attention_dim", None) or getattr(encoder_config, "hidden_size", None)
    for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if embeds is None:
            continue
        shape = tuple(embeds.shape)
        if not embeds.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {embeds.dtype}")
        if min(shape) < 1:
            raise ValueError(f"{name} is empty (shape {shape}); pass a (batch, tokens, width) tensor")
        if isinstance(width, int) and shape[2] != width:
            raise ValueError(
                f"{name} has width {shape[2]} (shape {shape}), but this model's text encoder makes {width}-wide "
                f"embeddings; pass a (batch, tokens, {width}) tensor"
            )
        if not bool(torch.isfinite(embeds).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    max_tokens = getattr(encoder_config, "max_position_embeddings", None)
    encodes_negative = pipe.text_encoder is not None and negative_prompt_embeds is None
    guided = _is_number(guidance_scale) and guidance_scale > 1
    too_long = prompt_embeds is not None and isinstance(max_tokens, int) and prompt_embeds.shape[1] > max_tokens
    if too_long and encodes_negative and guided:
        raise ValueError(
            f"prompt_embeds has {prompt_embeds.shape[1]} tokens, but the text encoder can encode at most "
            f"{max_tokens} for the negative prompt; pass negative_prompt_embeds of the same shape too"
        )


def _check_cross_attention_kwargs(cross_attention_kwargs: Any) -> None:
    """Only ``scale`` (the LoRA scale, a finite number) is understood; the UNet would refuse the rest mid-call."""
    if cross_attention_kwargs is not None and not isinstance(cross_attention_kwargs, dict):
        raise TypeError(f"cross_attention_kwargs must be a dict or None, got {type(cross_attention_kwargs).__name__}")
    unknown = sorted(map(str, set(cross_attention_kwargs or {}) - {"scale"}))
    if isinstance(cross_attention_kwargs, dict) and unknown:
        raise ValueError(f"cross_attention_kwargs keys {unknown} are not supported; allowed: 'scale' (LoRA scale)")
    if isinstance(cross_attention_kwargs, dict) and "scale" in cross_attention_kwargs:
        scale = cross_attention_kwargs["scale"]
        if not _is_number(scale):
            raise TypeError(f"cross_attention_kwargs['scale'] must be a number (the LoRA scale), got {scale!r}")
        check_finite_numbers(**{"cross_attention_kwargs['scale']": scale})
