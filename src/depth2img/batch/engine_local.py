"""The local engine: one ``JobRunner`` in this process; results come back job group by job group."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .jobs import Job
from .runner import JobRunner, RunConfig

__all__ = ["run_local"]


def run_local(jobs: list[Job], config: RunConfig) -> Iterator[dict[str, Any]]:
    """Load the pipeline once, then yield one record per job as each pipeline call finishes."""
    runner = JobRunner(config)
    for group in runner.groups(jobs):
        yield from runner.run(group)
