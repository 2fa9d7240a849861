"""Reading the user's images and depth maps, with one clear sentence for each way that can go wrong.

Paths are checked up front (exists, readable, really an image, large enough) so a typo in the fifth file of a
batch fails before any model is loaded; pixels are read only when an image is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CliError

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_IMAGE_SIDE",
    "collect_images",
    "file_sha256",
    "load_depth_map",
    "load_rgb",
    "target_size",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MIN_IMAGE_SIDE = 8  # the VAE downsamples by 8: anything smaller has no latent pixels


def collect_images(sources: Iterable[str], flag: str = "--image") -> list[Path]:
    """Expand ``sources`` (files, or folders whose image files are taken in name order) into checked paths."""
    images: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CliError(f"{flag}: folder {path} has no images (looked for {', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        else:
            images.append(path)
    for path in images:
        check_image(path, flag)
    return images


def check_image(path: Path, flag: str = "--image") -> tuple[int, int]:
    """Make sure ``path`` is a readable image of at least 8×8 pixels; return its (width, height)."""
    if not path.exists():
        raise CliError(f"{flag}: image not found: {path}")
    if not path.is_file():
        raise CliError(f"{flag}: {path} is not a file")
    try:
        with Image.open(path) as image:  # reads the header only
            size = image.size
    except UnidentifiedImageError:
        raise CliError(f"{flag}: {path} is not an image file that PIL can read") from None
    except OSError as error:
        raise CliError(f"{flag}: cannot read {path} ({error.strerror or error})") from None
    if min(size) < MIN_IMAGE_SIDE:
        raise CliError(f"{flag}: {path} is {size[0]}x{size[1]} pixels; images need at least 8 pixels per side")
    return size


def load_rgb(path: Path, width: int | None = None, height: int | None = None) -> Image.Image:
    """The image at ``path`` as RGB, upright (EXIF orientation applied), resized for ``--width``/``--height``."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except OSError as error:  # e.g. a truncated file that passed the header check
        raise CliError(f"cannot read image {path} ({error.strerror or error})", exit_code=1) from None
    size = target_size(image.size, width, height)
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def target_size(original: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int] | None:
    """The (width, height) to resize to for ``--width``/``--height``, or None to keep the image as it is.

    With one of the two given, the other follows the image's aspect ratio. Both are rounded down to a
    multiple of 8 (what the VAE needs), and never below 8.
    """
    if width is None and height is None:
        return None
    original_width, original_height = original
    if width is None:
        width = round(original_width * height / original_height)
    if height is None:
        height = round(original_height * width / original_width)
    return max(8, width // 8 * 8), max(8, height // 8 * 8)


def load_depth_map(path: Path, flag: str = "--depth-map") -> np.ndarray:
    """A depth map file as a float32 (H, W) array: ``.npy``, or a grayscale image (8/16-bit, or float TIFF).

    Larger values mean nearer, as the depth estimator writes them (and as ``depth2img depth`` saves them);
    the pipeline rescales each map to [-1, 1], so any positive scale or offset gives the same result.
    """
    if not path.is_file():
        raise CliError(f"{flag}: file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise CliError(f"{flag}: cannot read {path} as a numpy array ({error})") from None
        depth = np.squeeze(depth)
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
            raise CliError(f"{flag}: {path} holds a {depth.dtype} array of shape {depth.shape}; expected (H, W)")
    else:
        try:
            with Image.open(path) as image:
                if image.mode in ("RGB", "RGBA", "P", "LA"):
                    image = image.convert("L")
                depth = np.asarray(image)
        except UnidentifiedImageError:
            raise CliError(f"{flag}: {path} is neither an image nor a .npy file") from None
        except OSError as error:
            raise CliError(f"{flag}: cannot read {path} ({error.strerror or error})") from None
    if min(depth.shape) < MIN_IMAGE_SIDE:
        raise CliError(f"{flag}: {path} is only {depth.shape[1]}x{depth.shape[0]}; depth maps need 8 pixels a side")
    depth = depth.astype(np.float32)
    if not np.isfinite(depth).all():
        raise CliError(f"{flag}: {path} contains NaN or infinite values")
    return depth


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, recorded in the PNG so ``--from-png`` can tell when an input changed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
