"""A batch job: one output image from one input image and one set of parameters, with a deterministic id and name.

The id is a SHA-256 over the input's content (not its path), the depth map's content, every generation
parameter and the run's model settings, so the same work always gets the same id and output name, whichever
engine, machine or invocation produces it. That is what makes a batch resumable by construction: a job whose
output file exists is done (outputs are written atomically, so a file that exists is complete).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

__all__ = ["JOB_PARAMETERS", "Failure", "Job", "batch_key", "group_jobs", "job_id", "output_stem"]

# The parameters a manifest row may override, named as in GenerateSettings (a manifest's short names are mapped
# onto these by manifest.py).
JOB_PARAMETERS = (
    "prompt",
    "negative_prompt",
    "seed",
    "strength",
    "steps",
    "guidance_scale",
    "scheduler",
    "eta",
    "clip_skip",
    "width",
    "height",
    "depth_map",
)
ID_LENGTH = 10  # hex digits of the id in file names: 40 bits, no collision in any plausible batch


@dataclass
class Job:
    """One image to generate. ``image`` is where the worker reads the input (a path, or a URL for frames kept in
    an fsspec OUTDIR); ``label`` is the input as the user named it; ``name`` is the output, relative to OUTDIR."""

    id: str
    name: str
    image: str
    label: str
    image_sha256: str
    params: dict[str, Any]
    size: tuple[int, int]  # (width, height) of the output image: jobs of one size can share a UNet batch
    depth_map_sha256: str | None = None
    video: str | None = None  # the output video this job is a frame of
    frame: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Job:
        values = json.loads(text)
        values["size"] = tuple(values["size"])
        return cls(**values)


@dataclass
class Failure:
    """An input that could not become a job (unreadable, corrupt, too large, a bad manifest row)."""

    label: str
    error: str
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            self.id = hashlib.sha256(f"{self.label}\0{self.error}".encode()).hexdigest()


def job_id(image_sha256: str, depth_map_sha256: str | None, params: dict[str, Any], run: dict[str, Any]) -> str:
    """SHA-256 hex of the content hashes, the job's parameters (not the depth map's path) and the run's model
    settings (model, adapters, dtype), in a canonical JSON form."""
    described = {key: value for key, value in params.items() if key != "depth_map"}
    payload = {"image": image_sha256, "depth_map": depth_map_sha256, "params": described, "run": run}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')


def output_stem(label: str) -> str:
    """The input's file stem, kept readable (unicode included) but safe as one file-name part on any system."""
    stem = PurePosixPath(label.replace("\\", "/")).stem
    return _UNSAFE.sub("_", stem).strip(" .") or "image"


def batch_key(job: Job) -> tuple:
    """Jobs with equal keys can go through the pipeline in one call: same output size, the same user depth map
    (or none: estimated maps of one image size have one size) and the same scalar sampling parameters (prompts,
    negative prompts and seeds may differ: they are per image)."""
    p = job.params
    return (
        job.size,
        p["depth_map"] or "",
        p["strength"],
        p["steps"],
        p["guidance_scale"],
        p["scheduler"] or "",
        p["eta"],
    )


def group_jobs(jobs: list[Job], size: int) -> Iterator[list[Job]]:
    """``jobs`` as pipeline calls: equal batch keys together (keys in first-seen order), ``size`` jobs at most."""
    by_key: dict[tuple, list[Job]] = {}
    for job in jobs:
        by_key.setdefault(batch_key(job), []).append(job)
    for members in by_key.values():
        for start in range(0, len(members), max(1, size)):
            yield members[start : start + max(1, size)]
