"""``JobRunner``: the pipeline loaded once, and jobs turned into written images; used by both engines (in the
local process, or once per Ray actor).

Nothing is computed twice: each distinct prompt (and negative prompt) is encoded once and its embeddings reused,
each input image's depth is estimated once (for all its prompts, seeds and copies), and jobs of one size and
sampling setup go through the pipeline ``batch_size`` at a time. Each image has its own
``torch.Generator(seed)``, and the pipeline draws image i's noise from generator i alone, so an image does not
depend on what it was batched with (see docs/batch.md for how exact that is).
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli.component_options import ComponentChoice
from ..cli.pipeline_setup import ModelSource
from ..cli.settings import GenerateSettings
from .jobs import Job, group_jobs
from .store import open_store

__all__ = ["JobRunner", "RunConfig", "failed_record", "job_record"]

_DEPTH_CACHE_SIZE = 32  # input images whose depth is kept (an image's jobs are planned next to each other)


@dataclass
class RunConfig:
    """Everything a runner needs, picklable (Ray sends it to each actor)."""

    settings: GenerateSettings
    source: ModelSource
    outdir: str
    batch_size: int = 1
    save_depth: bool = False
    offline: bool = False
    low_memory: bool = False
    threads: int | None = None  # torch threads for this runner (None: leave torch's default)
    components: ComponentChoice = dataclasses.field(default_factory=ComponentChoice)  # --depth-model, --vae, ...
    max_pixels: int | None = None  # --max-pixels (None: depth2img.images.MAX_PIXELS)
    precision: Any = None  # depth2img.precision.Precision from --precision (None: settings.dtype for every model)


def job_record(job: Job, status: str, seconds: float, error: str | None = None) -> dict[str, Any]:
    """The journal line of a job."""
    record = {"id": job.id, "status": status, "name": job.name, "input": job.label, "seconds": round(seconds, 3)}
    record.update(error=error, params=job.params)
    if job.video is not None:
        record.update(video=job.video, frame=job.frame)
    return record


def failed_record(job: Job, error: BaseException, seconds: float) -> dict[str, Any]:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return job_record(job, "failed", seconds, f"{type(error).__name__}: {message}")


class JobRunner:
    """Loads the pipeline on construction; ``run(jobs)`` makes and writes their images, one record per job."""

    def __init__(self, config: RunConfig) -> None:
        import torch

        from ..cli.component_options import apply_component_options, load_components
        from ..cli.devices import resolve_device
        from ..cli.pipeline_setup import apply_options
        from ..cli.precision import load_pipeline_in, loading_dtype, resolve_precision

        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        settings = config.settings
        self.device = resolve_device(settings.device)
        # the driver's --precision (the same per-model dtypes as generate), else the recorded dtype for all models
        precision = config.precision or resolve_precision(settings.dtype, None, self.device)
        pipe = load_pipeline_in(
            config.source,
            precision,
            offline=config.offline,
            quiet=True,
            low_memory=config.low_memory,
            components=load_components(config.components, dtype=loading_dtype(precision), offline=config.offline),
        )
        apply_component_options(pipe, config.components)
        self.pipe = pipe.to(self.device)
        apply_options(
            self.pipe,
            scheduler=settings.scheduler,
            attention_slicing=settings.attention_slicing,
            vae_tiling=settings.vae_tiling,
            loras=settings.loras,
            embeddings=settings.embeddings,
        )
        self.pipe.set_progress_bar_config(disable=True)  # the batch has one bar, over jobs
        self.store = open_store(config.outdir)
        self._default_scheduler = self.pipe.scheduler
        self._schedulers: dict[str, Any] = {}
        self._embeddings: dict[tuple[str, int | None], Any] = {}
        self._depths: OrderedDict[tuple, Any] = OrderedDict()
        self.prompt_encodings = 0  # how many texts went through the text encoder (each distinct one once)
        self.depth_estimates = 0  # how many depth maps the estimator made (one per input image and size)

    def run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Make every job's image; a job that fails is recorded as failed and the others go on."""
        records = []
        for group in self.groups(jobs):
            records.extend(self._run_group(group))
        return records

    def groups(self, jobs: list[Job]) -> Iterator[list[Job]]:
        """``jobs`` in pipeline calls: equal batch keys together (in first-seen order), ``batch_size`` at most."""
        return group_jobs(jobs, self.config.batch_size)

    def _run_group(self, jobs: list[Job]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        try:
            images, depths = self._generate(jobs)
            for job, image, depth in zip(jobs, images, depths):
                self._write(job, image, depth)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:
            if len(jobs) > 1:  # find the culprit: the others still get made
                return [record for job in jobs for record in self._run_group([job])]
            return [failed_record(jobs[0], error, time.perf_counter() - started)]
        seconds = (time.perf_counter() - started) / len(jobs)
        return [job_record(job, "done", seconds) for job in jobs]

    # ------------------------------------------------------------------ one pipeline call
    def _generate(self, jobs: list[Job]) -> tuple[list[Any], list[Any]]:
        """One pipeline call for ``jobs`` (equal batch keys): their images, and the depth maps they used."""
        import torch

        first = jobs[0].params
        images = [self._load_image(job) for job in jobs]
        self.pipe.scheduler = self._scheduler(first["scheduler"])
        guided = first["guidance_scale"] > 1
        prompt_embeds = torch.cat([self._embed(job.params["prompt"], _clip_skip(job.params)) for job in jobs])
        negative = None
        if guided:
            negative = torch.cat([self._embed(job.params["negative_prompt"] or "", None) for job in jobs])
        depths = [self._depth(job, image) for job, image in zip(jobs, images)]
        output = self.pipe(
            image=images,
            depth_map=torch.cat(depths),
            strength=first["strength"],
            num_inference_steps=first["steps"],
            guidance_scale=first["guidance_scale"],
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative,
            eta=first["eta"],
            generator=[torch.Generator("cpu").manual_seed(job.params["seed"]) for job in jobs],  # same on any device
            output_type="pil",
        )
        return output.images, depths

    def _load_image(self, job: Job) -> Any:
        from ..cli.inputs import load_rgb

        width, height = job.params["width"], job.params["height"]
        if "://" in job.image:  # a cached video frame in an fsspec OUTDIR
            import fsspec

            with fsspec.open(job.image, "rb") as handle:
                return load_rgb(io.BytesIO(handle.read()), width, height)
        return load_rgb(Path(job.image), width, height)

    def _scheduler(self, name: str | None) -> Any:
        if not name:
            return self._default_scheduler
        if name not in self._schedulers:
            from ..schedulers.registry import get_scheduler

            self._schedulers[name] = get_scheduler(name, self._default_scheduler.config)
        return self._schedulers[name]

    def _embed(self, text: str, clip_skip: int | None) -> Any:
        """The text encoder's embeddings of ``text`` (1, tokens, width), computed once per text and clip skip."""
        key = (text, clip_skip)
        if key not in self._embeddings:
            embeds, _ = self.pipe.encode_prompt(text, self.pipe.device, 1, False, clip_skip=clip_skip)
            self._embeddings[key] = embeds
            self.prompt_encodings += 1
        return self._embeddings[key]

    def _depth(self, job: Job, image: Any) -> Any:
        """(1, h, w) depth for the job: its depth map file, or the estimate for its image (made once per image)."""
        import torch

        from ..cli.depthmaps import estimate_depth
        from ..cli.inputs import load_depth_map

        path = job.params["depth_map"]
        key = ("file", path) if path else ("estimate", job.image_sha256, image.size)
        if key in self._depths:
            self._depths.move_to_end(key)
            return self._depths[key]
        if path:
            depth = torch.from_numpy(load_depth_map(Path(path), max_pixels=self.config.max_pixels))[None]
        else:
            depth = estimate_depth(self.pipe, image)
            self.depth_estimates += 1
        self._depths[key] = depth
        if len(self._depths) > _DEPTH_CACHE_SIZE:
            self._depths.popitem(last=False)
        return depth

    # ------------------------------------------------------------------ writing
    def _write(self, job: Job, image: Any, depth: Any) -> None:
        """The PNG with the same parameter chunks as ``generate`` writes, plus the job id; atomically."""
        from ..cli.depthmaps import resize_depth, write_depth_png16
        from ..cli.generate import sampler_label, save_image
        from ..cli.settings import image_record

        params = job.params
        settings = dataclasses.replace(
            self.config.settings, **{key: value for key, value in params.items() if key != "prompt"}
        )
        record = image_record(
            settings,
            prompt=params["prompt"],
            image=job.image,
            seed=params["seed"],
            image_sha256=job.image_sha256,
            depth_map_sha256=job.depth_map_sha256,
            size=list(image.size),
            batch_job=job.id,
        )
        with self.store.output_file(job.name) as path:
            save_image(path, image, record, sampler_label(self.pipe, params["scheduler"]))
        if self.config.save_depth:
            with self.store.output_file(job.name[:-4] + "-depth.png") as path:
                write_depth_png16(path, resize_depth(depth, image.size))


def _clip_skip(params: dict[str, Any]) -> int | None:
    """A1111 counts clip skip from 1 (= the last layer); the pipeline counts the layers skipped."""
    clip_skip = params["clip_skip"]
    return clip_skip - 1 if clip_skip and clip_skip > 1 else None
