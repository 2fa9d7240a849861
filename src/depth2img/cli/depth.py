"""``depth2img depth``: the depth map alone, as the model sees it.

For each input image: ``NAME.png`` (16-bit grayscale, white = near, at the image's size), ``NAME-color.png``
(a viridis preview, yellow = near) and, with ``--npy``, ``NAME.npy`` (the raw float32 values). Feed the PNG
back with ``depth2img generate --depth-map`` after editing it, to control the layout by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import argtypes
from .component_options import add_component_arguments
from .errors import CliError
from .precision import add_precision_arguments
from .settings import DEFAULT_MODEL

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``depth``."""
    parser = subparsers.add_parser(
        "depth",
        parents=parents,
        help="estimate a photo's depth map (16-bit PNG + colour preview)",
        description="Estimate depth maps with the model's depth estimator (DPT / MiDaS). White/yellow = near.",
        epilog="Example: depth2img depth -i examples/room.jpg -o room-depth.png --npy",
    )
    parser.add_argument(
        "-i", "--image", dest="images", action="append", required=True, metavar="PATH",
        help="input image or folder (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", metavar="PATH",
        help="NAME.png for one image, or a folder (default: current folder, NAME = <image>-depth)",
    )  # fmt: skip
    parser.add_argument("--npy", action="store_true", help="also write the raw float32 depth as .npy")
    parser.add_argument("--no-preview", action="store_true", help="skip the colour preview")
    parser.add_argument("-W", "--width", type=argtypes.int_at_least(8), help="resize inputs to this width first")
    parser.add_argument("-H", "--height", type=argtypes.int_at_least(8), help="resize inputs to this height first")
    parser.add_argument(
        "--max-pixels", type=argtypes.int_at_least(64), metavar="N",
        help="refuse input images larger than N pixels, read from their headers (default: 8192x8192)",
    )  # fmt: skip
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"model holding the estimator ({DEFAULT_MODEL})")
    parser.add_argument("--offline", action="store_true", help="never download; use the local cache or folders")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    add_precision_arguments(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but the written paths")
    add_component_arguments(parser, vae=False)  # only the depth estimator runs here
    parser.set_defaults(run=run)


def _output_stems(output: str | None, images: list[Path]) -> list[Path]:
    """Per image, the output path without suffix; a ``.png`` name is for a single image only."""
    if output and Path(output).suffix.lower() == ".png" and not Path(output).is_dir():
        if len(images) > 1:
            raise CliError(f"--output: {output} names one file, but there are {len(images)} images; give a folder")
        return [Path(output).expanduser().with_suffix("")]
    if output and Path(output).suffix and not Path(output).is_dir():
        raise CliError(f"--output: {output!r} must be a folder or end in .png")
    folder = Path(output).expanduser() if output else Path(".")
    stems = [folder / f"{image.stem}-depth" for image in images]
    if len({stem.name for stem in stems}) < len(stems):
        raise CliError("two input images share a file name; their depth maps would overwrite each other")
    return stems


def run(args: argparse.Namespace) -> int:
    """Check the inputs, load the estimator, write the maps (all with one range under --depth-normalize batch)."""
    from .component_options import component_choice
    from .devices import resolve_device
    from .inputs import announce_size_rounding, check_resized_sizes, collect_images
    from .outputs import ensure_writable_folder, missing_folders, remove_empty_folders
    from .pipeline_setup import check_model
    from .precision import resolve_precision

    choice = component_choice(args)
    images = collect_images(args.images, max_pixels=args.max_pixels)
    announce_size_rounding(args.width, args.height)
    check_resized_sizes(images, args.width, args.height, args.max_pixels)
    stems = _output_stems(args.output, images)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, args.dtype, device).dtypes["depth_estimator"]
    source = check_model(args.model, args.offline)
    created = [folder for parent in {stem.parent for stem in stems} for folder in missing_folders(parent)]
    for folder in {stem.parent for stem in stems}:
        ensure_writable_folder(folder)
    try:
        return _estimate_and_write(args, choice, source, device, dtype, images, stems)
    except BaseException:
        remove_empty_folders(sorted(set(created)))  # a failed run leaves no empty output folder behind
        raise


def _estimate_and_write(
    args: argparse.Namespace,
    choice: Any,
    source: Any,
    device: Any,
    dtype: Any,
    images: list[Path],
    stems: list[Path],
) -> int:
    """Load the estimator, then estimate and write each image's maps."""
    from .component_options import apply_component_options, load_components
    from .depthmaps import estimate_depth, resize_depth, shared_range, write_depth_npy, write_depth_png16, write_preview
    from .inputs import load_rgb
    from .pipeline_setup import load_pipeline

    components = load_components(choice, dtype=dtype, offline=args.offline)
    pipe = load_pipeline(
        source, dtype=dtype, offline=args.offline, quiet=True, depth_only=True, components=components
    ).to(device)
    apply_component_options(pipe, choice)

    def depth_of(number: int, image_path: Path) -> Any:
        if not args.quiet:
            print(f"depth2img: [{number}/{len(images)}] {image_path.name}", file=sys.stderr)
        image = load_rgb(image_path, args.width, args.height)
        return resize_depth(estimate_depth(pipe, image), image.size)

    together = choice.depth_normalize == "batch"  # every map first, to find the run's range
    depths = [depth_of(n, path) for n, path in enumerate(images, start=1)] if together else None
    value_range = shared_range(depths) if together else None
    for number, (image_path, stem) in enumerate(zip(images, stems), start=1):
        depth = depths[number - 1] if depths is not None else depth_of(number, image_path)
        written = [stem.with_name(stem.name + ".png")]
        write_depth_png16(written[0], depth, value_range)
        if not args.no_preview:
            written.append(stem.with_name(stem.name + "-color.png"))
            write_preview(written[-1], depth, value_range)
        if args.npy:
            written.append(stem.with_name(stem.name + ".npy"))
            write_depth_npy(written[-1], depth)
        for path in written:
            print(path, flush=True)
    return 0
