"""Batch jobs for ``depth2img batch``: many inputs, resumable, on this machine or on a Ray cluster.

- ``sources`` / ``manifest`` / ``video``: from ``INPUT...`` to rows (images, folders, globs, manifest rows,
  video frames);
- ``plan`` / ``jobs``: rows to jobs with deterministic ids and output names, checked before any model loads;
- ``runner``: the pipeline loaded once, jobs made into written images (prompt and depth caches, batching);
- ``engine_local`` / ``engine_ray``: where the runner runs; ``execute``: skip, run, journal, assemble videos;
- ``store`` / ``journal``: OUTDIR (a folder or an fsspec URL) and ``OUTDIR/batch.jsonl``.
"""

from .execute import BatchSummary, EngineOptions, execute
from .jobs import Failure, Job
from .journal import JOURNAL_NAME, read_journal
from .plan import BatchPlan, plan_jobs
from .runner import JobRunner, RunConfig
from .sources import expand_inputs
from .store import open_store

__all__ = [
    "JOURNAL_NAME",
    "BatchPlan",
    "BatchSummary",
    "EngineOptions",
    "Failure",
    "Job",
    "JobRunner",
    "RunConfig",
    "execute",
    "expand_inputs",
    "open_store",
    "plan_jobs",
    "read_journal",
]
