"""The settings of a ``depth2img serve`` server, and the limits it puts on what browsers send."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_SIZE",
    "MAX_OUTPUT_SIDE",
    "ServeOptions",
]

DEFAULT_HOST = "127.0.0.1"  # only this machine; --host 0.0.0.0 opens it to the network
DEFAULT_PORT = 7860  # gradio's usual port
DEFAULT_MAX_PIXELS = 50_000_000  # largest input image (a 50 MP photo); header-checked before decoding
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_QUEUE_SIZE = 16
MAX_OUTPUT_SIDE = 2048  # the longest side a generated image may have (compute and memory grow with its square)
DEFAULT_OUTPUT_SIDE = 512  # the size the published model was trained at
MAX_IMAGES_PER_RUN = 8
MAX_STEPS = 150  # as in A1111


@dataclass(frozen=True)
class ServeOptions:
    """What ``depth2img serve`` was started with (see ``depth2img serve --help``)."""

    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    auth: tuple[str, str] | None = None
    outdir: str | None = None  # also keep every generated PNG here (atomically written, numbered like the CLI)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    queue_size: int = DEFAULT_QUEUE_SIZE
    device: str = "auto"
    precision: str | None = None  # --precision (None: auto); see depth2img/precision.py
    dtype: str | None = None  # --dtype, its deprecated alias
    offline: bool = False
    # the component flags of `generate` (cli/component_options.py), recorded in every PNG as `generate` does
    depth_model: str | None = None
    depth_invert: str = "auto"
    depth_normalize: str = "image"
    vae: str | None = None
