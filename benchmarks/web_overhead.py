"""What the web app adds to a generation: ``depth2img serve`` driven by gradio_client vs the Python API.

Both make the same image (same arguments, same seed, the same depth map: the app estimates it once per image
and size, so the API side gets it precomputed too; the test suite checks the pixels are equal). The web
round trip includes the upload, the queue, per-step progress events, writing the PNG with its records, and
gradio_client downloading the result. Runs alternate (API, web, API, web, ...) after one warm-up each, so
machine load hits both alike; the medians are reported.

    python benchmarks/web_overhead.py --config tiny --size 256 --steps 20 --repeats 5
    python benchmarks/web_overhead.py --config sd2-depth --size 256 --steps 10 --repeats 3   # full-size, random weights
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="random-model architecture: tiny or sd2-depth")
    parser.add_argument("--size", type=int, default=256, help="longer side of the output")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    from depth2img.cli import generate as cli_generate
    from depth2img.cli.depthmaps import estimate_depth
    from depth2img.cli.inputs import load_rgb
    from depth2img.loading.random_model import write_random_pipeline
    from depth2img.web.options import ServeOptions
    from depth2img.web.server import load_engine, start
    from depth2img.web.uploads import output_size
    from web_helpers import ROOM, free_port

    with tempfile.TemporaryDirectory() as folder:
        write_random_pipeline(Path(folder) / "model", args.config)
        options = ServeOptions(model=str(Path(folder) / "model"), port=free_port(), device=args.device, dtype="float32")
        engine = load_engine(options)
        server = start(engine, options)
        client = Client(server.url, verbose=False)
        size = output_size((512, 384), args.size)
        image = load_rgb(ROOM, *size)
        depth = estimate_depth(engine.pipe, image)  # the web app caches it per image and size: so does the API side

        def api() -> None:
            engine.pipe(
                prompt="a cabin", image=image, depth_map=depth, strength=0.8, num_inference_steps=args.steps,
                guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(1),
            )  # fmt: skip

        def web() -> None:
            client.predict(
                handle_file(str(ROOM)), "a cabin", "", 0.8, args.steps, 7.5, "", 1, 1, 1, args.size, None,
                api_name="/generate",
            )  # fmt: skip

        # Paired measure, robust to a busy machine: the time each web request spent inside the pipeline call
        # (the CLI's _one_image, which the app calls), subtracted from that request's round trip.
        inside: list[float] = []
        one_image = cli_generate._one_image

        def timed_one_image(*call_args, **call_kwargs):
            started = time.perf_counter()
            try:
                return one_image(*call_args, **call_kwargs)
            finally:
                inside.append(time.perf_counter() - started)

        cli_generate._one_image = timed_one_image

        # gradio runs handlers in worker threads, and OpenMP's thread count is per thread: the API side runs in
        # a worker thread too, so both get the same torch threading.
        worker = ThreadPoolExecutor(1)
        times: dict[str, list[float]] = {"api": [], "web": []}
        for _ in range(args.repeats + 1):
            for name, run in (("api", api), ("web", web)):
                started = time.perf_counter()
                worker.submit(run).result() if name == "api" else run()
                times[name].append(time.perf_counter() - started)
        server.close()
    api_median, web_median = (statistics.median(times[name][1:]) for name in ("api", "web"))
    paired = [total - pipeline for total, pipeline in zip(times["web"][1:], inside[1:])]
    print(
        f"config {args.config}, {size[0]}x{size[1]}, {args.steps} steps x 0.8, {args.repeats} runs each, {args.device}"
    )
    print(f"Python API  median {api_median:.3f} s  ({', '.join(f'{t:.3f}' for t in times['api'][1:])})")
    print(f"web (client) median {web_median:.3f} s  ({', '.join(f'{t:.3f}' for t in times['web'][1:])})")
    print(f"medians: web - API {web_median - api_median:+.3f} s = {100 * (web_median / api_median - 1):+.1f}%")
    print(
        f"paired: web round trip - its own pipeline call, median {statistics.median(paired):.3f} s "
        f"({', '.join(f'{t:.3f}' for t in paired)}) = {100 * statistics.median(paired) / api_median:.1f}% of the API"
    )


if __name__ == "__main__":
    main()
