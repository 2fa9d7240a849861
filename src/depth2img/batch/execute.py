"""Running a planned batch: skip what exists, run the rest on an engine, journal every result, assemble videos.

Resuming needs no state of its own: a job whose output file exists is done (files appear atomically), so a
re-run, by either engine, does exactly the jobs that are missing; ``overwrite`` redoes them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .journal import JOURNAL_NAME, Journal
from .plan import BatchPlan, VideoJob
from .progress import JobProgress
from .runner import RunConfig
from .store import Store

__all__ = ["BatchSummary", "EngineOptions", "execute"]


@dataclass
class EngineOptions:
    name: str = "local"  # "local" or "ray"
    workers: int = 1
    ray_address: str | None = None


@dataclass
class BatchSummary:
    """Counts of this run, and the failures (input, error) for the closing report."""

    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    videos: int = 0
    journal: str = ""

    @property
    def failed(self) -> int:
        return len(self.failures)

    def report(self) -> str:
        text = f"batch: {self.done} done, {self.skipped} skipped (already made), {self.failed} failed"
        if self.videos:
            text += f", {self.videos} video(s) written"
        lines = [f"{text}; journal: {self.journal}"]
        lines += [f"  failed: {label}: {error}" for label, error in self.failures[:10]]
        if self.failed > 10:
            lines.append(f"  ... and {self.failed - 10} more failures in the journal")
        return "\n".join(lines)


def execute(
    plan: BatchPlan,
    config: RunConfig,
    store: Store,
    engine: EngineOptions,
    overwrite: bool,
    quiet: bool,
    summary: BatchSummary,
) -> BatchSummary:
    """Run ``plan`` into ``store`` (whose ``lock()`` the caller holds, from before planning); ``summary`` is filled
    in as results arrive, so an interrupt can still report it."""
    store.remove_stale_temps([*plan.written_names(), JOURNAL_NAME])
    journal = Journal(store)
    summary.journal = journal.location
    try:
        for failure in plan.failures:
            journal.append({"id": failure.id, "status": "failed", "input": failure.label, "error": failure.error})
            summary.failures.append((failure.label, failure.error))
        todo = [job for job in plan.jobs if overwrite or not store.exists(job.name)]
        summary.skipped = len(plan.jobs) - len(todo)
        redone = {job.video for job in todo if job.video}
        if todo:
            _run_jobs(todo, config, engine, journal, quiet, summary)
        for video in plan.videos:
            if overwrite or video.name in redone or not store.exists(video.name):
                _assemble(video, store, journal, summary)
    finally:
        journal.close()
    return summary


def _run_jobs(
    todo: list, config: RunConfig, engine: EngineOptions, journal: Journal, quiet: bool, summary: BatchSummary
) -> None:
    progress = JobProgress(len(todo), quiet)
    try:
        for record in _records(todo, config, engine, quiet):
            journal.append(record)
            if record["status"] == "done":
                summary.done += 1
            else:
                summary.failures.append((record["input"], record["error"]))
            progress.advance(record)
    finally:
        progress.close()


def _records(todo: list, config: RunConfig, engine: EngineOptions, quiet: bool) -> Any:
    if engine.name == "ray":
        from .engine_ray import run_ray

        return run_ray(todo, config, engine.workers, engine.ray_address, quiet)
    from .engine_local import run_local

    return run_local(todo, config)


def _assemble(video: VideoJob, store: Store, journal: Journal, summary: BatchSummary) -> None:
    """Encode a video from its frames once every frame exists; otherwise record why not."""
    from .video import encode_video

    missing = [name for name in video.frames if not store.exists(name)]
    record: dict[str, Any] = {"id": video.id, "name": video.name, "input": video.label, "frames": len(video.frames)}
    started = time.perf_counter()
    if missing:
        error = f"{len(missing)} of {len(video.frames)} frames failed, so the video was not encoded"
        journal.append({**record, "status": "failed", "error": error})
        summary.failures.append((video.label, error))
        return
    try:
        with store.output_file(video.name) as path:
            codec = encode_video(
                Path(video.source), len(video.frames), lambda i: store.read_bytes(video.frames[i]), path
            )
    except (OSError, ValueError) as error:
        journal.append({**record, "status": "failed", "error": str(error)})
        summary.failures.append((video.label, str(error)))
        return
    journal.append({**record, "status": "done", "codec": codec, "seconds": round(time.perf_counter() - started, 3)})
    summary.videos += 1
