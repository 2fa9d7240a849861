"""Rows to jobs: check each input by its header (before any model loads), hash its content, apply the row's
parameters over the command line's, and give each job its seed, id and output name.

Seeds: job k of an input (k counts prompts, then ``-n`` copies) uses ``seed + k``, the seed being the row's or
the command line's. A video's frame f adds f, so each frame has its own noise, unless ``--same-seed`` gives all
frames of a video one seed (steadier from frame to frame).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..cli.component_options import COMPONENT_DEFAULTS
from ..cli.errors import CliError
from ..cli.inputs import check_image, file_sha256, load_depth_map, target_size
from ..cli.settings import GenerateSettings
from ..images import check_pixel_count
from .jobs import ID_LENGTH, Failure, Job, job_id, output_stem
from .manifest import Row
from .sources import is_video
from .store import Store
from .video import FRAMES_MARKER, extract_frames, frame_name, output_suffix, probe_video

__all__ = ["BatchPlan", "VideoJob", "plan_jobs", "run_fingerprint"]

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height
FRAMES_FOLDER = ".frames"


@dataclass
class VideoJob:
    """A video to re-encode from its generated frames once they all exist."""

    id: str
    name: str
    source: str
    label: str
    frames: list[str]  # output names of the generated frames, in order


@dataclass
class BatchPlan:
    jobs: list[Job] = field(default_factory=list)
    videos: list[VideoJob] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    cached_inputs: list[str] = field(default_factory=list)  # video frames extracted into OUTDIR/.frames

    def written_names(self) -> list[str]:
        """Every file of OUTDIR this batch may write (for cleaning up temporary files of killed runs)."""
        names = [job.name for job in self.jobs] + [job.name[:-4] + "-depth.png" for job in self.jobs]
        return names + [video.name for video in self.videos] + self.cached_inputs


def run_fingerprint(settings: GenerateSettings) -> dict[str, Any]:
    """The run-wide settings that change pixels and so belong in every job id."""
    fingerprint = {
        "model": settings.model,
        "loras": [list(item) for item in settings.loras],
        "embeddings": [list(item) for item in settings.embeddings],
        "dtype": settings.dtype,
    }
    # The component flags: only when changed from their defaults, so that the ids of plain runs stay as they were.
    for name, default in COMPONENT_DEFAULTS.items():
        value = getattr(settings, name)
        if value is not None and value != default:
            fingerprint[name] = value
    return fingerprint


def plan_jobs(
    rows: list[Row | Failure], settings: GenerateSettings, same_seed: bool, store: Store, max_pixels: int | None = None
) -> BatchPlan:
    """Jobs for every row; rows that cannot be used become failures. Jobs with equal ids are kept once.
    ``max_pixels`` (``--max-pixels``; None: depth2img.images.MAX_PIXELS) bounds input images and depth maps."""
    plan = BatchPlan()
    run = run_fingerprint(settings)
    seen: set[str] = set()
    for row in rows:
        if isinstance(row, Failure):
            plan.failures.append(row)
            continue
        try:
            if is_video(row.image):
                _plan_video(plan, row, settings, same_seed, store, run, max_pixels)
            else:
                for job in _image_jobs(row, settings, run, max_pixels):
                    if job.id not in seen:
                        seen.add(job.id)
                        plan.jobs.append(job)
        except (CliError, ValueError, OSError) as error:
            plan.failures.append(Failure(row.label, str(error)))
        except Exception as error:  # e.g. PIL's DecompressionBombError: still this input's problem only
            plan.failures.append(Failure(row.label, f"{type(error).__name__}: {error}"))
    return plan


def _variants(row: Row, settings: GenerateSettings) -> list[dict[str, Any]]:
    """The parameters of each job of ``row``: one per prompt and ``-n`` copy, seeds counted from the base seed."""
    prompts = [row.overrides["prompt"]] if "prompt" in row.overrides else list(settings.prompts)
    if not prompts:
        raise ValueError("no prompt: give -p/--prompt, or a prompt column in the manifest")
    base = {
        "negative_prompt": settings.negative_prompt,
        "seed": settings.seed,
        "strength": settings.strength,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "scheduler": settings.scheduler,
        "eta": settings.eta,
        "clip_skip": settings.clip_skip,
        "width": settings.width,
        "height": settings.height,
        "depth_map": settings.depth_map,
    }
    base.update({key: value for key, value in row.overrides.items() if key != "prompt"})
    if base["depth_map"] is not None:
        base["depth_map"] = str(Path(base["depth_map"]).expanduser().resolve())
    variants = []
    for prompt in prompts:
        for _ in range(settings.num_images):
            variants.append({**base, "prompt": prompt, "seed": base["seed"] + len(variants)})
    return variants


def _output_size(size: tuple[int, int], params: dict[str, Any]) -> tuple[int, int]:
    """What the pipeline will make: the --width/--height size, or the image's, down to a multiple of 8."""
    width, height = target_size(size, params["width"], params["height"]) or size
    return width - width % 8, height - height % 8


