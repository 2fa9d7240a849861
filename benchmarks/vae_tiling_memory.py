"""Peak memory and time of a VAE decode, untiled vs tiled, each in a fresh child process.

    nice -n 10 python benchmarks/vae_tiling_memory.py                       # SD2 VAE, 1024², untiled and tiled
    nice -n 10 python benchmarks/vae_tiling_memory.py --sizes 2048 --modes tiled
    python benchmarks/vae_tiling_memory.py --config tiny --sizes 64 128     # quick check of the script itself

Each child builds the full-size VAE with random weights (``random_component("vae", config)``; memory and time do
not depend on the weights' values), then resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) so that
the model build does not hide the decode's peak, decodes random latents of ``size / 8`` per side and reports:

- ``before``: RSS just before the decode (imports + weights), ``peak``: peak RSS during the decode,
  ``extra = peak - before``: what the decode itself needed;
- the wall time of the decode and the number of decoder calls (1 untiled; one per tile when tiled).

One thread by default (``--threads``), so that the machine stays usable; the time scales down with more.
Prints one line per measurement and, with ``--json PATH``, writes all results (atomically).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# Run as a script (``python benchmarks/vae_tiling_memory.py``), this file's folder is on sys.path, not the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.memory import GIB, memory_status, peak_rss_gib, trim_heap  # noqa: E402  (needs the path above)

MODES = ("untiled", "tiled")


def reset_peak_rss() -> bool:
    """Make the peak-RSS mark (VmHWM) equal to the current RSS (Linux ≥ 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def measure_decode(config: str, size: int, mode: str, threads: int, tile: int | None = None) -> dict:
    """Build the ``config`` VAE, decode one ``size``² image from random latents, return memory and time."""
    import torch

    from depth2img.loading.random_model import random_component

    torch.set_num_threads(threads)
    vae = random_component("vae", config=config, seed=0).eval()
    if size % vae.downscale:
        raise ValueError(f"size={size} must be a multiple of the VAE's downscale factor {vae.downscale}")
    if mode == "tiled":
        vae.enable_tiling(tile_sample_size=tile)
    latents = torch.randn(1, vae.config.latent_channels, size // vae.downscale, size // vae.downscale)
    decoder_calls = []
    vae.decoder.register_forward_pre_hook(lambda _, args: decoder_calls.append(tuple(args[0].shape[-2:])))

    trim_heap()
    hwm_reset = reset_peak_rss()
    before = memory_status()["VmRSS"] if hwm_reset else peak_rss_gib()
    start = time.perf_counter()
    with torch.no_grad():
        image = vae.decode(latents).sample
    seconds = time.perf_counter() - start
    peak = peak_rss_gib()
    return {
        "config": config,
        "size": size,
        "mode": mode,
        "tile": vae.tile_sample_min_size if mode == "tiled" else None,
        "threads": threads,
        "decode_s": seconds,
        "decoder_calls": len(decoder_calls),
        "largest_decoder_input": max(decoder_calls),
        "output_shape": list(image.shape),
        "output_gib": image.numel() * image.element_size() / GIB,
        "finite": bool(torch.isfinite(image).all()),
        "peak_rss_reset": hwm_reset,
        "before_gib": before,
        "peak_gib": peak,
        "extra_gib": peak - before,
    }


def _run_child(config: str, size: int, mode: str, threads: int, tile: int | None) -> dict:
    command = [sys.executable, __file__, "--child", config, str(size), mode, str(threads), str(tile or 0)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"child {command[3:]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sd2-depth", help="architecture: sd2-depth (default) or tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024], help="image sides in pixels (default 1024)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tile", type=int, default=None, help="tile side in pixels (default: config sample_size)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        config, size, mode, threads, tile = args.child
        print(json.dumps(measure_decode(config, int(size), mode, int(threads), int(tile) or None)))
        return []

    results = []
    for size in args.sizes:
        for mode in args.modes:
            row = _run_child(args.config, size, mode, args.threads, args.tile)
            results.append(row)
            tiles = f"{row['decoder_calls']} tiles of ≤{row['tile']} px" if mode == "tiled" else "one pass"
            print(
                f"{args.config} VAE decode {size}² {mode:8s} ({tiles}): {row['decode_s']:7.1f} s | "
                f"RSS before {row['before_gib']:.3f} GiB, peak {row['peak_gib']:.3f} GiB, "
                f"decode needs +{row['extra_gib']:.3f} GiB (output {row['output_gib'] * 1024:.1f} MiB)"
                + ("" if row["peak_rss_reset"] else " [peak not reset: includes the model build]"),
                flush=True,
            )
    if args.json:
        from depth2img.utils.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
