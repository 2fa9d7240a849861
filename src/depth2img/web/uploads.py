"""What a browser sends, checked the way the command line checks files, before anything is decoded.

An upload reaches the handlers as the path gradio stored it at (see ``layout.UploadedImage``), unread. Its byte
size and its header's pixel count are checked first; then the command line's own readers take over
(``cli.inputs``: EXIF rotation, 16-bit, CMYK and RGBA handling), so the browser and ``depth2img generate`` read
an image alike. Messages are the command line's sentences, naming the file by its own name rather than by
the server's temporary path.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..cli.errors import CliError
from ..cli.inputs import check_image, load_depth_map, load_rgb, target_size

__all__ = ["checked_upload", "output_size", "read_depth_map", "read_image"]


def checked_upload(path: str | Path, what: str, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """Check an uploaded image's byte size and header; return its (width, height) without decoding pixels."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise CliError(f"{what}: {path.name} is {_mib(size)}; uploads can be at most {_mib(max_bytes)}")
    with _named(path):  # the CLI reader's checks and sentences: header size first, then one full decode
        width, height = check_image(path, what, max_pixels)
    if _turned_sideways(path):  # EXIF says rotate by 90°: the upright image is height × width
        width, height = height, width
    return width, height


def _turned_sideways(path: Path) -> bool:
    """Whether the EXIF orientation, as ``ImageOps.exif_transpose`` reads it, turns the image by 90°.

    Called after the pixel-count check: for a PNG, PIL may decode the image to find an eXIf chunk after the
    pixels. A file that fails here is reported by the reader later, in the command line's words."""
    try:
        with Image.open(path) as image:
            return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError):
        return False


def output_size(original: tuple[int, int], long_side: int) -> tuple[int, int]:
    """The (width, height) to generate at: ``long_side`` on the longer side, aspect kept, multiples of 8."""
    width, height = original
    return target_size(original, long_side, None) if width >= height else target_size(original, None, long_side)


def read_image(path: str | Path, size: tuple[int, int], what: str = "image") -> Image.Image:
    """The uploaded image, upright and RGB, resized to ``size``: the command line's ``load_rgb``."""
    path = Path(path)
    with _named(path), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel count was checked already
        return load_rgb(path, *size)


def read_depth_map(path: str | Path, what: str = "depth map") -> np.ndarray:
    """An uploaded depth map (grayscale image or ``.npy``) as float32 (H, W): the command line's reader."""
    path = Path(path)
    with _named(path):
        return load_depth_map(path, what)


class _named:
    """Re-raise ``CliError`` with the server's temporary path replaced by the file's own name."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, CliError) and str(self.path) in str(error):
            raise CliError(str(error).replace(str(self.path), self.path.name), error.exit_code) from None
        return False


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
