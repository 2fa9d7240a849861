"""``depth2img random-model``: a model folder with random weights, for trying the tool offline, CI and benchmarks.

The folder has the published layout (``model_index.json``, one subfolder per component), so every command
and ``Depth2ImgPipeline.from_pretrained`` load it like the real model — but it makes NOISE, not pictures.
``--config sd2-depth`` has the real architecture (about 1.4 billion parameters, ~5.6 GB in float32);
``tiny`` is a few hundred thousand parameters and loads in a blink. ``taesd`` / ``taesd-tiny`` write a random
TAESD (the tiny autoencoder) instead, a VAE folder for ``generate --vae``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import CliError

__all__ = ["add_parser", "run"]

CONFIGS = ("tiny", "sd2-depth", "taesd", "taesd-tiny")  # the last two: a TAESD folder (--vae), not a pipeline


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``random-model``."""
    parser = subparsers.add_parser(
        "random-model",
        parents=parents,
        help="write a RANDOM-weights model folder (makes noise; for offline tries, CI, benchmarks)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: depth2img random-model --config tiny tiny-model/",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must be new or empty)")
    parser.add_argument("--config", choices=CONFIGS, default="tiny", help="architecture (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the folder, then write the random pipeline into it."""
    from .outputs import ensure_writable_folder

    out_dir = Path(args.out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"OUT_DIR: {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.overwrite:
        raise CliError(f"OUT_DIR: {out_dir} is not empty; choose a new folder or pass --overwrite to replace it")
    ensure_writable_folder(out_dir.parent, flag="OUT_DIR")

    if args.config.startswith("taesd"):
        return _write_taesd(args, out_dir)
    from ..loading.random_model import write_random_pipeline

    # The folder appears complete or not at all (written beside it, then renamed), even on Ctrl-C.
    write_random_pipeline(out_dir, config=args.config, seed=args.seed, overwrite=args.overwrite)
    # The tiny VAE downsamples by 2, not 8: keep its images small or attention runs over 50k latent pixels.
    size = " -W 128" if args.config == "tiny" else ""
    print(
        f"depth2img: wrote a RANDOM-WEIGHTS model ({args.config} architecture) to {out_dir}: it makes noise, "
        f"not pictures. Try it: depth2img generate -m {out_dir} -i examples/room.jpg -p test --steps 2{size}",
        file=sys.stderr,
    )
    print(out_dir)
    return 0


def _write_taesd(args: argparse.Namespace, out_dir: Path) -> int:
    from ..loading.random_taesd import write_random_taesd

    write_random_taesd(out_dir, config=args.config, seed=args.seed, overwrite=args.overwrite)
    print(
        f"depth2img: wrote a RANDOM-WEIGHTS TAESD ({args.config}) to {out_dir}: it decodes noise. Use it with "
        f"depth2img generate --vae {out_dir} ...",
        file=sys.stderr,
    )
    print(out_dir)
    return 0
