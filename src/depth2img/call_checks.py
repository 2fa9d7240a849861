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
from .images import LATENT_CHANNELS, OUTPUT_TYPES, ImageBatch, describe_images
from .text import check_clip_skip, negative_texts, prompt_batch_size

__all__ = ["CALLBACK_TENSOR_INPUTS", "CallArguments", "CallPlan", "check_call"]

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


def check_call(pipe: Any, args: CallArguments) -> CallPlan:
    """Check every argument of ``pipe(...)``, raising one clear error before any model runs; returns what was
    derived on the way (batch sizes, the described images, the user's depth maps, the latent size)."""
    _check_strength_and_steps(pipe, args.strength, args.num_inference_steps)
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

    images = describe_images(args.image)
    depth = _check_images_and_depth(pipe, images, args.depth_map, batch_size, total)
    _check_generators(args.generator, total, batch_size, args.num_images_per_prompt)

    if images.is_latents:
        latent_size = (images.height, images.width)
    else:
        factor = pipe.vae_scale_factor
        latent_size = (images.height // factor, images.width // factor)
    return CallPlan(batch_size, total, images, depth, latent_size, callback_steps)


def _check_strength_and_steps(pipe: Any, strength: Any, num_inference_steps: Any) -> None:
    if not _is_number(strength) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0.0, 1.0], got {strength!r}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
    train_steps = getattr(getattr(pipe.scheduler, "config", None), "num_train_timesteps", None)
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


def _check_cross_attention_kwargs(cross_attention_kwargs: Any) -> None:
    if cross_attention_kwargs is not None and not isinstance(cross_attention_kwargs, dict):
        raise TypeError(f"cross_attention_kwargs must be a dict or None, got {type(cross_attention_kwargs).__name__}")


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
