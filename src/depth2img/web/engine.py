"""The loaded model and one generation run, with no gradio in sight (the handlers adapt it to the page).

A run makes its images one by one, exactly as ``depth2img generate`` does: image k of a run uses
``torch.Generator("cpu").manual_seed(seed + k)`` through the command line's own ``_one_image``, the depth map
is estimated once (and cached across runs, keyed by the image's content and size), and each PNG is written by
the command line's writer with the same ``parameters`` and ``depth2img`` records. The server runs one
generation at a time per model (gradio's queue sees to that), so the engine swaps the scheduler per run
without locks.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cli import generate as cli_generate
from ..cli.depthmaps import estimate_depth, resize_depth, write_depth_png16
from ..cli.errors import CliError
from ..cli.inputs import file_sha256
from ..cli.outputs import OutputNamer
from ..cli.settings import GENERATION_DEFAULTS, GenerateSettings, image_record
from ..utils.files import atomic_write_bytes
from .options import MAX_IMAGES_PER_RUN, MAX_OUTPUT_SIDE, MAX_STEPS, ServeOptions
from .uploads import checked_upload, output_size, read_depth_map, read_image

__all__ = ["DepthResult", "Engine", "GenerateRequest", "Progress", "RunStopped"]

MAX_SEED = 2**63 - 1
DEPTH_CACHE_ENTRIES = 16


@dataclass(frozen=True)
class GenerateRequest:
    """One press of Generate: the uploaded files (server-side upload paths) and every control's value."""

    image: str
    prompt: str
    negative_prompt: str = ""
    strength: float = GENERATION_DEFAULTS["strength"]
    steps: int = 25
    guidance_scale: float = GENERATION_DEFAULTS["guidance_scale"]
    sampler: str | None = None  # None or "": the model's own scheduler
    seed: int = -1  # -1: random
    num_images: int = 1
    clip_skip: int | None = None  # A1111's count: 1 = last layer
    long_side: int = 512
    depth_map: str | None = None  # an uploaded depth map instead of the estimate


@dataclass
class Progress:
    """Where a run is: ``done`` of ``total`` denoising steps, and the image being made."""

    done: int
    total: int
    image: int
    images: int
    started: float = field(default_factory=time.monotonic)

    def eta_seconds(self) -> float | None:
        """Seconds left at the pace so far (None before the first step)."""
        if self.done == 0:
            return None
        return (time.monotonic() - self.started) / self.done * (self.total - self.done)


@dataclass(frozen=True)
class DepthResult:
    """A depth estimate (or uploaded map) at the generation size, ready to preview and to download."""

    depth: torch.Tensor  # (1, h, w) as the pipeline takes it
    key: tuple[str, tuple[int, int]]


class RunStopped(Exception):
    """Raised from the step callback when the user pressed Stop; the run keeps the images it finished."""


