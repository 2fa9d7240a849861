"""One side's cold start in a fresh process: import, load the pipeline, generate one image; report peak memory.

    python -m benchmarks.child --side ours --folder DIR --size 256 --steps 5 [--variant low_memory]

A fresh process per measurement means the peak RSS belongs to this job alone (``ru_maxrss`` never goes down), and
the time to first image includes the interpreter start and the imports, as a user running a script would see it.
The pipeline folder is expected in the page cache (warm): the harness has just read it. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# Taken before anything heavy is imported: the parent passes the wall-clock time it started us at.
_STARTED = time.time()


def measure(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from benchmarks.memory import memory_status, peak_rss_gib
    from benchmarks.sides import OURS, load_pipeline, quiet_libraries, running

    quiet_libraries()
    if args.side == OURS:
        import depth2img  # noqa: F401  (counted in the import time, as in a user's script)
    else:
        import diffusers  # noqa: F401
    imported = time.time()
    dtype = getattr(torch, args.dtype)
    pipe = load_pipeline(args.side, args.folder, args.variant, device=args.device, dtype=dtype)
    loaded = time.time()
    after_load = memory_status()

    from benchmarks.cases import full_pipeline, make_inputs

    inputs = make_inputs(args.folder, args.size, args.steps, args.strength, device=args.device, dtype=dtype)
    with running(args.side, args.variant):
        images = full_pipeline(pipe, args.side, inputs)()
    done = time.time()
    if args.save:
        np.save(args.save, np.asarray(images, dtype=np.float32))
    result = {
        "side": args.side,
        "variant": args.variant,
        "size": args.size,
        "steps": args.steps,
        "spawn_to_python_s": _STARTED - args.spawned_at if args.spawned_at else None,
        "import_s": imported - _STARTED,
        "load_s": loaded - imported,
        "generate_s": done - loaded,
        "first_image_s": done - (args.spawned_at or _STARTED),
        "peak_rss_gib": peak_rss_gib(),
        "after_load": after_load,
        "at_end": memory_status(),
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", required=True, choices=("ours", "reference"))
    parser.add_argument("--folder", required=True, help="pipeline folder (write_random_pipeline)")
    parser.add_argument("--variant", default="default", help="our variant (ignored for the reference)")
    parser.add_argument("--size", type=int, required=True, help="image side in pixels")
    parser.add_argument("--steps", type=int, required=True, help="num_inference_steps")
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--save", help="write the images here (.npy), for the fidelity check")
    parser.add_argument("--spawned-at", type=float, default=None, help="parent's time.time() when it started us")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(measure(parse_args(argv))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