def _upright_size(path: Path, max_pixels: int | None) -> tuple[int, int]:
    """The header's size, checked (exists, an image, at least 8x8, at most ``max_pixels``), with EXIF rotation
    applied."""
    width, height = check_image(path, flag="input", max_pixels=max_pixels)
    with Image.open(path) as image:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def _depth_sha(params: dict[str, Any], cache: dict[str, str], max_pixels: int | None) -> str | None:
    path = params["depth_map"]
    if path is None:
        return None
    if path not in cache:
        load_depth_map(Path(path), max_pixels=max_pixels)  # reads and checks it now, before the model loads
        cache[path] = file_sha256(Path(path))
    return cache[path]


def _image_jobs(row: Row, settings: GenerateSettings, run: dict[str, Any], max_pixels: int | None) -> list[Job]:
    size = _upright_size(row.image, max_pixels)
    sha = file_sha256(row.image)
    variants = _variants(row, settings)
    depth_shas: dict[str, str] = {}
    jobs = []
    for k, params in enumerate(variants):
        depth_sha = _depth_sha(params, depth_shas, max_pixels)
        identity = job_id(sha, depth_sha, params, run)
        if row.name is None:
            name = f"{output_stem(row.image.name)}-{params['seed']}-{identity[:ID_LENGTH]}.png"
        else:
            name = row.name if len(variants) == 1 else f"{row.name[:-4]}-{k}.png"
        jobs.append(
            Job(identity, name, str(row.image.resolve()), row.label, sha, params, _output_size(size, params), depth_sha)
        )
    return jobs


def _plan_video(
    plan: BatchPlan,
    row: Row,
    settings: GenerateSettings,
    same_seed: bool,
    store: Store,
    run: dict[str, Any],
    max_pixels: int | None,
) -> None:
    info = probe_video(row.image)
    check_pixel_count(info.width, info.height, f"input: {row.image} (its frames)", max_pixels)  # before extracting
    sha = file_sha256(row.image)
    folder = f"{FRAMES_FOLDER}/{output_stem(row.image.name)}-{sha[:ID_LENGTH]}"
    count = extract_frames(row.image, store, folder)
    plan.cached_inputs += [frame_name(folder, index) for index in range(count)] + [f"{folder}/{FRAMES_MARKER}"]
    depth_shas: dict[str, str] = {}
    for params in _variants(row, settings):
        size = _output_size((info.width, info.height), params)
        depth_sha = _depth_sha(params, depth_shas, max_pixels)
        video_id = hashlib.sha256(
            json.dumps([job_id(sha, depth_sha, params, run), same_seed], sort_keys=True).encode()
        ).hexdigest()
        stem = f"{output_stem(row.image.name)}-{params['seed']}-{video_id[:ID_LENGTH]}"
        video_name = f"{stem}{output_suffix(row.image)}"
        frames = []
        for index in range(count):
            frame_params = dict(params, seed=params["seed"] + (0 if same_seed else index))
            frame_sha = f"{sha}:{index}"  # the frame's content is fixed by the video's and its position
            identity = job_id(frame_sha, depth_sha, frame_params, run)
            name = f"{stem}/{index:06d}.png"
            label = f"{row.label} frame {index}"
            image = store.location(frame_name(folder, index))
            job = Job(identity, name, image, label, frame_sha, frame_params, size, depth_sha, video_name, index)
            plan.jobs.append(job)
            frames.append(name)
        plan.videos.append(VideoJob(video_id, video_name, str(row.image.resolve()), row.label, frames))
