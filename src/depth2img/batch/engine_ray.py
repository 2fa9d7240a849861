"""The Ray Data engine (``--engine ray``, extra ``[ray]``): the same jobs as a Ray Dataset.

Jobs go in as rows (their JSON) in the order the local engine runs them (grouped by batch key), so consecutive
rows share batch keys; ``map_batches`` runs them through ``RayJobRunner``, a callable class, so each actor loads
the pipeline once and keeps it (and its prompt and depth caches) for all its batches. Actors write images to OUTDIR
themselves; the driver gets one record per job back and keeps the journal, so the journal, ids and names are
the local engine's and either engine resumes the other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from ..cli.errors import EXIT_FAILURE, CliError
from .jobs import Job, group_jobs
from .runner import JobRunner, RunConfig

__all__ = ["RayJobRunner", "import_ray", "run_ray"]

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'depth2img[ray]' (or: pip install 'ray[data]')"


def import_ray() -> Any:
    """``ray`` with Ray Data, or the one sentence that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra has no ray.data dependencies)
    except ImportError:
        raise CliError(INSTALL_HINT) from None
    return ray


class RayJobRunner:
    """A Ray Data actor: the pipeline, loaded once per actor, making a batch of job rows into record rows."""

    def __init__(self, config: RunConfig) -> None:
        self.runner = JobRunner(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        records = self.runner.run([Job.from_json(str(text)) for text in batch["job"]])
        return {"record": np.array([json.dumps(record, ensure_ascii=False) for record in records], dtype=object)}


def run_ray(
    jobs: list[Job], config: RunConfig, workers: int, address: str | None, quiet: bool
) -> Iterator[dict[str, Any]]:
    """Run ``jobs`` on ``workers`` actors of a local Ray (started here) or the cluster at ``address``; yield one
    record per job as batches finish."""
    import json

    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=not quiet)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=not quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise CliError(f"--ray-address: cannot start or join {where} ({error})", EXIT_FAILURE) from None
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the batch shows its own bar, over jobs
        gpus = ray.cluster_resources().get("GPU", 0)
        cpus = ray.cluster_resources().get("CPU", 1)
        # CPU actors share the machine: split its cores between them rather than oversubscribe every core
        threads = config.threads or (None if gpus else max(1, int(cpus) // workers))
        options: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": min(threads, cpus)}
        # rows in pipeline-call order, so that each of Ray's batches holds jobs of one batch key where it can
        ordered = [job for group in group_jobs(jobs, config.batch_size) for job in group]
        dataset = ray.data.from_items([{"job": job.to_json()} for job in ordered])
        results = dataset.map_batches(
            RayJobRunner,
            fn_constructor_kwargs={"config": replace(config, threads=threads)},
            batch_size=max(1, config.batch_size),
            concurrency=workers,
            batch_format="numpy",
            **options,
        )
        for row in results.iter_rows():
            yield json.loads(row["record"])
    finally:
        if started_here:
            ray.shutdown()
