"""Throughput of ``depth2img batch``: --batch-size against one at a time, and the Ray engine against the local one.

    nice python -m benchmarks.batch                          # tiny architecture, 16 images (a few minutes)
    nice python -m benchmarks.batch --model DIR --images 8 --configs local-b1,local-b4,ray-w1-b1

Each configuration is one fresh ``depth2img batch`` process over the same inputs into an empty OUTDIR. Two
numbers per row: the command's wall time (imports, model load, Ray start, everything), and the steady rate in
images per minute from the journal's timestamps: the images recorded after the first pipeline call's, over
the time from that call's records to the last record — start-up, model loading and the first (warm-up) call
left out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .run import _cpu_name

CONFIGS = {  # name: extra flags
    "local-b1": ["--batch-size", "1"],
    "local-b4": ["--batch-size", "4"],
    "ray-w1-b1": ["--engine", "ray", "--workers", "1", "--batch-size", "1"],
    "ray-w2-b1": ["--engine", "ray", "--workers", "2", "--batch-size", "1"],
    "ray-w1-b4": ["--engine", "ray", "--workers", "1", "--batch-size", "4"],
}


def _parse_time(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def run_config(name: str, inputs: Path, model: str, args: argparse.Namespace, work: Path) -> dict:
    outdir = work / name
    outdir.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "depth2img", "batch", str(inputs), "-o", str(outdir), "-m", model, "-q"]
    command += ["-p", "a watercolor painting", "--steps", str(args.steps), "--device", "cpu", *CONFIGS[name]]
    if args.threads:
        command += ["--threads", str(args.threads)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
    records = [json.loads(line) for line in (outdir / "batch.jsonl").read_text().splitlines()]
    records = [r for r in records if r["status"] == "done"]
    times = sorted(_parse_time(r["time"]) for r in records)
    # The first pipeline call's records (one per image of its batch) arrive together, after the warm-up: count
    # the images that arrived after them, over the time since then.
    after_first = [t for t in times if t > times[0] + 0.05]
    return {
        "config": name,
        "images": len(records),
        "wall_s": round(wall, 2),
        "steady_img_per_min": round(60 * len(after_first) / (times[-1] - times[0]), 2) if after_first else None,
        "wall_img_per_min": round(60 * len(records) / wall, 2),
    }


def _median_row(name: str, runs: list[dict]) -> dict:
    """Medians over the rounds of one configuration (each sample kept too)."""
    row = {"config": name, "images": runs[0]["images"], "rounds": len(runs)}
    for key in ("wall_s", "steady_img_per_min", "wall_img_per_min"):
        values = [run[key] for run in runs if run[key] is not None]
        row[key] = round(statistics.median(values), 2) if values else None
        row[key + "_samples"] = [run[key] for run in runs]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (written to a temporary folder) or a model folder")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="input images are SIZE x SIZE pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: batch's own choice)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all configurations; medians reported")
    parser.add_argument("--out", type=Path, help="JSON results (default: print only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="depth2img-batch-bench-") as folder:
        work = Path(folder)
        model = args.model
        if model == "tiny":
            from depth2img.loading.random_model import write_random_pipeline

            model = str(write_random_pipeline(work / "tiny", config="tiny"))
        inputs = work / "inputs"
        inputs.mkdir()
        for k in range(args.images):
            pixels = np.random.default_rng(k).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(inputs / f"{k:03d}.png")
        samples: dict[str, list[dict]] = {name: [] for name in args.configs.split(",")}
        for round_number in range(args.repeats):  # rounds interleave the configurations: load hits all alike
            for name in samples:
                samples[name].append(run_config(name, inputs, model, args, work / str(round_number)))
                print(json.dumps(samples[name][-1]), flush=True)
        rows = [_median_row(name, runs) for name, runs in samples.items()]
    result = {
        "model": args.model,
        "images": args.images,
        "size": args.size,
        "steps": args.steps,
        "threads": args.threads,
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
