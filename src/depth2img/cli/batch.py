"""``depth2img batch``: many jobs (images, folders, globs, manifests, videos) into one folder, resumably.

It takes every generation flag of ``generate`` (the same argument definitions), plus how to find inputs and
how to run. Every input is checked by its header and planned before the model loads; bad inputs are recorded
in ``OUTDIR/batch.jsonl`` and skipped. Exit status: 0 when every job succeeded, 3 when the batch finished but
some jobs failed, and the command's usual 1, 2 and 130 otherwise. See docs/batch.md.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from . import argtypes
from .errors import EXIT_INTERRUPTED, EXIT_SOME_FAILED, CliError, warn
from .generate import add_generation_arguments, check_model_options, check_settings
from .settings import resolve_settings

__all__ = ["add_parser", "run"]

ENGINES = ("local", "ray")


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``batch``: its inputs, output folder and engine, and all of ``generate``'s generation flags."""
    parser = subparsers.add_parser(
        "batch",
        parents=parents,
        help="run many jobs (folders, globs, manifests, videos) into a folder; resumable",
        description="Generate for many inputs into one folder. Re-running the same command resumes: jobs whose "
        "output exists are skipped. Exit status 3 means some jobs failed (see OUTDIR/batch.jsonl).",
        epilog="Example: depth2img batch photos/ --recursive -p 'a watercolor painting' -o out/",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image, folder, glob ('shots/*.jpg'), manifest (.jsonl/.csv, one job per row) or video file",
    )  # fmt: skip
    what, output = add_generation_arguments(parser)
    what.add_argument("--recursive", action="store_true", help="take images and videos from sub-folders too")
    what.add_argument("--same-seed", action="store_true", help="videos: one seed for every frame (steadier)")
    output.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder or fsspec URL (s3://...)")
    output.add_argument("--overwrite", action="store_true", help="redo jobs whose output already exists")
    running = parser.add_argument_group("how to run")
    running.add_argument(
        "--batch-size", type=argtypes.int_at_least(1), default=1, metavar="N",
        help="images of one size per pipeline call (1); same images as one at a time",
    )  # fmt: skip
    running.add_argument(
        "--threads", type=argtypes.int_at_least(1), metavar="N",
        help="CPU threads of torch per worker (default: torch's own locally; the cores split between Ray actors)",
    )  # fmt: skip
    running.add_argument("--engine", choices=ENGINES, default="local", help="local (this process) or ray (Ray Data)")
    running.add_argument(
        "--workers", type=argtypes.int_at_least(1), default=1, metavar="N",
        help="--engine ray: actors, each with its own pipeline (one GPU each when there are GPUs)",
    )  # fmt: skip
    running.add_argument(
        "--ray-address", metavar="ADDR", help="--engine ray: join this cluster (e.g. auto, or ray://head:10001)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check and plan everything, then run the jobs; 0 if all succeeded, 3 if some failed."""
    from ..batch import BatchSummary, EngineOptions, RunConfig, execute, expand_inputs, open_store, plan_jobs
    from ..batch.manifest import MANIFEST_SUFFIXES
    from .inputs import announce_size_rounding

    if args.engine == "ray":
        from ..batch.engine_ray import import_ray

        import_ray()  # without Ray, one sentence on how to install it, before anything else
    elif args.workers != 1 or args.ray_address:
        raise CliError("--workers and --ray-address go with --engine ray")
    args.images = list(args.inputs)
    if args.prompts is None and not args.from_png:
        args.prompts = []  # prompts may come from a manifest; plan_jobs reports inputs that have none
    settings = resolve_settings(args)
    if not settings.prompts and not any(text.lower().endswith(MANIFEST_SUFFIXES) for text in args.inputs):
        raise CliError("batch needs a prompt: -p/--prompt TEXT (or a prompt column in a .jsonl/.csv manifest)")
    components = check_settings(settings)
    if components.depth_normalize == "batch":  # one range over the batch would tie each image to its neighbours
        raise CliError(
            "--depth-normalize batch is not available in depth2img batch (each job is made on its own, so its "
            "image does not depend on the others); use image, or generate for one shared range"
        )
    announce_size_rounding(settings.width, settings.height)
    settings.seed = _base_seed(args, settings)
    requested_device = settings.device
    source, _, precision = check_model_options(settings, args)
    if args.engine == "ray" and requested_device == "auto":
        settings.device = "auto"  # each actor picks its own (a GPU where its node has one)
    store = open_store(args.output)
    local_root = None if "://" in store.root else Path(store.root)
    config = RunConfig(
        settings, source, store.root, args.batch_size, args.save_depth, args.offline, args.low_memory, args.threads,
        components, args.max_pixels, precision,
    )  # fmt: skip
    engine = EngineOptions(args.engine, args.workers, args.ray_address)
    summary = BatchSummary()
    try:
        with store.lock():  # from before planning: planning extracts video frames into OUTDIR
            rows = expand_inputs(args.inputs, args.recursive, local_root)
            plan = plan_jobs(rows, settings, args.same_seed, store, max_pixels=args.max_pixels)
            if not plan.jobs and not plan.failures:
                raise CliError("batch: the inputs hold nothing to do")
            execute(plan, config, store, engine, args.overwrite, args.quiet, summary)
    except KeyboardInterrupt:
        print(f"depth2img: {summary.report()}", file=sys.stderr)
        message = "interrupted; no file was left half-written, run the same command to go on"
        raise CliError(message, EXIT_INTERRUPTED) from None
    print(f"depth2img: {summary.report()}", file=sys.stderr)
    return EXIT_SOME_FAILED if summary.failed else 0


def _base_seed(args: argparse.Namespace, settings: Any) -> int:
    """Batches default to seed 0, not a random one, so that re-running the command resumes it."""
    seed = settings.seed
    if args.seed is None and "seed" not in settings.from_record:
        return 0
    if seed < 0:
        seed = secrets.randbelow(2**32)
        warn(f"random seed {seed}: pass --seed {seed} to resume this batch")
    return seed
