"""Reading the user's images and depth maps, with one clear sentence for each way that can go wrong.

Every input is checked up front — exists, really an image, at least 8 pixels a side, at most ``--max-pixels``
(read from the header, before anything is decoded: a small file may declare a huge size), and fully decoded once
so a truncated file is found — so a bad fifth file of a folder fails before any model is loaded and before the
first output is written. Pixels are read again when an image is used (decoding is cheap next to a model load).
16-bit images are scaled by their real range (``depth2img.images.to_rgb``), the same as in the Python API.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..images import SIXTEEN_BIT_MODES, check_pixel_count, to_rgb
from .errors import EXIT_USAGE, CliError, warn

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


def collect_images(sources: Iterable[str], flag: str = "--image", max_pixels: int | None = None) -> list[Path]:
    """Expand ``sources`` (files, or folders whose image files are taken in name order) into checked paths:
    every one of them is decoded once (see the module's docstring); ``max_pixels`` defaults to
    ``depth2img.images.MAX_PIXELS``."""
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
        check_image(path, flag, max_pixels)
    return images


def check_image(path: Path, flag: str = "--image", max_pixels: int | None = None) -> tuple[int, int]:
    """Make sure ``path`` is a complete, readable image of 8×8 to ``max_pixels`` pixels; return (width, height)."""
    if not path.exists():
        raise CliError(f"{flag}: image not found: {path}")
    if not path.is_file():
        raise CliError(f"{flag}: {path} is not a file")
    with _opened(path, flag, max_pixels) as image:
        size = image.size
        if min(size) < MIN_IMAGE_SIDE:
            raise CliError(f"{flag}: {path} is {size[0]}x{size[1]} pixels; images need at least 8 pixels per side")
        try:
            image.load()  # decode it all now: a truncated file fails here, before any model loads
        except Exception as error:  # noqa: BLE001 - PIL's decoders raise OSError, SyntaxError, EOFError, zlib...
            raise CliError(f"{flag}: {path} is damaged or truncated ({_reason(error)})") from None
        try:
            to_rgb(image)  # 16-bit and float images: their values must fit their mode's range
        except ValueError as error:
            raise CliError(f"{flag}: {path}: {error}") from None
    return size


@contextmanager
def _opened(
    path: Path, flag: str, max_pixels: int | None, expected: str = "an image file that PIL can read"
) -> Iterator[Image.Image]:
    """``Image.open`` (header only) with our pixel limit instead of PIL's decompression-bomb warning and error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                try:
                    check_pixel_count(*image.size, f"{flag}: {path}", max_pixels)
                except ValueError as error:
                    raise CliError(str(error), EXIT_USAGE) from None
                yield image
    except Image.DecompressionBombError as error:  # past twice PIL's own limit: PIL refuses before we see the size
        declared = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than PIL will open"
        raise CliError(
            f"{flag}: {path} declares {pixels}, more than the limit of {max_pixels or _default_limit():,} "
            "(--max-pixels); resize it, or raise the limit"
        ) from None
    except CliError:
        raise
    except UnidentifiedImageError:
        raise CliError(f"{flag}: {path} is not {expected}") from None
    except Exception as error:  # noqa: BLE001 - unreadable, or damaged: PIL raises many types for broken files
        raise CliError(f"{flag}: cannot read {path}: damaged, truncated or unreadable ({_reason(error)})") from None


def _default_limit() -> int:
    from .. import images

    return images.MAX_PIXELS


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error).strip().splitlines()[0:1]
    return (text if isinstance(text, str) else " ".join(text)) or type(error).__name__


def load_rgb(path: Path, width: int | None = None, height: int | None = None) -> Image.Image:
    """The image at ``path`` as RGB, upright (EXIF orientation applied), resized for ``--width``/``--height``."""
    try:
        with Image.open(path) as opened:
            image = to_rgb(ImageOps.exif_transpose(opened))
    except (OSError, ValueError) as error:  # checked by check_image already; the file may have changed since
        raise CliError(f"cannot read image {path} ({_reason(error)})", exit_code=1) from None
    size = target_size(image.size, width, height)
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def check_resized_sizes(
    images: Iterable[Path], width: int | None, height: int | None, max_pixels: int | None = None
) -> None:
    """``-W``/``-H`` may not blow an image up past ``max_pixels`` either (sizes read from the headers)."""
    if width is None and height is None:
        return
    for path in images:
        with _opened(path, "--image", max_pixels) as image:
            size = target_size(image.size, width, height) or image.size
        try:
            check_pixel_count(*size, f"-W/-H: the resized {path}", max_pixels)
        except ValueError as error:
            raise CliError(str(error)) from None


def announce_size_rounding(width: int | None, height: int | None) -> None:
    """Say in one line when ``-W``/``-H`` is not a multiple of 8, and which size is used instead."""
    for flag, value in (("--width", width), ("--height", height)):
        if value is not None and value % 8:
            warn(f"{flag} {value} is not a multiple of 8 (the VAE works in 8-pixel blocks); using {value // 8 * 8}")


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


def load_depth_map(path: Path, flag: str = "--depth-map", max_pixels: int | None = None) -> np.ndarray:
    """A depth map file as a float32 (H, W) array: ``.npy``, or a grayscale image (8/16-bit, or float TIFF).

    Larger values mean nearer, as the depth estimator writes them (and as ``depth2img depth`` saves them);
    the pipeline rescales each map to [-1, 1], so any positive scale or offset gives the same result.
    """
    if not path.is_file():
        raise CliError(f"{flag}: file not found: {path}")
    if path.suffix.lower() == ".npy":
        depth = _load_npy(path, flag, max_pixels)
    else:
        with _opened(path, flag, max_pixels, expected="an image nor a .npy file") as image:
            if image.mode not in ("L", "I", "F", *SIXTEEN_BIT_MODES):
                image = image.convert("L")
            depth = np.asarray(image)
    if min(depth.shape) < MIN_IMAGE_SIDE:
        raise CliError(f"{flag}: {path} is only {depth.shape[1]}x{depth.shape[0]}; depth maps need 8 pixels a side")
    depth = depth.astype(np.float32)
    if not np.isfinite(depth).all():
        raise CliError(f"{flag}: {path} contains NaN or infinite values")
    return depth


def _load_npy(path: Path, flag: str, max_pixels: int | None) -> np.ndarray:
    """A ``.npy`` depth map: header first (memory-mapped, so a lying shape allocates nothing), then the values."""
    try:
        mapped = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as error:  # noqa: BLE001 - a damaged header: ValueError, OSError, EOFError, SyntaxError...
        raise CliError(f"{flag}: cannot read {path} as a numpy array ({_reason(error)})") from None
    shape = tuple(d for d in mapped.shape if d != 1)
    if len(shape) != 2 or not (np.issubdtype(mapped.dtype, np.number) or mapped.dtype == np.bool_):
        raise CliError(f"{flag}: {path} holds a {mapped.dtype} array of shape {mapped.shape}; expected (H, W)")
    try:
        check_pixel_count(shape[1], shape[0], f"{flag}: {path}", max_pixels)
    except ValueError as error:
        raise CliError(str(error)) from None
    try:
        return np.array(mapped).reshape(shape)
    except Exception as error:  # noqa: BLE001 - the file shrank since, or a dtype that numpy cannot copy
        raise CliError(f"{flag}: cannot read {path} as a numpy array ({_reason(error)})") from None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, recorded in the PNG so ``--from-png`` can tell when an input changed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