class Engine:
    """One pipeline, loaded once, and what a run needs around it."""

    def __init__(self, pipe: Any, options: ServeOptions, model_label: str, precision: Any = None) -> None:
        self.pipe = pipe
        self.options = options
        self.model_label = model_label  # what the PNG records say the model was (as the CLI records it)
        # depth2img.precision.Precision: each model's dtype, recorded in the PNGs as generate records it
        self.precision_record = precision.record() if precision is not None else {}
        self._default_scheduler_config = dict(pipe.scheduler.config)
        self._default_scheduler_class = type(pipe.scheduler)
        self._depth_cache: OrderedDict[tuple[str, tuple[int, int]], torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()

    # ----- checks (cheap, before any model work) -------------------------------------------------------------

    def check(self, request: GenerateRequest) -> tuple[tuple[int, int], str | None]:
        """Every user mistake in ``request``, as one sentence; returns the output size and the sampler's name."""
        if not request.image:
            raise CliError("image: upload an image first (or paste one, or take one with the webcam)")
        if not request.prompt or not request.prompt.strip():
            raise CliError("prompt: type what the new image should show")
        _check_range("strength", request.strength, 0.0, 1.0, low_open=True)
        _check_range("steps", request.steps, 1, MAX_STEPS)
        _check_range("guidance scale", request.guidance_scale, 0.0, 50.0)
        _check_range("number of images", request.num_images, 1, MAX_IMAGES_PER_RUN)
        _check_range("size", request.long_side, 64, MAX_OUTPUT_SIDE)
        if request.clip_skip is not None:
            _check_range("clip skip", request.clip_skip, 1, 12)
        if request.seed != -1:
            _check_range("seed", request.seed, 0, MAX_SEED - request.num_images)
        sampler = None
        if request.sampler:
            sampler = _sampler_name(request.sampler)
        original = self.check_upload(request.image, "image")
        if request.depth_map:
            self.check_upload(request.depth_map, "depth map")
        return output_size(original, request.long_side), sampler

    def check_upload(self, path: str, what: str) -> tuple[int, int]:
        """An uploaded image's (width, height), after the byte, header and pixel checks."""
        return checked_upload(path, what, max_bytes=self.options.max_upload_bytes, max_pixels=self.options.max_pixels)

    # ----- depth ----------------------------------------------------------------------------------------------

    def depth_for(self, image_path: str, size: tuple[int, int], depth_map: str | None = None) -> DepthResult:
        """The depth the run will use: the uploaded map, or the estimate for this image at this size (cached)."""
        if depth_map:
            depth = torch.from_numpy(read_depth_map(depth_map))[None]
            return DepthResult(depth, (file_sha256(Path(depth_map)), size))
        key = (file_sha256(Path(image_path)), size)
        with self._cache_lock:
            cached = self._depth_cache.get(key)
            if cached is not None:
                self._depth_cache.move_to_end(key)
                return DepthResult(cached, key)
        depth = estimate_depth(self.pipe, read_image(image_path, size))
        with self._cache_lock:
            self._depth_cache[key] = depth
            while len(self._depth_cache) > DEPTH_CACHE_ENTRIES:
                self._depth_cache.popitem(last=False)
        return DepthResult(depth, key)

    def cached_depth_keys(self) -> list[tuple[str, tuple[int, int]]]:
        """The (image checksum, size) pairs whose depth estimate is cached, oldest first."""
        with self._cache_lock:
            return list(self._depth_cache)

    @staticmethod
    def write_depth_png16(result: DepthResult, size: tuple[int, int], path: Path) -> Path:
        """The depth map at ``size`` as a 16-bit grayscale PNG (white = near), written atomically."""
        write_depth_png16(path, resize_depth(result.depth, size))
        return path

    @staticmethod
    def depth_preview(result: DepthResult, size: tuple[int, int]) -> np.ndarray:
        """A viridis picture of the depth map (yellow = near) at ``size``, as uint8 RGB."""
        from ..cli.colormap import viridis
        from ..cli.depthmaps import normalized

        return viridis(normalized(resize_depth(result.depth, size)))

    # ----- a run ----------------------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerateRequest,
        folder: Path,
        *,
        stop: threading.Event,
        on_step: Callable[[Progress], None] = lambda progress: None,
    ) -> Iterator[tuple[Path, int]]:
        """Make the run's images one by one; yield each PNG (in ``folder``, and copied to ``--outdir``) and seed.

        ``stop`` is checked after every denoising step: once set, the image in progress is dropped and the run
        ends (raising ``RunStopped``) with the finished ones already yielded.
        """
        size, sampler_name = self.check(request)
        seed = request.seed if request.seed != -1 else secrets.randbelow(2**32)
        settings = self._settings(request, size, sampler_name, seed)
        self.pipe.scheduler = self._scheduler(sampler_name)
        label = cli_generate.sampler_label(self.pipe, sampler_name)
        depth = self.depth_for(request.image, size, request.depth_map)
        image = read_image(request.image, size)
        image_name = Path(request.image).name  # the upload's own name: no server path goes into the record
        image_sha = file_sha256(Path(request.image))
        depth_sha = file_sha256(Path(request.depth_map)) if request.depth_map else None
        namer = self._outdir_namer(request.num_images)
        steps_per_image = min(int(request.steps * request.strength), request.steps)
        progress = Progress(0, steps_per_image * request.num_images, 0, request.num_images)

        def after_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            progress.done += 1
            on_step(progress)
            if stop.is_set():
                raise RunStopped
            return {}

        for index in range(request.num_images):
            if stop.is_set():
                raise RunStopped
            progress.image = index
            image_seed = seed + index
            result = cli_generate._one_image(
                self.pipe, settings, image, depth.depth, request.prompt, image_seed, callback_on_step_end=after_step
            )
            record = image_record(
                settings, prompt=request.prompt, image=Path(image_name), seed=image_seed, image_sha256=image_sha,
                depth_map_sha256=depth_sha, size=list(result.size), **self.precision_record,
            )  # fmt: skip
            path = folder / f"{index:02d}-{image_seed}.png"
            cli_generate.save_image(path, result, record, label)
            if namer is not None:
                atomic_write_bytes(
                    namer.path_for(index, image_seed, Path(image_name), request.prompt), path.read_bytes()
                )
            yield path, image_seed

    def _settings(
        self, request: GenerateRequest, size: tuple[int, int], sampler: str | None, seed: int
    ) -> GenerateSettings:
        values = dict(GENERATION_DEFAULTS)
        values.update(
            model=self.model_label,
            negative_prompt=request.negative_prompt or "",
            depth_map=Path(request.depth_map).name if request.depth_map else None,
            strength=float(request.strength),
            steps=int(request.steps),
            guidance_scale=float(request.guidance_scale),
            scheduler=sampler,
            seed=seed,
            num_images=int(request.num_images),
            clip_skip=int(request.clip_skip) if request.clip_skip else None,
            width=size[0],
            height=size[1],
            device=str(self.pipe.device),
            dtype=str(self.pipe.dtype).removeprefix("torch."),
            depth_model=self.options.depth_model,
            depth_invert=self.options.depth_invert,
            depth_normalize=self.options.depth_normalize,
            vae=self.options.vae,
        )
        return GenerateSettings(prompts=[request.prompt], images=[Path(request.image).name], **values)

    def _scheduler(self, name: str | None) -> Any:
        """A fresh scheduler for this run: the named sampler, or the model's own, on the model's schedule."""
        if name:
            from ..schedulers.registry import get_scheduler

            return get_scheduler(name, self._default_scheduler_config)
        return self._default_scheduler_class.from_config(self._default_scheduler_config)

    def _outdir_namer(self, total: int) -> OutputNamer | None:
        if not self.options.outdir:
            return None
        namer = OutputNamer(self.options.outdir.rstrip("/") + "/", total)
        namer.prepare()  # numbers on from the highest file already there, like `generate -o DIR/`
        return namer


def _sampler_name(name: str) -> str:
    try:
        return cli_generate._check_scheduler(name)
    except CliError as error:
        raise CliError(str(error).replace("--scheduler", "sampler")) from None


def _check_range(what: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if value is None or not (low < value <= high if low_open else low <= value <= high):
        bracket = "(" if low_open else "["
        raise CliError(f"{what}: {value} is outside {bracket}{low:g}, {high:g}]")
